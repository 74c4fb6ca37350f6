//! Configuration: `config/default.toml`, overlaid by `config/<environment>.toml`, overridden by
//! `GATEWAY__SECTION__KEY` environment variables (DESIGN §5). Every key is documented in
//! `config/default.toml`.
//!
//! Secrets are `SecretString`s: they never print (their `Debug` is redacted) and reach the
//! database only as `"<redacted>"`. Each secret of a connection can also come from an
//! environment variable named by `<secret>_env` (`iterable_api_key_env = "SHOP_ITERABLE_KEY"`).

use crate::iterable::api::{DataCenter, Hosts};
use crate::mapping::Destination;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub application: ApplicationSettings,
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    pub delivery: DeliverySettings,
    pub iterable: UpstreamSettings,
    pub segment: UpstreamSettings,
    #[serde(default)]
    pub connections: Vec<ConnectionSettings>,
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationSettings {
    pub host: String,
    pub port: u16,
    /// Largest decompressed body of a single-event request, bytes (Segment: 32 KB).
    pub max_event_bytes: usize,
    /// Largest decompressed body of a batch request, bytes (Segment: 500 KB).
    pub max_batch_bytes: usize,
    /// Most events in one batch (Segment: 2,500).
    pub max_batch_events: usize,
    /// Seconds a client is told to wait (`Retry-After`) when the database cannot commit.
    pub retry_after_secs: u64,
    /// Log format: `pretty` or `json`.
    pub log_format: String,
}

/// PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://...`; unset: the gateway runs its own cluster under `dir`.
    pub url: Option<SecretString>,
    /// Data directory of the gateway's own cluster.
    pub dir: PathBuf,
    /// Port of the gateway's own cluster (0: any free port).
    pub port: u16,
    pub max_connections: u32,
    /// How long an ingest commit may take before the request is answered 503.
    pub commit_timeout_ms: u64,
    /// Days of audit log kept (older daily partitions are dropped).
    pub retention_days: u32,
}

/// Ingest: the group commit of inbound requests.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    /// Writer tasks, each committing groups of concurrent requests in one transaction.
    pub writers: usize,
    /// Most events one group commit carries.
    pub max_group_events: usize,
}

/// Delivery to Iterable and Segment.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
    /// Dispatcher tasks per direction; 0: this process only ingests (other gateway processes
    /// on the same database deliver).
    pub workers: usize,
    /// Most events one dispatcher claims at a time.
    pub claim_batch: i64,
    /// Seconds a claim lasts; an event whose dispatcher died is claimable again after it.
    pub lease_secs: u64,
    /// Attempts before an event is `dead`.
    pub max_attempts: i32,
    /// First retry delay, milliseconds; doubles each attempt, ±20 % jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay (and longest `Retry-After` honoured), seconds.
    pub retry_max_secs: u64,
    /// Timeout of one outbound request, milliseconds.
    pub request_timeout_ms: u64,
    /// How often an idle dispatcher looks for due events, milliseconds.
    pub poll_interval_ms: u64,
    /// Requests per second per (connection, endpoint path); `default` for the others. Shared
    /// by every gateway process on the database. Paths match case-insensitively (the `config`
    /// crate lowercases table keys); use [`DeliverySettings::rate_limit`].
    pub rate_limits: BTreeMap<String, u32>,
    /// Seconds between the probes of a paused connection (its partner refused the key).
    #[serde(default = "default_pause_probe_secs")]
    pub pause_probe_secs: u64,
}

fn default_pause_probe_secs() -> u64 {
    60
}

/// What a lease must have left, beyond the request timeout, for a request to start on it.
pub const LEASE_MARGIN_MS: u64 = 1000;

