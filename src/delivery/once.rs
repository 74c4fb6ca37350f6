//! Requests sent at most once per window: a push or browser token registration for the same
//! (connection, user, token) is not sent again within `pushTokenWindowHours` (issue 11).
//!
//! The mapping names such a request by a key (`Destination::once_key`, pure; the partner
//! passes it on through [`Partner::once`]); this module is the I/O around it, in two calls the
//! engine makes:
//! * [`skip_repeats`] after planning: removes the parts whose key was sent within its window
//!   (one query for the batch) and notes why on the job;
//! * [`remember`] when jobs whose requests all went through are settled: records their keys
//!   (not in dry-run mode: a dry run is never deduplicated against live delivery).
//!
//! The table is `sent_once` (migration 20261202000500). A key is refreshed on every send, so
//! an active user's token is re-registered once per window (a token Iterable dropped comes
//! back within a window).

use super::engine::{Job, Partner};
use sqlx::PgPool;

/// (job index, part index, key, window) of every keyed part of the jobs in `which`.
fn keyed<P: Partner>(
    partner: &P,
    jobs: &[Job<P::Part>],
    which: impl Iterator<Item = usize>,
) -> Vec<(usize, usize, String, u64)> {
    let mut out = Vec::new();
    for j in which {
        for (s, part) in jobs[j].parts.iter().enumerate() {
            if let Some((once, _)) = partner.once(part) {
                out.push((j, s, once.key, once.window_secs));
            }
        }
    }
    out
}

/// Drops the parts already sent within their window; each job notes what it dropped.
pub(super) async fn skip_repeats<P: Partner>(
    pool: &PgPool,
    partner: &P,
    jobs: &mut [Job<P::Part>],
) -> Result<(), sqlx::Error> {
    let keyed = keyed(partner, jobs, 0..jobs.len());
    if keyed.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = keyed.iter().map(|(_, _, k, _)| k.as_str()).collect();
    let windows: Vec<f64> = keyed.iter().map(|(.., w)| *w as f64).collect();
    // A batch is of one connection.
    let recent: Vec<i64> = sqlx::query_scalar(
        "SELECT u.i FROM unnest($2::text[], $3::float8[]) WITH ORDINALITY AS u(k, w, i)
         JOIN sent_once s ON s.connection = $1 AND s.key = u.k
         WHERE s.sent_at > now() - make_interval(secs => u.w)",
    )
    .bind(partner.connection())
    .bind(&keys)
    .bind(&windows)
    .fetch_all(pool)
    .await?;
    // Highest part first, so that removing one does not move the next.
    let mut drop: Vec<(usize, usize, u64)> = recent
        .into_iter()
        .filter_map(|i| keyed.get(i as usize - 1))
        .map(|(j, s, _, w)| (*j, *s, *w))
        .collect();
    drop.sort_by(|a, b| b.cmp(a));
    for (j, s, window) in drop {
        let part = jobs[j].parts.remove(s);
        let path = partner.once(&part).map_or("", |(_, path)| path);
        jobs[j].notes.push(format!(
            "{path} not sent: the same token was registered for this user within the last {}",
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

/// Records the keys of the jobs in `through`, whose requests all went through.
pub(super) async fn remember<P: Partner>(
    pool: &PgPool,
    partner: &P,
    jobs: &[Job<P::Part>],
    through: &[usize],
) -> Result<(), sqlx::Error> {
    let keys: Vec<String> = keyed(partner, jobs, through.iter().copied())
        .into_iter()
        .map(|(.., k, _)| k)
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sent_once (connection, key)
         SELECT DISTINCT $1, k FROM unnest($2::text[]) AS u(k)
         ON CONFLICT (connection, key) DO UPDATE SET sent_at = now()",
    )
    .bind(partner.connection())
    .bind(&keys)
    .execute(pool)
    .await?;
    Ok(())
}
