//! Group commit: concurrent inbound requests share one transaction and one fsync.
//!
//! Handlers hand their [`InboundRecord`] to a [`GroupCommitter`] with a deadline and wait. Each
//! writer task takes every record that is waiting (up to `max_group_events`), writes them in one
//! transaction and answers each handler only after the commit. While one writer commits, the
//! next collects the following group, so commits overlap and no request waits for a timer.
//!
//! What the audit log says is what the client got:
//! * the enqueue is inside the request's deadline, and the queue is bounded in jobs and in bytes;
//! * a job whose handler gave up before a writer took it is not written as sent;
//! * a writer answers by the earliest deadline of its group; a write still running then (a
//!   frozen database) goes on in the background, and once it has finished the requests it
//!   committed are re-recorded as the 503 their clients got. The same happens to a group whose
//!   commit failed for a reason of the database (the COMMIT may have landed);
//! * every request answered 503 without a row (the database down, the deadline over before a
//!   writer took it, a failed write) is recorded as a 503 once the database is back, with its
//!   body cut to 1 KiB and no events ([`Backlog`], bounded; what does not fit is counted, in
//!   one summary row and in `gateway_inbound_unaudited_total`).
//!
//! One request's data never fails the others: when a group fails for a reason that belongs to
//! the data (an SQLSTATE of class 22, 23 or 54, or a value the driver cannot encode), the group
//! is split in halves and retried until the request at fault is alone; it is then recorded as
//! refused (400 `unstorable`, the database's reason) and its events are not stored.

use super::health::DatabaseHealth;
use super::sealed::SealedEvents;
use super::{message_key, Direction, EventState, InboundRecord};
use sqlx::types::Json;
use sqlx::PgPool;
use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a record was not committed: the request is answered 503 and retried by its sender.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("the database did not commit in time")]
    Timeout,
    #[error("the database cannot commit: {0}")]
    Unavailable(String),
    #[error("the gateway is shutting down")]
    Closed,
}

impl CommitError {
    /// A short reason for the client's 503 message.
    pub fn reason(&self) -> &'static str {
        match self {
            CommitError::Timeout => "the commit timed out",
            CommitError::Unavailable(_) => "the database is unavailable",
            CommitError::Closed => "the gateway is shutting down",
        }
    }
}

/// What became of a committed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Stored as it was handed over.
    AsSent,
    /// The database refused this request's data; it was stored as refused (400 `unstorable`)
    /// with this reason, without its events.
    Refused(String),
}

/// Sizes of the commit queue and its groups.
#[derive(Debug, Clone, Copy)]
pub struct CommitterSettings {
    pub writers: usize,
    pub max_group_events: usize,
    /// Most requests waiting for a writer.
    pub queue_requests: usize,
    /// Most bytes (estimated: twice the body, plus 1 KiB) waiting for a writer.
    pub queue_bytes: usize,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

type Reply = Result<Committed, CommitError>;

struct Job {
    record: InboundRecord,
    deadline: Instant,
    /// QUEUED → TAKEN (by a writer) or QUEUED → ABANDONED (by the handler, at its deadline).
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Reply>,
    bytes_permit: OwnedSemaphorePermit,
}

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
    bytes: Arc<Semaphore>,
    queue_bytes: usize,
    health: Arc<DatabaseHealth>,
    backlog: Arc<Backlog>,
}

