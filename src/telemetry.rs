//! Logs (tracing) and metrics (Prometheus text at `/metrics`): every metric of the process is
//! described here (HELP and TYPE lines), histograms get buckets that fit what they count, and the
//! backlog gauges are sampled from the database.

use crate::configuration::LogFormat;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber once: level from `RUST_LOG` (default `info`), format `pretty` or
/// `json`. Colours only when standard error is a terminal. PostgreSQL's notices (`relation
/// "_sqlx_migrations" already exists, skipping`) are not logged unless `RUST_LOG` asks for them.
/// Logs never carry secrets or bodies.
pub fn init_logs(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let asked_for_sqlx = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx"));
    if !asked_for_sqlx {
        filter = filter.add_directive("sqlx::postgres::notice=warn".parse().expect("a directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Buckets of histograms in seconds: 0.5 ms to 30 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of histograms of counts (requests in a group commit).
const COUNTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The process-wide Prometheus recorder (installed on first use; tests build several apps).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("gateway_group_commit_requests".into()),
                        COUNTS,
                    )
                })
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// HELP and TYPE of every metric the process emits (the dispatcher's and the HTTP layer's too,
/// COMMON.md names them), so `/metrics` explains itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gateway_inbound_requests_total",
        "Inbound HTTP requests answered, by route and status."
    );
    describe_counter!(
        "gateway_inbound_events_total",
        "Events accepted into the outbox, by direction."
    );
    describe_gauge!(
        "gateway_database_up",
        "1 when the database answered the last probe, 0 when it did not."
    );
    describe_histogram!(
        "gateway_group_commit_seconds",
        Unit::Seconds,
        "Seconds one group commit of inbound requests took."
    );
    describe_histogram!(
        "gateway_group_commit_requests",
        Unit::Count,
        "Inbound requests committed together in one transaction."
    );
    describe_counter!(
        "gateway_delivery_attempts_total",
        "Outbound requests, by connection, direction, endpoint and outcome."
    );
    describe_counter!(
        "gateway_delivery_events_total",
        "Events settled, by connection, direction, endpoint and final state."
    );
    describe_counter!(
        "gateway_delivery_rate_limited_total",
        "429 answers from the partner, by connection, direction and endpoint."
    );
    // A gauge that only grows: the `metrics` crate's counters hold whole numbers (limiter.rs).
    describe_gauge!(
        "gateway_rate_limit_wait_seconds_total",
        Unit::Seconds,
        "Seconds dispatchers waited for a rate-limit token, by connection, direction and endpoint."
    );
    describe_histogram!(
        "gateway_delivery_request_seconds",
        Unit::Seconds,
        "Seconds per outbound request, by connection, direction and endpoint."
    );
    describe_counter!(
        "gateway_delivery_window_holds_total",
        "Events held back so as not to mix single-user and bulk calls for one user within \
         delivery.user_call_window_ms, by connection and direction."
    );
    describe_gauge!(
        "gateway_connection_paused",
        "1 while a connection's delivery is paused (label reason), else 0."
    );
    describe_gauge!(
        "gateway_backlog_events",
        Unit::Count,
        "Events waiting for delivery (pending or in flight), by connection and direction."
    );
    describe_gauge!(
        "gateway_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest event waiting for delivery, by connection and direction (0: none)."
    );
    describe_counter!(
        "gateway_metrics_sample_failures_total",
        "Backlog samples that could not read the database."
    );
}

const DIRECTIONS: [&str; 2] = ["segment_to_iterable", "iterable_to_segment"];

/// One sample of the backlog of each (connection, direction): what `gateway audit backlog`
/// shows. Every configured connection gets a value (0 when nothing waits), so an alert has a
/// series to read; a pair seen before that is now empty is set back to 0.
#[derive(Debug, Default)]
pub struct BacklogSampler {
    seen: BTreeSet<(String, String)>,
}

impl BacklogSampler {
    pub fn new(connections: impl IntoIterator<Item = String>) -> BacklogSampler {
        let seen = connections
            .into_iter()
            .flat_map(|c| DIRECTIONS.map(|d| (c.clone(), d.to_string())))
            .collect();
        BacklogSampler { seen }
    }

    /// Reads the backlog and sets the gauges.
    pub async fn sample(&mut self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows = crate::audit::queries::backlog(pool).await?;
        let mut now: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &rows {
            let labels = [
                ("connection", r.connection.clone()),
                ("direction", r.direction.clone()),
            ];
            metrics::gauge!("gateway_backlog_events", &labels).set(r.events as f64);
            metrics::gauge!("gateway_oldest_pending_seconds", &labels).set(r.oldest_age_secs);
            now.insert((r.connection.clone(), r.direction.clone()));
        }
        for (c, d) in self.seen.difference(&now) {
            let labels = [("connection", c.clone()), ("direction", d.clone())];
            metrics::gauge!("gateway_backlog_events", &labels).set(0.0);
            metrics::gauge!("gateway_oldest_pending_seconds", &labels).set(0.0);
        }
        self.seen.extend(now);
        Ok(())
    }

    /// Samples every `every` until cancelled.
    pub async fn run(
        mut self,
        pool: PgPool,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        metrics_handle();
        loop {
            if let Err(e) = self.sample(&pool).await {
                metrics::counter!("gateway_metrics_sample_failures_total").increment(1);
                tracing::warn!(error = %e, "Could not sample the backlog for /metrics.");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the alert rules and the dashboard read is one this process describes.
    #[test]
    fn the_alerts_and_the_dashboard_read_only_described_metrics() {
        let source = include_str!("telemetry.rs");
        let described = |name: &str| source.contains(&format!("\n        \"{name}\","));
        let re = regex::Regex::new(r"gateway_[a-z_]+").unwrap();
        for (file, text) in [
            ("alerts.yml", include_str!("../ops/prometheus/alerts.yml")),
            (
                "gateway-dashboard.json",
                include_str!("../ops/grafana/gateway-dashboard.json"),
            ),
        ] {
            let names: BTreeSet<&str> = re
                .find_iter(text)
                .map(|m| m.as_str())
                .map(|n| n.trim_end_matches("_bucket"))
                .filter(|n| !matches!(*n, "gateway_audit" | "gateway_"))
                .collect();
            assert!(names.len() >= 5, "{file}: {names:?}");
            for n in names {
                assert!(
                    described(n),
                    "{file} reads {n}, which telemetry.rs does not describe"
                );
            }
        }
        serde_json::from_str::<serde_json::Value>(include_str!(
            "../ops/grafana/gateway-dashboard.json"
        ))
        .expect("the dashboard is JSON");
    }

    #[test]
    fn histograms_have_buckets_that_fit_what_they_count_and_every_metric_has_help() {
        let handle = metrics_handle();
        metrics::histogram!("gateway_group_commit_requests").record(3.0);
        metrics::histogram!("gateway_delivery_request_seconds", "endpoint" => "/t").record(0.004);
        let text = handle.render();
        assert!(
            text.contains("gateway_group_commit_requests_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(!text.contains("gateway_group_commit_requests_bucket{le=\"0.005\"}"));
        assert!(
            text.contains(
                "gateway_delivery_request_seconds_bucket{endpoint=\"/t\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        for name in [
            "gateway_group_commit_requests",
            "gateway_delivery_request_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
            assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
        }
    }
}
