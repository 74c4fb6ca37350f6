//! Iterable → Segment: claimed events (already Segment `track` calls, made at ingest) go to
//! `POST {region}/v1/batch` with HTTP Basic (the connection's Segment write key), in batches of
//! at most 2,500 events and 500 KB, each event at most 32 KB (Segment's limits, DESIGN §3).
//!
//! The same retry rules as towards Iterable; a 400 is permanent: a refused batch of several
//! events is split so that each goes alone, and the one Segment refuses fails alone.

use super::http::{post_json, Reply, JSON};
use super::retry::{classify, Class, RetryPolicy, Verdict};
use super::store::{self, Attempt, AttemptOutcome, Claimed, Next, Settle};
use super::{Clients, DeliveryError};
use crate::audit::{redact, Direction};
use crate::configuration::{secret, DeliveryMode, Settings};
use crate::mapping::js;
use base64::Engine;
use sqlx::PgPool;
use std::time::Duration;

pub const MAX_BATCH_EVENTS: usize = 2500;
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
const PATH: &str = "/v1/batch";

/// One batch to send: the events' indexes and the body's bytes.
struct Batch {
    connection: String,
    members: Vec<usize>,
    wire: String,
}

/// Plans, sends and settles `claimed` (all leased by `owner`).
pub async fn process(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    owner: &str,
    claimed: Vec<Claimed>,
) -> Result<(), DeliveryError> {
    let dry_run = settings.delivery.mode == DeliveryMode::DryRun;
    let policy = RetryPolicy::from_settings(&settings.delivery);
    let mut settles: Vec<Settle> = Vec::new();
    let settle = |e: &Claimed, next: Next, reason: Option<String>| {
        Settle::of(e, next, reason, Some("segment.track".into()))
    };
    // Serialise each event once; too large or unconfigured events stop here.
    let mut ready: Vec<(usize, String)> = Vec::new();
    for (i, e) in claimed.iter().enumerate() {
        let wire = js::to_json_string(&e.payload);
        let conn = settings.connection(&e.connection);
        if wire.len() > MAX_EVENT_BYTES {
            let why = format!(
                "the event is {} bytes; Segment accepts at most {MAX_EVENT_BYTES}",
                wire.len()
            );
            settles.push(settle(e, Next::Failed, Some(why)));
        } else if conn.is_none() {
            settles.push(settle(
                e,
                Next::Failed,
                Some(format!("connection {:?} is not configured", e.connection)),
            ));
        } else if !dry_run && conn.and_then(|c| secret(&c.segment_write_key)).is_none() {
            let why = format!("connection {:?} has no segment_write_key", e.connection);
            settles.push(settle(e, Next::Failed, Some(why)));
        } else {
            ready.push((i, wire));
        }
    }
    let batches = batches(&claimed, ready);
    let held: Vec<_> = claimed.iter().map(|e| (e.id, e.received_at)).collect();
    let lease = Duration::from_secs(settings.delivery.lease_secs);
    let outcomes = tokio::select! {
        r = send_all(pool, settings, clients, &claimed, &batches, &policy, dry_run) => r?,
        never = super::keep_leases(pool, owner, &held, lease) => match never {},
    };
    for (batch, (next, reason)) in batches.iter().zip(outcomes) {
        for &m in &batch.members {
            settles.push(settle(&claimed[m], next, reason.clone()));
        }
    }
    store::settle(pool, owner, &settles).await?;
    for s in &settles {
        metrics::counter!("gateway_events_total", "state" => s.next.state()).increment(1);
    }
    Ok(())
}

/// Per connection, in claim order; `solo` events alone.
fn batches(claimed: &[Claimed], ready: Vec<(usize, String)>) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut open: Vec<usize> = Vec::new(); // index into `out` of each connection's open batch
    for (i, wire) in ready {
        let e = &claimed[i];
        let fits = |b: &Batch| {
            b.members.len() < MAX_BATCH_EVENTS && b.wire.len() + wire.len() + 16 <= MAX_BATCH_BYTES
        };
        let slot = open
            .iter()
            .copied()
            .find(|&b| out[b].connection == e.connection && fits(&out[b]));
        match (slot, e.solo) {
            (Some(b), false) => {
                let batch = &mut out[b];
                batch.wire.insert(batch.wire.len() - 2, ',');
                let at = batch.wire.len() - 2;
                batch.wire.insert_str(at, &wire);
                batch.members.push(i);
            }
            _ => {
                out.push(Batch {
                    connection: e.connection.clone(),
                    members: vec![i],
                    wire: format!("{{\"batch\":[{wire}]}}"),
                });
                if !e.solo {
                    open.retain(|&b| out[b].connection != e.connection);
                    open.push(out.len() - 1);
                }
            }
        }
    }
    out
}

