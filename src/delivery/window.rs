//! Single and bulk calls are never mixed for one user within `delivery.user_call_window_ms`
//! (issue 9).
//!
//! Iterable processes its bulk endpoints separately from the single-user ones (reference §1.3,
//! from its API description): `users/bulkUpdate` "is processed separately from single-user
//! calls (update, updateEmail, updateSubscriptions) … For a given user, in a short period of
//! time, only use single-user calls or bulk update calls. Otherwise, results may be
//! inconsistent", and `events/trackBulk` is "processed separately from single event (non-bulk)
//! endpoint. To make sure events are tracked in order, send them all to the same endpoint". So
//! two pairs conflict, each within its [`Family`]:
//! * user profiles: `users/update`, `users/updateEmail`, `users/updateSubscriptions` (single)
//!   against `users/bulkUpdate` (bulk): the three Iterable names;
//! * events: `events/track` (single) against `events/trackBulk` (bulk).
//!
//! Nothing else: the commerce endpoints, token registrations, deletions and lists have no
//! counterpart of the other kind that Iterable names (lists/subscribe is bulk-only and
//! updateSubscriptions is not said to conflict with it).
//!
//! Users are who Iterable resolves them by: the email and userId a call names (for
//! `users/updateEmail` also `currentEmail`, `currentUserId` and `newEmail`), so an alias whose
//! `previousId` is the email an earlier identify set is the same user though its `user_key`
//! differs. The partner names them ([`Partner::user_call`]); this module works with 64-bit
//! hashes of them only ([`identity_hash`]): no email or userId in clear in what it adds to the
//! audit log.
//!
//! The memory of recent calls is the attempt log: each recorded attempt of one of these
//! endpoints carries the hashes of the users it named (`delivery_attempt.user_hashes`,
//! migration 20261202000900), so it holds across every dispatcher process on the database and
//! costs no row of its own. [`hold_back`] runs one query per batch: the attempts of the other
//! kind (of the kinds the batch calls) within the window, by the existing
//! `(endpoint, attempted_at)` index; the batch's users are picked out of them here (README
//! "Delivery" has the measured cost). A job whose call would follow one of the other
//! kind for one of its users within the window goes back to pending until the window has
//! passed ([`Next::Hold`], its attempt given back). Within the batch, a job that would call the
//! other kind for a user an older job of the batch calls is held back too, until the window
//! after the batch; the partner plans each event with one kind per family (Iterable's
//! `bulk::plan_event`), so one event never mixes. Since only the oldest open event of a
//! `user_key` is claimed, a held event holds back its user's later events: the order holds.

use super::engine::{Job, Partner};
use super::store::Next;
use sha1::{Digest, Sha1};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A pair of Iterable endpoint kinds that must not be mixed for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// users/update, users/updateEmail, users/updateSubscriptions ↔ users/bulkUpdate.
    Profile,
    /// events/track ↔ events/trackBulk.
    Events,
}

/// Which side of its family a call is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Single,
    Bulk,
}

impl Kind {
    fn other(self) -> Kind {
        match self {
            Kind::Single => Kind::Bulk,
            Kind::Bulk => Kind::Single,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Single => "single-user",
            Kind::Bulk => "bulk",
        }
    }
}

/// A part's call of a family, and the users it names (`"email:ann@example.com"`,
/// `"userId:u-1"`, emails trimmed and lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCall {
    pub family: Family,
    pub kind: Kind,
    pub identities: Vec<String>,
}

/// The stable 64-bit hash of an identity under which attempts record it (the first 8 bytes of
/// its SHA-1): the same in every process and version.
pub fn identity_hash(identity: &str) -> i64 {
    let digest = Sha1::digest(identity.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The hashes of the users the parts name (deduplicated), for the attempt that carries them;
/// `None` when no part is a call of a family.
pub(super) fn hashes<'a, P: Partner>(
    partner: &P,
    parts: impl Iterator<Item = &'a P::Part>,
) -> Option<Vec<i64>>
where
    P::Part: 'a,
{
    let mut out: Option<Vec<i64>> = None;
    for part in parts {
        if let Some(call) = partner.user_call(part) {
            let list = out.get_or_insert_with(Vec::new);
            list.extend(call.identities.iter().map(|i| identity_hash(i)));
        }
    }
    if let Some(list) = &mut out {
        list.sort_unstable();
        list.dedup();
    }
    out
}

/// A call of a family that reached the partner within the window, for one user.
#[derive(Debug, Clone, PartialEq)]
struct Recent {
    hash: i64,
    endpoint: String,
    family: Family,
    kind: Kind,
    /// How long ago it was recorded (the answer had come).
    age: Duration,
}

/// Why and how long a job waits.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Hold {
    /// It would follow a recorded call of the other kind: back to pending now, due after this.
    Now(Duration, String),
    /// It would follow a call an older job of this batch makes: back to pending once the
    /// batch's requests are done, due the whole window after that.
    AfterBatch(String),
}

