//! PostgreSQL, where the audit log lives.
//!
//! * [`embedded`]: the cluster the gateway runs itself when no `database.url` is configured
//!   (DESIGN.md §5), from the PostgreSQL binaries on the machine.
//! * [`testing`]: a fresh database for each test, on `DATABASE_URL`'s server or on one
//!   temporary cluster shared by the test run.

pub mod embedded;
pub mod testing;

pub use embedded::{ClusterError, ClusterOptions, LocalCluster, PgBinaries};
