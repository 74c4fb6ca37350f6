//! Group commit: concurrent inbound requests share one transaction and one fsync.
//!
//! Handlers hand their [`InboundRecord`] to a [`GroupCommitter`] with a deadline and wait. Each
//! writer task takes every record that is waiting (up to `max_group_events`), writes them in one
//! transaction and answers each handler only after the commit. While one writer commits, the
//! next collects the following group, so commits overlap and no request waits for a timer.
//!
//! What the audit log says is what the client got:
//! * the enqueue is inside the request's deadline, and the queue is bounded in jobs and in bytes;
//! * a job whose handler gave up before a writer took it is dropped, never written;
//! * a writer answers by the earliest deadline of its group; a write still running then (a
//!   frozen database) goes on in the background, and once it has finished the requests it
//!   committed are re-recorded as the 503 their clients got ([`Reconciler`]). The same happens
//!   to a group whose commit failed for a reason of the database (the COMMIT may have landed).
//!
//! One request's data never fails the others: when a group fails for a reason that belongs to
//! the data (an SQLSTATE of class 22, 23 or 54, or a value the driver cannot encode), the group
//! is split in halves and retried until the request at fault is alone; it is then recorded as
//! refused (400 `unstorable`, the database's reason) and its events are not stored.

use super::health::DatabaseHealth;
use super::{EventState, InboundRecord};
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::HashSet;
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
        let reconciler = Reconciler::spawn(pool.clone());
        for _ in 0..settings.writers.max(1) {
            let (pool, rx, health, reconciler) =
                (pool.clone(), rx.clone(), health.clone(), reconciler.clone());
            tokio::spawn(async move {
                while let Some(group) = next_group(&rx, settings.max_group_events).await {
                    run_group(&pool, group, &health, &reconciler).await;
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
        }
    }

    pub fn health(&self) -> &Arc<DatabaseHealth> {
        &self.health
    }

    /// Commits one record with its events by `deadline`; returns only once they are durable
    /// (or refused for their data, and that refusal durable). An error means nothing of the
    /// request is recorded as accepted.
    pub async fn commit(&self, record: InboundRecord, deadline: Instant) -> Reply {
        if !self.health.is_up() {
            return Err(CommitError::Unavailable("the database is down".into()));
        }
        let size = (record.body.len().saturating_mul(2) + 1024).min(self.queue_bytes);
        let permit =
            tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(size as u32))
                .await
                .map_err(|_| CommitError::Timeout)?
                .map_err(|_| CommitError::Closed)?;
        let (reply, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            record,
            deadline,
            state: state.clone(),
            reply,
            bytes_permit: permit,
        };
        tokio::time::timeout_at(deadline, self.tx.send(job))
            .await
            .map_err(|_| CommitError::Timeout)?
            .map_err(|_| CommitError::Closed)?;
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(reply) => reply.unwrap_or(Err(CommitError::Closed)),
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
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

/// Waits for one job, then takes whatever else is already waiting; jobs whose handler gave up
/// are dropped here.
async fn next_group(rx: &Mutex<mpsc::Receiver<Job>>, max_events: usize) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    // A job is taken unless its handler gave up; one whose deadline is (all but) over is
    // answered at once instead of being written for a client that is getting its 503.
    let take = |job: Job| -> Option<Job> {
        if job
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        if job.deadline <= Instant::now() + Duration::from_millis(5) {
            let _ = job.reply.send(Err(CommitError::Timeout));
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
    group: Vec<Job>,
    health: &DatabaseHealth,
    reconciler: &Reconciler,
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
        for (reply, _) in replies {
            let _ = reply.send(Err(CommitError::Unavailable("the database is down".into())));
        }
        return;
    }
    let started = std::time::Instant::now();
    let n = records.len();
    let mut write = tokio::spawn(write_isolating(pool.clone(), records));
    match tokio::time::timeout_at(deadline, &mut write).await {
        Ok(Ok(result)) => {
            metrics::histogram!("gateway_group_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("gateway_group_commit_requests").record(n as f64);
            match &result.failure {
                None => health.mark_up(),
                Some(why) => health.mark_down(why),
            }
            if !result.doubtful.is_empty() {
                reconciler.later(result.doubtful.clone());
            }
            for ((reply, _), verdict) in replies.into_iter().zip(result.verdicts) {
                let _ = reply.send(verdict.into_reply());
            }
        }
        Ok(Err(panicked)) => {
            tracing::error!(error = %panicked, "A group commit panicked.");
            for (reply, _) in replies {
                let _ = reply.send(Err(CommitError::Unavailable("internal error".into())));
            }
        }
        Err(_) => {
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
    fn into_reply(self) -> Reply {
        match self {
            Verdict::Committed(_) => Ok(Committed::AsSent),
            Verdict::Refused(_, why) => Ok(Committed::Refused(why)),
            Verdict::Unavailable(why) => Err(CommitError::Unavailable(why)),
        }
    }

    fn committed_id(&self) -> Option<i64> {
        match self {
            Verdict::Committed(id) | Verdict::Refused(id, _) => Some(*id),
            Verdict::Unavailable(_) => None,
        }
    }
}

#[derive(Debug)]
struct GroupResult {
    verdicts: Vec<Verdict>,
    /// Ids of requests whose transaction failed for a reason of the database: the COMMIT may
    /// have landed all the same, and their clients get 503.
    doubtful: Vec<i64>,
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
async fn write_isolating(pool: PgPool, records: Vec<InboundRecord>) -> GroupResult {
    let mut verdicts: Vec<Option<Verdict>> = (0..records.len()).map(|_| None).collect();
    let mut doubtful = Vec::new();
    let mut pending: Vec<Vec<usize>> = vec![(0..records.len()).collect()];
    while let Some(part) = pending.pop() {
        let refs: Vec<&InboundRecord> = part.iter().map(|i| &records[*i]).collect();
        let mut ids = Vec::new();
        match write_group_ids(&pool, &refs, &mut ids).await {
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
                verdicts[i] = Some(match write_refusal(&pool, &records[i], &why).await {
                    Ok(id) => Verdict::Refused(id, why),
                    Err(e) => {
                        let why = format!("the refusal could not be recorded: {e}");
                        return fail_rest(verdicts, doubtful, &why);
                    }
                });
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, requests = part.len(), "Group commit failed.");
                doubtful.extend(ids);
                return fail_rest(verdicts, doubtful, &why);
            }
        }
    }
    GroupResult {
        verdicts: verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Unavailable("not written".into())))
            .collect(),
        doubtful,
        failure: None,
    }
}

fn fail_rest(verdicts: Vec<Option<Verdict>>, doubtful: Vec<i64>, why: &str) -> GroupResult {
    // Parts committed before the failure stay committed and are answered so; the rest 503.
    GroupResult {
        verdicts: verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| Verdict::Unavailable(why.to_string())))
            .collect(),
        doubtful,
        failure: Some(why.to_string()),
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
    };
    let mut ids = Vec::new();
    match write_group_ids(pool, &[&refused], &mut ids).await {
        Err(e) if is_data_error(&e) => {
            refused.headers = serde_json::json!({});
            refused.route = refused
                .route
                .chars()
                .filter(char::is_ascii_graphic)
                .collect();
            refused.content_encoding = None;
            ids.clear();
            write_group_ids(pool, &[&refused], &mut ids).await?;
        }
        other => other?,
    }
    Ok(ids[0])
}

