//! The `delivery_attempt` log: every outbound request, or what dry-run mode would have sent.

use crate::audit::Direction;
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;

/// The largest response body kept in the audit log.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an outbound attempt came to (`delivery_attempt.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// 2xx, but the partner refused some items.
    Partial,
    Retry,
    Failed,
    Dead,
    DryRun,
    /// The partner refused the connection's credentials: the connection is paused.
    Paused,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Partial => "partial",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Dead => "dead",
            AttemptOutcome::DryRun => "dry_run",
            AttemptOutcome::Paused => "paused",
        }
    }
}

/// One outbound request (or, in dry-run mode, what would have been sent).
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub connection: &'a str,
    pub direction: Direction,
    pub endpoint: &'a str,
    pub method: &'a str,
    pub url: &'a str,
    /// Secrets already redacted.
    pub request_headers: &'a Value,
    /// The body exactly as sent (JSON text), stored as `jsonb`.
    pub request_body: Option<&'a str>,
    /// The highest attempt number among its events.
    pub attempt: i32,
    pub dry_run: bool,
    pub status: Option<u16>,
    pub response_headers: Option<&'a Value>,
    /// Truncated to [`MAX_RESPONSE_BYTES`] here.
    pub response_body: Option<&'a str>,
    pub duration: Option<Duration>,
    pub outcome: AttemptOutcome,
    pub error: Option<&'a str>,
    pub event_ids: &'a [i64],
    /// Hashes of the users a single or bulk call of `delivery::window` named (`None`: another
    /// kind of request, or a dry run).
    pub user_hashes: Option<&'a [i64]>,
}

/// Records one outbound attempt.
///
/// Committed without waiting for its WAL to reach the disk (`synchronous_commit` off for this
/// statement's transaction alone): the row is visible at once and durable with the next
/// commit that waits (a settle, a claim, a group commit), at most a few hundred milliseconds
/// later. An attempt settles nothing and leases nothing; what its events became is written by
/// the settle, which does wait. Should the database crash in between, the attempt and the
/// settle are lost together, and the events, still pending, are sent again: what a crash just
/// before the request would have done. At 5,000 events/s these were 265 commits a second,
/// each waiting for a flush of the WAL that the acknowledgements of ingest queued behind.
pub async fn record_attempt(pool: &PgPool, a: &Attempt<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH unflushed AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO delivery_attempt (connection, direction, endpoint, method, url, request_headers,
             request_body, attempt, dry_run, status, response_headers, response_body, duration_ms,
             outcome, error, event_ids, user_hashes)
         SELECT $1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17
         FROM unflushed",
    )
    .bind(a.connection)
    .bind(a.direction.as_str())
    .bind(a.endpoint)
    .bind(a.method)
    .bind(a.url)
    .bind(a.request_headers)
    .bind(a.request_body)
    .bind(a.attempt)
    .bind(a.dry_run)
    .bind(a.status.map(|s| s as i16))
    .bind(a.response_headers)
    .bind(a.response_body.map(|b| pg_text(truncate(b, MAX_RESPONSE_BYTES))))
    .bind(a.duration.map(|d| d.as_secs_f64() * 1000.0))
    .bind(a.outcome.as_str())
    .bind(a.error.map(pg_text))
    .bind(a.event_ids)
    .bind(a.user_hashes)
    .execute(pool)
    .await?;
    Ok(())
}

/// Text PostgreSQL can store: it cannot hold NUL, and one stray byte in a partner's answer must
/// not stop the audit (or the settling of the events).
pub fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_is_replaced() {
        assert_eq!(super::pg_text("a\0b"), "a\u{fffd}b");
        assert!(matches!(
            super::pg_text("ab"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("héllo", 3), "hé");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
