//! Rate limits per (connection, endpoint path), so that the gateway stays under Iterable's
//! per-project limits (users/update 500/s, events/track 2,000/s, bulkUpdate 5/s, trackBulk
//! 10/s; reference §1.3) instead of learning them from 429s.
//!
//! Each pair gets its own GCRA limiter (governor), created on first use and shared by every
//! worker of the process. Several gateway processes on one database each apply the full
//! limit: the limit is per process (see the README).

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// The `rate_limits` key for every path without its own entry.
pub const DEFAULT_KEY: &str = "default";

/// The limiters of one process.
#[derive(Debug)]
pub struct Limiters {
    rates: BTreeMap<String, u32>,
    limiters: Mutex<HashMap<(String, String), Slot>>,
}

/// One pair's limiter; `None`: unlimited (a rate of 0).
type Slot = Option<Arc<DefaultDirectRateLimiter>>;

impl Limiters {
    /// `rates`: requests per second by endpoint path, and [`DEFAULT_KEY`]; 0 is unlimited.
    pub fn new(rates: &BTreeMap<String, u32>) -> Limiters {
        Limiters {
            rates: rates.clone(),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// The configured rate of a path. The `config` crate lower-cases table keys when it loads
    /// `default.toml`, so `"/api/users/bulkUpdate"` arrives as `/api/users/bulkupdate`: a path
    /// is looked up as written, then lower-cased.
    pub fn rate(&self, path: &str) -> u32 {
        self.rates
            .get(path)
            .or_else(|| self.rates.get(&path.to_ascii_lowercase()))
            .or_else(|| self.rates.get(DEFAULT_KEY))
            .copied()
            .unwrap_or(0)
    }

    /// Waits until one more request to `path` for `connection` fits under its limit.
    pub async fn wait(&self, connection: &str, path: &str) {
        if let Some(limiter) = self.limiter(connection, path) {
            limiter.until_ready().await;
        }
    }

    fn limiter(&self, connection: &str, path: &str) -> Slot {
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        limiters
            .entry((connection.to_string(), path.to_string()))
            .or_insert_with(|| {
                // A burst of one second's worth: Iterable's leaky bucket allows the same.
                NonZeroU32::new(self.rate(path))
                    .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn limiters(pairs: &[(&str, u32)]) -> Limiters {
        Limiters::new(&pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn a_path_without_its_own_rate_uses_the_default() {
        let l = limiters(&[("/api/events/trackBulk", 10), ("default", 100)]);
        assert_eq!(l.rate("/api/events/trackBulk"), 10);
        assert_eq!(l.rate("/api/commerce/updateCart"), 100);
        assert_eq!(limiters(&[]).rate("/x"), 0);
    }

    #[tokio::test]
    async fn requests_past_the_burst_wait_and_other_pairs_do_not() {
        let l = limiters(&[("/bulk", 10), ("default", 0)]);
        let started = Instant::now();
        for _ in 0..10 {
            l.wait("shop", "/bulk").await;
        }
        assert!(started.elapsed() < Duration::from_millis(50), "the burst");
        // Other connections, and unlimited paths, have their own budget.
        l.wait("other", "/bulk").await;
        for _ in 0..1000 {
            l.wait("shop", "/free").await;
        }
        assert!(started.elapsed() < Duration::from_millis(50));
        l.wait("shop", "/bulk").await;
        l.wait("shop", "/bulk").await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    }
}
