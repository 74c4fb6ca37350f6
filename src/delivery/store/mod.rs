//! The outbox side of the `event` table and the `delivery_attempt` log: one function per SQL
//! statement.
//!
//! A dispatcher claims events with a lease (`FOR UPDATE SKIP LOCKED`, so concurrent
//! dispatchers never claim the same row), calls the partner outside any transaction, then
//! settles them in one short statement that only touches rows it still holds. While it works
//! it renews the lease, so a long batch is not claimed a second time.

mod attempts;

mod pause;

pub use attempts::{
    pg_text, record_attempt, truncate, Attempt, AttemptOutcome, MAX_RESPONSE_BYTES,
};
pub use pause::{pause, pause_state, register_mode, resume, unregister_mode, PauseState};

use crate::audit::Direction;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;

/// An event claimed by a dispatcher.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub connection: String,
    pub message_id: String,
    pub user_key: String,
    pub payload: Value,
    /// This attempt's number (counted at claim time, so a worker that keeps crashing on an
    /// event still uses up its attempts).
    pub attempts: i32,
    /// Send alone: its bulk request was refused as a whole.
    pub solo: bool,
}

/// What a claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimScope<'a> {
    pub direction: Direction,
    pub connection: &'a str,
    /// A paused connection's events are claimed only for its probe.
    pub probe: bool,
    /// A dry-run dispatcher takes nothing of a connection a live dispatcher delivers.
    pub dry_run: bool,
}

/// Claims up to `limit` due events of one connection and direction, oldest first: pending ones
/// whose time has come and in-flight ones whose lease ran out. Only the oldest open event of
/// each (connection, direction, user_key) is claimable, so one user's events are delivered in
/// order, and a user's events in one direction never wait for the other direction's.
pub async fn claim(
    pool: &PgPool,
    scope: ClaimScope<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as::<_, Claimed>(
        "WITH due AS (
             SELECT e.id, e.received_at FROM event e
             WHERE e.connection = $2 AND e.direction = $1
               AND e.state = 'pending'
               AND e.next_attempt_at <= now()
               AND (e.lease_until IS NULL OR e.lease_until < now())
               AND NOT EXISTS (
                   SELECT 1 FROM event older
                   WHERE older.connection = e.connection AND older.direction = e.direction
                     AND older.user_key = e.user_key
                     AND older.state = 'pending' AND older.id < e.id)
               AND ($6 OR NOT EXISTS (
                   SELECT 1 FROM connection_pause p WHERE p.connection = $2 AND p.direction = $1))
               AND (NOT $7 OR NOT EXISTS (
                   SELECT 1 FROM dispatcher_mode m
                   WHERE m.connection = $2 AND m.mode = 'live' AND m.alive_until > now()))
             ORDER BY e.id
             LIMIT $4
             FOR UPDATE OF e SKIP LOCKED)
         UPDATE event e
         SET lease_until = now() + make_interval(secs => $5),
             lease_owner = $3, attempts = e.attempts + 1, updated_at = now()
         FROM due
         WHERE e.id = due.id AND e.received_at = due.received_at
         RETURNING e.id, e.received_at, e.connection, e.message_id, e.user_key, e.payload,
                   e.attempts, e.solo",
    )
    .bind(scope.direction.as_str())
    .bind(scope.connection)
    .bind(owner)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(scope.probe)
    .bind(scope.dry_run)
    .fetch_all(pool)
    .await
    .map(|mut rows| {
        // RETURNING does not keep the CTE's order.
        rows.sort_by_key(|r| r.id);
        rows
    })
}

/// Where a claimed event goes next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    /// Back to pending, due after the delay.
    Retry(Duration),
    /// Back to pending at once, to be sent alone (`solo`); the attempt is given back, since
    /// the event was refused with others, not on its own.
    Split,
    /// Refused for good.
    Failed,
    /// Retryable, but out of attempts.
    Dead,
    /// Nothing to send.
    Skipped,
    /// Dry-run mode: what would have been sent is in the attempt log; nothing was.
    DryRun,
    /// Not sent (held back for the rate limit, or the lease was too short): back to pending
    /// at once, the attempt given back.
    Release,
    /// The partner refused the connection's credentials: back to pending, the attempt given
    /// back, until the connection resumes.
    Pause,
    /// Not sent: a call of the other kind (single or bulk) went to one of its users within
    /// `delivery.user_call_window_ms` (`delivery::window`). Released as [`Next::Release`] is,
    /// but due after the delay.
    Hold(Duration),
}

