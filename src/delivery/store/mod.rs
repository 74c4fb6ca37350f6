//! The outbox (the pending events, with their leases) and the `delivery_attempt` log: one
//! function per SQL statement.
//!
//! A dispatcher claims events with a lease (`FOR UPDATE SKIP LOCKED`, so concurrent
//! dispatchers never claim the same row), calls the partner outside any transaction, then
//! settles them in one short statement that only touches rows it still holds. While it works
//! it renews the lease, so a long batch is not claimed a second time. An event's row in
//! `event` is its audit record: written at ingest, updated when it settles; the claims and
//! renewals in between touch only its `outbox` row (migration 20261207000400).

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
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// One queue of the outbox: the events of one connection in one direction. A dispatcher claims,
/// renews and settles within one queue, and the outbox finds its rows by it (`outbox_due`).
#[derive(Debug, Clone, Copy)]
pub struct Queue<'a> {
    pub connection: &'a str,
    pub direction: Direction,
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

impl<'a> ClaimScope<'a> {
    pub fn queue(&self) -> Queue<'a> {
        Queue {
            connection: self.connection,
            direction: self.direction,
        }
    }
}

/// Claims up to `limit` due events of one connection and direction, oldest first: pending ones
/// whose time has come and in-flight ones whose lease ran out. Only the oldest open event of
/// each (connection, direction, user_key) is claimable, so one user's events are delivered in
/// order, and a user's events in one direction never wait for the other direction's.
///
/// Two statements (migration 20261207000700). `gateway_claim_scan` reads the queue's head in
/// order; a user's older open events are the rows read before its row, so the first row of
/// each lane is its user's oldest, and it is chosen if it is due. `gateway_claim_take` then
/// leases the chosen rows that are still due and free (`SKIP LOCKED`) and returns their events.
/// Both go through the indexes whatever the outbox's statistics say, so that a claim costs
/// what its batch does, not the backlog.
pub async fn claim(
    pool: &PgPool,
    scope: ClaimScope<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut rows: Vec<ClaimedRow> = Vec::new();
    // Rows another dispatcher took between the two statements are not taken here; then the
    // claim reads the queue again from its head, a few times at most: what was taken since,
    // by it or by the other, is leased now, and its lanes closed.
    for _ in 0..TAKE_ROUNDS {
        let want = limit - rows.len();
        let mut lanes = HashSet::new();
        let mut after = i64::MIN;
        // A head of blocked users (retries not yet due, a user with many events) is read
        // through in growing pieces: few round trips, and never more than a piece beyond what
        // is needed.
        let mut piece = (2 * limit).clamp(16, MAX_SCAN_PIECE);
        let mut read_all = false;
        let (mut tids, mut ids) = (Vec::new(), Vec::new());
        'scan: while !read_all {
            let head: Vec<(String, i64, i64, bool)> =
                sqlx::query_as("SELECT * FROM gateway_claim_scan($1, $2, $3, $4, $5, $6)")
                    .bind(scope.connection)
                    .bind(scope.direction.as_str())
                    .bind(after)
                    .bind(piece as i32)
                    .bind(scope.probe)
                    .bind(scope.dry_run)
                    .fetch_all(pool)
                    .await?;
            let read = head.len();
            for (tid, id, lane, due) in head {
                after = id;
                if lanes.insert(lane) && due {
                    tids.push(tid);
                    ids.push(id);
                    if ids.len() == want {
                        break 'scan;
                    }
                }
            }
            read_all = read < piece;
            piece = (4 * piece).min(MAX_SCAN_PIECE);
        }
        if ids.is_empty() {
            break;
        }
        let took =
            sqlx::query_as::<_, ClaimedRow>("SELECT * FROM gateway_claim_take($1, $2, $3, $4)")
                .bind(owner)
                .bind(&tids)
                .bind(&ids)
                .bind(lease.as_secs_f64())
                .fetch_all(pool)
                .await?;
        let taken = took.len();
        rows.extend(took);
        if rows.len() == limit || taken == ids.len() {
            break;
        }
    }
    let mut claimed = with_payloads(pool, rows).await?;
    // RETURNING does not keep the claim's order.
    claimed.sort_by_key(|r| r.id);
    Ok(claimed)
}

/// The most rows of a queue one `gateway_claim_scan` reads.
const MAX_SCAN_PIECE: usize = 50_000;

/// How many times one claim chooses and takes.
const TAKE_ROUNDS: usize = 4;

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

/// Applies the transitions of events still leased by `owner` in `queue`; returns how many it
/// applied. A row whose lease ran out and was claimed by another dispatcher is left alone:
/// that dispatcher's outcome is the one recorded. An event settled `dry_run` gives its
/// messageId back (`message_seen`), so that live delivery of the same message is not a
/// duplicate.
///
/// One statement per outcome (kind, reason, action: the events of a batch mostly end alike),
/// `gateway_settle` (migration 20261207000400): those settled for good leave the outbox and
/// their event rows take the outcome; those going back to pending stay in the outbox, each due
/// after its own delay. It finds the outbox rows by id within the queue and the event rows by
/// id within the range of their `received_at` (one day partition, mostly), through the
/// indexes.
pub async fn settle(
    pool: &PgPool,
    queue: Queue<'_>,
    owner: &str,
    settles: &[Settle],
) -> Result<u64, sqlx::Error> {
    let mut alike: BTreeMap<Outcome, Vec<&Settle>> = BTreeMap::new();
    for s in settles {
        let key = (s.next.kind(), s.reason.as_deref(), s.action.as_deref());
        alike.entry(key).or_default().push(s);
    }
    let mut done = 0;
    for ((kind, reason, action), group) in alike {
        let n: i64 =
            sqlx::query_scalar("SELECT gateway_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(owner)
                .bind(queue.connection)
                .bind(queue.direction.as_str())
                .bind(kind)
                .bind(reason.map(|r| pg_text(r).into_owned()))
                .bind(action)
                // Event ids are unique (one sequence), whatever the partition.
                .bind(group.iter().map(|s| s.id).collect::<Vec<_>>())
                .bind(group.iter().map(|s| delay_ms(s.next)).collect::<Vec<_>>())
                .bind(group.iter().map(|s| s.received_at).min())
                .bind(group.iter().map(|s| s.received_at).max())
                .fetch_one(pool)
                .await?;
        done += n as u64;
    }
    Ok(done)
}

/// What a settle sets, the same for every event of one statement: kind, reason, action.
type Outcome<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// The delay a transition back to pending waits, in milliseconds.
fn delay_ms(n: Next) -> f64 {
    match n {
        Next::Retry(d) | Next::Hold(d) => d.as_secs_f64() * 1000.0,
        _ => 0.0,
    }
}

/// Renews the lease of the events still held by `owner` in `queue`; returns how many it renewed.
pub async fn extend_lease(
    pool: &PgPool,
    queue: Queue<'_>,
    owner: &str,
    events: &[i64],
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox o SET lease_until = now() + make_interval(secs => $5)
         WHERE o.connection = $2 AND o.direction = $3 AND o.event_id = ANY ($4)
           AND o.lease_owner = $1",
    )
    .bind(owner)
    .bind(queue.connection)
    .bind(queue.direction.as_str())
    .bind(events)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