impl GroupCommitter {
    /// Starts the writer tasks (and the reconciler) on `pool`.
    pub fn spawn(
        pool: PgPool,
        settings: CommitterSettings,
        health: Arc<DatabaseHealth>,
    ) -> GroupCommitter {
        let (tx, rx) = mpsc::channel::<Job>(settings.queue_requests.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let backlog = Arc::new(Backlog::default());
        let ids = Arc::new(RequestIds::default());
        let reconciler =
            Reconciler::spawn(pool.clone(), ids.clone(), health.clone(), backlog.clone());
        for _ in 0..settings.writers.max(1) {
            let (pool, rx, health, reconciler, backlog, ids) = (
                pool.clone(),
                rx.clone(),
                health.clone(),
                reconciler.clone(),
                backlog.clone(),
                ids.clone(),
            );
            tokio::spawn(async move {
                while let Some(group) = next_group(&rx, settings.max_group_events, &backlog).await {
                    run_group(&pool, &ids, group, &health, &reconciler, &backlog).await;
                }
            });
        }
        // Permits are asked for as a u32.
        let queue_bytes = settings.queue_bytes.clamp(1, u32::MAX as usize);
        GroupCommitter {
            tx,
            bytes: Arc::new(Semaphore::new(queue_bytes)),
            queue_bytes,
            health,
            backlog,
        }
    }

    pub fn health(&self) -> &Arc<DatabaseHealth> {
        &self.health
    }

    /// Commits one record with its events by `deadline`; returns only once they are durable
    /// (or refused for their data, and that refusal durable). An error means the client gets
    /// 503: nothing of the request is recorded as accepted, and it is recorded as a 503 once
    /// the database can take it.
    pub async fn commit(&self, mut record: InboundRecord, deadline: Instant) -> Reply {
        // In the request's task: the writer, one at a time per group, then only copies bytes.
        record.seal();
        if !self.health.is_up() {
            self.backlog.push(record, "the database was down");
            return Err(CommitError::Unavailable("the database is down".into()));
        }
        let size = (record.body.len().saturating_mul(2) + 1024).min(self.queue_bytes);
        let permit = match tokio::time::timeout_at(
            deadline,
            self.bytes.clone().acquire_many_owned(size as u32),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(CommitError::Closed),
            Err(_) => {
                self.backlog.push(record, "the commit queue was full");
                return Err(CommitError::Timeout);
            }
        };
        let slot = match tokio::time::timeout_at(deadline, self.tx.reserve()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(CommitError::Closed),
            Err(_) => {
                self.backlog.push(record, "the commit queue was full");
                return Err(CommitError::Timeout);
            }
        };
        let (reply, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        slot.send(Job {
            record,
            deadline,
            state: state.clone(),
            reply,
            bytes_permit: permit,
        });
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(reply) => reply.unwrap_or(Err(CommitError::Closed)),
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // The writer that meets the job records it as the 503 it is.
                    return Err(CommitError::Timeout);
                }
                // A writer has it: it answers by the group's deadline, which is not later
                // than ours; wait for that answer (bounded, should the writer be stuck).
                match tokio::time::timeout(Duration::from_secs(2), rx).await {
                    Ok(Ok(reply)) => reply,
                    _ => Err(CommitError::Timeout),
                }
            }
        }
    }
}

/// Waits for one job, then takes whatever else is already waiting. Jobs whose handler gave up,
/// or whose deadline is (all but) over, are answered and kept for the backlog instead.
async fn next_group(
    rx: &Mutex<mpsc::Receiver<Job>>,
    max_events: usize,
    backlog: &Backlog,
) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let take = |job: Job| -> Option<Job> {
        if job
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            backlog.push(job.record, "the commit did not start in time");
            return None;
        }
        if job.deadline <= Instant::now() + Duration::from_millis(5) {
            let _ = job.reply.send(Err(CommitError::Timeout));
            backlog.push(job.record, "the commit did not start in time");
            return None;
        }
        Some(job)
    };
    let mut group = Vec::new();
    let mut events = 0;
    while group.is_empty() {
        if let Some(job) = take(rx.recv().await?) {
            events = job.record.events.len().max(1);
            group.push(job);
        }
    }
    while events < max_events {
        match rx.try_recv() {
            Ok(job) => {
                if let Some(job) = take(job) {
                    events += job.record.events.len().max(1);
                    group.push(job);
                }
            }
            Err(_) => break,
        }
    }
    Some(group)
}

