//! The one dispatch engine, for both partners: claimed events → plan → requests under the lease
//! and the rate limit → each answer read item by item → every attempt recorded → states settled.
//!
//! A partner ([`Partner`]: Iterable or Segment) says only what is its own, in the spirit of
//! vector's sink `RetryLogic`: how events become requests (grouping them into bulk requests),
//! and which items a 2xx answer refused. What an answer means for each event (delivered,
//! retried by its own attempt count, split, failed, dead, or the whole connection paused) is
//! decided here, once.
//!
//! An event's requests go out in rounds: round `n` sends the `n`th part of every event still
//! going, so an event with two parts sends the second only after the first went through, and is
//! delivered only when all did.
//!
//! Before any round, events whose calls would mix single-user and bulk calls for one user
//! within `delivery.user_call_window_ms` are held back ([`window`]).

use super::answer::{self, Step, Verdicts};
use super::http::{call, Reply};
use super::lease::Lease;
use super::once;
use super::retry::RetryPolicy;
use super::store::{self, Attempt, Claimed, Next, Settle};
use super::window::{self, UserCall};
use super::{Clients, DeliveryError};
use crate::audit::Direction;
use crate::configuration::{DeliveryMode, Settings, LEASE_MARGIN_MS};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The `endpoint` label of events settled without a request of theirs (skipped, refused by
/// the mapping, released before sending).
const NO_ENDPOINT: &str = "none";

/// What dry-run mode writes as the reason of the events it settles as `dry_run`.
pub const DRY_RUN_REASON: &str = "dry-run: not sent";

/// A claimed event with what is to be sent for it.
#[derive(Debug)]
pub(crate) struct Job<P> {
    pub event: Claimed,
    /// In order: part `n + 1` is sent once part `n` went through.
    pub parts: Vec<P>,
    pub action: Option<String>,
    /// Refusals by the mapping of other subscriptions that matched the event: it ends `failed`
    /// even when its requests are delivered.
    pub errors: Vec<String>,
    /// Parts left out because they were sent within their window ([`once`]): why.
    pub notes: Vec<String>,
}

/// Claimed events, planned: jobs to send, and transitions decided without sending.
pub(crate) struct Planned<P> {
    pub jobs: Vec<Job<P>>,
    pub done: Vec<Settle>,
}

/// One event's part in a request, with the identifiers a bulk answer names it by.
#[derive(Debug, Clone, Default)]
pub(crate) struct Member {
    /// Index into the batch's jobs.
    pub job: usize,
    pub email: Option<String>,
    pub user_id: Option<String>,
    pub event_name: Option<String>,
}

/// One HTTP request to send.
#[derive(Debug)]
pub(crate) struct Request {
    /// The path: the rate limit's key and the audit log's `endpoint`. A path naming a user
    /// (Iterable's `DELETE users/{email}`) is its template: no personal data in the limiter's
    /// keys, the audit's `endpoint` or metric labels; the user is only in `url`.
    pub endpoint: &'static str,
    /// `POST`, or `DELETE` (Iterable's user deletions by path).
    pub method: &'static str,
    /// Whether `wire` goes out as the body (with `Content-Type: application/json`); a `DELETE`
    /// has none and its `wire` is only the planned request, kept for the members.
    pub sends_body: bool,
    pub url: String,
    /// The credential header (never audited).
    pub credential: Option<(&'static str, String)>,
    /// The request headers as the audit log keeps them (secrets redacted).
    pub audit_headers: Value,
    /// The body as sent, and as audited.
    pub wire: String,
    /// A bulk request: a 2xx answer may still refuse some of its items.
    pub bulk: bool,
    /// At its item or byte cap: holding it back for more items would not help.
    pub full: bool,
    pub members: Vec<Member>,
}

/// One round's requests, and the jobs refused while building them.
#[derive(Debug, Default)]
pub(crate) struct Round {
    pub requests: Vec<Request>,
    /// (job, why): refused for good (e.g. syncAudience items `performBatch` rejects).
    pub refused: Vec<(usize, String)>,
}

/// What is particular to a partner.
pub(crate) trait Partner: Sync {
    type Part: Sync;
    fn direction(&self) -> Direction;
    fn connection(&self) -> &str;
    /// Plans the claimed events (all of this connection and direction).
    fn plan(&self, claimed: Vec<Claimed>) -> Planned<Self::Part>;
    /// The requests of round `round` for the jobs in `alive` (oldest event first).
    fn requests(&self, jobs: &[Job<Self::Part>], alive: &[usize], round: usize) -> Round;
    /// For a 2xx answer to a bulk request: the members it refused (by index), with why.
    fn refused(&self, _request: &Request, _answer: &Value) -> Vec<(usize, String)> {
        Vec::new()
    }
    /// A part to send at most once per window ([`once`]): its key and its endpoint path.
    fn once(&self, _part: &Self::Part) -> Option<(crate::mapping::OnceKey, &'static str)> {
        None
    }
    /// A part that is a single-user or bulk call of a family the partner processes apart
    /// ([`window`]): which, and the users it names. An event's parts make calls of one kind
    /// per family.
    fn user_call(&self, _part: &Self::Part) -> Option<UserCall> {
        None
    }
    /// The endpoint paths (as attempts record them) of every call [`Partner::user_call`]
    /// names, with their family and kind.
    fn user_call_endpoints(&self) -> &'static [(&'static str, window::Family, window::Kind)] {
        &[]
    }
}

