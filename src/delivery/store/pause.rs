//! Connection pauses (`connection_pause`) and dispatcher modes (`dispatcher_mode`).

use crate::audit::Direction;
use sqlx::PgPool;
use std::time::Duration;

/// Where a connection's pause stands.
#[derive(Debug, Clone, PartialEq)]
pub enum PauseState {
    Running,
    /// Paused (for `reason`); the next probe is due in this long.
    Paused(Duration, String),
    /// Paused (for `reason`), and this dispatcher took the probe that was due: it may send one
    /// request.
    Probe(String),
}

/// Pauses the connection (or, when paused, counts one more refusal and moves the probe);
/// returns whether it was running until now.
pub async fn pause(
    pool: &PgPool,
    connection: &str,
    direction: Direction,
    reason: &str,
    detail: &str,
    probe_in: Duration,
) -> Result<bool, sqlx::Error> {
    let fresh: bool = sqlx::query_scalar(
        "INSERT INTO connection_pause (connection, direction, reason, detail, probe_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         ON CONFLICT (connection, direction) DO UPDATE
         SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, probe_at = EXCLUDED.probe_at,
             refusals = connection_pause.refusals + 1
         RETURNING xmax = 0",
    )
    .bind(connection)
    .bind(direction.as_str())
    .bind(reason)
    .bind(super::pg_text(detail).as_ref())
    .bind(probe_in.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(fresh)
}

/// Lifts the pause; returns its reason when there was one.
pub async fn resume(
    pool: &PgPool,
    connection: &str,
    direction: Direction,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM connection_pause WHERE connection = $1 AND direction = $2 RETURNING reason",
    )
    .bind(connection)
    .bind(direction.as_str())
    .fetch_optional(pool)
    .await
}

/// The pause of a connection; takes the probe when it is due (`probe_in` later, the next).
/// `probe_now`: make a probe due at once (a restart: maybe with a new key).
pub async fn pause_state(
    pool: &PgPool,
    connection: &str,
    direction: Direction,
    probe_in: Duration,
    probe_now: bool,
) -> Result<PauseState, sqlx::Error> {
    let row: Option<(bool, f64, String)> = sqlx::query_as(
        "WITH p AS (SELECT probe_at, reason FROM connection_pause
                    WHERE connection = $1 AND direction = $2 FOR UPDATE),
              taken AS (UPDATE connection_pause c SET probe_at = now() + make_interval(secs => $3)
                        FROM p WHERE c.connection = $1 AND c.direction = $2
                          AND ($4 OR p.probe_at <= now())
                        RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM taken), extract(epoch FROM p.probe_at - now())::float8,
                p.reason
         FROM p",
    )
    .bind(connection)
    .bind(direction.as_str())
    .bind(probe_in.as_secs_f64())
    .bind(probe_now)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => PauseState::Running,
        Some((true, _, reason)) => PauseState::Probe(reason),
        Some((false, secs, reason)) => {
            PauseState::Paused(Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)), reason)
        }
    })
}

/// Records that `owner` delivers `connections` in `mode` (`live` or `dry-run`) for `ttl`.
pub async fn register_mode(
    pool: &PgPool,
    owner: &str,
    connections: &[String],
    mode: &str,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dispatcher_mode (owner, connection, mode, alive_until)
         SELECT $1, c, $3, now() + make_interval(secs => $4) FROM UNNEST($2::text[]) AS c
         ON CONFLICT (connection, owner) DO UPDATE
         SET mode = EXCLUDED.mode, alive_until = EXCLUDED.alive_until",
    )
    .bind(owner)
    .bind(connections)
    .bind(mode)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    // Rows of processes that stopped long ago.
    sqlx::query("DELETE FROM dispatcher_mode WHERE alive_until < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    Ok(())
}

/// Removes `owner`'s registrations (at shutdown).
pub async fn unregister_mode(pool: &PgPool, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dispatcher_mode WHERE owner = $1")
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}
