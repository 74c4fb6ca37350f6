//! A batch's lease, as its dispatcher knows it: until when its claim surely holds. Renewed every
//! third of its length; a request starts only while the lease outlasts the request's timeout
//! (plus a margin), so that no other dispatcher can claim the events while an answer may still
//! come, even when renewals fail (DESIGN §4: no event delivered twice by two dispatchers).

use super::store;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Lease {
    length: Duration,
    /// The claim holds at least until then (measured from before the statement that took it).
    until: Mutex<Instant>,
    /// A renewal found events of the batch claimed by someone else.
    lost: AtomicBool,
}

impl Lease {
    /// A lease of `length` taken by a statement that started at `taken`.
    pub fn new(taken: Instant, length: Duration) -> Lease {
        Lease {
            length,
            until: Mutex::new(taken + length),
            lost: AtomicBool::new(false),
        }
    }

    /// When the claim was taken or last renewed: the lease holds for its length from then.
    pub fn taken(&self) -> Instant {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) - self.length
    }

    /// Whether the lease surely lasts `needed` more.
    pub fn allows(&self, needed: Duration) -> bool {
        self.slack(needed).is_some()
    }

    /// How much longer than `needed` the lease surely lasts (`None`: not even that).
    pub fn slack(&self, needed: Duration) -> Option<Duration> {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        if self.lost.load(Ordering::Relaxed) {
            return None;
        }
        until
            .saturating_duration_since(Instant::now())
            .checked_sub(needed)
    }

    /// Renews the lease of `held` every third of it, until dropped (`renew = false`: never,
    /// for tests that play a dispatcher whose renewals fail).
    pub async fn keep(
        &self,
        pool: &PgPool,
        queue: store::Queue<'_>,
        owner: &str,
        held: &[i64],
        renew: bool,
    ) -> std::convert::Infallible {
        let every = (self.length / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            if !renew {
                continue;
            }
            let started = Instant::now();
            match store::extend_lease(pool, queue, owner, held, self.length).await {
                Ok(n) if n as usize == held.len() => {
                    *self.until.lock().unwrap_or_else(|e| e.into_inner()) = started + self.length;
                }
                Ok(n) => {
                    self.lost.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        owner,
                        held = held.len(),
                        renewed = n,
                        "Lost the lease of some events; no more requests start for this batch."
                    );
                }
                Err(e) => {
                    // The next renewal may work; until one does, the lease ages and requests
                    // stop starting once it could run out before their answer.
                    tracing::warn!(owner, error = %e, "Could not renew a lease.");
                }
            }
        }
    }
}
