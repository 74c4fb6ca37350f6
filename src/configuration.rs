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
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod sources;
pub use sources::{Layered, Sources, BUILT_IN_DEFAULTS, DEFAULT_ENVIRONMENT};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub application: ApplicationSettings,
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    pub delivery: DeliverySettings,
    pub iterable: UpstreamSettings,
    pub segment: UpstreamSettings,
    pub ui: UiSettings,
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub connections: Vec<ConnectionSettings>,
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub log_format: LogFormat,
    /// Milliseconds a client has to send a request's head (line and headers): 408 after.
    pub request_head_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body once its head is in: 408 (audited).
    pub body_timeout_ms: u64,
    /// Seconds an idle keep-alive connection stays open (0: no keep-alive).
    pub keep_alive_secs: u64,
    /// Most connections open at once (shared out evenly over the server's worker threads).
    pub max_connections: usize,
    /// Bytes kept of the body of a request refused before it is authenticated (unknown route,
    /// wrong credentials, body too large or unreadable).
    pub unauthenticated_body_bytes: usize,
}

/// How logs are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people (colours only when standard error is a terminal).
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The delivery page (`/ui`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UiSettings {
    /// The operator token (`Authorization: Bearer`, or the page's sign-in form); unset: no page.
    #[serde(serialize_with = "redacted")]
    pub token: Option<SecretString>,
    pub token_env: Option<String>,
}

/// Metrics sampled from the database.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetricsSettings {
    /// Seconds between samples of the backlog gauges (0: not sampled).
    pub sample_secs: u64,
}

/// PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// `postgres://...`; unset: the gateway runs its own cluster under `dir`.
    #[serde(serialize_with = "redacted")]
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
    /// Milliseconds between health probes (`SELECT 1`) while the database is up; while it is
    /// down, every 200 ms.
    pub probe_interval_ms: u64,
    /// Milliseconds a probe waits for its answer before the database counts as down.
    pub probe_timeout_ms: u64,
}

/// Ingest: the group commit of inbound requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IngestSettings {
    /// Writer tasks, each committing groups of concurrent requests in one transaction.
    pub writers: usize,
    /// Most events one group commit carries.
    pub max_group_events: usize,
    /// Most requests waiting for a writer.
    pub queue_requests: usize,
    /// Most bytes of requests waiting for a writer (each counted as twice its body plus 1 KiB).
    pub queue_bytes: usize,
}

/// Delivery to Iterable and Segment.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
    /// Dispatcher tasks per direction; 0: this process only ingests (other gateway processes
    /// on the same database deliver).
    pub workers: usize,
    /// Most events one dispatcher claims at a time.
    pub claim_batch: i64,
    /// Requests of one batch in flight at once, per dispatcher (the rate limits still apply).
    /// A batch's single-user calls (trackPurchase, updateCart, ...) go out this many at a time,
    /// so with a partner that takes L to answer, a dispatcher sends at most this many / L.
    #[serde(default = "default_concurrent_requests")]
    pub concurrent_requests: usize,
    /// PostgreSQL connections each connection's dispatchers (both directions) share: a pool of
    /// their own, apart from ingest's and from the other connections' (`worker::run`).
    #[serde(default = "default_database_connections")]
    pub database_connections: u32,
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
    /// by every gateway process on the database. Paths match case-insensitively (a key written
    /// `"/api/users/bulkupdate"` still holds); use [`DeliverySettings::rate_limit`]. A path that
    /// names a user is keyed by its template (`"/api/users/{email}"`).
    pub rate_limits: BTreeMap<String, u32>,
    /// Seconds between the probes of a paused connection (its partner refused the key).
    #[serde(default = "default_pause_probe_secs")]
    pub pause_probe_secs: u64,
    /// Milliseconds during which a single-user call to Iterable for a user holds back bulk
    /// calls for that user, and the other way round (`delivery::window`); 0: no window.
    #[serde(default = "default_user_call_window_ms")]
    pub user_call_window_ms: u64,
}

fn default_database_connections() -> u32 {
    1
}

fn default_concurrent_requests() -> usize {
    64
}

/// The most `delivery.concurrent_requests`: each is a socket, and a task and a request body in
/// memory.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;

fn default_pause_probe_secs() -> u64 {
    60
}

fn default_user_call_window_ms() -> u64 {
    2000
}

/// The longest `delivery.user_call_window_ms`: a user's events wait at most this long for the
/// other kind of call to settle.
pub const MAX_USER_CALL_WINDOW_MS: u64 = 300_000;