/// What a batch came to, for the dispatcher loop.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub claimed: usize,
    /// Requests were held back for the rate limit of this endpoint: the next token is this
    /// far away.
    pub limited: Option<(Duration, &'static str)>,
    /// The partner refused the connection's credentials (reason, detail).
    pub refused: Option<(&'static str, String)>,
    /// Some request got an answer that was not a refusal of the credentials.
    pub accepted_credentials: bool,
    /// Events of bulk requests held back for a rate limit (oldest first), still leased by this
    /// dispatcher and not written back: the next batch plans them again with what it claims.
    /// Giving them back and claiming them again cost two outbox updates, an event update and a
    /// second read of each; at 5,000 events/s that was most of what dispatching cost
    /// PostgreSQL (2.5 outbox updates per event delivered).
    pub carried: Vec<Claimed>,
}

/// Everything a batch works with.
pub(crate) struct Ctx<'a> {
    pub pool: &'a PgPool,
    pub settings: &'a Settings,
    pub clients: &'a Clients,
    pub owner: &'a str,
}

/// The outbox queue a partner's dispatcher works in.
fn queue<P: Partner>(partner: &P) -> store::Queue<'_> {
    store::Queue {
        connection: partner.connection(),
        direction: partner.direction(),
    }
}

/// Plans, sends and settles `claimed` (all of one connection and direction, leased by
/// `ctx.owner` under `lease`).
pub(crate) async fn process<P: Partner>(
    ctx: &Ctx<'_>,
    partner: &P,
    claimed: Vec<Claimed>,
    lease: &Lease,
) -> Result<Report, DeliveryError> {
    let mut report = Report {
        claimed: claimed.len(),
        ..Report::default()
    };
    let held: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    let max = ctx.settings.delivery.max_attempts;
    let (worn, fresh): (Vec<Claimed>, Vec<Claimed>) =
        claimed.into_iter().partition(|e| e.attempts > max);
    // Only reachable through expired leases: every claim counts as an attempt.
    let mut settles: Vec<Settle> = worn
        .iter()
        .map(|e| {
            let why = format!("claimed {} times (max_attempts {max}) without an answer: a dispatcher lost its lease each time", e.attempts);
            Settle::of(e, Next::Dead, Some(why), None)
        })
        .collect();
    let Planned { mut jobs, done } = partner.plan(fresh);
    settles.extend(done);
    let dry_run = ctx.settings.delivery.mode == DeliveryMode::DryRun;
    // Parts sent within their window are left out (token registrations, issue 11); a dry run
    // is never deduplicated against live delivery.
    if !dry_run {
        once::skip_repeats(ctx.pool, partner, &mut jobs).await?;
    }
    // Jobs that would mix single-user and bulk calls for a user within the window: not sent in
    // this batch (a dry run sends nothing, so it holds nothing back).
    let window = Duration::from_millis(ctx.settings.delivery.user_call_window_ms);
    let holds = if dry_run {
        Vec::new()
    } else {
        window::hold_back(ctx.pool, partner, &jobs, window).await?
    };
    let run = Run {
        ctx,
        partner,
        jobs: &jobs,
        lease,
        policy: RetryPolicy::from_settings(&ctx.settings.delivery),
        dry_run,
        paused: AtomicBool::new(false),
        report: Mutex::new(std::mem::take(&mut report)),
        book: Mutex::new(Book {
            stopped: vec![None; jobs.len()],
            pending: vec![0; jobs.len()],
            settled: vec![false; jobs.len()],
            carry: vec![false; jobs.len()],
        }),
        unwritten: Mutex::new(Unwritten::default()),
    };
    // What needs no request is settled at once.
    run.unwritten().add(settles, NO_ENDPOINT);
    run.write_outcomes().await?;
    // Jobs whose every part was a repeat within its window: nothing to send.
    let empty: Vec<usize> = (0..jobs.len())
        .filter(|&j| jobs[j].parts.is_empty())
        .collect();
    run.settle_jobs(&empty, NO_ENDPOINT).await?;
    // Held back by a recorded call: settled now. Held back by an older job of this batch:
    // settled with what is left once the rounds are done, so that the window starts after
    // that job's requests.
    let mut held_now = Vec::new();
    {
        let mut book = run.book();
        for (j, hold) in holds {
            if matches!(hold, window::Hold::Now(..)) {
                held_now.push(j);
            }
            book.stopped[j] = Some(hold.next(window));
        }
    }
    run.settle_jobs(&held_now, NO_ENDPOINT).await?;
    // Rate limits and slow answers can make a batch outlast its lease: renew it meanwhile.
    tokio::select! {
        done = run.rounds() => done?,
        never = lease.keep(ctx.pool, queue(partner), ctx.owner, &held, ctx.clients.renew_leases) => match never {},
    };
    // Whatever is not settled yet (normally nothing: each event is settled once its last
    // request is answered).
    let left: Vec<usize> = {
        let book = run.book.lock().unwrap_or_else(|e| e.into_inner());
        (0..jobs.len()).filter(|&j| !book.settled[j]).collect()
    };
    run.settle_jobs(&left, NO_ENDPOINT).await?;
    run.write_outcomes().await?;
    let carry = run
        .book
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .carry;
    let mut report = run.report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.claimed = held.len();
    report.carried = jobs
        .into_iter()
        .zip(carry)
        .filter_map(|(job, carried)| carried.then_some(job.event))
        .collect();
    Ok(report)
}

