//! The dispatcher loops. Each (connection, direction) has `delivery.workers` loops of its own,
//! so that a connection whose partner is down, slow, rate-limited or refusing its key delays
//! only its own events. Each loop claims that connection's due events, has the engine process
//! them, and claims again: at once when it got work and a token, after the next token when the
//! rate limit held requests back, after `poll_interval_ms` when nothing was due. Several
//! gateway processes may run on one database: the claim's `SKIP LOCKED` and lease keep them
//! from sending the same event twice, and the rate limits are shared through the database.
//!
//! A connection whose partner refuses its credentials is paused (`connection_pause`): its
//! events stay pending, and one loop probes it with one request every `pause_probe_secs` (and
//! at start-up, so that a restart with a new key resumes at once).

use super::engine::{self, Ctx, Report};
use super::iterable::Iterable;
use super::lease::Lease;
use super::limiter::record_wait;
use super::segment::Segment;
use super::store::{self, ClaimScope, Claimed, Next, PauseState, Settle};
use super::{Clients, DeliveryError};
use crate::audit::Direction;
use crate::configuration::{DeliveryMode, Settings};
use crate::database::connect;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DIRECTIONS: [Direction; 2] = [Direction::SegmentToIterable, Direction::IterableToSegment];

/// The longest a loop of a paused connection sleeps before looking at the pause again.
const PAUSED_NAP: Duration = Duration::from_secs(5);

/// Runs `settings.delivery.workers` dispatchers per (connection, direction) until `cancel` is
/// cancelled; returns once each has finished the batch it was working on.
pub async fn run(
    pool: PgPool,
    settings: Arc<Settings>,
    clients: Clients,
    cancel: CancellationToken,
) {
    if settings.delivery.workers == 0 {
        return;
    }
    let process = new_owner("process");
    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(announce_mode(
        pool.clone(),
        settings.clone(),
        process.clone(),
        cancel.clone(),
    ));
    let mut pools = Vec::new();
    for c in &settings.connections {
        // Each connection's dispatchers (both directions) have database connections of their
        // own, apart from ingest's and from the other connections'. On a database with few
        // cores, a connection's statements (claims, settles, attempts, tokens) running beside
        // each other took the cores that ingest's group commits wait for: with one connection
        // at 5,000 events/s the acknowledgement p90 and p99 fell by a fifth and PostgreSQL used
        // less CPU for the same work (BENCHMARKS.md, issue 12, eighth session). Its statements
        // take a few milliseconds each, and no connection is held across a request to a
        // partner. Other connections' dispatchers run beside them, as their loops do: a
        // connection with a backlog does not take turns from the others.
        let connection_pool = connect::sibling(
            &pool,
            settings.delivery.database_connections,
            Duration::from_millis(settings.database.commit_timeout_ms),
            &format!("gateway delivery {}", c.name),
        );
        pools.push(connection_pool.clone());
        for direction in DIRECTIONS {
            let turn = Arc::new(ClaimTurn::default());
            for _ in 0..settings.delivery.workers {
                let (pool, settings, clients, cancel, turn) = (
                    connection_pool.clone(),
                    settings.clone(),
                    clients.clone(),
                    cancel.clone(),
                    turn.clone(),
                );
                let connection = c.name.clone();
                workers.spawn(async move {
                    let queue = (connection.as_str(), direction);
                    work(&pool, &settings, &clients, &cancel, queue, &turn).await
                });
            }
        }
    }
    while let Some(ended) = workers.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "A dispatcher task panicked.");
        }
    }
    for connection_pool in pools {
        connection_pool.close().await;
    }
    if let Err(e) = store::unregister_mode(&pool, &process).await {
        tracing::warn!(error = %e, "Could not remove this process's dispatcher registrations.");
    }
}

/// Keeps this process's mode on record for each connection (a dry-run process does not claim
/// a connection that a live one delivers).
async fn announce_mode(
    pool: PgPool,
    settings: Arc<Settings>,
    owner: String,
    cancel: CancellationToken,
) {
    let names: Vec<String> = settings
        .connections
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let ttl = Duration::from_secs(settings.delivery.lease_secs);
    loop {
        if let Err(e) = store::register_mode(&pool, &owner, &names, mode(&settings), ttl).await {
            tracing::warn!(error = %e, "Could not record this process's delivery mode.");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
    }
}

fn mode(settings: &Settings) -> &'static str {
    match settings.delivery.mode {
        DeliveryMode::Live => "live",
        DeliveryMode::DryRun => "dry-run",
    }
}