/// Writes one group and answers its handlers by the group's earliest deadline.
async fn run_group(
    pool: &PgPool,
    ids: &Arc<RequestIds>,
    group: Vec<Job>,
    health: &DatabaseHealth,
    reconciler: &Reconciler,
    backlog: &Backlog,
) {
    let (mut records, mut replies) = (Vec::with_capacity(group.len()), Vec::new());
    let deadline = group
        .iter()
        .map(|j| j.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    for job in group {
        records.push(job.record);
        replies.push((job.reply, job.bytes_permit));
    }
    if !health.is_up() {
        for ((reply, _), record) in replies.into_iter().zip(records) {
            let _ = reply.send(Err(CommitError::Unavailable("the database is down".into())));
            backlog.push(record, "the database was down");
        }
        return;
    }
    let started = std::time::Instant::now();
    let n = records.len();
    let mut write = tokio::spawn(write_isolating(pool.clone(), ids.clone(), records));
    // The answer comes by the deadline, or as soon as the database is known to be down (the
    // write goes on; what it commits is re-recorded as the 503 its clients got).
    let finished = tokio::select! {
        done = &mut write => Ok(done),
        _ = tokio::time::sleep_until(deadline) => Err(()),
        _ = health.went_down() => Err(()),
    };
    match finished {
        Ok(Ok(mut result)) => {
            metrics::histogram!("gateway_group_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("gateway_group_commit_requests").record(n as f64);
            match &result.failure {
                None => health.mark_up(),
                Some(why) => health.mark_down(why),
            }
            for ((reply, _), verdict) in replies.into_iter().zip(&result.verdicts) {
                let _ = reply.send(verdict.reply());
            }
            if !result.unwritten.is_empty() {
                reconciler.settle(std::mem::take(&mut result.unwritten));
            }
        }
        Ok(Err(panicked)) => {
            tracing::error!(error = %panicked, "A group commit panicked.");
            for (reply, _) in replies {
                let _ = reply.send(Err(CommitError::Unavailable("internal error".into())));
            }
        }
        Err(()) => {
            health.mark_down(&format!(
                "a commit did not finish within the commit timeout ({} ms after it started)",
                started.elapsed().as_millis()
            ));
            for (reply, _) in replies {
                let _ = reply.send(Err(CommitError::Timeout));
            }
            reconciler.after(write);
        }
    }
}

/// The outcome of one record in [`write_isolating`].
#[derive(Debug)]
enum Verdict {
    Committed(i64),
    Refused(i64, String),
    Unavailable(String),
}

impl Verdict {
    fn reply(&self) -> Reply {
        match self {
            Verdict::Committed(_) => Ok(Committed::AsSent),
            Verdict::Refused(_, why) => Ok(Committed::Refused(why.clone())),
            Verdict::Unavailable(why) => Err(CommitError::Unavailable(why.clone())),
        }
    }

    fn committed_id(&self) -> Option<i64> {
        match self {
            Verdict::Committed(id) | Verdict::Refused(id, _) => Some(*id),
            Verdict::Unavailable(_) => None,
        }
    }
}

/// A record whose write failed for a reason of the database, and the id it was written with
/// (when the failure came after the ids were allocated: the COMMIT may have landed).
type Unwritten = (Option<i64>, InboundRecord);

#[derive(Debug)]
struct GroupResult {
    verdicts: Vec<Verdict>,
    /// The records answered 503 because the database, not their data, failed.
    unwritten: Vec<Unwritten>,
    /// Set when the database, not the data, failed.
    failure: Option<String>,
}

/// Whether an error belongs to the data written (so that retrying without it helps) rather
/// than to the database or the network.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Writes the records, isolating the ones whose data the database refuses (see the module
/// documentation). Database failures are not retried.
async fn write_isolating(
    pool: PgPool,
    cache: Arc<RequestIds>,
    records: Vec<InboundRecord>,
) -> GroupResult {
    let mut verdicts: Vec<Option<Verdict>> = (0..records.len()).map(|_| None).collect();
    let mut ids_of: Vec<Option<i64>> = vec![None; records.len()];
    let mut pending: Vec<Vec<usize>> = vec![(0..records.len()).collect()];
    let mut failure = None;
    while let Some(part) = pending.pop() {
        let refs: Vec<&InboundRecord> = part.iter().map(|i| &records[*i]).collect();
        let mut ids = Vec::new();
        match write_group_ids(&pool, Some(&cache), &refs, &mut ids).await {
            Ok(()) => {
                for (i, id) in part.iter().zip(ids) {
                    verdicts[*i] = Some(Verdict::Committed(id));
                }
            }
            Err(e) if is_data_error(&e) && part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                pending.push(b.to_vec());
                pending.push(a.to_vec());
            }
            Err(e) if is_data_error(&e) => {
                let i = part[0];
                let why = format!("the database cannot store this request: {}", db_message(&e));
                // The reason's detail may quote the data: it goes to the audit log, not the logs.
                let code = match &e {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                };
                tracing::warn!(route = %records[i].route, sqlstate = ?code, "A request's data was refused by the database; it alone is refused.");
                match write_refusal(&pool, &cache, &records[i], &why).await {
                    Ok(id) => verdicts[i] = Some(Verdict::Refused(id, why)),
                    Err(e) => {
                        failure = Some(format!("the refusal could not be recorded: {e}"));
                        break;
                    }
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, requests = part.len(), "Group commit failed.");
                for (i, id) in part.iter().zip(ids) {
                    ids_of[*i] = Some(id);
                }
                failure = Some(why);
                break;
            }
        }
    }
    // Parts committed before a failure stay committed and are answered so; the rest 503.
    let why = failure.clone().unwrap_or_default();
    let mut unwritten = Vec::new();
    let verdicts = verdicts
        .into_iter()
        .zip(records)
        .zip(ids_of)
        .map(|((verdict, record), id)| {
            verdict.unwrap_or_else(|| {
                unwritten.push((id, record));
                Verdict::Unavailable(why.clone())
            })
        })
        .collect();
    GroupResult {
        verdicts,
        unwritten,
        failure,
    }
}

/// The database's message (and detail) for a data error, without anything of the driver's.
fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            match pg.and_then(|p| p.detail()) {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            }
        }
        other => other.to_string(),
    }
    .replace('\0', "\u{fffd}")
}