/// Outcomes decided and not yet written: applied together (one statement for many events)
/// when [`SETTLE_BATCH`] of them are waiting, at the end of each round and of the batch.
#[derive(Default)]
struct Unwritten {
    settles: Vec<Settle>,
    /// The endpoint each of `settles` is counted under (`gateway_delivery_events_total`).
    endpoints: Vec<&'static str>,
    /// Jobs whose every request went through: their once-keys are remembered.
    through: Vec<usize>,
}

impl Unwritten {
    fn add(&mut self, settles: Vec<Settle>, endpoint: &'static str) {
        self.endpoints
            .extend(std::iter::repeat_n(endpoint, settles.len()));
        self.settles.extend(settles);
    }
}

/// Outcomes written together at most. Written one request at a time, the settles of single
/// requests (a purchase each) were the largest cost of dispatching for PostgreSQL: about 5 ms
/// each under load, most of it statement overhead (measured at 5,000 events/s).
const SETTLE_BATCH: usize = 500;

/// Where each job of a batch stands.
struct Book {
    /// Where it stopped (`None`: still going, or every request went through).
    stopped: Vec<Option<(Next, String)>>,
    /// Requests of the current round that carry it and are not answered yet.
    pending: Vec<usize>,
    settled: Vec<bool>,
    /// Held back for a rate limit before anything was sent for it: not written back, but
    /// carried into the dispatcher's next batch ([`Report::carried`]).
    carry: Vec<bool>,
}

