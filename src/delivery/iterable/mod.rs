//! Segment → Iterable: the work for a set of claimed events.
//!
//! Each event is planned through its connection's mapping (`plan`). An event's requests go out
//! in rounds: round `n` sends the `n`th request of every event still going, grouped into bulk
//! requests where Iterable has a bulk endpoint (`requests`), so an event whose plan has several
//! requests (updateUser + updateEmail) sends the second only after the first succeeded, and is
//! delivered only when all are. Each answer (`answer`) decides, per event, whether it goes on
//! or stops in a state; every attempt is recorded. The states are written in one statement at
//! the end.

mod answer;
mod once;
mod plan;
mod requests;
mod send;

pub use requests::{MAX_BULK_BYTES, MAX_BULK_ITEMS};

use super::retry::RetryPolicy;
use super::store::{self, Attempt, AttemptOutcome, Claimed, Next, Settle};
use super::{Clients, DeliveryError};
use crate::audit::Direction;
use crate::configuration::{DeliveryMode, Settings};
use answer::{Step, Verdicts};
use futures_util::{stream, StreamExt, TryStreamExt};
use plan::{Job, Planned};
use requests::Request;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

/// Requests of one round in flight at once (the limiters still apply).
const CONCURRENT_REQUESTS: usize = 16;

/// What dry-run mode writes as the reason of the events it "delivers".
pub const DRY_RUN_REASON: &str = "dry-run: not sent";

/// Plans, sends and settles `claimed` (all leased by `owner`).
pub async fn process(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    owner: &str,
    claimed: Vec<Claimed>,
) -> Result<(), DeliveryError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let held: Vec<_> = claimed.iter().map(|e| (e.id, e.received_at)).collect();
    let mut conns = HashMap::new();
    let (mut jobs, mut settles) = (Vec::new(), Vec::new());
    for event in claimed {
        match plan::plan(settings, clients, &mut conns, event, now_ms) {
            Planned::Send(job) => jobs.push(job),
            Planned::Done(settle) => settles.push(settle),
        }
    }
    let dry_run = settings.delivery.mode == DeliveryMode::DryRun;
    // Token registrations already sent within their window are left out (issue 11); a dry
    // run is never deduplicated against live delivery.
    if !dry_run {
        once::skip_repeats(pool, settings, clients, &mut jobs).await?;
    }
    let policy = RetryPolicy::from_settings(&settings.delivery);
    let lease = Duration::from_secs(settings.delivery.lease_secs);
    // Rate limits and slow answers can make a batch outlast its lease: renew it meanwhile.
    let stopped = tokio::select! {
        stopped = rounds(pool, clients, &jobs, &policy, dry_run) => stopped?,
        never = super::keep_leases(pool, owner, &held, lease) => match never {},
    };
    if !dry_run {
        once::remember(pool, settings, clients, &jobs, &stopped).await?;
    }

    for (job, stop) in jobs.into_iter().zip(stopped) {
        let (next, reason) = match stop {
            Some((next, why)) => (next, Some(why)),
            None if !job.errors.is_empty() => (
                Next::Failed,
                Some(format!(
                    "{} (its other requests went through)",
                    job.errors.join("; ")
                )),
            ),
            None if dry_run => (Next::Delivered, Some(DRY_RUN_REASON.to_string())),
            // Every request was a repeat within its window: nothing was sent.
            None if job.steps.is_empty() => (Next::Skipped, Some(job.notes.join("; "))),
            None if !job.notes.is_empty() => (Next::Delivered, Some(job.notes.join("; "))),
            None => (Next::Delivered, None),
        };
        settles.push(Settle::of(&job.event, next, reason, job.action));
    }
    let applied = store::settle(pool, owner, &settles).await?;
    if applied < settles.len() as u64 {
        tracing::warn!(
            owner,
            lost = settles.len() as u64 - applied,
            "Some events were claimed by another dispatcher after this one's lease ran out; their outcome is that dispatcher's."
        );
    }
    for s in &settles {
        metrics::counter!("gateway_events_total", "state" => s.next.state()).increment(1);
    }
    Ok(())
}

/// Sends the events' requests round by round; returns, per job, where it stopped (`None`:
/// every request went through).
async fn rounds(
    pool: &PgPool,
    clients: &Clients,
    jobs: &[Job],
    policy: &RetryPolicy,
    dry_run: bool,
) -> Result<Vec<Option<(Next, String)>>, sqlx::Error> {
    let mut stopped: Vec<Option<(Next, String)>> = vec![None; jobs.len()];
    let mut alive: Vec<usize> = (0..jobs.len()).collect();
    let mut round = 0;
    while !alive.is_empty() {
        let requests = requests::build(jobs, &alive, round);
        if requests.is_empty() {
            break;
        }
        // By index: a closure over `&Request` trips a higher-ranked lifetime limit of the
        // compiler once the future must be `Send` (rust-lang/rust#102211).
        let verdicts: Vec<Verdicts> = stream::iter(0..requests.len())
            .map(|i| attempt(pool, clients, jobs, &requests[i], policy, dry_run))
            .buffer_unordered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
        for (job, step) in verdicts.into_iter().flat_map(|v| v.steps) {
            if let Step::Stop(next, why) = step {
                stopped[job] = Some((next, why));
            }
        }
        alive.retain(|&j| stopped[j].is_none());
        round += 1;
    }
    Ok(stopped)
}

/// Sends one request (or, in dry-run mode, does not), reads the answer, records the attempt.
async fn attempt(
    pool: &PgPool,
    clients: &Clients,
    jobs: &[Job],
    request: &Request,
    policy: &RetryPolicy,
    dry_run: bool,
) -> Result<Verdicts, sqlx::Error> {
    let (reply, verdicts) = if dry_run {
        let steps = request.members.iter().map(|m| (m.job, Step::Ok)).collect();
        let verdicts = Verdicts {
            outcome: AttemptOutcome::DryRun,
            error: None,
            steps,
        };
        (None, verdicts)
    } else {
        let reply = send::send(clients, request).await;
        let verdicts = answer::interpret(request, &reply, jobs, policy, &clients.jitter);
        (Some(reply), verdicts)
    };
    let path = request.endpoint.path();
    let events = request.members.iter().map(|m| &jobs[m.job].event);
    let event_ids: Vec<i64> = events.clone().map(|e| e.id).collect();
    store::record_attempt(
        pool,
        &Attempt {
            connection: &request.conn.name,
            direction: Direction::SegmentToIterable,
            endpoint: path,
            method: request.endpoint.method(),
            url: &send::url(request),
            request_headers: &send::audit_headers(request.endpoint),
            request_body: request
                .endpoint
                .sends_body()
                .then_some(request.wire.as_str()),
            attempt: events.map(|e| e.attempts).max().unwrap_or(1),
            dry_run,
            status: reply.as_ref().and_then(|r| r.status()),
            response_headers: reply.as_ref().and_then(|r| r.headers.as_ref()),
            response_body: reply.as_ref().and_then(|r| r.body.as_deref()),
            duration: reply.as_ref().map(|r| r.duration),
            outcome: verdicts.outcome,
            error: verdicts.error.as_deref(),
            event_ids: &event_ids,
        },
    )
    .await?;
    let outcome = verdicts.outcome.as_str();
    metrics::counter!("gateway_delivery_attempts_total", "endpoint" => path, "outcome" => outcome)
        .increment(1);
    if let Some(error) = &verdicts.error {
        tracing::warn!(connection = %request.conn.name, direction = "segment_to_iterable", endpoint = path, outcome, events = event_ids.len(), %error, "Iterable did not take every event.");
    }
    Ok(verdicts)
}