impl Next {
    fn kind(self) -> &'static str {
        match self {
            Next::Delivered => "delivered",
            Next::Retry(_) => "retry",
            Next::Split => "split",
            Next::Failed => "failed",
            Next::Dead => "dead",
            Next::Skipped => "skipped",
            Next::DryRun => "dry_run",
            // A release with a delay: the settle statement treats both alike.
            Next::Release | Next::Hold(_) => "release",
            Next::Pause => "pause",
        }
    }

    /// The state the event ends up in.
    pub fn state(self) -> &'static str {
        match self {
            Next::Retry(_) | Next::Split | Next::Release | Next::Pause | Next::Hold(_) => "pending",
            other => other.kind(),
        }
    }
}

/// One event's transition, with why and the action(s) it was mapped to.
#[derive(Debug, Clone)]
pub struct Settle {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub next: Next,
    pub reason: Option<String>,
    pub action: Option<String>,
}

impl Settle {
    /// The transition of a claimed event.
    pub fn of(
        event: &Claimed,
        next: Next,
        reason: Option<String>,
        action: Option<String>,
    ) -> Settle {
        Settle {
            id: event.id,
            received_at: event.received_at,
            next,
            reason,
            action,
        }
    }
}

/// Applies the transitions of events still leased by `owner`; returns how many it applied. A
/// row whose lease ran out and was claimed by another dispatcher is left alone: that
/// dispatcher's outcome is the one recorded. An event settled `dry_run` gives its messageId
/// back (`message_seen`), so that live delivery of the same message is not a duplicate.
pub async fn settle(pool: &PgPool, owner: &str, settles: &[Settle]) -> Result<u64, sqlx::Error> {
    if settles.is_empty() {
        return Ok(0);
    }
    let delay_ms = |n: Next| match n {
        Next::Retry(d) | Next::Hold(d) => d.as_secs_f64() * 1000.0,
        _ => 0.0,
    };
    let done: i64 = sqlx::query_scalar(
        "WITH settled AS (
             UPDATE event e
             SET state = CASE WHEN s.kind IN ('retry', 'split', 'release', 'pause') THEN 'pending'
                              ELSE s.kind END,
                 state_reason = s.reason,
                 action = COALESCE(s.action, e.action),
                 next_attempt_at = CASE WHEN s.kind IN ('retry', 'split', 'release', 'pause')
                                        THEN now() + s.delay_ms * interval '1 millisecond'
                                        ELSE e.next_attempt_at END,
                 solo = e.solo OR s.kind = 'split',
                 attempts = e.attempts - (s.kind IN ('split', 'release', 'pause'))::int,
                 lease_until = NULL, lease_owner = NULL, updated_at = now()
             FROM UNNEST($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::float8[]) AS s(id, received_at, kind, reason, action, delay_ms)
             WHERE e.id = s.id AND e.received_at = s.received_at
               AND e.state = 'pending' AND e.lease_owner = $1
             RETURNING e.connection, e.direction, e.message_id, e.state),
         released AS (
             DELETE FROM message_seen m USING settled s
             WHERE s.state = 'dry_run' AND m.connection = s.connection
               AND m.direction = s.direction AND m.message_id = s.message_id)
         SELECT count(*) FROM settled",
    )
    .bind(owner)
    .bind(settles.iter().map(|s| s.id).collect::<Vec<_>>())
    .bind(settles.iter().map(|s| s.received_at).collect::<Vec<_>>())
    .bind(settles.iter().map(|s| s.next.kind()).collect::<Vec<_>>())
    .bind(
        settles
            .iter()
            .map(|s| s.reason.as_deref().map(|r| pg_text(r).into_owned()))
            .collect::<Vec<_>>(),
    )
    .bind(
        settles
            .iter()
            .map(|s| s.action.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(settles.iter().map(|s| delay_ms(s.next)).collect::<Vec<_>>())
    .fetch_one(pool)
    .await?;
    Ok(done as u64)
}

/// Renews the lease of the events still held by `owner`; returns how many it renewed.
pub async fn extend_lease(
    pool: &PgPool,
    owner: &str,
    events: &[(i64, DateTime<Utc>)],
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE event e SET lease_until = now() + make_interval(secs => $4)
         FROM UNNEST($2::bigint[], $3::timestamptz[]) AS s(id, received_at)
         WHERE e.id = s.id AND e.received_at = s.received_at
           AND e.state = 'pending' AND e.lease_owner = $1",
    )
    .bind(owner)
    .bind(events.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.1).collect::<Vec<_>>())
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