impl DeliverySettings {
    /// The configured requests per second for an endpoint path (0: unlimited). Case-insensitive:
    /// the `config` crate lowercases table keys, so `"/api/events/trackBulk"` arrives as
    /// `/api/events/trackbulk`.
    pub fn rate_limit(&self, path: &str) -> u32 {
        let find = |key: &str| {
            self.rate_limits
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| *v)
        };
        find(path).or_else(|| find("default")).unwrap_or(0)
    }

    /// Range checks; the message names the key and what it accepts.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.claim_batch < 1 {
            return bad(format!(
                "delivery.claim_batch is {}; it must be at least 1",
                self.claim_batch
            ));
        }
        if self.max_attempts < 1 {
            return bad(format!(
                "delivery.max_attempts is {}; it must be at least 1",
                self.max_attempts
            ));
        }
        if self.request_timeout_ms == 0 {
            return bad("delivery.request_timeout_ms must be at least 1".into());
        }
        if self.poll_interval_ms == 0 {
            return bad("delivery.poll_interval_ms must be at least 1".into());
        }
        if self.pause_probe_secs == 0 {
            return bad("delivery.pause_probe_secs must be at least 1".into());
        }
        if self.retry_base_ms > self.retry_max_secs.saturating_mul(1000) {
            return bad(format!(
                "delivery.retry_base_ms ({}) exceeds delivery.retry_max_secs ({} s)",
                self.retry_base_ms, self.retry_max_secs
            ));
        }
        // A request starts only on a lease with its timeout and a margin left; renewals come
        // every third of the lease, so two thirds of it must cover a request and the margin.
        let needed_ms = (self.request_timeout_ms + LEASE_MARGIN_MS) * 3 / 2;
        if self.lease_secs.saturating_mul(1000) < needed_ms {
            return bad(format!(
                "delivery.lease_secs is {}; with request_timeout_ms = {} it must be at least {} \
                 (1.5 × (request timeout + {LEASE_MARGIN_MS} ms)), or requests could outlive their lease",
                self.lease_secs,
                self.request_timeout_ms,
                needed_ms.div_ceil(1000)
            ));
        }
        for path in self.rate_limits.keys() {
            if path != "default" && !path.starts_with('/') {
                return bad(format!(
                    "delivery.rate_limits: {path:?} is neither \"default\" nor an endpoint path (\"/api/...\")"
                ));
            }
        }
        if !self.rate_limits.contains_key("default") {
            return bad("delivery.rate_limits needs a \"default\" entry".into());
        }
        Ok(())
    }
}

/// `dry-run` records what would be sent without a network call; `live` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DeliveryMode {
    #[serde(rename = "dry-run")]
    DryRun,
    #[serde(rename = "live")]
    Live,
}

/// Base URLs of a partner API (tests point them at wiremock).
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    pub us_url: String,
    pub eu_url: String,
}

impl UpstreamSettings {
    pub fn hosts(&self) -> Hosts {
        Hosts {
            us: self.us_url.trim_end_matches('/').to_string(),
            eu: self.eu_url.trim_end_matches('/').to_string(),
        }
    }
}

/// One Segment source ⇄ Iterable project.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionSettings {
    /// Used in URLs (`/webhooks/segment/{name}`) and in the audit log.
    pub name: String,
    /// The Segment source's write key: authenticates `/v1/*` calls.
    pub write_key: Option<SecretString>,
    pub write_key_env: Option<String>,
    /// Iterable server-side API key.
    pub iterable_api_key: Option<SecretString>,
    pub iterable_api_key_env: Option<String>,
    /// `united_states` or `europe`.
    #[serde(default)]
    pub data_center: DataCenter,
    /// Token Iterable's system webhooks send in `Authorization`.
    pub webhook_token: Option<SecretString>,
    pub webhook_token_env: Option<String>,
    /// Shared secret of Segment's Webhooks destination (`X-Signature`).
    pub shared_secret: Option<SecretString>,
    pub shared_secret_env: Option<String>,
    /// Write key of the Segment source that receives Iterable's events.
    pub segment_write_key: Option<SecretString>,
    pub segment_write_key_env: Option<String>,
    /// `us` or `eu`: where Iterable's events go in Segment.
    #[serde(default = "default_region")]
    pub segment_region: String,
    /// Mapping settings: the keys of the README's settings table (subscriptions, page options...).
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Iterable eventName → Segment event name, over the default table (case-insensitive).
    #[serde(default)]
    pub event_names: serde_json::Map<String, serde_json::Value>,
}