/// Re-records, once their writes are over, requests that were committed after (or perhaps
/// after) their clients were answered 503, so that the audit says what the client got. Their
/// events stay: the sender retries, and the retry's events are duplicates of these (by
/// messageId) and are not delivered twice.
#[derive(Clone)]
struct Reconciler {
    tx: mpsc::UnboundedSender<Reconcile>,
}

enum Reconcile {
    Ids(Vec<i64>),
    After(tokio::task::JoinHandle<GroupResult>),
}

impl Reconciler {
    fn spawn(pool: PgPool) -> Reconciler {
        let (tx, mut rx) = mpsc::unbounded_channel::<Reconcile>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let ids = match job {
                    Reconcile::Ids(ids) => ids,
                    Reconcile::After(write) => match write.await {
                        Ok(result) => result
                            .verdicts
                            .iter()
                            .filter_map(Verdict::committed_id)
                            .chain(result.doubtful)
                            .collect(),
                        Err(_) => continue,
                    },
                };
                if !ids.is_empty() {
                    reconcile(&pool, &ids).await;
                }
            }
        });
        Reconciler { tx }
    }

    fn later(&self, ids: Vec<i64>) {
        let _ = self.tx.send(Reconcile::Ids(ids));
    }

    fn after(&self, write: tokio::task::JoinHandle<GroupResult>) {
        let _ = self.tx.send(Reconcile::After(write));
    }
}

