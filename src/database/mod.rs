//! PostgreSQL, where the audit log lives.
//!
//! * [`embedded`]: the cluster the gateway runs itself when no `database.url` is configured
//!   (DESIGN.md §5), from the PostgreSQL binaries on the machine.
//! * [`testing`]: a fresh database for each test, on `DATABASE_URL`'s server or on one
//!   temporary cluster shared by the test run.

pub mod embedded;
pub mod testing;

pub use embedded::{ClusterError, ClusterOptions, LocalCluster, PgBinaries};

/// The schema, from `migrations/` (applied by `gateway migrate` and at start-up).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies pending migrations and makes sure the coming days have their partitions.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    MIGRATOR.run(pool).await?;
    sqlx::query("SELECT gateway_ensure_partitions(current_date - 1, 9)")
        .execute(pool)
        .await?;
    Ok(())
}
