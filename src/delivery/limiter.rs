//! Rate limits per (connection, endpoint path), shared by every gateway process on the
//! database, so that all of them together stay under Iterable's per-project limits
//! (users/update 500/s, events/track 2,000/s, bulkUpdate 5/s, trackBulk 10/s; reference §1.3)
//! instead of learning them from 429s.
//!
//! Each pair is a token bucket row in PostgreSQL (`rate_bucket`, `gateway_take_tokens`): a
//! dispatcher takes the tokens for all the requests of one round to one endpoint in one short
//! statement, and the row lock serialises the processes. Why not one process holding a lease
//! on a connection's sending: that would make one process the bottleneck of each connection
//! and need failover; the bucket costs one statement per round and endpoint (at most tens per
//! second at Iterable's bulk limits) and any number of processes share it.
//!
//! Iterable sends no `Retry-After` with its 429s: a 429 halves the bucket's rate (at most once
//! a second, not below [`FLOOR_SHARE`] of the limit), and the rate grows back by
//! [`RECOVER_PER_SEC`] of the limit per second.

use crate::audit::Direction;
use crate::configuration::DeliverySettings;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// A bucket holds one second's worth of tokens (at least one): the burst Iterable's leaky
/// bucket tolerates.
pub const BURST_SECS: f64 = 1.0;
/// After a cut, the rate grows back by this share of the limit per second (from half the limit
/// to all of it in 30 s).
pub const RECOVER_PER_SEC: f64 = 1.0 / 60.0;
/// The lowest rate cuts go to, as a share of the limit.
pub const FLOOR_SHARE: f64 = 0.05;

/// The limits of a process (the buckets themselves live in the database).
#[derive(Debug, Clone)]
pub struct Limiters {
    settings: DeliverySettings,
}

/// Tokens taken, and when the next one comes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub granted: usize,
    /// Zero when every token asked for was granted.
    pub wait: Duration,
}

impl Limiters {
    pub fn new(settings: &DeliverySettings) -> Limiters {
        Limiters {
            settings: settings.clone(),
        }
    }

    /// The configured rate of a path (0: unlimited).
    pub fn rate(&self, path: &str) -> u32 {
        self.settings.rate_limit(path)
    }

    /// Takes up to `want` tokens for requests to `path` for `connection`, without waiting.
    pub async fn try_take(
        &self,
        pool: &PgPool,
        connection: &str,
        path: &str,
        want: usize,
    ) -> Result<Grant, sqlx::Error> {
        let rate = self.rate(path);
        if rate == 0 || want == 0 {
            return Ok(Grant {
                granted: want,
                wait: Duration::ZERO,
            });
        }
        let (granted, wait_secs, _rate): (i32, f64, f64) =
            sqlx::query_as("SELECT * FROM gateway_take_tokens($1, $2, $3, $4, $5, $6)")
                .bind(connection)
                .bind(path)
                .bind(f64::from(rate))
                .bind(i32::try_from(want).unwrap_or(i32::MAX))
                .bind(BURST_SECS)
                .bind(RECOVER_PER_SEC)
                .fetch_one(pool)
                .await?;
        let grant = Grant {
            granted: granted.max(0) as usize,
            wait: Duration::from_secs_f64(wait_secs.clamp(0.0, 3600.0)),
        };
        Ok(grant)
    }

    /// Waits until one request to `path` for `connection` fits under its limit; gives up
    /// (false) rather than wait past `max_wait`.
    pub async fn acquire(
        &self,
        pool: &PgPool,
        connection: &str,
        direction: Direction,
        path: &str,
        max_wait: Duration,
    ) -> Result<bool, sqlx::Error> {
        let started = Instant::now();
        let got = loop {
            let grant = self.try_take(pool, connection, path, 1).await?;
            if grant.granted == 1 {
                break true;
            }
            if started.elapsed() + grant.wait > max_wait {
                break false;
            }
            tokio::time::sleep(grant.wait).await;
        };
        record_wait(connection, direction, path, started.elapsed());
        Ok(got)
    }

    /// A 429 for `path`: the shared bucket slows down. Returns the new rate when it was cut
    /// (not when another answer of the same burst cut it already).
    pub async fn cut(
        &self,
        pool: &PgPool,
        connection: &str,
        path: &str,
    ) -> Result<Option<f64>, sqlx::Error> {
        if self.rate(path) == 0 {
            return Ok(None);
        }
        let rate: Option<Option<f64>> = sqlx::query_scalar("SELECT gateway_cut_rate($1, $2, $3)")
            .bind(connection)
            .bind(path)
            .bind(FLOOR_SHARE)
            .fetch_optional(pool)
            .await?;
        let rate = rate.flatten();
        if let Some(r) = rate {
            tracing::warn!(
                connection,
                endpoint = path,
                rate = r,
                "The partner answered 429: this endpoint's rate is cut, and grows back slowly."
            );
        }
        Ok(rate)
    }
}

/// Counts time spent waiting for a token (`gateway_rate_limit_wait_seconds_total`). The
/// `metrics` crate's counters hold whole numbers, so this monotonic sum of seconds is kept in
/// a gauge that only ever grows (Prometheus reads it the same way).
pub fn record_wait(connection: &str, direction: Direction, path: &str, waited: Duration) {
    if waited.is_zero() {
        return;
    }
    metrics::gauge!("gateway_rate_limit_wait_seconds_total",
        "connection" => connection.to_string(), "direction" => direction.as_str(),
        "endpoint" => path.to_string())
    .increment(waited.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_case_insensitively_and_fall_back_to_the_default() {
        let config = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
        let s = crate::configuration::Settings::load(&config).unwrap();
        // The loader keeps the keys as written.
        assert!(s.delivery.rate_limits.contains_key("/api/events/trackBulk"));
        let l = Limiters::new(&s.delivery);
        assert_eq!(l.rate("/api/events/trackBulk"), 10);
        assert_eq!(l.rate("/api/users/bulkUpdate"), 5);
        assert_eq!(l.rate("/api/users/update"), 500);
        assert_eq!(l.rate("/api/events/track"), 2000);
        assert_eq!(l.rate("/v1/batch"), 500);
        assert_eq!(l.rate("/api/commerce/updateCart"), 500);
        // A user deletion is limited by its path template (no user in the key).
        assert_eq!(l.rate("/api/users/{email}"), 100);
        assert_eq!(l.rate("/api/users/byUserId/{userId}"), 100);
        assert_eq!(l.rate("/api/users/forget"), 3);
        // A key in another case still finds its path.
        let mut d = s.delivery.clone();
        d.rate_limits.insert("/api/users/updatecart".into(), 7);
        assert_eq!(Limiters::new(&d).rate("/api/users/updateCart"), 7);
        assert!(d.check().is_ok());
    }
}