/// Marks the requests as answered 503, retrying until the database takes it.
async fn reconcile(pool: &PgPool, ids: &[i64]) {
    loop {
        let done = sqlx::query(
            "UPDATE inbound_request
                SET error_message = 'answered 503: the commit did not complete in time; it completed later'
                                    || CASE WHEN status <> 200 THEN ' (recorded first as ' || status
                                            || coalesce(': ' || error_message, '') || ')' ELSE '' END,
                    status = 503, error_code = 'unavailable'
              WHERE id = ANY($1) AND status <> 503",
        )
        .bind(ids)
        .execute(pool)
        .await;
        match done {
            Ok(r) => {
                if r.rows_affected() > 0 {
                    tracing::warn!(
                        requests = r.rows_affected(),
                        "Requests committed after their 503 are now recorded as 503."
                    );
                }
                return;
            }
            Err(e) if pool.is_closed() => {
                tracing::error!(error = %e, requests = ids.len(), "Cannot re-record requests answered 503: the pool is closed.");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Writes the records in one transaction: requests, first sightings of messageIds, events.
pub async fn write_group(pool: &PgPool, records: &[&InboundRecord]) -> Result<(), sqlx::Error> {
    write_group_ids(pool, records, &mut Vec::new()).await
}

/// [`write_group`]; `ids` receives the requests' ids as soon as they are allocated.
async fn write_group_ids(
    pool: &PgPool,
    records: &[&InboundRecord],
    ids: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    *ids = sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('inbound_request', 'id')) FROM generate_series(1, $1)",
    )
    .bind(records.len() as i32)
    .fetch_all(&mut *tx)
    .await?;
    let ids: &[i64] = ids;

    sqlx::query(
        "INSERT INTO inbound_request (id, route, connection, direction, status, error_code, error_message,
                                      headers, content_encoding, body, events, body_size, body_truncated)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],
                              $7::text[], $8::jsonb[], $9::text[], $10::bytea[], $11::int[], $12::bigint[],
                              $13::boolean[])",
    )
    .bind(ids)
    .bind(records.iter().map(|r| r.route.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.connection.as_deref()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.direction.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.status as i16).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.error_code.as_deref()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.error_message.as_deref()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| Json(&r.headers)).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.content_encoding.as_deref()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.events.len() as i32).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.body_size as i64).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.body_truncated).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;

    // First sightings: a messageId is claimed by its first pending event, in this group (in
    // memory) and across groups (message_seen).
    let mut candidates: Vec<(usize, usize)> = Vec::new();
    let mut in_group = HashSet::new();
    for (ri, r) in records.iter().enumerate() {
        for (ei, e) in r.events.iter().enumerate() {
            if e.state == EventState::Pending {
                let key = (
                    r.connection.as_deref().unwrap_or(""),
                    r.direction,
                    e.message_id.as_str(),
                );
                if in_group.insert(key) {
                    candidates.push((ri, ei));
                }
            }
        }
    }
    // The candidates whose messageId this insert saw first, by their position in `candidates`.
    let fresh: HashSet<(usize, usize)> = if candidates.is_empty() {
        HashSet::new()
    } else {
        let conn: Vec<&str> = candidates
            .iter()
            .map(|(r, _)| records[*r].connection.as_deref().unwrap_or(""))
            .collect();
        let dir: Vec<&str> = candidates
            .iter()
            .map(|(r, _)| records[*r].direction.as_str())
            .collect();
        let mid: Vec<&str> = candidates
            .iter()
            .map(|(r, e)| records[*r].events[*e].message_id.as_str())
            .collect();
        // Candidates are distinct keys, so each inserted row joins back to exactly one.
        sqlx::query_scalar::<_, i64>(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(c, d, m, n)),
             inserted AS (
                 INSERT INTO message_seen (connection, direction, message_id)
                 SELECT c, d, m FROM input
                 ON CONFLICT DO NOTHING
                 RETURNING connection, direction, message_id)
             SELECT input.n FROM input
             JOIN inserted ON inserted.connection = input.c AND inserted.direction = input.d
                          AND inserted.message_id = input.m",
        )
        .bind(&conn)
        .bind(&dir)
        .bind(&mid)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|n| candidates[n as usize - 1])
        .collect()
    };

    let (
        mut req,
        mut conn,
        mut dir,
        mut mid,
        mut call,
        mut user,
        mut payload,
        mut state,
        mut reason,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for (ri, r) in records.iter().enumerate() {
        let connection = r.connection.as_deref().unwrap_or("");
        for (ei, e) in r.events.iter().enumerate() {
            let (s, why) = if e.state != EventState::Pending {
                (e.state, e.state_reason.clone())
            } else if fresh.contains(&(ri, ei)) {
                (EventState::Pending, None)
            } else {
                (
                    EventState::Skipped,
                    Some(format!(
                        "duplicate: messageId {:?} was already accepted",
                        e.message_id
                    )),
                )
            };
            req.push(ids[ri]);
            conn.push(connection);
            dir.push(r.direction.as_str());
            mid.push(e.message_id.as_str());
            call.push(e.call_type.as_deref());
            user.push(e.user_key.as_str());
            payload.push(Json(&e.payload));
            state.push(s.as_str());
            reason.push(why);
        }
    }
    if !req.is_empty() {
        sqlx::query(
            "INSERT INTO event (request_id, connection, direction, message_id, call_type, user_key, payload,
                                state, state_reason)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::jsonb[], $8::text[], $9::text[])",
        )
        .bind(&req)
        .bind(&conn)
        .bind(&dir)
        .bind(&mid)
        .bind(&call)
        .bind(&user)
        .bind(&payload)
        .bind(&state)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