/// One batch at work.
struct Run<'a, P: Partner> {
    ctx: &'a Ctx<'a>,
    partner: &'a P,
    jobs: &'a [Job<P::Part>],
    lease: &'a Lease,
    policy: RetryPolicy,
    dry_run: bool,
    /// Set once the partner refused the credentials: nothing more is sent.
    paused: AtomicBool,
    report: Mutex<Report>,
    book: Mutex<Book>,
    unwritten: Mutex<Unwritten>,
}

/// A request's verdicts, or why it was not sent.
enum Unsent {
    No(Verdicts),
    Because(Next, &'static str),
}

/// Whether a request goes now, after waiting for a token, or not in this batch.
enum Admission {
    Now,
    Wait,
}

impl<P: Partner> Run<'_, P> {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the jobs' requests round by round. Each event's outcome is decided as soon as it
    /// is known (its last request answered, or a stop) and written by the end of its round
    /// (sooner when [`SETTLE_BATCH`] are waiting), while the lease is being renewed, so that
    /// what was sent is on record while the lease surely holds.
    async fn rounds(&self) -> Result<(), DeliveryError> {
        let jobs = self.jobs;
        // Jobs stopped before any round (held back) send nothing.
        let mut alive: Vec<usize> = {
            let book = self.book();
            (0..jobs.len())
                .filter(|&j| book.stopped[j].is_none())
                .collect()
        };
        let mut round = 0;
        while !alive.is_empty() {
            let Round { requests, refused } = self.partner.requests(jobs, &alive, round);
            if requests.is_empty() && refused.is_empty() {
                break;
            }
            let mut stopped_now: Vec<usize> = Vec::new();
            {
                let mut book = self.book();
                for (job, why) in refused {
                    book.stopped[job].get_or_insert((Next::Failed, why));
                    stopped_now.push(job);
                }
            }
            let admissions = self.admit(&requests, round, &mut stopped_now).await?;
            {
                let mut book = self.book();
                for (i, _) in &admissions {
                    for m in &requests[*i].members {
                        book.pending[m.job] += 1;
                    }
                }
            }
            let endpoint = requests.first().map_or(NO_ENDPOINT, |r| r.endpoint);
            self.settle_jobs(&stopped_now, endpoint).await?;
            // By index: a closure over `&Request` trips a higher-ranked lifetime limit of the
            // compiler once the future must be `Send` (rust-lang/rust#102211).
            let sent = stream::iter(admissions)
                .map(|(i, admission)| self.attempt(&requests[i], admission, round))
                .buffer_unordered(self.ctx.settings.delivery.concurrent_requests)
                .try_collect::<Vec<()>>()
                .await;
            // What the round decided is written before anything else is tried, even when a
            // request of it failed to be recorded.
            let written = self.write_outcomes().await;
            sent?;
            written?;
            let book = self.book();
            alive.retain(|&j| book.stopped[j].is_none() && !book.settled[j]);
            drop(book);
            round += 1;
        }
        Ok(())
    }