/// Each job's calls: (family, kind, user hashes).
type Calls = Vec<Vec<(Family, Kind, Vec<i64>)>>;

/// Decides, per job (oldest first), whether it is held back: by `recent` calls, or by an
/// older job of the batch that is not held back and calls the other kind for a shared user.
fn decide(calls: &Calls, recent: &[Recent], window: Duration) -> Vec<Option<Hold>> {
    let mut by_hash: HashMap<i64, Vec<&Recent>> = HashMap::new();
    for r in recent {
        by_hash.entry(r.hash).or_default().push(r);
    }
    let ms = window.as_millis();
    // (family, user) → the kind an older job of the batch calls it with.
    let mut going: HashMap<(Family, i64), Kind> = HashMap::new();
    let mut out = Vec::with_capacity(calls.len());
    for job in calls {
        // The latest recorded call of the other kind, for any of the job's users.
        let last = job
            .iter()
            .flat_map(|(family, kind, users)| {
                users
                    .iter()
                    .filter_map(|h| by_hash.get(h))
                    .flatten()
                    .filter(move |r| r.family == *family && r.kind == kind.other())
            })
            .filter(|r| r.age < window)
            .min_by_key(|r| r.age);
        if let Some(r) = last {
            let wait = window - r.age;
            out.push(Some(Hold::Now(
                wait,
                format!(
                    "held back {} ms: a {} call ({}) for the same user was answered {} ms ago, and \
                     Iterable asks not to mix single-user and bulk calls for one user in a short \
                     period (delivery.user_call_window_ms = {ms})",
                    wait.as_millis(),
                    r.kind.describe(),
                    r.endpoint,
                    r.age.as_millis(),
                ),
            )));
            continue;
        }
        let clash = job.iter().find_map(|(family, kind, users)| {
            users
                .iter()
                .find_map(|h| going.get(&(*family, *h)).filter(|k| **k != *kind))
        });
        if let Some(kind) = clash {
            out.push(Some(Hold::AfterBatch(format!(
                "held back: an earlier event of the same batch makes a {} call for the same \
                 user; sent once delivery.user_call_window_ms ({ms} ms) has passed after it",
                kind.describe()
            ))));
            continue;
        }
        for (family, kind, users) in job {
            for h in users {
                going.insert((*family, *h), *kind);
            }
        }
        out.push(None);
    }
    out
}

/// The jobs to hold back, by index, with how (see the module). One query for the batch, and
/// none when no job makes a call of a family.
pub(super) async fn hold_back<P: Partner>(
    pool: &PgPool,
    partner: &P,
    jobs: &[Job<P::Part>],
    window: Duration,
) -> Result<Vec<(usize, Hold)>, sqlx::Error> {
    if window.is_zero() {
        return Ok(Vec::new());
    }
    let calls: Calls = jobs
        .iter()
        .map(|job| {
            job.parts
                .iter()
                .filter_map(|p| partner.user_call(p))
                .map(|c| {
                    let users = c.identities.iter().map(|i| identity_hash(i)).collect();
                    (c.family, c.kind, users)
                })
                .collect()
        })
        .collect();
    // The endpoints whose recent calls could hold a job back: the other kind of each
    // (family, kind) the batch calls.
    let table = partner.user_call_endpoints();
    let mut wanted: Vec<(Family, Kind)> = calls
        .iter()
        .flatten()
        .map(|(f, k, _)| (*f, k.other()))
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let endpoints: Vec<&str> = table
        .iter()
        .filter(|(_, f, k)| wanted.contains(&(*f, *k)))
        .map(|(e, ..)| *e)
        .collect();
    let users: Vec<i64> = calls
        .iter()
        .flatten()
        .flat_map(|(.., u)| u.iter().copied())
        .collect();
    if users.is_empty() || endpoints.is_empty() {
        return Ok(Vec::new());
    }
    // The attempts of the window, with the users they named (not those refused for the
    // connection's key: Iterable processed nothing); which of those are the batch's
    // users is worked out here, not in PostgreSQL (the database is the bottleneck: unnesting
    // the bulk requests' arrays there costs ten times the scan).
    let rows: Vec<(String, f64, Vec<i64>)> = sqlx::query_as(
        "SELECT d.endpoint, extract(epoch FROM now() - d.attempted_at)::float8 * 1000,
                d.user_hashes
         FROM delivery_attempt d
         WHERE d.endpoint = ANY ($3) AND d.connection = $1 AND d.direction = $2
           AND d.attempted_at > now() - make_interval(secs => $4) AND NOT d.dry_run
           AND d.user_hashes IS NOT NULL AND d.outcome <> 'paused'",
    )
    .bind(partner.connection())
    .bind(partner.direction().as_str())
    .bind(&endpoints)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let ours: HashSet<i64> = users.into_iter().collect();
    // The latest call per (user, endpoint).
    let mut latest: HashMap<(i64, &str), f64> = HashMap::new();
    for (endpoint, age_ms, hashes) in &rows {
        for h in hashes.iter().filter(|h| ours.contains(h)) {
            let age = latest.entry((*h, endpoint.as_str())).or_insert(*age_ms);
            *age = age.min(*age_ms);
        }
    }
    let recent: Vec<Recent> = latest
        .into_iter()
        .filter_map(|((hash, endpoint), age_ms)| {
            let (_, family, kind) = table.iter().find(|(e, ..)| *e == endpoint)?;
            Some(Recent {
                hash,
                family: *family,
                kind: *kind,
                endpoint: endpoint.to_string(),
                age: Duration::from_secs_f64(age_ms.max(0.0) / 1000.0),
            })
        })
        .collect();
    let held: Vec<(usize, Hold)> = decide(&calls, &recent, window)
        .into_iter()
        .enumerate()
        .filter_map(|(j, h)| h.map(|h| (j, h)))
        .collect();
    if !held.is_empty() {
        metrics::counter!("gateway_delivery_window_holds_total",
            "connection" => partner.connection().to_string(),
            "direction" => partner.direction().as_str())
        .increment(held.len() as u64);
    }
    Ok(held)
}

