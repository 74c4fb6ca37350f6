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
use std::collections::{BTreeMap, HashMap};
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

/// A claimed row as the claim returns it: the payload itself (`event.payload`, when the row
/// keeps it), or where its line is in its request's `events_body`.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    received_at: DateTime<Utc>,
    connection: String,
    message_id: String,
    user_key: String,
    payload: Option<Value>,
    request_id: i64,
    payload_at: Option<i32>,
    payload_len: Option<i32>,
    attempts: i32,
    solo: bool,
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
    // Two statements in one transaction rather than one `UPDATE … FROM (SELECT … FOR UPDATE)`:
    // when its estimates were off (a generic plan, a day's partition not analysed yet), the
    // single statement joined the due rows back by sorting the whole partition (measured: 67
    // of a claim's 144 ms), whereas an update by the given keys reads only their rows, as
    // settles do.
    let mut tx = pool.begin().await?;
    let due: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT e.id, e.received_at FROM event e
         WHERE e.connection = $2 AND e.direction = $1
           AND e.state = 'pending'
           AND e.next_attempt_at <= now()
           AND (e.lease_until IS NULL OR e.lease_until < now())
           AND NOT EXISTS (
               SELECT 1 FROM event older
               WHERE older.connection = e.connection AND older.direction = e.direction
                 AND older.user_key = e.user_key
                 AND older.state = 'pending' AND older.id < e.id
                 -- An older id is never received a day later: this lets the probe skip the
                 -- partitions of the days ahead (created in advance, empty).
                 AND older.received_at <= e.received_at + interval '1 day')
           AND ($4 OR NOT EXISTS (
               SELECT 1 FROM connection_pause p WHERE p.connection = $2 AND p.direction = $1))
           AND (NOT $5 OR NOT EXISTS (
               SELECT 1 FROM dispatcher_mode m
               WHERE m.connection = $2 AND m.mode = 'live' AND m.alive_until > now()))
         ORDER BY e.id
         LIMIT $3
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(scope.direction.as_str())
    .bind(scope.connection)
    .bind(limit)
    .bind(scope.probe)
    .bind(scope.dry_run)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as::<_, ClaimedRow>(
        "UPDATE event e
         SET lease_until = now() + make_interval(secs => $3),
             lease_owner = $2, attempts = e.attempts + 1, updated_at = now()
         WHERE e.id = ANY ($1) AND e.received_at BETWEEN $4 AND $5
         RETURNING e.id, e.received_at, e.connection, e.message_id, e.user_key, e.payload,
                   e.request_id, e.payload_at, e.payload_len, e.attempts, e.solo",
    )
    // Event ids are unique (one sequence), whatever the partition; the rows are locked.
    .bind(due.iter().map(|d| d.0).collect::<Vec<_>>())
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(due.iter().map(|d| d.1).min())
    .bind(due.iter().map(|d| d.1).max())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut claimed = with_payloads(pool, rows).await?;
    // RETURNING does not keep the claim's order.
    claimed.sort_by_key(|r| r.id);
    Ok(claimed)
}

/// The claimed rows with their payloads: the lines of those kept in their requests' blobs are
/// read with one query (each blob once, however many of its events were claimed) and parsed
/// here.
async fn with_payloads(pool: &PgPool, rows: Vec<ClaimedRow>) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut wanted: Vec<(i64, DateTime<Utc>)> = rows
        .iter()
        .filter(|r| r.payload.is_none())
        .map(|r| (r.request_id, r.received_at))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let blobs: HashMap<(i64, DateTime<Utc>), Vec<u8>> = if wanted.is_empty() {
        HashMap::new()
    } else {
        let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = wanted.into_iter().unzip();
        sqlx::query_as::<_, (i64, DateTime<Utc>, Vec<u8>)>(
            "SELECT q.id, q.received_at, q.events_body FROM inbound_request q
             JOIN UNNEST($1::bigint[], $2::timestamptz[]) AS w(id, at)
               ON q.id = w.id AND q.received_at = w.at
             WHERE q.events_body IS NOT NULL AND q.received_at BETWEEN $3 AND $4",
        )
        .bind(&ids)
        .bind(&ats)
        .bind(ats.iter().min())
        .bind(ats.iter().max())
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, at, body)| ((id, at), body))
        .collect()
    };
    Ok(rows
        .into_iter()
        .map(|r| {
            let payload = match r.payload {
                Some(p) => p,
                None => line(&blobs, &r).unwrap_or_else(|why| {
                    // Only reachable through a hand-edited database: the mapping refuses a null
                    // event, so it ends `failed` with this in the log.
                    tracing::error!(event = r.id, request = r.request_id, "{why}");
                    Value::Null
                }),
            };
            Claimed {
                id: r.id,
                received_at: r.received_at,
                connection: r.connection,
                message_id: r.message_id,
                user_key: r.user_key,
                payload,
                attempts: r.attempts,
                solo: r.solo,
            }
        })
        .collect())
}

/// An event's line in its request's blob, parsed.
fn line(blobs: &HashMap<(i64, DateTime<Utc>), Vec<u8>>, r: &ClaimedRow) -> Result<Value, String> {
    let blob = blobs
        .get(&(r.request_id, r.received_at))
        .ok_or("the event's request keeps no events_body")?;
    let (at, len) = (r.payload_at.unwrap_or(0), r.payload_len.unwrap_or(0));
    let bytes = usize::try_from(at)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(at, len)| blob.get(at..at.checked_add(len)?))
        .ok_or("the event's line is outside its request's events_body")?;
    serde_json::from_slice(bytes).map_err(|e| format!("the event's line does not parse: {e}"))
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