/// Records a request whose data the database refused: as a 400 `unstorable`, without its
/// events; if even that is refused, without its headers and with a plain route.
async fn write_refusal(
    pool: &PgPool,
    ids: &RequestIds,
    record: &InboundRecord,
    why: &str,
) -> Result<i64, sqlx::Error> {
    let mut refused = InboundRecord {
        route: record.route.replace('\0', "\u{fffd}"),
        connection: record.connection.clone(),
        direction: record.direction,
        status: 400,
        error_code: Some("unstorable".into()),
        error_message: Some(why.to_string()),
        headers: record.headers.clone(),
        content_encoding: record.content_encoding.clone(),
        body: record.body.clone(),
        body_size: record.body_size,
        body_truncated: record.body_truncated,
        events: Vec::new(),
        sealed: None,
    };
    let mut id = Vec::new();
    match write_group_ids(pool, Some(ids), &[&refused], &mut id).await {
        Err(e) if is_data_error(&e) => plain(&mut refused),
        other => return other.map(|()| id[0]),
    }
    id.clear();
    write_group_ids(pool, Some(ids), &[&refused], &mut id).await?;
    Ok(id[0])
}

/// A record stripped to what any database takes: no headers, a printable route.
fn plain(record: &mut InboundRecord) {
    record.headers = serde_json::json!({});
    record.route = record
        .route
        .chars()
        .filter(char::is_ascii_graphic)
        .collect();
    record.content_encoding = None;
}

/// Requests answered 503 that have no row yet, written once the database is back. Bounded:
/// beyond [`Backlog::MAX_RECORDS`] or [`Backlog::MAX_BYTES`] they are only counted.
#[derive(Default)]
struct Backlog {
    records: std::sync::Mutex<(VecDeque<InboundRecord>, usize, u64)>,
}

impl Backlog {
    const MAX_RECORDS: usize = 10_000;
    const MAX_BYTES: usize = 16 << 20;
    /// Bytes of body kept of a request recorded late.
    const KEEP: usize = 1024;

    /// What a kept record counts against [`Backlog::MAX_BYTES`].
    fn cost(record: &InboundRecord) -> usize {
        record.body.len() + record.headers.to_string().len() + 512
    }

