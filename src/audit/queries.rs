//! The operator's questions as SQL (`gateway audit`, the `/ui` page, the backlog gauges): one
//! function per question, every one bounded (indexes, LIMITs) so that it stays fast on a large
//! audit log. The views of migrations/*_operator_views.sql are the same questions for psql.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// Most events `audit user` and the page's search list (newest first).
pub const USER_EVENT_LIMIT: i64 = 200;
/// Most attempts listed per event.
pub const ATTEMPT_LIMIT: i64 = 100;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BacklogRow {
    pub connection: String,
    pub direction: String,
    pub events: i64,
    pub in_flight: i64,
    pub waiting_to_retry: i64,
    pub oldest_received_at: DateTime<Utc>,
    pub oldest_age_secs: f64,
    pub next_due_at: DateTime<Utc>,
}

/// A connection whose partner refuses its credentials (table `connection_pause`, written by
/// every gateway process's dispatchers).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PausedRow {
    pub connection: String,
    pub direction: String,
    /// `unauthorized` (401) or `forbidden` (403).
    pub reason: String,
    /// The partner's answer, as the attempt log has it.
    pub detail: Option<String>,
    pub paused_at: DateTime<Utc>,
}

/// The paused connections, by connection and direction.
pub async fn paused(pool: &PgPool) -> Result<Vec<PausedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection, direction, reason, detail, paused_at FROM connection_pause
         ORDER BY connection, direction",
    )
    .fetch_all(pool)
    .await
}

/// What waits for delivery, per connection and direction (view `audit_backlog`).
pub async fn backlog(pool: &PgPool) -> Result<Vec<BacklogRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit_backlog ORDER BY connection, direction")
        .fetch_all(pool)
        .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StateRow {
    pub connection: String,
    pub direction: String,
    pub state: String,
    pub events: i64,
    pub last_change: DateTime<Utc>,
}

/// Events by state per connection and direction (view `audit_states`).
pub async fn states(pool: &PgPool) -> Result<Vec<StateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection, direction, state, events, last_change FROM audit_states
         ORDER BY connection, direction, state",
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailureRow {
    pub connection: String,
    pub direction: String,
    pub endpoint: String,
    pub reason: Option<String>,
    pub status: Option<i16>,
    pub outcome: String,
    pub attempts: i64,
    pub events: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Failures since `since`, grouped by connection, direction, endpoint and reason, refusals
/// before sending included (SQL function `gateway_failures`).
pub async fn failures(
    pool: &PgPool,
    since: DateTime<Utc>,
    connection: Option<&str>,
) -> Result<Vec<FailureRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection, direction, endpoint, reason, status, outcome, attempts, events,
                first_seen, last_seen
         FROM gateway_failures($1)
         WHERE $2::text IS NULL OR connection = $2
         ORDER BY connection, direction, events DESC, endpoint, reason",
    )
    .bind(since)
    .bind(connection)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: i64,
    pub received_at: DateTime<Utc>,
    pub request_id: i64,
    pub connection: String,
    pub direction: String,
    pub message_id: String,
    pub call_type: Option<String>,
    pub user_key: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub action: Option<String>,
    pub attempts: i32,
    /// When a pending event is due (`None` once it has settled).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub replays: i64,
    pub payload: Value,
}

/// An event's columns; a pending one's lease, attempts and due time are in its outbox row.
const EVENT_COLUMNS: &str =
    "e.id AS event_id, e.received_at, e.request_id, e.connection, e.direction,
    e.message_id, e.call_type, e.user_key, gateway_event_state(e.state, o.lease_until) AS state,
    e.state_reason, e.action, coalesce(o.attempts, e.attempts) AS attempts, o.next_attempt_at,
    (SELECT count(*) FROM replay_event r WHERE r.event_id = e.id) AS replays, gateway_event_payload(e) AS payload";

/// Joins each event `e` to its outbox row `o`, if it is pending.
const WITH_OUTBOX: &str = "LEFT JOIN outbox o
    ON o.connection = e.connection AND o.direction = e.direction AND o.event_id = e.id";

/// The events with this messageId (one per connection and direction that received it).
pub async fn events_by_message_id(
    pool: &PgPool,
    message_id: &str,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM event e {WITH_OUTBOX}
         WHERE e.message_id = $1 ORDER BY e.id LIMIT 20"
    ))
    .bind(message_id)
    .fetch_all(pool)
    .await
}

