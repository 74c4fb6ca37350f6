//! `spawn_app`: the gateway on a random port, with a fresh database and wiremock servers
//! standing in for Iterable and Segment (style-by-example S14).

use gateway::configuration::{DeliveryMode, Settings};
use local_postgres::{fresh_database, DbGuard};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use wiremock::MockServer;

pub const WRITE_KEY: &str = "test-write-key";
pub const SHARED_SECRET: &str = "test-shared-secret";
pub const ITERABLE_KEY: &str = "test-iterable-key";

// Not every test reads every field.
#[allow(dead_code)]
pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub iterable: MockServer,
    pub segment: MockServer,
    pub api: reqwest::Client,
    pub settings: Settings,
    pub db: DbGuard,
}

/// The default configuration, pointed at the mocks, with one connection `shop`.
pub fn test_settings(iterable: &MockServer, segment: &MockServer) -> Settings {
    let mut s = Settings::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config"
    )))
    .expect("the default configuration loads");
    s.application.port = 0;
    s.delivery.mode = DeliveryMode::Live;
    s.delivery.retry_base_ms = 10;
    s.delivery.retry_max_secs = 1;
    s.delivery.rate_limits = [("default".to_string(), 0)].into();
    s.delivery.request_timeout_ms = 2000;
    s.database.commit_timeout_ms = 3000;
    s.iterable.us_url = iterable.uri();
    s.iterable.eu_url = iterable.uri();
    s.segment.us_url = segment.uri();
    s.segment.eu_url = segment.uri();
    let c = &mut s.connections[0];
    c.name = "shop".into();
    c.write_key = Some(SecretString::from(WRITE_KEY));
    c.shared_secret = Some(SecretString::from(SHARED_SECRET));
    c.iterable_api_key = Some(SecretString::from(ITERABLE_KEY));
    c.segment_write_key = Some(SecretString::from("test-segment-write-key"));
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (iterable, segment) = (MockServer::start().await, MockServer::start().await);
    let mut settings = test_settings(&iterable, &segment);
    adjust(&mut settings);
    let settings = settings.validate().expect("test settings are valid");
    let (pool, db) = fresh_database().await;
    gateway::database::migrate(&pool)
        .await
        .expect("migrations apply");
    let app = gateway::startup::Application::build(settings.clone(), pool.clone())
        .expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        pool,
        iterable,
        segment,
        api: reqwest::Client::new(),
        settings,
        db,
    }
}

impl TestApp {
    /// Dispatches until nothing is pending (retries included), as a fresh dispatcher would
    /// (no jitter).
    pub async fn drain_until_settled(&self) {
        let clients = gateway::delivery::Clients::new(&self.settings.delivery)
            .unwrap()
            .with_jitter(|| 0.5);
        crate::helpers::drain_until_settled(&self.pool, &self.settings, &clients).await;
    }

    /// POST to a tracking API route with the write key as HTTP Basic user.
    pub async fn post_v1(&self, route: &str, body: &Value) -> reqwest::Response {
        self.api
            .post(format!("{}/v1/{route}", self.address))
            .basic_auth(WRITE_KEY, Some(""))
            .json(body)
            .send()
            .await
            .expect("the request is sent")
    }

    /// (state, state_reason) of every event with this messageId, oldest first.
    pub async fn event_states(&self, message_id: &str) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT state, state_reason FROM event WHERE message_id = $1 ORDER BY id")
            .bind(message_id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// The last inbound request's (route, status, error_code, body as text, connection).
    pub async fn last_request(&self) -> (String, i16, Option<String>, String, Option<String>) {
        sqlx::query_as(
            "SELECT route, status, error_code, gateway_body_text(body), connection FROM inbound_request ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}