    /// Keeps `record` as the 503 it was answered with.
    fn push(&self, mut record: InboundRecord, why: &str) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let was = match (record.status, &record.error_code) {
            (200, _) => String::new(),
            (s, code) => format!(
                " (it was to be recorded as {s} {})",
                code.as_deref().unwrap_or("")
            ),
        };
        record.status = 503;
        record.error_code = Some("unavailable".into());
        record.error_message = Some(format!(
            "answered 503 at {at}: {why}; recorded once the database was back{was}"
        ));
        record.events = Vec::new();
        if record.body.len() > Self::KEEP {
            record.body.truncate(Self::KEEP);
            record.body_truncated = true;
        }
        let size = Self::cost(&record);
        let mut kept = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if kept.0.len() >= Self::MAX_RECORDS || kept.1 + size > Self::MAX_BYTES {
            kept.2 += 1;
            metrics::counter!("gateway_inbound_unaudited_total").increment(1);
            return;
        }
        kept.1 += size;
        kept.0.push_back(record);
    }

    /// Up to `n` records, and (once) how many did not fit.
    fn take(&self, n: usize) -> (Vec<InboundRecord>, u64) {
        let mut kept = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let k = n.min(kept.0.len());
        let taken: Vec<InboundRecord> = kept.0.drain(..k).collect();
        kept.1 = kept
            .1
            .saturating_sub(taken.iter().map(Self::cost).sum::<usize>());
        (taken, std::mem::take(&mut kept.2))
    }

    /// Puts records back at the front (their write failed).
    fn put_back(&self, records: Vec<InboundRecord>, dropped: u64) {
        let mut kept = self.records.lock().unwrap_or_else(|e| e.into_inner());
        for r in records.into_iter().rev() {
            kept.1 += Self::cost(&r);
            kept.0.push_front(r);
        }
        kept.2 += dropped;
    }
}

/// Settles, once their writes are over, requests whose clients were answered 503: the ones
/// committed after (or perhaps after) the answer are re-recorded as 503; the ones never written
/// go to the backlog, which this task writes whenever the database is up. Events committed
/// with a request re-recorded as 503 stay: the sender retries, and the retry's events are
/// duplicates of them (by messageId), so they are delivered once.
#[derive(Clone)]
struct Reconciler {
    tx: mpsc::UnboundedSender<Reconcile>,
}

enum Reconcile {
    Unwritten(Vec<Unwritten>),
    After(tokio::task::JoinHandle<GroupResult>),
}

impl Reconciler {
    fn spawn(
        pool: PgPool,
        ids: Arc<RequestIds>,
        health: Arc<DatabaseHealth>,
        backlog: Arc<Backlog>,
    ) -> Reconciler {
        let (tx, mut rx) = mpsc::unbounded_channel::<Reconcile>();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    job = rx.recv() => match job {
                        None => return,
                        Some(Reconcile::Unwritten(records)) => {
                            settle(&pool, Vec::new(), records, &backlog).await
                        }
                        Some(Reconcile::After(write)) => {
                            if let Ok(result) = write.await {
                                let committed =
                                    result.verdicts.iter().filter_map(Verdict::committed_id).collect();
                                settle(&pool, committed, result.unwritten, &backlog).await;
                            }
                        }
                    },
                    _ = tick.tick() => {
                        if health.is_up() {
                            flush(&pool, &ids, &backlog).await;
                        }
                    }
                }
            }
        });
        Reconciler { tx }
    }

    fn settle(&self, unwritten: Vec<Unwritten>) {
        let _ = self.tx.send(Reconcile::Unwritten(unwritten));
    }

    fn after(&self, write: tokio::task::JoinHandle<GroupResult>) {
        let _ = self.tx.send(Reconcile::After(write));
    }
}

