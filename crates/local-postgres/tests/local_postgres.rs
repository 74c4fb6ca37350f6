//! The local PostgreSQL cluster (its password included) and the fresh database each test gets.

use local_postgres::{fresh_database, LocalCluster};
use sqlx::{Connection as _, PgConnection};

#[tokio::test]
async fn fresh_databases_are_isolated() {
    let (a, db_a) = fresh_database().await;
    let (b, db_b) = fresh_database().await;
    assert_ne!(db_a.name(), db_b.name());

    sqlx::query("CREATE TABLE events (id int PRIMARY KEY)")
        .execute(&a)
        .await
        .unwrap();
    sqlx::query("INSERT INTO events VALUES (1)")
        .execute(&a)
        .await
        .unwrap();

    let in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('events')::text")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(
        in_b, None,
        "a table made in one test database shows in another"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&a)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(current, db_b.name());
}

#[tokio::test]
async fn dropping_the_guard_drops_the_database() {
    let (pool, db) = fresh_database().await;
    let name = db.name().to_owned();
    let options = db.connect_options();
    let url = db.url();
    assert!(url.ends_with(&format!("/{name}")), "{url}");
    let conn = PgConnection::connect(&url)
        .await
        .expect("the guard's URL connects");
    conn.close().await.unwrap();
    drop(db);
    pool.close().await;
    let gone = PgConnection::connect_with(&options).await;
    assert!(
        gone.is_err(),
        "database {name} still exists after its guard was dropped"
    );
}

/// One of the concurrent tests: a database, a table, `rows` rows; returns the database's name.
async fn small_test(rows: i32) -> String {
    let (pool, db) = fresh_database().await;
    sqlx::query("CREATE TABLE t (v int)")
        .execute(&pool)
        .await
        .unwrap();
    for v in 0..rows {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(v)
            .execute(&pool)
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, i64::from(rows));
    db.name().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_serves_concurrent_tests() {
    let tasks: Vec<_> = (1..=8).map(|rows| tokio::spawn(small_test(rows))).collect();
    let mut names = Vec::new();
    for task in tasks {
        names.push(task.await.expect("a concurrent test task failed"));
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 8, "each task got a database of its own");
}

#[tokio::test]
async fn ensure_reuses_the_cluster_in_a_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("postgres");
    let (first, second) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut first = LocalCluster::ensure(&dir, None).expect("first ensure");
            first.set_stop_on_drop(true); // a failing assertion must not leave it running
            let second = LocalCluster::ensure(&dir, None).expect("second ensure");
            (first, second)
        }
    })
    .await
    .unwrap();
    assert!(first.started_here());
    assert!(
        !second.started_here(),
        "the second ensure started another server"
    );
    assert_eq!(first.port(), second.port());
    assert_eq!(first.url("postgres"), second.url("postgres"));
    assert!(dir.join("PG_VERSION").exists());

    let mut conn = PgConnection::connect(&first.url("postgres")).await.unwrap();
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('across restarts')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // Stopped, the same directory starts again with its data.
    let third = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            first.stop().expect("stop");
            drop(first);
            drop(second);
            let mut third = LocalCluster::ensure(&dir, None).expect("third ensure");
            third.set_stop_on_drop(true);
            third
        }
    })
    .await
    .unwrap();
    assert!(third.started_here());
    let mut conn = PgConnection::connect(&third.url("postgres")).await.unwrap();
    let v: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "across restarts");
    conn.close().await.unwrap();
    tokio::task::spawn_blocking(move || third.stop().expect("stop"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_temporary_cluster_is_stopped_and_removed_when_dropped() {
    let (dir, url) = tokio::task::spawn_blocking(|| {
        let cluster = LocalCluster::temporary().expect("temporary cluster");
        (cluster.dir().to_path_buf(), cluster.url("postgres"))
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "the server still answers"
    );
}

/// Connecting as `postgres` with no password (or a wrong one) must fail: being on the machine
/// is not enough.
async fn refused_without_password(port: u16) {
    for password in [None, Some("not-the-password")] {
        let mut options = sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(port)
            .username("postgres")
            .database("postgres");
        if let Some(p) = password {
            options = options.password(p);
        }
        let refused = PgConnection::connect_with(&options).await;
        let err = refused.expect_err("the cluster let a client in without its password");
        let text = err.to_string();
        assert!(
            text.contains("password"),
            "not an authentication failure: {text}"
        );
    }
}

fn assert_private_password_file(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let file = dir.join("pgpass");
    let meta = std::fs::metadata(&file).expect("the password file exists");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        file.display()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let password = text
        .trim_end()
        .strip_prefix("*:*:*:postgres:")
        .unwrap_or_else(|| panic!("not a pgpass line for postgres: {text:?}"));
    assert!(password.len() >= 32, "a short password");
    let hba = std::fs::read_to_string(dir.join("pg_hba.conf")).unwrap();
    let methods: Vec<&str> = hba
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert!(!methods.is_empty());
    assert!(
        methods.iter().all(|m| *m == "scram-sha-256"),
        "pg_hba.conf methods: {methods:?}"
    );
    password.to_string()
}

#[tokio::test]
async fn the_cluster_asks_for_the_password_in_its_private_file() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("postgres");
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut c = LocalCluster::ensure(&dir, None).expect("ensure");
            c.set_stop_on_drop(true);
            c
        }
    })
    .await
    .unwrap();
    let password = assert_private_password_file(&dir);
    assert_eq!(cluster.password_file(), cluster.dir().join("pgpass"));
    assert!(cluster.url("postgres").contains(&password));
    assert!(
        !format!("{cluster:?}").contains(&password),
        "Debug shows the password"
    );
    refused_without_password(cluster.port()).await;
    let conn = PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .expect("the password connects");
    conn.close().await.unwrap();
    // psql, as an operator would run it (README), with the file as PGPASSFILE.
    let psql = std::process::Command::new("psql")
        .env("PGPASSFILE", cluster.password_file())
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-w", "-c", "SELECT 'in'"])
        .output();
    if let Ok(out) = psql {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "in",
            "psql with PGPASSFILE: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokio::task::spawn_blocking(move || cluster.stop().expect("stop"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cluster_made_with_trust_is_given_a_password() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("postgres");
    let first = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut c = LocalCluster::ensure(&dir, None).expect("ensure");
            c.set_stop_on_drop(true);
            c
        }
    })
    .await
    .unwrap();
    let mut conn = PgConnection::connect_with(&first.connect_options("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('through the upgrade')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let old_password = assert_private_password_file(&dir);
    // What an earlier version left: no password file, and pg_hba.conf trusting everyone.
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        first.stop().expect("stop");
        drop(first);
        std::fs::remove_file(dir2.join("pgpass")).unwrap();
        std::fs::write(
            dir2.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
        )
        .unwrap();
    })
    .await
    .unwrap();

    let upgraded = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut c = LocalCluster::ensure(&dir, None).expect("ensure upgrades");
            c.set_stop_on_drop(true);
            c
        }
    })
    .await
    .unwrap();
    let new_password = assert_private_password_file(&dir);
    assert_ne!(new_password, old_password);
    refused_without_password(upgraded.port()).await;
    let mut conn = PgConnection::connect_with(&upgraded.connect_options("postgres"))
        .await
        .expect("the new password connects");
    let v: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "through the upgrade");
    conn.close().await.unwrap();
    tokio::task::spawn_blocking(move || upgraded.stop().expect("stop"))
        .await
        .unwrap();
}
