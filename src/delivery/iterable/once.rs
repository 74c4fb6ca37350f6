//! Requests sent at most once per window: a push or browser token registration for the same
//! (connection, user, token) is not sent again within `pushTokenWindowHours` (issue 11).
//!
//! The mapping names such a request by a key (`Destination::once_key`, pure); this module is
//! the I/O around it, in two calls the dispatcher makes per batch:
//! * [`skip_repeats`] after planning: removes the steps whose key was sent within its window
//!   (one query for the batch) and notes why on the job;
//! * [`remember`] after sending: records the keys of the jobs whose requests all went through
//!   (not in dry-run mode: a dry run is never deduplicated against live delivery).
//!
//! The table is `sent_once` (migration 20261202000500). A key is refreshed on every send, so
//! an active user's token is re-registered once per window (a token Iterable dropped comes
//! back within a window).

use super::plan::Job;
use crate::configuration::Settings;
use crate::delivery::Clients;
use sqlx::PgPool;

/// (job index, step index, key, window) of every keyed step of `jobs`.
fn keyed(settings: &Settings, clients: &Clients, jobs: &[Job]) -> Vec<(usize, usize, String, u64)> {
    let mut out = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let compiled = clients.destination(settings, &job.event.connection);
        let Ok(destination) = compiled.as_ref() else {
            continue;
        };
        for (s, step) in job.steps.iter().enumerate() {
            if let Some(once) = destination.once_key(step) {
                out.push((j, s, once.key, once.window_secs));
            }
        }
    }
    out
}

/// Drops the steps already sent within their window; each job notes what it dropped.
pub(super) async fn skip_repeats(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    jobs: &mut [Job],
) -> Result<(), sqlx::Error> {
    let keyed = keyed(settings, clients, jobs);
    if keyed.is_empty() {
        return Ok(());
    }
    let connections: Vec<&str> = keyed
        .iter()
        .map(|(j, ..)| jobs[*j].event.connection.as_str())
        .collect();
    let keys: Vec<&str> = keyed.iter().map(|(_, _, k, _)| k.as_str()).collect();
    let windows: Vec<f64> = keyed.iter().map(|(.., w)| *w as f64).collect();
    let recent: Vec<i64> = sqlx::query_scalar(
        "SELECT u.i FROM unnest($1::text[], $2::text[], $3::float8[]) WITH ORDINALITY AS u(c, k, w, i)
         JOIN sent_once s ON s.connection = u.c AND s.key = u.k
         WHERE s.sent_at > now() - make_interval(secs => u.w)",
    )
    .bind(&connections)
    .bind(&keys)
    .bind(&windows)
    .fetch_all(pool)
    .await?;
    // Highest step first, so that removing one does not move the next.
    let mut drop: Vec<(usize, usize, u64)> = recent
        .into_iter()
        .filter_map(|i| keyed.get(i as usize - 1))
        .map(|(j, s, _, w)| (*j, *s, *w))
        .collect();
    drop.sort_by(|a, b| b.cmp(a));
    for (j, s, window) in drop {
        let step = jobs[j].steps.remove(s);
        jobs[j].notes.push(format!(
            "{} not sent: the same token was registered for this user within the last {}",
            step.endpoint.path(),
            hours(window)
        ));
    }
    Ok(())
}

fn hours(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

/// Records the keys of the jobs whose requests all went through (`stopped[j]` is `None`).
pub(super) async fn remember<T>(
    pool: &PgPool,
    settings: &Settings,
    clients: &Clients,
    jobs: &[Job],
    stopped: &[Option<T>],
) -> Result<(), sqlx::Error> {
    let (connections, keys): (Vec<&str>, Vec<String>) = keyed(settings, clients, jobs)
        .into_iter()
        .filter(|(j, ..)| stopped.get(*j).is_some_and(Option::is_none))
        .map(|(j, _, k, _)| (jobs[j].event.connection.as_str(), k))
        .unzip();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sent_once (connection, key)
         SELECT DISTINCT c, k FROM unnest($1::text[], $2::text[]) AS u(c, k)
         ON CONFLICT (connection, key) DO UPDATE SET sent_at = now()",
    )
    .bind(&connections)
    .bind(&keys)
    .execute(pool)
    .await?;
    Ok(())
}