    /// Decides the outcome of the jobs (not settled yet) by where they stand; written with
    /// [`Run::write_outcomes`].
    async fn settle_jobs(
        &self,
        which: &[usize],
        endpoint: &'static str,
    ) -> Result<(), DeliveryError> {
        let (settles, through): (Vec<Settle>, Vec<usize>) = {
            let mut book = self.book();
            // Every request of these went through: their once-keys are remembered (not in a
            // dry run, which sent nothing).
            let through = which
                .iter()
                .copied()
                .filter(|&j| !book.settled[j] && book.stopped[j].is_none() && !self.dry_run)
                .collect();
            let settles = which
                .iter()
                .filter(|&&j| !book.settled[j])
                .copied()
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|j| {
                    book.settled[j] = true;
                    // Kept leased for the next batch: nothing to write.
                    if book.carry[j] {
                        return None;
                    }
                    let job = &self.jobs[j];
                    let (next, reason) = match book.stopped[j].clone() {
                        Some((next, why)) => (next, Some(why)),
                        None if !job.errors.is_empty() => (
                            Next::Failed,
                            Some(format!(
                                "{} (its other requests went through)",
                                job.errors.join("; ")
                            )),
                        ),
                        None if self.dry_run => (Next::DryRun, Some(DRY_RUN_REASON.to_string())),
                        // Every part was a repeat within its window: nothing was sent.
                        None if job.parts.is_empty() => (Next::Skipped, Some(job.notes.join("; "))),
                        None if !job.notes.is_empty() => {
                            (Next::Delivered, Some(job.notes.join("; ")))
                        }
                        None => (Next::Delivered, None),
                    };
                    Some(Settle::of(&job.event, next, reason, job.action.clone()))
                })
                .collect();
            (settles, through)
        };
        let full = {
            let mut unwritten = self.unwritten();
            unwritten.add(settles, endpoint);
            unwritten.through.extend(through);
            unwritten.settles.len() >= SETTLE_BATCH
        };
        if full {
            self.write_outcomes().await?;
        }
        Ok(())
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, Unwritten> {
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the outcomes decided so far (of events still leased by this dispatcher;
    /// `store::settle` writes them in one statement): the once-keys of what went
    /// through, then the events' transitions, each counted under its endpoint.
    async fn write_outcomes(&self) -> Result<(), DeliveryError> {
        let Unwritten {
            settles,
            endpoints,
            through,
        } = std::mem::take(&mut *self.unwritten());
        once::remember(self.ctx.pool, self.partner, self.jobs, &through).await?;
        if settles.is_empty() {
            return Ok(());
        }
        let (ctx, partner) = (self.ctx, self.partner);
        let applied = store::settle(ctx.pool, queue(partner), ctx.owner, &settles).await?;
        if applied < settles.len() as u64 {
            tracing::warn!(
                owner = ctx.owner,
                connection = partner.connection(),
                lost = settles.len() as u64 - applied,
                "Some events were claimed by another dispatcher after this one's lease ran out; their outcome is that dispatcher's."
            );
        }
        let direction = partner.direction().as_str();
        // Per final state: events going back to pending (retry, split, released, paused) are
        // not settled yet.
        for (s, endpoint) in settles.iter().zip(endpoints) {
            if s.next.state() != "pending" {
                metrics::counter!("gateway_delivery_events_total",
                    "connection" => partner.connection().to_string(), "direction" => direction,
                    "endpoint" => endpoint, "state" => s.next.state())
                .increment(1);
            }
        }
        Ok(())
    }

    /// Takes tokens for the round's requests, per endpoint. A first-round bulk request that
    /// finds no token and has room left is not sent now: its events go back to pending, so
    /// that the request that gets the next token carries them and whatever arrived meanwhile
    /// (full requests at the ceiling). The others wait for their token.
    async fn admit(
        &self,
        requests: &[Request],
        round: usize,
        stopped_now: &mut Vec<usize>,
    ) -> Result<Vec<(usize, Admission)>, DeliveryError> {
        if self.dry_run {
            return Ok((0..requests.len()).map(|i| (i, Admission::Now)).collect());
        }
        let mut by_endpoint: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            by_endpoint.entry(r.endpoint).or_default().push(i);
        }
        let mut out = Vec::with_capacity(requests.len());
        for (endpoint, indexes) in by_endpoint {
            // At most as many tokens as requests go out at once: a token taken now for a
            // request that waits for a free slot would let the partner see more than the limit
            // in a second (the others take theirs when their turn comes).
            let want = indexes
                .len()
                .min(self.ctx.settings.delivery.concurrent_requests);
            let grant = self
                .ctx
                .clients
                .limiters
                .try_take(self.ctx.pool, self.partner.connection(), endpoint, want)
                .await?;
            for (n, i) in indexes.into_iter().enumerate() {
                let r = &requests[i];
                if n < grant.granted {
                    out.push((i, Admission::Now));
                } else if round == 0 && r.bulk && !r.full && grant.granted < want {
                    let mut book = self.book();
                    for m in &r.members {
                        if book.stopped[m.job].is_none() {
                            book.stopped[m.job] = Some((
                                Next::Release,
                                format!(
                                    "held back for the {endpoint} rate limit, to fill a fuller request"
                                ),
                            ));
                            book.carry[m.job] = true;
                        }
                        stopped_now.push(m.job);
                    }
                    drop(book);
                    let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
                    let sooner = report.limited.is_none_or(|(w, _)| grant.wait < w);
                    if sooner {
                        report.limited = Some((grant.wait, r.endpoint));
                    }
                } else {
                    out.push((i, Admission::Wait));
                }
            }
        }
        // Members of a held-back request may share another request of this round (lists):
        // that one is not sent either, and so its other members are held back with it (else
        // they would go on to later rounds and be settled without this request). Repeated until
        // nothing more is held back, since those members may share further requests.
        let mut book = self.book();
        loop {
            let mut more = false;
            out.retain(|(i, _)| {
                let members = &requests[*i].members;
                let held = members
                    .iter()
                    .any(|m| matches!(book.stopped[m.job], Some((Next::Release, _))));
                if held {
                    for m in members {
                        if book.stopped[m.job].is_none() {
                            book.stopped[m.job] = Some((
                                Next::Release,
                                "held back: it shares a request with an event waiting for a rate limit"
                                    .to_string(),
                            ));
                            book.carry[m.job] = true;
                            stopped_now.push(m.job);
                            more = true;
                        }
                    }
                }
                !held
            });
            if !more {
                break;
            }
        }
        drop(book);
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// One request of round `round`: sent (after its token) unless the batch can no longer
    /// send; its answer booked, and the events it finished settled.
    async fn attempt(
        &self,
        request: &Request,
        admission: Admission,
        round: usize,
    ) -> Result<(), DeliveryError> {
        let (pool, clients) = (self.ctx.pool, self.ctx.clients);
        let verdicts = match self.unsendable() {
            Some(v) => v,
            None => {
                let got = match admission {
                    Admission::Now => true,
                    Admission::Wait => {
                        let (connection, direction) =
                            (self.partner.connection(), self.partner.direction());
                        // No longer than the lease leaves room for the request afterwards.
                        let max_wait = if self.dry_run {
                            Duration::MAX
                        } else {
                            self.lease.slack(self.needed()).unwrap_or_default()
                        };
                        clients
                            .limiters
                            .acquire(pool, connection, direction, request.endpoint, max_wait)
                            .await?
                    }
                };
                match self.unsendable() {
                    Some(v) => v,
                    None if !got => Unsent::Because(
                        Next::Release,
                        "not sent: its rate-limit token would come after the lease could safely hold",
                    ),
                    None => self.send(request, round).await?,
                }
            }
        };
        let verdicts = match verdicts {
            Unsent::No(v) => v,
            Unsent::Because(next, why) => answer::unsent(request, next, why),
        };
        // Book the answer; settle the events it finished.
        let finished: Vec<usize> = {
            let mut book = self.book();
            for (job, step) in verdicts.steps {
                if let Step::Stop(next, why) = step {
                    // The first reason an event stopped for is the one it keeps.
                    book.stopped[job].get_or_insert((next, why));
                }
            }
            let mut finished = Vec::new();
            for m in &request.members {
                book.pending[m.job] = book.pending[m.job].saturating_sub(1);
                let last = self.jobs[m.job].parts.len() <= round + 1;
                if book.pending[m.job] == 0 && (last || book.stopped[m.job].is_some()) {
                    finished.push(m.job);
                }
            }
            finished
        };
        self.settle_jobs(&finished, request.endpoint).await
    }

    /// What the lease must have left for a request to start: its timeout and a margin.
    fn needed(&self) -> Duration {
        Duration::from_millis(self.ctx.settings.delivery.request_timeout_ms + LEASE_MARGIN_MS)
    }

    /// Why a request cannot be sent now, if it cannot.
    fn unsendable(&self) -> Option<Unsent> {
        if self.paused.load(Ordering::Relaxed) {
            return Some(Unsent::Because(
                Next::Pause,
                "not sent: the connection is paused",
            ));
        }
        if !self.dry_run && !self.lease.allows(self.needed()) {
            // Another dispatcher may claim these events before the answer could arrive.
            return Some(Unsent::Because(
                Next::Release,
                "not sent: the lease might run out before the request's timeout",
            ));
        }
        None
    }

    /// Sends one request of round `round` (or, in dry-run mode, does not), reads the answer,
    /// records the attempt.
    async fn send(&self, request: &Request, round: usize) -> Result<Unsent, DeliveryError> {
        let (pool, clients) = (self.ctx.pool, self.ctx.clients);
        let connection = self.partner.connection();
        let direction = self.partner.direction();
        let (reply, verdicts) = if self.dry_run {
            (None, answer::dry_run(request))
        } else {
            let credential = request.credential.as_ref().map(|(k, v)| (*k, v.as_str()));
            let method = match request.method {
                "DELETE" => reqwest::Method::DELETE,
                _ => reqwest::Method::POST,
            };
            let body = request.sends_body.then(|| request.wire.clone());
            let reply = call(clients, method, &request.url, credential, body).await;
            let v = answer::read(
                self.partner,
                request,
                &reply,
                self.jobs,
                &self.policy,
                &clients.jitter,
            );
            (Some(reply), v)
        };
        let event_ids: Vec<i64> = request
            .members
            .iter()
            .map(|m| self.jobs[m.job].event.id)
            .collect();
        let attempt = request
            .members
            .iter()
            .map(|m| self.jobs[m.job].event.attempts)
            .max()
            .unwrap_or(1);
        // The users of its single or bulk calls: what later batches are held back by.
        let user_hashes = if self.dry_run {
            None
        } else {
            window::hashes(
                self.partner,
                request
                    .members
                    .iter()
                    .filter_map(|m| self.jobs[m.job].parts.get(round)),
            )
        };
        store::record_attempt(
            pool,
            &Attempt {
                connection,
                direction,
                endpoint: request.endpoint,
                method: request.method,
                url: &request.url,
                request_headers: &request.audit_headers,
                request_body: request.sends_body.then_some(request.wire.as_str()),
                attempt,
                dry_run: self.dry_run,
                status: reply.as_ref().and_then(Reply::status),
                response_headers: reply.as_ref().and_then(|r| r.headers.as_ref()),
                response_body: reply.as_ref().and_then(|r| r.body.as_deref()),
                duration: reply.as_ref().map(|r| r.duration),
                outcome: verdicts.outcome,
                error: verdicts.error.as_deref(),
                event_ids: &event_ids,
                user_hashes: user_hashes.as_deref(),
            },
        )
        .await?;
        let labels = [
            ("connection", connection.to_string()),
            ("direction", direction.as_str().to_string()),
            ("endpoint", request.endpoint.to_string()),
        ];
        if let Some(reply) = &reply {
            metrics::histogram!("gateway_delivery_request_seconds", &labels)
                .record(reply.duration.as_secs_f64());
            if reply.status() == Some(429) {
                metrics::counter!("gateway_delivery_rate_limited_total", &labels).increment(1);
                // Iterable sends no Retry-After: the shared bucket slows down instead.
                clients
                    .limiters
                    .cut(pool, connection, request.endpoint)
                    .await?;
            }
            let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
            match &verdicts.refusal {
                Some(reason) => {
                    self.paused.store(true, Ordering::Relaxed);
                    report.refused = Some((reason, verdicts.error.clone().unwrap_or_default()));
                }
                None if reply.status().is_some() => report.accepted_credentials = true,
                None => {}
            }
        }
        let mut with_outcome = labels.to_vec();
        with_outcome.push(("outcome", verdicts.outcome.as_str().to_string()));
        metrics::counter!("gateway_delivery_attempts_total", &with_outcome).increment(1);
        if let Some(error) = &verdicts.error {
            tracing::warn!(
                connection,
                direction = direction.as_str(),
                endpoint = request.endpoint,
                events = event_ids.len(),
                %error,
                "The partner did not take every event."
            );
        }
        Ok(Unsent::No(verdicts))
    }
}