/// One dispatcher of one connection and direction. `turn` is shared by this process's
/// dispatchers of that queue: they claim one at a time.
async fn work(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    cancel: &CancellationToken,
    (connection, direction): (&str, Direction),
    turn: &ClaimTurn,
) {
    let owner = new_owner("dispatcher");
    tracing::info!(%owner, connection, direction = direction.as_str(), "Dispatcher started.");
    let poll = Duration::from_millis(settings.delivery.poll_interval_ms);
    let mut starting = true;
    let mut carry = Carry::default();
    while !cancel.is_cancelled() {
        let nap = match step(
            pool, settings, clients, &owner, connection, direction, starting, &mut carry, turn,
        )
        .await
        {
            Ok(s) => {
                starting = false;
                s.nap(poll)
            }
            Err(e) => {
                // The database may be restarting: wait, and try again.
                tracing::error!(%owner, connection, error = %e, "Dispatching failed; retrying after the poll interval.");
                Some(poll)
            }
        };
        if let Some(nap) = nap {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
    // What waited for a token goes back to pending, for the next dispatcher to take at once.
    let queue = store::Queue {
        connection,
        direction,
    };
    if let Err(e) = carry.give_back(pool, queue, &owner, Next::Release).await {
        tracing::warn!(%owner, connection, error = %e, "Could not give back the events held for a rate limit; they are claimable again once their lease runs out.");
    }
    tracing::info!(%owner, connection, "Dispatcher stopped.");
}

/// Events this dispatcher still leases, held back for a rate limit by its last batch
/// ([`Report::carried`]), and when their lease was last taken or renewed.
#[derive(Default)]
struct Carry {
    events: Vec<Claimed>,
    taken: Option<Instant>,
}

impl Carry {
    /// Carried longer than this, events are given back rather than carried on: a batch's lease
    /// is its oldest event's, and carrying must not make the whole batch's lease too short for
    /// a request to start.
    fn too_old(&self, lease: Duration) -> bool {
        self.taken.is_some_and(|t| t.elapsed() > lease / 4)
    }

    /// Takes the carried events and their lease's start.
    fn take(&mut self) -> (Vec<Claimed>, Option<Instant>) {
        (std::mem::take(&mut self.events), self.taken.take())
    }

    /// Writes the carried events back to pending (`next`: a release or a pause, either of
    /// which gives the attempt back).
    async fn give_back(
        &mut self,
        pool: &PgPool,
        queue: store::Queue<'_>,
        owner: &str,
        next: Next,
    ) -> Result<(), sqlx::Error> {
        if self.events.is_empty() {
            return Ok(());
        }
        let why = match next {
            Next::Pause => "not sent: the connection is paused",
            _ => "held back for a rate limit, and given back",
        };
        let settles: Vec<Settle> = self
            .events
            .iter()
            .map(|e| Settle::of(e, next, Some(why.to_string()), None))
            .collect();
        store::settle(pool, queue, owner, &settles).await?;
        self.take();
        Ok(())
    }
}

/// Processes due events of every configured connection, both directions, until none is due
/// right now (events rescheduled into the future, and paused connections, stay); waits for
/// the rate limits as a dispatcher would, and probes a paused connection at once as a fresh
/// dispatcher does. Returns how many events it claimed. For tests and subcommands.
pub async fn drain(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
) -> Result<usize, DeliveryError> {
    let owner = new_owner("dispatcher");
    let mut total = 0;
    let mut starting = true;
    loop {
        let mut round = 0;
        for c in &settings.connections {
            for direction in DIRECTIONS {
                let mut first = starting;
                // A step that carries events reports a wait for their token: the loop goes on
                // until they are sent.
                let mut carry = Carry::default();
                let turn = ClaimTurn::default();
                loop {
                    let s = step(
                        pool, settings, clients, &owner, &c.name, direction, first, &mut carry,
                        &turn,
                    )
                    .await?;
                    first = false;
                    round += s.claimed;
                    if let Some((wait, _)) = s.limited {
                        tokio::time::sleep(wait).await;
                    } else if s.claimed == 0 {
                        break;
                    }
                }
            }
        }
        starting = false;
        if round == 0 {
            return Ok(total);
        }
        total += round;
    }
}

/// What one step came to.
#[derive(Debug, Default)]
struct Stepped {
    /// Events claimed by this step (not counting those carried from the last one).
    claimed: usize,
    limited: Option<(Duration, &'static str)>,
    /// Paused: the next look is due in this long.
    paused: Option<Duration>,
}

impl Stepped {
    /// How long the loop sleeps before the next step (`None`: not at all).
    fn nap(&self, poll: Duration) -> Option<Duration> {
        if let Some(wait) = self.paused {
            return Some(wait.clamp(poll, PAUSED_NAP));
        }
        if let Some((wait, _)) = self.limited {
            return Some(wait);
        }
        (self.claimed == 0).then_some(poll)
    }
}

/// One claim of one connection and direction, and its processing with the events `carry`
/// held from the last step. `starting`: the first step of a dispatcher, which probes a paused
/// connection at once.
#[allow(clippy::too_many_arguments)]
async fn step(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    owner: &str,
    connection: &str,
    direction: Direction,
    starting: bool,
    carry: &mut Carry,
    turn: &ClaimTurn,
) -> Result<Stepped, DeliveryError> {
    let d = &settings.delivery;
    let lease = Duration::from_secs(d.lease_secs);
    let probe_every = Duration::from_secs(d.pause_probe_secs);
    let mut scope = ClaimScope {
        direction,
        connection,
        probe: false,
        dry_run: d.mode == DeliveryMode::DryRun,
    };
    let queue = store::Queue {
        connection,
        direction,
    };
    if carry.too_old(lease) {
        carry.give_back(pool, queue, owner, Next::Release).await?;
    }
    let mut taken = Instant::now();
    let mut claimed = if starting {
        Vec::new()
    } else {
        claim(turn, pool, scope, owner, d.claim_batch, lease).await?
    };
    if claimed.is_empty() {
        // Nothing claimable: maybe because the connection is paused.
        match store::pause_state(pool, connection, direction, probe_every, starting).await? {
            PauseState::Running if starting => {
                taken = Instant::now();
                claimed = claim(turn, pool, scope, owner, d.claim_batch, lease).await?;
            }
            PauseState::Running => {}
            PauseState::Paused(wait, reason) => {
                carry.give_back(pool, queue, owner, Next::Pause).await?;
                paused_gauge(connection, direction, &reason, 1.0);
                return Ok(Stepped {
                    paused: Some(wait),
                    ..Stepped::default()
                });
            }
            PauseState::Probe(reason) => {
                carry.give_back(pool, queue, owner, Next::Pause).await?;
                paused_gauge(connection, direction, &reason, 1.0);
                scope.probe = true;
                taken = Instant::now();
                claimed = claim(turn, pool, scope, owner, 1, lease).await?;
                if claimed.is_empty() {
                    return Ok(Stepped {
                        paused: Some(probe_every),
                        ..Stepped::default()
                    });
                }
                tracing::info!(
                    connection,
                    direction = direction.as_str(),
                    "Probing a paused connection with one request."
                );
            }
        }
    }
    let fresh = claimed.len();
    // The carried events first: they are the older ones.
    let (mut carried, carried_taken) = carry.take();
    if !carried.is_empty() {
        carried.append(&mut claimed);
        claimed = carried;
        taken = carried_taken.map_or(taken, |t| t.min(taken));
    }
    if claimed.is_empty() {
        return Ok(Stepped::default());
    }
    let lease = Lease::new(taken, lease);
    let ctx = Ctx {
        pool,
        settings,
        clients,
        owner,
    };
    let report: Report = match direction {
        Direction::SegmentToIterable => {
            let destination = clients.destination(settings, connection);
            let partner = Iterable::new(settings, destination, connection);
            engine::process(&ctx, &partner, claimed, &lease).await?
        }
        Direction::IterableToSegment => {
            let partner = Segment::new(settings, connection);
            engine::process(&ctx, &partner, claimed, &lease).await?
        }
    };
    if let Some((reason, detail)) = &report.refused {
        let fresh = store::pause(pool, connection, direction, reason, detail, probe_every).await?;
        paused_gauge(connection, direction, reason, 1.0);
        if fresh {
            tracing::warn!(
                connection,
                direction = direction.as_str(),
                reason,
                %detail,
                probe_secs = d.pause_probe_secs,
                "Connection paused: the partner refused its credentials. Its events stay pending; a probe every pause_probe_secs (and a restart) resumes delivery once the key works."
            );
        }
    } else if scope.probe && report.accepted_credentials {
        if let Some(reason) = store::resume(pool, connection, direction).await? {
            paused_gauge(connection, direction, &reason, 0.0);
            tracing::info!(
                connection,
                direction = direction.as_str(),
                "Connection resumed: the partner accepted its credentials again."
            );
        }
    }
    if let Some((wait, endpoint)) = report.limited {
        record_wait(connection, direction, endpoint, wait);
    }
    // Their lease is the batch's, renewed with it while the batch ran.
    carry.taken = (!report.carried.is_empty()).then(|| lease.taken());
    carry.events = report.carried;
    Ok(Stepped {
        claimed: fresh,
        limited: report.limited,
        paused: None,
    })
}

fn paused_gauge(connection: &str, direction: Direction, reason: &str, value: f64) {
    metrics::gauge!("gateway_connection_paused",
        "connection" => connection.to_string(), "direction" => direction.as_str(),
        "reason" => reason.to_string())
    .set(value);
}

/// Taken by a dispatcher for its claim, by the others of its process and queue meanwhile.
/// Two dispatchers claiming at once read the same head of the queue and try to lock the same
/// rows; the one that loses has read and tried them for nothing (7 ms for 598 rows under load,
/// `auto_explain`) and reads again. One after the other, the second sees the first's rows
/// leased and passes them by. Dispatchers of other processes still claim concurrently: `SKIP
/// LOCKED` keeps that safe.
type ClaimTurn = tokio::sync::Mutex<()>;

/// [`store::claim`] in this dispatcher's turn.
async fn claim(
    turn: &ClaimTurn,
    pool: &PgPool,
    scope: ClaimScope<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let _turn = turn.lock().await;
    store::claim(pool, scope, owner, limit, lease).await
}

/// A lease owner id: unique per dispatcher, and readable in `event.lease_owner`.
fn new_owner(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4())
}