/// Marks the committed requests as answered 503; of the unwritten ones, those whose COMMIT
/// landed after all are marked the same way, the others go to the backlog. Retries until the
/// database takes it.
async fn settle(pool: &PgPool, committed: Vec<i64>, unwritten: Vec<Unwritten>, backlog: &Backlog) {
    let ids: Vec<i64> = committed
        .iter()
        .copied()
        .chain(unwritten.iter().filter_map(|(id, _)| *id))
        .collect();
    let mut found: HashSet<i64> = HashSet::new();
    if !ids.is_empty() {
        loop {
            let done = sqlx::query_scalar::<_, i64>(
                "UPDATE inbound_request
                    SET error_message = 'answered 503: the commit did not complete in time; it completed later'
                                        || CASE WHEN status <> 200 THEN ' (recorded first as ' || status
                                                || coalesce(': ' || error_message, '') || ')' ELSE '' END,
                        status = 503, error_code = 'unavailable'
                  WHERE id = ANY($1) AND status <> 503
              RETURNING id",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await;
            match done {
                Ok(updated) => {
                    if !updated.is_empty() {
                        tracing::warn!(
                            requests = updated.len(),
                            "Requests committed after their 503 are now recorded as 503."
                        );
                    }
                    found.extend(updated);
                    break;
                }
                Err(e) if pool.is_closed() => {
                    tracing::error!(error = %e, requests = ids.len(), "Cannot re-record requests answered 503: the pool is closed.");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    for (id, record) in unwritten {
        if !id.is_some_and(|id| found.contains(&id)) {
            backlog.push(record, "the commit failed");
        }
    }
}

/// Writes the backlog while the database takes it.
async fn flush(pool: &PgPool, ids: &RequestIds, backlog: &Backlog) {
    loop {
        let (mut records, dropped) = backlog.take(500);
        if records.is_empty() && dropped == 0 {
            return;
        }
        if dropped > 0 {
            records.push(InboundRecord {
                route: "*".into(),
                connection: None,
                direction: Direction::SegmentToIterable,
                status: 503,
                error_code: Some("unavailable".into()),
                error_message: Some(format!(
                    "{dropped} requests answered 503 while the database was down are not recorded one by one (the backlog was full)"
                )),
                headers: serde_json::json!({}),
                content_encoding: None,
                body: Vec::new(),
                body_size: 0,
                body_truncated: false,
                events: Vec::new(),
                sealed: None,
            });
        }
        let refs: Vec<&InboundRecord> = records.iter().collect();
        match write_group_ids(pool, Some(ids), &refs, &mut Vec::new()).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) => {
                // One of them will not go in as it is: one by one, plain if need be.
                for mut r in records {
                    if write_group_ids(pool, Some(ids), &[&r], &mut Vec::new())
                        .await
                        .is_err()
                    {
                        plain(&mut r);
                        let _ = write_group_ids(pool, Some(ids), &[&r], &mut Vec::new()).await;
                    }
                }
            }
            Err(_) => {
                let dropped = if dropped > 0 {
                    records.pop();
                    dropped
                } else {
                    0
                };
                backlog.put_back(records, dropped);
                return;
            }
        }
    }
}

/// Writes the records in one transaction: requests, first sightings of messageIds, events.
pub async fn write_group(pool: &PgPool, records: &[&InboundRecord]) -> Result<(), sqlx::Error> {
    write_group_ids(pool, None, records, &mut Vec::new()).await
}

/// Request ids taken from `inbound_request`'s sequence in blocks, for everything one
/// [`GroupCommitter`] writes: a group's ids are then known before its statement, without a
/// round trip of their own. A group commit was two round trips, the ids and the statement;
/// under load each waits for the database and then for this process to be scheduled again, and
/// that wait is what the tail of the acknowledgement latency is made of. Within a process the
/// ids still follow the order the requests were written in (one block at a time); ids are
/// never handed out twice, and those of a block a process does not use (it stops) are gaps, as
/// rolled-back inserts leave.
#[derive(Default)]
struct RequestIds {
    /// Taken from the sequence and not handed out yet, in order. An async lock: a writer that
    /// finds it empty holds it while fetching the next block, so blocks are used one by one.
    left: Mutex<VecDeque<i64>>,
}

impl RequestIds {
    /// Ids taken from the sequence at once.
    const BLOCK: usize = 1024;

    /// `n` ids, in increasing order.
    async fn take(&self, pool: &PgPool, n: usize) -> Result<Vec<i64>, sqlx::Error> {
        let mut left = self.left.lock().await;
        if left.len() < n {
            left.extend(next_ids(pool, n.max(Self::BLOCK)).await?);
        }
        Ok(left.drain(..n).collect())
    }
}

/// `n` new ids from `inbound_request`'s sequence, in increasing order.
async fn next_ids(pool: &PgPool, n: usize) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('inbound_request', 'id')) FROM generate_series(1, $1)",
    )
    .bind(n as i32)
    .fetch_all(pool)
    .await
}