async fn send_all(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    claimed: &[Claimed],
    batches: &[Batch],
    policy: &RetryPolicy,
    dry_run: bool,
) -> Result<Vec<(Next, Option<String>)>, sqlx::Error> {
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let conn = settings
            .connection(&batch.connection)
            .expect("checked before batching");
        let url = format!(
            "{}{PATH}",
            conn.segment_base(&settings.segment).trim_end_matches('/')
        );
        let attempt = batch
            .members
            .iter()
            .map(|&m| claimed[m].attempts)
            .max()
            .unwrap_or(1);
        let (reply, outcome, next, reason) = if dry_run {
            (
                None,
                AttemptOutcome::DryRun,
                Next::Delivered,
                Some(super::iterable::DRY_RUN_REASON.to_string()),
            )
        } else {
            let key = secret(&conn.segment_write_key).unwrap_or_default();
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
            );
            let reply = post_json(
                clients,
                &conn.name,
                PATH,
                &url,
                Some(("Authorization", &basic)),
                batch.wire.clone(),
            )
            .await;
            let (outcome, next, reason) = verdict(
                &reply,
                batch.members.len(),
                attempt,
                policy,
                (clients.jitter)(),
            );
            (Some(reply), outcome, next, reason)
        };
        let ids: Vec<i64> = batch.members.iter().map(|&m| claimed[m].id).collect();
        let headers = redact::headers([
            ("authorization", b"-".as_slice()),
            ("content-type", JSON.as_bytes()),
        ]);
        store::record_attempt(
            pool,
            &Attempt {
                connection: &conn.name,
                direction: Direction::IterableToSegment,
                endpoint: PATH,
                method: "POST",
                url: &url,
                request_headers: &headers,
                request_body: Some(&batch.wire),
                attempt,
                dry_run,
                status: reply.as_ref().and_then(Reply::status),
                response_headers: reply.as_ref().and_then(|r| r.headers.as_ref()),
                response_body: reply.as_ref().and_then(|r| r.body.as_deref()),
                duration: reply.as_ref().map(|r| r.duration),
                outcome,
                error: if matches!(next, Next::Delivered) {
                    None
                } else {
                    reason.as_deref()
                },
                event_ids: &ids,
            },
        )
        .await?;
        metrics::counter!("gateway_delivery_attempts_total", "endpoint" => PATH, "outcome" => outcome.as_str())
            .increment(1);
        out.push((next, reason));
    }
    Ok(out)
}

/// What Segment's answer means for every event of the batch.
fn verdict(
    reply: &Reply,
    events: usize,
    attempt: i32,
    policy: &RetryPolicy,
    unit: f64,
) -> (AttemptOutcome, Next, Option<String>) {
    let describe = || match (reply.status(), &reply.body) {
        (Some(s), Some(b)) => format!("Segment answered {s}: {}", store::truncate(b, 500)),
        (Some(s), None) => format!("Segment answered {s}"),
        (None, _) => format!("{:?}", reply.outcome),
    };
    match classify(&reply.outcome) {
        Class::Delivered => (AttemptOutcome::Delivered, Next::Delivered, None),
        Class::Retryable => {
            let retry_after = reply.outcome.retry_after();
            match policy.after_failure(attempt, retry_after, unit) {
                Verdict::RetryIn(d) => (AttemptOutcome::Retry, Next::Retry(d), Some(describe())),
                Verdict::Dead => (AttemptOutcome::Dead, Next::Dead, Some(describe())),
            }
        }
        // One refused batch of several: each event goes alone, so only the bad one fails.
        Class::Permanent if events > 1 && !matches!(reply.status(), Some(401 | 403)) => {
            (AttemptOutcome::Failed, Next::Split, Some(describe()))
        }
        Class::Permanent => (AttemptOutcome::Failed, Next::Failed, Some(describe())),
    }
}
