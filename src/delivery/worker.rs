//! The dispatcher loop: claim due events, process them, claim again; sleep `poll_interval_ms`
//! when nothing is due. `delivery.workers` loops run side by side, each with its own owner id,
//! and so may several gateway processes on one database: the claim's `SKIP LOCKED` and lease
//! keep them from sending the same event twice.

use super::store::{self, Claimed};
use super::{iterable, segment, Clients, DeliveryError};
use crate::audit::Direction;
use crate::configuration::Settings;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `settings.delivery.workers` dispatchers per direction (Segment → Iterable and
/// Iterable → Segment) until `cancel` is cancelled; returns once each has finished the batch
/// it was working on.
pub async fn run(
    pool: PgPool,
    settings: Arc<Settings>,
    clients: Clients,
    cancel: CancellationToken,
) {
    let mut workers = tokio::task::JoinSet::new();
    for direction in [Direction::SegmentToIterable, Direction::IterableToSegment] {
        for _ in 0..settings.delivery.workers {
            let (pool, settings, clients, cancel) = (
                pool.clone(),
                settings.clone(),
                clients.clone(),
                cancel.clone(),
            );
            workers
                .spawn(async move { work(&pool, &settings, &clients, &cancel, direction).await });
        }
    }
    while let Some(ended) = workers.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "A dispatcher task panicked.");
        }
    }
}

/// One dispatcher.
async fn work(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    cancel: &CancellationToken,
    direction: Direction,
) {
    let owner = new_owner();
    tracing::info!(%owner, direction = direction.as_str(), "Dispatcher started.");
    let poll = Duration::from_millis(settings.delivery.poll_interval_ms);
    while !cancel.is_cancelled() {
        let idle = match step(pool, settings, clients, &owner, direction).await {
            Ok(claimed) => claimed == 0,
            Err(e) => {
                // The database may be restarting: wait, and try again.
                tracing::error!(%owner, error = %e, "Dispatching failed; retrying after the poll interval.");
                true
            }
        };
        if idle {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
    tracing::info!(%owner, "Dispatcher stopped.");
}

/// Processes due events of both directions until none is due right now (events rescheduled
/// into the future stay); returns how many events it claimed. For tests and subcommands.
pub async fn drain(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
) -> Result<usize, DeliveryError> {
    let owner = new_owner();
    let mut total = 0;
    loop {
        let mut round = 0;
        for direction in [Direction::SegmentToIterable, Direction::IterableToSegment] {
            round += step(pool, settings, clients, &owner, direction).await?;
        }
        if round == 0 {
            return Ok(total);
        }
        total += round;
    }
}

/// One claim and its processing; returns how many events were claimed.
async fn step(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    owner: &str,
    direction: Direction,
) -> Result<usize, DeliveryError> {
    let d = &settings.delivery;
    let claimed: Vec<Claimed> = store::claim(
        pool,
        direction,
        owner,
        d.claim_batch,
        Duration::from_secs(d.lease_secs),
    )
    .await?;
    let n = claimed.len();
    if n > 0 {
        match direction {
            Direction::SegmentToIterable => {
                iterable::process(pool, settings, clients, owner, claimed).await?
            }
            Direction::IterableToSegment => {
                segment::process(pool, settings, clients, owner, claimed).await?
            }
        }
    }
    Ok(n)
}

/// A lease owner id: unique per dispatcher, and readable in `event.lease_owner`.
fn new_owner() -> String {
    format!("dispatcher-{}", uuid::Uuid::new_v4())
}