/// A user's events, newest first: by user key (userId, anonymousId, email), by email wherever
/// the event keeps it, and the other events of the users that email belongs to (a track call
/// often carries only the userId its identify call tied to the email).
pub async fn events_by_user(pool: &PgPool, user: &str) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH keys AS (
             SELECT unnest(gateway_user_keys($1)) AS k
             UNION
             SELECT user_key FROM (
                 SELECT user_key FROM event WHERE email = lower($1)
                 ORDER BY received_at DESC LIMIT 50) by_email)
         SELECT {EVENT_COLUMNS} FROM event e {WITH_OUTBOX}
         WHERE e.id IN (
             (SELECT id FROM event WHERE user_key IN (SELECT k FROM keys)
              ORDER BY received_at DESC LIMIT $2)
             UNION
             (SELECT id FROM event WHERE email = lower($1)
              ORDER BY received_at DESC LIMIT $2))
         ORDER BY e.id DESC LIMIT $2"
    ))
    .bind(user)
    .bind(USER_EVENT_LIMIT)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt_id: i64,
    pub attempted_at: DateTime<Utc>,
    pub endpoint: String,
    pub method: String,
    pub url: String,
    pub attempt: i32,
    /// 0: before any replay of the event; n: after its n-th replay.
    pub generation: i64,
    pub dry_run: bool,
    pub status: Option<i16>,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
    pub request_body: Option<Value>,
    pub response_body: Option<String>,
    /// Events the request carried.
    pub events: i32,
}

/// Every attempt that carried the event, oldest first.
pub async fn attempts(pool: &PgPool, event_id: i64) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id AS attempt_id, d.attempted_at, d.endpoint, d.method, d.url, d.attempt,
                gateway_replay_generation($1, d.attempted_at) AS generation,
                d.dry_run, d.status, d.outcome, d.error, d.duration_ms, d.request_body,
                d.response_body, cardinality(d.event_ids) AS events
         FROM delivery_attempt d WHERE d.event_ids @> ARRAY[$1::bigint]
         ORDER BY d.attempted_at, d.id LIMIT $2",
    )
    .bind(event_id)
    .bind(ATTEMPT_LIMIT)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReplayRow {
    pub id: i64,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    pub filter: Value,
    pub events: i32,
    pub note: Option<String>,
}

/// The replays that took this event, oldest first.
pub async fn replays_of(pool: &PgPool, event_id: i64) -> Result<Vec<ReplayRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.requested_at, p.requested_by, p.filter, p.events, p.note
         FROM replay p JOIN replay_event r ON r.replay_id = p.id
         WHERE r.event_id = $1 ORDER BY p.id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
}

/// Events per time bucket, in (accepted) and out (delivered or dry-run), per connection.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FlowRow {
    pub connection: String,
    pub direction: String,
    pub bucket: DateTime<Utc>,
    pub events_in: i64,
    pub events_out: i64,
}

/// In and out per `bucket_secs` since `since`. Counted from the request log (one row per
/// inbound request or outbound request, not per event), so a day of traffic reads few rows.
pub async fn flow(
    pool: &PgPool,
    since: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<FlowRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH i AS (
             SELECT connection, direction,
                    date_bin(make_interval(secs => $2), received_at, $1) AS bucket,
                    sum(events)::bigint AS n
             FROM inbound_request
             WHERE received_at >= $1 AND connection IS NOT NULL AND status < 300
             GROUP BY 1, 2, 3),
         o AS (
             SELECT connection, direction,
                    date_bin(make_interval(secs => $2), attempted_at, $1) AS bucket,
                    sum(cardinality(event_ids))::bigint AS n
             FROM delivery_attempt
             WHERE attempted_at >= $1 AND outcome IN ('delivered', 'partial', 'dry_run')
             GROUP BY 1, 2, 3)
         SELECT coalesce(i.connection, o.connection) AS connection,
                coalesce(i.direction, o.direction) AS direction,
                coalesce(i.bucket, o.bucket) AS bucket,
                coalesce(i.n, 0) AS events_in, coalesce(o.n, 0) AS events_out
         FROM i FULL JOIN o USING (connection, direction, bucket)
         ORDER BY 1, 2, 3",
    )
    .bind(since)
    .bind(bucket_secs as f64)
    .fetch_all(pool)
    .await
}