/// What a lease must have left, beyond the request timeout, for a request to start on it.
pub const LEASE_MARGIN_MS: u64 = 1000;

impl DeliverySettings {
    /// The configured requests per second for an endpoint path (0: unlimited), matched
    /// case-insensitively, else `default`.
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
        if !(1..=MAX_CONCURRENT_REQUESTS).contains(&self.concurrent_requests) {
            return bad(format!(
                "delivery.concurrent_requests is {}; it must be between 1 and {MAX_CONCURRENT_REQUESTS}",
                self.concurrent_requests
            ));
        }
        if self.database_connections < 1 {
            return bad(format!(
                "delivery.database_connections is {}; it must be at least 1",
                self.database_connections
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
        if self.user_call_window_ms > MAX_USER_CALL_WINDOW_MS {
            return bad(format!(
                "delivery.user_call_window_ms is {}; it must be at most {MAX_USER_CALL_WINDOW_MS} \
                 (5 minutes; 0 turns the window off)",
                self.user_call_window_ms
            ));
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DeliveryMode {
    #[serde(rename = "dry-run")]
    DryRun,
    #[serde(rename = "live")]
    Live,
}

impl DeliveryMode {
    /// As the configuration spells it (`dry-run`, `live`), for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::DryRun => "dry-run",
            DeliveryMode::Live => "live",
        }
    }
}

/// Base URLs of a partner API (tests point them at wiremock).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConnectionSettings {
    /// Used in URLs (`/webhooks/segment/{name}`) and in the audit log.
    pub name: String,
    /// The Segment source's write key: authenticates `/v1/*` calls.
    #[serde(serialize_with = "redacted")]
    pub write_key: Option<SecretString>,
    pub write_key_env: Option<String>,
    /// Iterable server-side API key.
    #[serde(serialize_with = "redacted")]
    pub iterable_api_key: Option<SecretString>,
    pub iterable_api_key_env: Option<String>,
    /// `united_states` or `europe`.
    #[serde(default)]
    pub data_center: DataCenter,
    /// Token Iterable's system webhooks send in `Authorization`.
    #[serde(serialize_with = "redacted")]
    pub webhook_token: Option<SecretString>,
    pub webhook_token_env: Option<String>,
    /// Shared secret of Segment's Webhooks destination (`X-Signature`).
    #[serde(serialize_with = "redacted")]
    pub shared_secret: Option<SecretString>,
    pub shared_secret_env: Option<String>,
    /// Write key of the Segment source that receives Iterable's events.
    #[serde(serialize_with = "redacted")]
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
    /// Segment event name of Journey webhooks (bodies without eventName); default
    /// "Journey Webhook", "" refuses them.
    #[serde(default)]
    pub journey_event_name: Option<String>,
}

fn default_region() -> String {
    "us".into()
}

/// A secret as `gateway config` prints it.
fn redacted<S: Serializer>(s: &Option<SecretString>, out: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(_) => out.serialize_str("<redacted>"),
        None => out.serialize_none(),
    }
}

/// A configuration that cannot run, and why (each message names the key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// The built-in defaults, then `dir/default.toml` and `dir/<GATEWAY_ENVIRONMENT>.toml`, then
    /// the environment, then checks the result.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        Settings::load_from(&Sources::from_env(Some(dir.to_path_buf())))
    }

    /// [`load`](Self::load) for a named environment.
    pub fn load_environment(dir: &Path, environment: &str) -> Result<Settings, ConfigError> {
        let mut sources = Sources::from_env(Some(dir.to_path_buf()));
        sources.environment = environment.to_string();
        Settings::load_from(&sources)
    }

    /// Loads from explicit sources (tests pass their own variables).
    pub fn load_from(sources: &Sources) -> Result<Settings, ConfigError> {
        Ok(Settings::load_layered(sources)?.0)
    }

    /// The settings and the merged tree that says where each value came from.
    pub fn load_layered(sources: &Sources) -> Result<(Settings, Layered), ConfigError> {
        let (settings, mut layered) = sources::load(sources)?;
        let settings = settings
            .resolve_secrets(sources, &mut layered)?
            .validate()?;
        Ok((settings, layered))
    }

    /// Fills each `<secret>` from its `<secret>_env` variable when that is set.
    fn resolve_secrets(
        mut self,
        sources: &Sources,
        layered: &mut Layered,
    ) -> Result<Settings, ConfigError> {
        if let Some(var) = &self.ui.token_env {
            match sources.var(var) {
                Some(v) if !v.is_empty() => {
                    self.ui.token = Some(SecretString::from(v.to_string()));
                    layered
                        .origins
                        .insert("ui.token".into(), format!("env {var} (ui.token_env)"));
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "ui.token_env names {var:?}, which is not set"
                    )))
                }
            }
        }
        for (i, c) in self.connections.iter_mut().enumerate() {
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
                    match sources.var(var) {
                        Some(v) if !v.is_empty() => {
                            *slot = Some(SecretString::from(v.to_string()));
                            layered.origins.insert(
                                format!("connections.{i}.{key}"),
                                format!("env {var} ({key}_env)"),
                            );
                        }
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
        assert!(e.to_string().contains("/nonexistent not found"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn delivery_ranges_are_checked_with_the_key_named() {
        type Change = fn(&mut DeliverySettings);
        let cases: [(Change, &str); 10] = [
            (|d| d.lease_secs = 0, "delivery.lease_secs is 0"),
            (
                |d| d.concurrent_requests = 0,
                "delivery.concurrent_requests is 0; it must be between 1 and 1024",
            ),
            (
                |d| d.concurrent_requests = 1025,
                "delivery.concurrent_requests is 1025",
            ),
            (
                |d| d.database_connections = 0,
                "delivery.database_connections is 0",
            ),
            (|d| d.max_attempts = 0, "delivery.max_attempts is 0"),
            (|d| d.max_attempts = -3, "delivery.max_attempts is -3"),
            (|d| d.claim_batch = 0, "delivery.claim_batch is 0"),
            (|d| d.request_timeout_ms = 60_000, "it must be at least 92"),
            (
                |d| d.user_call_window_ms = 300_001,
                "delivery.user_call_window_ms is 300001; it must be at most 300000",
            ),
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

    /// A directory holding `files`, and sources reading it with `vars` as the whole environment.
    fn sources(
        files: &[(&str, &str)],
        environment: &str,
        vars: &[(&str, &str)],
    ) -> (Sources, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let sources = Sources {
            config: Some(dir.path().to_path_buf()),
            environment: environment.into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        (sources, dir)
    }

    /// (what, files, environment, variables, what the error says)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
    );

    /// Every mistake of issue 10, each with the one error it gives (and nothing else).
    #[test]
    fn each_configuration_mistake_gives_one_clear_error_naming_the_key() {
        let cases: &[Case] = &[
            ("a typo in a file", &[("local.toml", "[application]\nprot = 9001\n")], "local", &[],
             &["unknown configuration key `application.prot`", "local.toml", "did you mean `application.port`?"]),
            ("a typo in a section", &[("local.toml", "[aplication]\nport = 9001\n")], "local", &[],
             &["unknown configuration key `aplication`", "did you mean `application`?"]),
            ("a typo in a connection", &[("local.toml", "[[connections]]\nname = \"a\"\niterable_api_kye = \"k\"\n")], "local", &[],
             &["unknown configuration key `connections.0.iterable_api_kye`", "did you mean `connections.0.iterable_api_key`?"]),
            ("a typo in a variable", &[], "local", &[("GATEWAY__APPLICATION__PROT", "9001")],
             &["unknown configuration key `application.prot` (env GATEWAY__APPLICATION__PROT)", "did you mean `application.port` (GATEWAY__APPLICATION__PORT)?"]),
            ("one underscore", &[], "local", &[("GATEWAY_APPLICATION_PORT", "9001")],
             &["GATEWAY_APPLICATION_PORT is not read (one underscore); did you mean GATEWAY__APPLICATION__PORT?"]),
            ("an environment without its file", &[("staging.toml", "")], "production", &[],
             &["GATEWAY_ENVIRONMENT is \"production\"", "production.toml does not exist", "environments with a file: staging"]),
            ("a bad enum value", &[("local.toml", "[delivery]\nmode = \"lve\"\n")], "local", &[],
             &["delivery.mode = \"lve\"", "local.toml", "expected `dry-run` or `live`"]),
            ("a bad enum value in a variable", &[], "local", &[("GATEWAY__APPLICATION__LOG_FORMAT", "yaml")],
             &["application.log_format = \"yaml\" (env GATEWAY__APPLICATION__LOG_FORMAT)", "expected `pretty` or `json`"]),
            ("a bad data center", &[("local.toml", "[[connections]]\nname = \"a\"\ndata_center = \"us\"\n")], "local", &[],
             &["connections.0.data_center = \"us\"", "expected `united_states` or `europe`"]),
            ("malformed TOML", &[("local.toml", "[delivery\nmode = 1\n")], "local", &[],
             &["local.toml: TOML parse error at line 1"]),
            ("a number that is not one", &[], "local", &[("GATEWAY__APPLICATION__PORT", "eighty")],
             &["application.port = \"eighty\" (env GATEWAY__APPLICATION__PORT)", "expected u16"]),
            ("a list indexed past its end", &[], "local", &[("GATEWAY__CONNECTIONS__5__NAME", "x")],
             &["GATEWAY__CONNECTIONS__5__NAME: connections has 1 entries; index 5 would leave a gap (use 1)"]),
            ("a secret variable that is not set", &[("local.toml", "[[connections]]\nname = \"a\"\niterable_api_key_env = \"NOPE_KEY\"\n")], "local", &[],
             &["connection \"a\": iterable_api_key_env names \"NOPE_KEY\", which is not set"]),
        ];
        for (what, files, environment, vars, expected) in cases {
            let (sources, _dir) = sources(files, environment, vars);
            let e = Settings::load_from(&sources).expect_err(what).to_string();
            for part in *expected {
                assert!(e.contains(part), "{what}: {e:?} lacks {part:?}");
            }
            assert_eq!(
                e.lines().count(),
                e.lines().collect::<std::collections::HashSet<_>>().len(),
                "{what}: a line repeats: {e}"
            );
            if !what.starts_with("malformed") {
                assert_eq!(e.lines().count(), 1, "{what}: one error: {e}");
            }
            if !what.starts_with("malformed") {
                assert_eq!(e.matches(expected[0]).count(), 1, "{what}: said once: {e}");
            }
        }
    }

    #[test]
    fn overrides_alone_work_from_anywhere_and_say_where_each_value_came_from() {
        // Only the keys that change; no default.toml in the directory.
        let (overrides, _dir) = sources(
            &[("local.toml", "[application]\nport = 9001\n[[connections]]\nname = \"shop\"\niterable_api_key_env = \"SHOP_KEY\"\n")],
            "local",
            &[("GATEWAY__CONNECTIONS__0__WRITE_KEY", "12345"), ("SHOP_KEY", "it-key"), ("GATEWAY__DATABASE__MAX_CONNECTIONS", "4")],
        );
        let (s, layered) = Settings::load_layered(&overrides).unwrap();
        assert_eq!(s.application.port, 9001);
        assert_eq!(s.database.max_connections, 4);
        assert_eq!(
            secret(&s.connections[0].write_key),
            Some("12345"),
            "a numeric key stays a string"
        );
        assert_eq!(secret(&s.connections[0].iterable_api_key), Some("it-key"));
        let lines = crate::cli::config::effective(&s, &layered);
        let find = |k: &str| {
            lines
                .iter()
                .find(|(key, _, _)| key == k)
                .unwrap_or_else(|| panic!("{k}"))
                .clone()
        };
        assert!(find("application.port").2.ends_with("local.toml"));
        assert_eq!(find("application.host").2, "default");
        assert_eq!(
            find("database.max_connections").2,
            "env GATEWAY__DATABASE__MAX_CONNECTIONS"
        );
        assert_eq!(
            find("connections.0.write_key").1,
            serde_json::json!("<redacted>")
        );
        assert_eq!(
            find("connections.0.iterable_api_key").2,
            "env SHOP_KEY (iterable_api_key_env)"
        );
        let text = crate::cli::config::render(&lines);
        assert!(
            !text.contains("it-key") && !text.contains("12345"),
            "{text}"
        );
        // No directory at all: the built-in defaults.
        let s = Settings::load_from(&Sources {
            config: None,
            environment: "local".into(),
            vars: vec![],
        })
        .unwrap();
        assert_eq!(s.application.port, 8080);
        assert_eq!(s.connections[0].name, "demo");
        // A variable a *_env key names is not a misspelled key, whatever it looks like.
        let (named, _dir) = sources(
            &[("local.toml", "[ui]\ntoken_env = \"GATEWAY_UI_TOKEN\"\n")],
            "local",
            &[("GATEWAY_UI_TOKEN", "t0ken")],
        );
        let ui = Settings::load_from(&named).unwrap().ui;
        assert_eq!(secret(&ui.token), Some("t0ken"));
    }
}
