//! Group commit: concurrent inbound requests share one transaction and one fsync.
//!
//! Handlers hand their [`InboundRecord`] to a [`GroupCommitter`] and wait. Each writer task
//! takes every record that is waiting (up to `max_group_events`), writes them in one
//! transaction and answers each handler only after the commit. While one writer commits, the
//! next collects the following group, so commits overlap and no request waits for a timer.

use super::{EventState, InboundRecord};
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Why a record could not be committed (the request is answered 503 and retried by its sender).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the database did not commit in time")]
    Timeout,
    /// Shared by every request of the group whose commit failed.
    #[error("the database refused the commit: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("the gateway is shutting down")]
    Closed,
}

struct Job {
    record: InboundRecord,
    reply: oneshot::Sender<Result<(), Arc<sqlx::Error>>>,
}

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
}

impl GroupCommitter {
    /// Starts `writers` writer tasks on `pool`.
    pub fn spawn(pool: PgPool, writers: usize, max_group_events: usize) -> GroupCommitter {
        let (tx, rx) = mpsc::channel::<Job>(16_384);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (pool, rx) = (pool.clone(), rx.clone());
            tokio::spawn(async move {
                while let Some(group) = next_group(&rx, max_group_events).await {
                    let records: Vec<&InboundRecord> = group.iter().map(|j| &j.record).collect();
                    let started = std::time::Instant::now();
                    let result = write_group(&pool, &records).await;
                    metrics::histogram!("gateway_group_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("gateway_group_commit_requests").record(group.len() as f64);
                    match result {
                        Ok(()) => {
                            for job in group {
                                let _ = job.reply.send(Ok(()));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, requests = group.len(), "Group commit failed.");
                            let e = Arc::new(e);
                            for job in group {
                                let _ = job.reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            });
        }
        GroupCommitter { tx }
    }

    /// Commits one record with its events; returns only once they are durable.
    pub async fn commit(
        &self,
        record: InboundRecord,
        timeout: Duration,
    ) -> Result<(), CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { record, reply })
            .await
            .map_err(|_| CommitError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(CommitError::Timeout),
            Ok(Err(_)) => Err(CommitError::Closed),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(CommitError::Database(e)),
        }
    }
}

/// Waits for one job, then takes whatever else is already waiting.
async fn next_group(rx: &Mutex<mpsc::Receiver<Job>>, max_events: usize) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut events = first.record.events.len().max(1);
    let mut group = vec![first];
    while events < max_events {
        match rx.try_recv() {
            Ok(job) => {
                events += job.record.events.len().max(1);
                group.push(job);
            }
            Err(_) => break,
        }
    }
    Some(group)
}

/// Writes the records in one transaction: requests, first sightings of messageIds, events.
pub async fn write_group(pool: &PgPool, records: &[&InboundRecord]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('inbound_request', 'id')) FROM generate_series(1, $1)",
    )
    .bind(records.len() as i32)
    .fetch_all(&mut *tx)
    .await?;

    sqlx::query(
        "INSERT INTO inbound_request (id, route, connection, direction, status, error_code, error_message,
                                      headers, content_encoding, body, events)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],
                              $7::text[], $8::jsonb[], $9::text[], $10::bytea[], $11::int[])",
    )
    .bind(&ids)
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
