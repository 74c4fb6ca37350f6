//! The retry policy, as pure functions: which answers are worth another try, and when.
//!
//! Iterable documents no `Retry-After` (reference §1.3), but proxies and load balancers in
//! front of it send one with 429 and 503, so it is honoured when present.

use crate::configuration::DeliverySettings;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What one outbound call came to, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// An HTTP answer, with its `Retry-After` when it had a usable one.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No complete answer within the client timeout.
    Timeout,
    /// The request did not reach the server or the connection broke; the cause, for the audit.
    Network(String),
}

impl CallOutcome {
    /// The answer's `Retry-After`, when it had a usable one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallOutcome::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The three things an outcome can mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Delivered,
    /// Worth another attempt: the partner may accept the same request later.
    Retryable,
    /// The same request will be refused again.
    Permanent,
}

/// 2xx delivered; 408, 429, 5xx (except 501 Not Implemented), timeouts and network errors
/// retried; everything else permanent (rudder-server and Block's client draw the same line,
/// reference §1.4 and §2.2).
pub fn classify(outcome: &CallOutcome) -> Class {
    match outcome {
        CallOutcome::Status { status, .. } => match *status {
            200..=299 => Class::Delivered,
            408 | 429 => Class::Retryable,
            501 => Class::Permanent,
            500..=599 => Class::Retryable,
            _ => Class::Permanent,
        },
        CallOutcome::Timeout | CallOutcome::Network(_) => Class::Retryable,
    }
}

/// The schedule: exponential from `base`, ±20 % jitter, at most `max`, and `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: i32,
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    RetryIn(Duration),
    /// The attempts are used up.
    Dead,
}

impl RetryPolicy {
    pub fn from_settings(s: &DeliverySettings) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(s.retry_base_ms),
            max: Duration::from_secs(s.retry_max_secs),
            max_attempts: s.max_attempts,
        }
    }

    /// After retryable failure of attempt number `attempt` (1 is the first). `unit` is a
    /// uniform sample from [0, 1): the caller injects it so that tests are deterministic
    /// (0.5 means no jitter). A `Retry-After` lengthens the delay, up to `max`.
    pub fn after_failure(&self, attempt: i32, retry_after: Option<Duration>, unit: f64) -> Verdict {
        if attempt >= self.max_attempts {
            return Verdict::Dead;
        }
        let max_ms = self.max.as_secs_f64() * 1000.0;
        // In f64 so that a large attempt number saturates instead of overflowing.
        let backoff = self.base.as_secs_f64() * 1000.0 * 2f64.powi(attempt.max(1) - 1);
        let jittered = backoff * (0.8 + 0.4 * unit.clamp(0.0, 1.0));
        let delay = Duration::from_secs_f64(jittered.min(max_ms) / 1000.0);
        let delay = match retry_after {
            Some(wanted) => delay.max(wanted.min(self.max)),
            None => delay,
        };
        Verdict::RetryIn(delay)
    }
}

/// `Retry-After`: delay-seconds, or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Wed, 21 Oct 2015 07:28:00 GMT") is RFC 2822 with the obsolete "GMT" zone.
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> CallOutcome {
        CallOutcome::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn outcomes_are_classified_as_the_design_says() {
        let table = [
            (status(200), Class::Delivered),
            (status(204), Class::Delivered),
            (status(400), Class::Permanent),
            (status(401), Class::Permanent),
            (status(404), Class::Permanent),
            (status(408), Class::Retryable),
            (status(409), Class::Permanent),
            (status(413), Class::Permanent),
            (status(429), Class::Retryable),
            (status(500), Class::Retryable),
            (status(501), Class::Permanent),
            (status(502), Class::Retryable),
            (status(503), Class::Retryable),
            (status(599), Class::Retryable),
            (status(302), Class::Permanent),
            (CallOutcome::Timeout, Class::Retryable),
            (CallOutcome::Network("refused".into()), Class::Retryable),
        ];
        for (outcome, class) in table {
            assert_eq!(classify(&outcome), class, "{outcome:?}");
        }
    }

    #[test]
    fn delays_double_with_jitter_and_stop_at_the_cap_and_the_last_attempt() {
        let policy = RetryPolicy {
            base: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            max_attempts: 10,
        };
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let table: [(i32, Option<Duration>, f64, Verdict); 11] = [
            (1, None, 0.5, Verdict::RetryIn(ms(1000))),
            (2, None, 0.5, Verdict::RetryIn(ms(2000))),
            (3, None, 0.5, Verdict::RetryIn(ms(4000))),
            (1, None, 0.0, Verdict::RetryIn(ms(800))),
            (1, None, 1.0, Verdict::RetryIn(ms(1200))),
            (7, None, 0.5, Verdict::RetryIn(secs(60))),
            (9, None, 1.0, Verdict::RetryIn(secs(60))),
            (1, Some(secs(30)), 0.5, Verdict::RetryIn(secs(30))),
            (1, Some(secs(3600)), 0.5, Verdict::RetryIn(secs(60))),
            (4, Some(secs(1)), 0.5, Verdict::RetryIn(ms(8000))),
            (10, None, 0.5, Verdict::Dead),
        ];
        for (attempt, retry_after, unit, want) in table {
            let got = policy.after_failure(attempt, retry_after, unit);
            match (got, want) {
                (Verdict::RetryIn(a), Verdict::RetryIn(b)) => assert!(
                    a.abs_diff(b) < Duration::from_micros(10),
                    "attempt {attempt}, {retry_after:?}, {unit}: {a:?} != {b:?}"
                ),
                _ => assert_eq!(got, want, "attempt {attempt}"),
            }
        }
    }

    #[test]
    fn a_zero_base_retries_at_once_and_huge_attempt_numbers_do_not_overflow() {
        let policy = RetryPolicy {
            base: Duration::ZERO,
            max: Duration::from_secs(5),
            max_attempts: i32::MAX,
        };
        assert_eq!(
            policy.after_failure(3, None, 0.9),
            Verdict::RetryIn(Duration::ZERO)
        );
        let policy = RetryPolicy {
            base: Duration::from_millis(1),
            ..policy
        };
        assert_eq!(
            policy.after_failure(100_000, None, 0.9),
            Verdict::RetryIn(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let table = [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Wed, 21 Oct 2015 07:28:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(Duration::ZERO)),
            ("soon", None),
            ("-5", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
    }
}
