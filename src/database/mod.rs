//! PostgreSQL, where the audit log lives: the schema and how `serve` connects.
//!
//! The cluster the gateway runs itself when no `database.url` is configured (DESIGN.md §5), and
//! the fresh database each test gets, are the workspace crate `local-postgres`
//! (crates/local-postgres).

pub mod connect;

/// Kept so that tests written against `gateway::database::testing` (on branches made before the
/// move) still build; new tests use `local_postgres::{fresh_database, DbGuard}` directly.
pub use local_postgres::testing;
pub use local_postgres::{ClusterError, ClusterOptions, LocalCluster, PgBinaries};

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
