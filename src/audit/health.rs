//! Whether the database can take commits right now.
//!
//! Fed by the group commit (a commit that fails for a reason of the database, or does not finish
//! in time, marks it down; one that succeeds marks it up) and by a background probe (`SELECT 1`
//! with a short timeout: often while down, so that ingest resumes by itself as soon as
//! PostgreSQL is back; less often while up, so that a frozen server is noticed before requests
//! pile up). While down, ingest answers 503 + `Retry-After` at once instead of waiting for a
//! commit that cannot happen; `/readyz` says why. Gauge `gateway_database_up` (0/1).

use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often and how patiently the probe asks.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub interval_up: Duration,
    pub interval_down: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct DatabaseHealth {
    down: AtomicBool,
    /// Why it is down, and since when.
    reason: Mutex<Option<(String, SystemTime)>>,
    /// `true` while up, for those who wait for the database to go down.
    up_tx: tokio::sync::watch::Sender<bool>,
}

impl DatabaseHealth {
    /// Up until something says otherwise.
    pub fn new() -> Arc<DatabaseHealth> {
        metrics::gauge!("gateway_database_up").set(1.0);
        Arc::new(DatabaseHealth {
            down: AtomicBool::new(false),
            reason: Mutex::new(None),
            up_tx: tokio::sync::watch::channel(true).0,
        })
    }

    /// Resolves once the database is (or already was) marked down.
    pub async fn went_down(&self) {
        let mut rx = self.up_tx.subscribe();
        let _ = rx.wait_for(|up| !*up).await;
    }

    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }

    /// `Err(why, since when)` while down.
    pub fn status(&self) -> Result<(), (String, SystemTime)> {
        if self.is_up() {
            return Ok(());
        }
        let reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        Err(reason
            .clone()
            .unwrap_or_else(|| ("unknown".into(), SystemTime::now())))
    }

    pub fn mark_down(&self, why: &str) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(
                reason = why,
                "The database is down: ingest answers 503 until it is back."
            );
            *reason = Some((why.to_string(), SystemTime::now()));
            metrics::gauge!("gateway_database_up").set(0.0);
            self.up_tx.send_replace(false);
        }
    }

    pub fn mark_up(&self) {
        if self.down.load(Ordering::Acquire) {
            let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if self.down.swap(false, Ordering::AcqRel) {
                tracing::info!("The database is back: ingest resumes.");
                *reason = None;
                metrics::gauge!("gateway_database_up").set(1.0);
                self.up_tx.send_replace(true);
            }
        }
    }

    /// Probes the database until the process ends.
    pub fn spawn_probe(self: &Arc<Self>, pool: PgPool, settings: ProbeSettings) {
        let health = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool);
                match tokio::time::timeout(settings.timeout, probe).await {
                    Ok(Ok(_)) => health.mark_up(),
                    Ok(Err(e)) => health.mark_down(&format!("the probe failed: {e}")),
                    Err(_) => health.mark_down(&format!(
                        "the probe got no answer within {} ms",
                        settings.timeout.as_millis()
                    )),
                }
                if pool.is_closed() {
                    return;
                }
                let pause = if health.is_up() {
                    settings.interval_up
                } else {
                    settings.interval_down
                };
                tokio::time::sleep(pause).await;
            }
        });
    }
}