fn default_region() -> String {
    "us".into()
}

/// A configuration that cannot run, and why (each message names the key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load the configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `dir/default.toml`, then `dir/<GATEWAY_ENVIRONMENT>.toml` if present, then the
    /// environment, then checks the result.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let environment = std::env::var("GATEWAY_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        Settings::load_environment(dir, &environment)
    }

    /// [`load`](Self::load) for a named environment.
    pub fn load_environment(dir: &Path, environment: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(true))
            .add_source(config::File::from(dir.join(format!("{environment}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("GATEWAY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.resolve_secrets()?.validate()
    }

    /// Fills each `<secret>` from its `<secret>_env` variable when that is set.
    fn resolve_secrets(mut self) -> Result<Settings, ConfigError> {
        for c in &mut self.connections {
            let name = c.name.clone();
            let pairs: [(&mut Option<SecretString>, &Option<String>, &str); 5] = [
                (&mut c.write_key, &c.write_key_env, "write_key"),
                (
                    &mut c.iterable_api_key,
                    &c.iterable_api_key_env,
                    "iterable_api_key",
                ),
                (&mut c.webhook_token, &c.webhook_token_env, "webhook_token"),
                (&mut c.shared_secret, &c.shared_secret_env, "shared_secret"),
                (
                    &mut c.segment_write_key,
                    &c.segment_write_key_env,
                    "segment_write_key",
                ),
            ];
            for (slot, env, key) in pairs {
                if let Some(var) = env {
                    match std::env::var(var) {
                        Ok(v) if !v.is_empty() => *slot = Some(SecretString::from(v)),
                        _ => {
                            return Err(ConfigError::Invalid(format!(
                                "connection {name:?}: {key}_env names {var:?}, which is not set"
                            )))
                        }
                    }
                }
            }
        }
        Ok(self)
    }

    /// Cross-field rules; the message says which key is wrong.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for c in &self.connections {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            {
                return bad(format!(
                    "connection name {:?} must be non-empty letters, digits, - or _ (it appears in URLs)",
                    c.name
                ));
            }
            if !names.insert(c.name.clone()) {
                return bad(format!("two connections are named {:?}", c.name));
            }
            if let Some(k) = secret(&c.write_key) {
                if !keys.insert(k.to_string()) {
                    return bad(format!(
                        "connection {:?}: its write_key is another connection's too",
                        c.name
                    ));
                }
            }
            if !matches!(c.segment_region.as_str(), "us" | "eu") {
                return bad(format!(
                    "connection {:?}: segment_region must be \"us\" or \"eu\"",
                    c.name
                ));
            }
            c.destination().map_err(ConfigError::Invalid)?;
            if self.delivery.mode == DeliveryMode::Live {
                if secret(&c.write_key).is_some() && secret(&c.iterable_api_key).is_none() {
                    return bad(format!(
                        "connection {:?}: delivery.mode is live but iterable_api_key is missing (set it, or iterable_api_key_env)",
                        c.name
                    ));
                }
                if secret(&c.webhook_token).is_some() && secret(&c.segment_write_key).is_none() {
                    return bad(format!(
                        "connection {:?}: delivery.mode is live and it receives Iterable webhooks, but segment_write_key is missing",
                        c.name
                    ));
                }
            }
        }
        for (what, v) in [("iterable", &self.iterable), ("segment", &self.segment)] {
            for url in [&v.us_url, &v.eu_url] {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return bad(format!("{what}: {url:?} is not an http(s) URL"));
                }
            }
        }
        if self.ingest.writers == 0 {
            return bad("ingest.writers must be at least 1".into());
        }
        self.delivery.check()?;
        Ok(self)
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionSettings> {
        self.connections.iter().find(|c| c.name == name)
    }
}

