//! PostgreSQL of one's own, from the PostgreSQL binaries on the machine.
//!
//! * [`cluster`]: [`LocalCluster`], a cluster in a directory of ours (`initdb`, `pg_ctl`), on
//!   127.0.0.1 with a generated superuser password (SCRAM-SHA-256) kept in a mode-0600
//!   `pgpass` file in the data directory. `gateway serve` runs one when no `database.url` is
//!   configured (DESIGN.md §5).
//! * [`testing`]: a fresh database for each test, on `DATABASE_URL`'s server or on one
//!   temporary cluster shared by the test run.
//!
//! It knows nothing of the gateway: no schema, no configuration.

pub mod cluster;
pub mod testing;

pub use cluster::{ClusterError, ClusterOptions, LocalCluster, PgBinaries};
pub use testing::{fresh_database, try_fresh_database, DbGuard};