/// The settle statement: each event found by `$rows` (a `FROM` naming its outcome `o` and a
/// `WHERE` finding its rows `e`) takes its outcome, if `$1` still holds its lease; a `dry_run`
/// gives its messageId back.
macro_rules! settle_sql {
    ($rows:literal) => {
        concat!(
            "WITH settled AS (
                 UPDATE event e
                 SET state = CASE WHEN o.kind IN ('retry', 'split', 'release', 'pause') THEN 'pending'
                                  ELSE o.kind END,
                     state_reason = o.reason,
                     action = COALESCE(o.action, e.action),
                     next_attempt_at = CASE WHEN o.kind IN ('retry', 'split', 'release', 'pause')
                                            THEN now() + o.delay_ms * interval '1 millisecond'
                                            ELSE e.next_attempt_at END,
                     solo = e.solo OR o.kind = 'split',
                     attempts = e.attempts - (o.kind IN ('split', 'release', 'pause'))::int,
                     lease_until = NULL, lease_owner = NULL, updated_at = now() ",
            $rows,
            " AND e.state = 'pending' AND e.lease_owner = $1
                 RETURNING e.connection, e.direction, e.message_id, e.state),
             released AS (
                 DELETE FROM message_seen m USING settled s
                 WHERE s.state = 'dry_run'
                   AND m.key = gateway_message_key(s.connection, s.direction, s.message_id))
             SELECT count(*) FROM settled"
        )
    };
}

/// Applies the transitions of events still leased by `owner`; returns how many it applied. A
/// row whose lease ran out and was claimed by another dispatcher is left alone: that
/// dispatcher's outcome is the one recorded. An event settled `dry_run` gives its messageId
/// back (`message_seen`), so that live delivery of the same message is not a duplicate.
///
/// Claims, settles and renewals find their rows by id, within the range of their
/// `received_at`, so that PostgreSQL reads only the day partitions in it (one, mostly) and
/// each row once through the primary key.
pub async fn settle(pool: &PgPool, owner: &str, settles: &[Settle]) -> Result<u64, sqlx::Error> {
    if settles.is_empty() {
        return Ok(0);
    }
    // The events of a batch mostly end alike (delivered, by the same action): one statement
    // per outcome, whose rows are found by their ids alone. The one statement joining every
    // event to its own outcome is planned as a loop over the whole list for each row when
    // PostgreSQL expects the lease test to keep one row (measured: 156 ms for 500 events,
    // against 6 ms by outcome); it remains for batches whose outcomes all differ (retries,
    // each with its own delay and reason).
    let mut alike: BTreeMap<Outcome, Vec<&Settle>> = BTreeMap::new();
    for s in settles {
        let key = (
            s.next.kind(),
            s.reason.as_deref(),
            s.action.as_deref(),
            delay_ms(s.next).to_bits(),
        );
        alike.entry(key).or_default().push(s);
    }
    if alike.len() > SETTLE_STATEMENTS {
        return settle_each(pool, owner, settles).await;
    }
    let mut done = 0;
    for ((kind, reason, action, delay), group) in alike {
        let n: i64 = sqlx::query_scalar(settle_sql!(
            "FROM (VALUES ($2::text, $3::text, $4::text, $5::float8)) AS o(kind, reason, action, delay_ms)
             WHERE e.id = ANY ($6) AND e.received_at BETWEEN $7 AND $8"
        ))
        .bind(owner)
        .bind(kind)
        .bind(reason.map(|r| pg_text(r).into_owned()))
        .bind(action)
        .bind(f64::from_bits(delay))
        // Event ids are unique (one sequence), whatever the partition.
        .bind(group.iter().map(|s| s.id).collect::<Vec<_>>())
        .bind(group.iter().map(|s| s.received_at).min())
        .bind(group.iter().map(|s| s.received_at).max())
        .fetch_one(pool)
        .await?;
        done += n as u64;
    }
    Ok(done)
}

/// What a settle sets: kind, reason, action, and the delay (its bits, to be ordered).
type Outcome<'a> = (&'a str, Option<&'a str>, Option<&'a str>, u64);

/// Statements one [`settle`] may take, one per outcome, before it settles all in one.
const SETTLE_STATEMENTS: usize = 8;

/// The delay a transition back to pending waits, in milliseconds.
fn delay_ms(n: Next) -> f64 {
    match n {
        Next::Retry(d) | Next::Hold(d) => d.as_secs_f64() * 1000.0,
        _ => 0.0,
    }
}

/// [`settle`] in one statement, each event joined to its own outcome.
async fn settle_each(pool: &PgPool, owner: &str, settles: &[Settle]) -> Result<u64, sqlx::Error> {
    let done: i64 = sqlx::query_scalar(settle_sql!(
        "FROM UNNEST($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                     $7::float8[]) AS o(id, received_at, kind, reason, action, delay_ms)
         WHERE e.id = o.id AND e.received_at = o.received_at AND e.received_at BETWEEN $8 AND $9"
    ))
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
    .bind(settles.iter().map(|s| s.received_at).min())
    .bind(settles.iter().map(|s| s.received_at).max())
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
        "UPDATE event e SET lease_until = now() + make_interval(secs => $3)
         WHERE e.id = ANY ($2) AND e.received_at BETWEEN $4 AND $5
           AND e.state = 'pending' AND e.lease_owner = $1",
    )
    .bind(owner)
    .bind(events.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(lease.as_secs_f64())
    .bind(events.iter().map(|e| e.1).min())
    .bind(events.iter().map(|e| e.1).max())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