impl Hold {
    /// Where the job goes, and why: `window` after the batch for [`Hold::AfterBatch`].
    pub(super) fn next(self, window: Duration) -> (Next, String) {
        match self {
            Hold::Now(wait, why) => (Next::Hold(wait), why),
            Hold::AfterBatch(why) => (Next::Hold(window), why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2000);

    fn recent(hash: i64, family: Family, kind: Kind, age_ms: u64) -> Recent {
        let endpoint = match (family, kind) {
            (Family::Profile, Kind::Bulk) => "/api/users/bulkUpdate",
            (Family::Profile, Kind::Single) => "/api/users/update",
            (Family::Events, Kind::Bulk) => "/api/events/trackBulk",
            (Family::Events, Kind::Single) => "/api/events/track",
        };
        Recent {
            hash,
            endpoint: endpoint.into(),
            family,
            kind,
            age: Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn a_call_of_the_other_kind_within_the_window_holds_the_job_for_the_rest_of_it() {
        let calls: Calls = vec![
            vec![(Family::Profile, Kind::Single, vec![1])],
            vec![(Family::Profile, Kind::Single, vec![2])],
            vec![(Family::Events, Kind::Single, vec![1])],
            vec![(Family::Profile, Kind::Bulk, vec![1])],
        ];
        let r = [
            recent(1, Family::Profile, Kind::Bulk, 500),
            recent(1, Family::Profile, Kind::Bulk, 1500),
            recent(2, Family::Profile, Kind::Bulk, 2500),
        ];
        let d = decide(&calls, &r, W);
        match &d[0] {
            Some(Hold::Now(wait, why)) => {
                assert_eq!(*wait, Duration::from_millis(1500), "the latest call counts");
                assert!(why.contains("/api/users/bulkUpdate"), "{why}");
                assert!(why.contains("user_call_window_ms = 2000"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d[1], None, "outside the window");
        assert_eq!(d[2], None, "another family");
        assert_eq!(d[3], None, "the same kind");
    }

    #[test]
    fn within_a_batch_the_older_job_goes_and_the_newer_of_the_other_kind_waits() {
        let calls: Calls = vec![
            vec![(Family::Profile, Kind::Bulk, vec![1, 7])],
            vec![(Family::Profile, Kind::Single, vec![7, 8])],
            vec![(Family::Profile, Kind::Bulk, vec![8])],
            vec![(Family::Events, Kind::Single, vec![1])],
            vec![],
        ];
        let d = decide(&calls, &[], W);
        assert_eq!(d[0], None);
        assert!(matches!(d[1], Some(Hold::AfterBatch(_))), "{:?}", d[1]);
        // User 8's only other call is held back: nothing of the other kind goes.
        assert_eq!(d[2], None);
        assert_eq!(d[3], None, "another family");
        assert_eq!(d[4], None);
    }

    #[test]
    fn a_held_job_does_not_hold_the_next_one_back() {
        let calls: Calls = vec![
            vec![(Family::Events, Kind::Single, vec![3])],
            vec![(Family::Events, Kind::Bulk, vec![3])],
        ];
        let d = decide(&calls, &[recent(3, Family::Events, Kind::Bulk, 10)], W);
        assert!(matches!(d[0], Some(Hold::Now(..))));
        assert_eq!(d[1], None);
    }

    #[test]
    fn identity_hashes_are_stable() {
        assert_eq!(identity_hash("userId:u-1"), identity_hash("userId:u-1"));
        assert_ne!(identity_hash("userId:u-1"), identity_hash("email:u-1"));
        // The first 8 bytes of SHA-1, big-endian (SHA-1("abc") = a9993e36 4706816a ...).
        assert_eq!(
            identity_hash("abc"),
            i64::from_be_bytes([0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a])
        );
    }
}