/// [`write_group`]; `ids` receives the requests' ids as soon as they are allocated (from
/// `cache` when given: see [`RequestIds`]).
///
/// Two round trips, one with `cache`: the ids, then one statement that writes the requests,
/// the first sightings of their messageIds and the events, and commits (a statement outside a
/// transaction is its own); one more when the group carries a messageId seen before (see
/// below). Each round trip waits for the database and then for this process to be scheduled
/// again, which under load is what the tail of the acknowledgement latency is made of; as
/// BEGIN, three INSERTs and COMMIT it was six.
async fn write_group_ids(
    pool: &PgPool,
    cache: Option<&RequestIds>,
    records: &[&InboundRecord],
    ids: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    // Allocated first, so that a write whose COMMIT may have landed unseen can be looked up by
    // them (the reconciler).
    *ids = match cache {
        Some(cache) => cache.take(pool, records.len()).await?,
        None => next_ids(pool, records.len()).await?,
    };
    let ids: &[i64] = ids;
    // Each request's events, as normalised, once: one blob of JSON lines beside its raw body
    // (migration 20261202000800); the event rows say where their line is.
    let blobs: Vec<Cow<SealedEvents>> = records
        .iter()
        .map(|r| match &r.sealed {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => SealedEvents::of(&r.events).map(Cow::Owned),
        })
        .collect::<Result<_, _>>()
        .map_err(|why| sqlx::Error::Encode(why.into()))?;

    // First sightings: a messageId is claimed by its first pending event, in this group (here)
    // and across groups (message_seen, in the statement): `key` is set for those candidates
    // only, and `duplicate` is what they say when message_seen had it already.
    let mut in_group = HashSet::new();
    let mut events = EventColumns::default();
    for (ri, r) in records.iter().enumerate() {
        let connection = r.connection.as_deref().unwrap_or("");
        for (ei, e) in r.events.iter().enumerate() {
            let (state, reason, key, duplicate) = if e.state != EventState::Pending {
                (e.state, e.state_reason.clone(), None, None)
            } else {
                let why = || {
                    format!(
                        "duplicate: messageId {:?} was already accepted",
                        e.message_id
                    )
                };
                if in_group.insert((connection, r.direction, e.message_id.as_str())) {
                    let key = message_key(connection, r.direction, &e.message_id);
                    (EventState::Pending, None, Some(key), Some(why()))
                } else {
                    (EventState::Skipped, Some(why()), None, None)
                }
            };
            let (offset, length) = blobs[ri].lines[ei];
            events.request.push(ids[ri]);
            events.connection.push(connection);
            events.direction.push(r.direction.as_str());
            events.message_id.push(e.message_id.as_str());
            events.call_type.push(e.call_type.as_deref());
            events.user_key.push(e.user_key.as_str());
            events.at.push(offset);
            events.len.push(length);
            events.email.push(blobs[ri].emails[ei].as_deref());
            events.state.push(state.as_str());
            events.reason.push(reason);
            events.key.push(key);
            events.duplicate.push(duplicate);
        }
    }

    // Most groups carry no messageId seen before: a plain insert into message_seen lets its
    // unique index check each key while inserting it. `ON CONFLICT DO NOTHING` costs a probe of
    // the index before the insert and a speculative-insertion lock around it, which `perf` put
    // at half of message_seen's cost and a tenth of PostgreSQL's CPU while ingesting. A group
    // that does carry one is refused whole (unique_violation, nothing written) and written again
    // with ON CONFLICT, which marks its duplicates.
    match write_statement(GROUP_FIRST_SIGHTINGS, ids, records, &blobs, &events)
        .execute(pool)
        .await
    {
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("message_seen_pkey") => {
            write_statement(GROUP_WITH_DUPLICATES, ids, records, &blobs, &events)
                .execute(pool)
                .await?;
        }
        done => {
            done?;
        }
    }
    Ok(())
}

/// The group's statement: requests, first sightings of messageIds (`$SEEN`), events. An event
/// whose key is not in `seen` is a duplicate.
macro_rules! group_statement {
    ($seen:literal) => {
        concat!(
            "WITH requests AS (
             INSERT INTO inbound_request (id, route, connection, direction, status, error_code,
                                          error_message, headers, content_encoding, body, events,
                                          body_size, body_truncated, events_body)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[],
                                  $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::bytea[],
                                  $11::int[], $12::bigint[], $13::boolean[], $14::bytea[])),
         seen AS (
             INSERT INTO message_seen (key)
             SELECT k FROM UNNEST($26::uuid[]) AS t(k) WHERE k IS NOT NULL ",
            $seen,
            "
             RETURNING key)
         INSERT INTO event (request_id, connection, direction, message_id, call_type, user_key,
                            payload_at, payload_len, email, state, state_reason)
         SELECT r, c, d, m, t, u, a, l, lower(em),
                CASE WHEN k IS NULL OR k IN (SELECT key FROM seen) THEN s ELSE 'skipped' END,
                CASE WHEN k IS NULL OR k IN (SELECT key FROM seen) THEN why ELSE dup END
         FROM UNNEST($15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[],
                     $20::text[], $21::int[], $22::int[], $23::text[], $24::text[], $25::text[],
                     $26::uuid[], $27::text[])
              AS x(r, c, d, m, t, u, a, l, em, s, why, k, dup)"
        )
    };
}
/// Every key new: refused with unique_violation otherwise.
const GROUP_FIRST_SIGHTINGS: &str = group_statement!("");
/// Keys seen before are left out of `seen`, so their events are skipped as duplicates.
const GROUP_WITH_DUPLICATES: &str = group_statement!("ON CONFLICT DO NOTHING");

