//! A fresh database for each test.
//!
//! [`fresh_database`] creates a new, uniquely named database (`test_<uuid>`) and returns a pool
//! to it. The server is `DATABASE_URL`'s when that is set (its database is used to run `CREATE
//! DATABASE`); otherwise it is a temporary [`LocalCluster`] started on first use:
//!
//! * under `cargo nextest` (which runs each test in a process of its own) one cluster serves the
//!   whole run: it lives in `$TMPDIR/gateway-test-pg-$NEXTEST_RUN_ID`, the first test process
//!   to need it starts it, the others find it running;
//! * otherwise (`cargo test`) one cluster serves the test process.
//!
//! Rust never drops statics, so the cluster is not stopped by a destructor: whoever starts it
//! also spawns a watchdog ([`LocalCluster::stop_when_process_exits`]) that stops it and deletes
//! its directory once the test process (under nextest: the nextest process) has exited, however
//! it exits.
//!
//! The cluster is not durable (`fsync = off`): a crash loses it, which a test's data can afford.
//! It authenticates as the gateway's own cluster does (a generated SCRAM password in its
//! `pgpass` file), so the tests exercise the same connection path `gateway serve` uses.

use crate::cluster::{ClusterOptions, LocalCluster};
use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::OnceLock;

/// The server tests create their databases on.
#[derive(Debug, Clone)]
struct Server {
    /// Where `CREATE DATABASE` runs.
    admin: PgConnectOptions,
    /// A URL of the server (`DATABASE_URL`, or the temporary cluster's with its password).
    url: String,
    /// Whether it is `DATABASE_URL`'s server.
    external: bool,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// A new empty database and a pool (at most 5 connections) to it. Panics, saying why, when no
/// server can be had. Keep the [`DbGuard`] alive for as long as the database is used.
pub async fn fresh_database() -> (PgPool, DbGuard) {
    match try_fresh_database().await {
        Ok(pair) => pair,
        Err(e) => panic!("cannot set up a test database: {e:#}"),
    }
}

/// [`fresh_database`], returning the error instead of panicking.
pub async fn try_fresh_database() -> anyhow::Result<(PgPool, DbGuard)> {
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start_server).clone())
        .await
        .context("the task starting the test server panicked")?
        .map_err(anyhow::Error::msg)?;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server.admin)
        .await
        .with_context(|| format!("cannot connect to {}", server.describe()))?;
    // `Executor::execute`'s boxed future keeps this future `Send` for `tokio::spawn`.
    let create = format!(r#"CREATE DATABASE "{name}""#);
    admin
        .execute(create.as_str())
        .await
        .with_context(|| format!("cannot create database {name} on {}", server.describe()))?;
    admin.close().await.ok();
    let guard = DbGuard { name, server };
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(guard.connect_options())
        .await
        .with_context(|| format!("cannot connect to the new database {}", guard.name))?;
    Ok((pool, guard))
}

/// Owns a database made by [`fresh_database`]: dropping it drops the database (`WITH (FORCE)`,
/// closing connections still open), except while panicking, so a failed test's data stays for
/// inspection on a `DATABASE_URL` server. Note that `let (pool, _) = fresh_database().await`
/// drops it at once: bind it to a name (`_db`).
#[derive(Debug)]
#[must_use = "dropping the guard drops the database"]
pub struct DbGuard {
    name: String,
    server: Server,
}

impl DbGuard {
    /// The database's name (`test_<32 hex digits>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Options for connecting to the database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.server.admin.clone().database(&self.name)
    }

    /// A `postgres://` URL of the database, for a child process (`gateway serve`, say).
    /// It holds the password: hand it to the child's environment, do not print it.
    pub fn url(&self) -> String {
        with_database(&self.server.url, &self.name)
    }
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if self.server.external {
                eprintln!("test database {} kept for inspection", self.name);
            }
            return;
        }
        // Drop can't await, and may run inside a runtime: drop the database from a thread with
        // a runtime of its own. DROP DATABASE waits until every backend of the server has
        // answered a signal barrier, and a backend in the middle of its password handshake
        // answers only once its client has replied. If that client is a task of the runtime this
        // drop blocks, neither can move (until authentication_timeout, 60 s). So a worker of a
        // multi-threaded runtime hands its tasks to the others while it waits
        // (`block_in_place`), and on any other thread the wait is bounded: past it, the drop
        // finishes in the background.
        let admin = self.server.admin.clone();
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let mut conn = PgConnection::connect_with(&admin).await?;
                    conn.execute(sql.as_str()).await?;
                    conn.close().await?;
                    Ok(())
                })
            })();
            let _ = done.send(result);
        });
        let wait = || dropped.recv_timeout(DROP_WAIT);
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let outcome = if multi_threaded {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        match outcome {
            Ok(Ok(())) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => eprintln!("cannot drop test database {}: {e:#}", self.name),
            Err(RecvTimeoutError::Disconnected) => eprintln!(
                "cannot drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// How long dropping a [`DbGuard`] waits for `DROP DATABASE` outside a multi-threaded runtime.
const DROP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Server {
    fn describe(&self) -> String {
        if self.external {
            "DATABASE_URL's server".into()
        } else {
            format!("the test cluster on port {}", self.admin.get_port())
        }
    }
}

fn start_server() -> Result<Server, String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            let admin = PgConnectOptions::from_str(&url)
                .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
            return Ok(Server {
                admin,
                url,
                external: true,
            });
        }
    }
    let cluster = start_local_cluster().map_err(|e| format!("{e:#}"))?;
    Ok(Server {
        admin: cluster.connect_options("postgres"),
        url: cluster.url("postgres"),
        external: false,
    })
}

/// Starts (or, under nextest, finds) the temporary cluster and its watchdog.
fn start_local_cluster() -> anyhow::Result<LocalCluster> {
    let options = ClusterOptions {
        port: None,
        durable: false,
    };
    let (dir, watched_pid) = match nextest_run_id() {
        Some(run) => {
            let dir = std::env::temp_dir().join(format!("gateway-test-pg-{run}"));
            // nextest starts every test process itself: the run ends when it exits.
            (dir, std::os::unix::process::parent_id())
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("gateway-test-pg-")
                .tempdir()
                .context("cannot create a temporary directory for the test cluster")?
                .keep();
            (dir, std::process::id())
        }
    };
    let cluster = match LocalCluster::ensure_with(&dir, &options) {
        Ok(cluster) => cluster,
        Err(e) => {
            remove_if_unused(&dir);
            return Err(e).context("cannot start the temporary PostgreSQL cluster for tests");
        }
    };
    if cluster.started_here() {
        cluster.stop_when_process_exits(watched_pid, true)?;
    }
    Ok(cluster)
}

/// `NEXTEST_RUN_ID` (a UUID), when it is safe in a file name.
fn nextest_run_id() -> Option<String> {
    let id = std::env::var("NEXTEST_RUN_ID").ok()?;
    let safe = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    safe.then_some(id)
}

/// Removes a directory a failed start left with no running server in it.
fn remove_if_unused(dir: &Path) {
    if !dir.join("postmaster.pid").exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `url` with its database (the path) replaced by `db`, query kept.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn url_database_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app", "t"),
            "postgres://u:p@h:5432/t"
        );
        assert_eq!(with_database("postgres://h", "t"), "postgres://h/t");
        assert_eq!(
            with_database("postgresql://h/app?sslmode=disable", "t"),
            "postgresql://h/t?sslmode=disable"
        );
    }
}
