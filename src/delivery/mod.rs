//! Delivery: the dispatcher that takes events from the outbox (the `event` table), sends them to
//! the partner and records every attempt (DESIGN §2 "Delivery", §4).
//!
//! * [`worker`]: one dispatcher loop per (connection, direction), so that one connection's
//!   trouble never slows another; pauses and probes; `drain` for tests.
//! * [`engine`]: claim → plan → send under the lease and the rate limit → read each answer
//!   item by item → record → settle, once for both partners.
//! * [`iterable`], [`segment`]: what is particular to each partner (the engine's `Partner`);
//!   [`iterable::bulk`] is the bulk builder `gateway map --batch` prints with.
//! * [`answer`]: what an answer means for each event; [`retry`]: which answers are retried and
//!   when (pure).
//! * [`limiter`]: requests per second per (connection, endpoint), shared through PostgreSQL.
//! * [`lease`]: a batch's lease and its renewals; [`store`]: the SQL.
//! * [`once`]: requests sent at most once per window; [`window`]: single-user and bulk calls
//!   never mixed for one user within `delivery.user_call_window_ms`.

mod answer;
pub mod engine;
pub mod http;
pub mod iterable;
mod lease;
pub mod limiter;
mod once;
pub mod retry;
pub mod segment;
pub mod store;
pub mod window;
pub mod worker;

use crate::configuration::{DeliverySettings, Settings};
use crate::mapping::Destination;
use limiter::Limiters;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a dispatcher could not do its work (a partner's refusal is not an error: it is an
/// event state).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the outbox database failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A source of uniform samples in [0, 1) for the retry jitter.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A connection's compiled mapping, or why there is none.
pub type Compiled = Arc<Result<Destination, String>>;

/// What every worker of a process shares: one HTTP client (one connection pool), the rate
/// limiters, each connection's compiled mapping, and the jitter source. Cheap to clone.
#[derive(Clone)]
pub struct Clients {
    pub(crate) http: reqwest::Client,
    pub(crate) limiters: Arc<Limiters>,
    destinations: Arc<Mutex<HashMap<String, Compiled>>>,
    pub(crate) jitter: Jitter,
    /// Whether batches renew their leases (tests turn it off to play a dispatcher whose
    /// renewals fail).
    pub(crate) renew_leases: bool,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("limiters", &self.limiters)
            .finish_non_exhaustive()
    }
}

impl Clients {
    /// The client (timeout `request_timeout_ms`) and limiters (`rate_limits`) of the settings.
    pub fn new(settings: &DeliverySettings) -> Result<Clients, DeliveryError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .user_agent(concat!(
                "segment-iterable-gateway/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Clients {
            http,
            limiters: Arc::new(Limiters::new(settings)),
            destinations: Arc::default(),
            jitter: Arc::new(rand::random::<f64>),
            renew_leases: true,
        })
    }

    /// Replaces the jitter source (tests pass `|| 0.5`: no jitter).
    pub fn with_jitter(mut self, jitter: impl Fn() -> f64 + Send + Sync + 'static) -> Clients {
        self.jitter = Arc::new(jitter);
        self
    }

    /// Plays a dispatcher whose lease renewals all fail (for tests of lease safety).
    pub fn without_lease_renewals(mut self) -> Clients {
        self.renew_leases = false;
        self
    }

    /// The connection's compiled mapping, compiled on first use; `Err` names what is wrong
    /// (an unknown connection, or settings that do not compile).
    pub fn destination(&self, settings: &Settings, connection: &str) -> Compiled {
        let mut cache = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(connection.to_string())
            .or_insert_with(|| {
                Arc::new(match settings.connection(connection) {
                    None => Err(format!("connection {connection:?} is not configured")),
                    Some(c) => c.destination(),
                })
            })
            .clone()
    }
}
