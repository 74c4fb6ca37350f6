//! The local PostgreSQL cluster and the fresh database each test gets.

use gateway::database::testing::fresh_database;
use gateway::database::LocalCluster;
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