/// [`GROUP_FIRST_SIGHTINGS`] or [`GROUP_WITH_DUPLICATES`] with the group bound.
fn write_statement<'q>(
    sql: &'static str,
    ids: &'q [i64],
    records: &'q [&InboundRecord],
    blobs: &'q [Cow<SealedEvents>],
    events: &'q EventColumns<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(ids)
        .bind(records.iter().map(|r| r.route.as_str()).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.connection.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.direction.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.status as i16).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.error_code.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.error_message.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| Json(&r.headers)).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.content_encoding.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.body.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.events.len() as i32)
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.body_size as i64)
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.body_truncated).collect::<Vec<_>>())
        .bind(blobs.iter().map(|b| b.bytes.as_deref()).collect::<Vec<_>>())
        .bind(&events.request)
        .bind(&events.connection)
        .bind(&events.direction)
        .bind(&events.message_id)
        .bind(&events.call_type)
        .bind(&events.user_key)
        .bind(&events.at)
        .bind(&events.len)
        .bind(&events.email)
        .bind(&events.state)
        .bind(&events.reason)
        .bind(&events.key)
        .bind(&events.duplicate)
}

/// The event rows of a group, column by column (as `UNNEST` takes them).
#[derive(Default)]
struct EventColumns<'a> {
    request: Vec<i64>,
    connection: Vec<&'a str>,
    direction: Vec<&'static str>,
    message_id: Vec<&'a str>,
    call_type: Vec<Option<&'a str>>,
    user_key: Vec<&'a str>,
    at: Vec<i32>,
    len: Vec<i32>,
    email: Vec<Option<&'a str>>,
    state: Vec<&'static str>,
    reason: Vec<Option<String>>,
    /// The message key of the first pending event of each messageId in the group.
    key: Vec<Option<uuid::Uuid>>,
    /// What such an event says when the messageId was accepted before.
    duplicate: Vec<Option<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: usize) -> InboundRecord {
        InboundRecord {
            route: "/v1/track".into(),
            connection: Some("shop".into()),
            direction: Direction::SegmentToIterable,
            status: 200,
            error_code: None,
            error_message: None,
            headers: serde_json::json!({}),
            content_encoding: None,
            body: vec![b'x'; body],
            body_size: body,
            body_truncated: false,
            events: Vec::new(),
            sealed: None,
        }
    }

    #[test]
    fn the_backlog_keeps_503s_bounded_and_counts_the_rest() {
        let backlog = Backlog::default();
        backlog.push(record(5000), "the database was down");
        let (taken, dropped) = backlog.take(10);
        assert_eq!((taken.len(), dropped), (1, 0));
        let r = &taken[0];
        assert_eq!(
            (r.status, r.error_code.as_deref()),
            (503, Some("unavailable"))
        );
        assert_eq!((r.body.len(), r.body_truncated), (Backlog::KEEP, true));
        assert!(r
            .error_message
            .as_deref()
            .unwrap()
            .contains("the database was down"));
        for _ in 0..Backlog::MAX_RECORDS + 3 {
            backlog.push(record(10), "x");
        }
        let (taken, dropped) = backlog.take(usize::MAX);
        assert_eq!((taken.len(), dropped), (Backlog::MAX_RECORDS, 3));
        backlog.put_back(taken, dropped);
        assert_eq!(backlog.take(1).1, 3, "counts survive a failed write");
    }

    #[test]
    fn only_data_errors_are_isolated() {
        assert!(!is_data_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_data_error(&sqlx::Error::Io(std::io::Error::other(
            "refused"
        ))));
    }
}