impl ConnectionSettings {
    /// The connection's mapping settings compiled; the error names the connection.
    pub fn destination(&self) -> Result<Destination, String> {
        Destination::from_settings(&serde_json::Value::Object(self.settings.clone()))
            .map_err(|e| format!("connection {:?}: settings: {e}", self.name))
    }

    /// The Segment region's base URL for Iterable → Segment delivery.
    pub fn segment_base<'a>(&self, segment: &'a UpstreamSettings) -> &'a str {
        if self.segment_region == "eu" {
            &segment.eu_url
        } else {
            &segment.us_url
        }
    }
}

/// A configured, non-empty secret.
pub fn secret(s: &Option<SecretString>) -> Option<&str> {
    s.as_ref()
        .map(|s| s.expose_secret())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_default() -> Settings {
        Settings::load(&PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config"
        )))
        .expect("default config loads")
    }

    #[test]
    fn the_default_configuration_loads_in_dry_run_with_a_demo_connection() {
        let s = load_default();
        assert_eq!(s.delivery.mode, DeliveryMode::DryRun);
        assert_eq!(s.connections[0].name, "demo");
        assert!(s.database.url.is_none());
        // Secrets never print.
        assert!(!format!("{s:?}").contains("demo-write-key"));
    }

    #[test]
    fn live_mode_without_an_iterable_key_is_refused_with_the_key_named() {
        let mut s = load_default();
        s.delivery.mode = DeliveryMode::Live;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("iterable_api_key is missing"), "{e}");
    }

    #[test]
    fn an_environment_file_overlays_the_defaults_and_variables_override_both() {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
            dir.join("default.toml"),
        )
        .unwrap();
        std::fs::write(
            dir.join("staging.toml"),
            "[application]\nport = 9100\nmax_batch_events = 100\n",
        )
        .unwrap();
        // A key no other test reads, since the environment is shared by the test threads.
        std::env::set_var("GATEWAY__APPLICATION__MAX_BATCH_EVENTS", "50");
        let s = Settings::load_environment(&dir, "staging").unwrap();
        std::env::remove_var("GATEWAY__APPLICATION__MAX_BATCH_EVENTS");
        assert_eq!(s.application.port, 9100, "the overlay");
        assert_eq!(s.application.max_batch_events, 50, "the variable");
        assert_eq!(s.application.max_event_bytes, 32768, "the default");
        let e = Settings::load_environment(&PathBuf::from("/nonexistent"), "local").unwrap_err();
        assert!(e.to_string().contains("default.toml"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn delivery_ranges_are_checked_with_the_key_named() {
        type Change = fn(&mut DeliverySettings);
        let cases: [(Change, &str); 6] = [
            (|d| d.lease_secs = 0, "delivery.lease_secs is 0"),
            (|d| d.max_attempts = 0, "delivery.max_attempts is 0"),
            (|d| d.max_attempts = -3, "delivery.max_attempts is -3"),
            (|d| d.claim_batch = 0, "delivery.claim_batch is 0"),
            (|d| d.request_timeout_ms = 60_000, "it must be at least 92"),
            (
                |d| {
                    d.rate_limits.insert("api/x".into(), 1);
                },
                "\"api/x\" is neither",
            ),
        ];
        for (change, message) in cases {
            let mut s = load_default();
            change(&mut s.delivery);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(message), "{e}");
        }
    }

    #[test]
    fn bad_connection_settings_are_named() {
        let mut s = load_default();
        s.connections[0]
            .settings
            .insert("cartEvents".into(), serde_json::json!("weird"));
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("connection \"demo\": settings: setting \"cartEvents\""),
            "{e}"
        );
    }
}
