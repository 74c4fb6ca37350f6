//! The Segment → Iterable dispatcher against a wiremock Iterable and a fresh database per test.
//!
//! [`Harness`] holds the pieces; events enter the outbox as ingest writes them
//! (`write_group`), and `worker::drain` dispatches them.

mod bulk;
mod concurrency;
mod connections;
mod endpoints;
mod engine;
mod fairness;
mod ordering;
pub mod outbox;
mod retries;
mod window;

use gateway::audit::writer::write_group;
use gateway::audit::{Direction, EventState, InboundRecord, NewEvent};
use gateway::configuration::{ConnectionSettings, DeliveryMode, Settings, UpstreamSettings};
use gateway::delivery::{worker, Clients};
use gateway::mapping::{js, Destination, Outcome, PlannedRequest};
use gateway::segment::event::SegmentEvent;
use local_postgres::{fresh_database, DbGuard};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::PathBuf;
use wiremock::MockServer;

/// The events as a dispatcher sees them: a pending event's attempts, `solo`, lease and due
/// time are in its outbox row (migration 20261207000400), a settled one's in its event row.
pub const EVENTS: &str = "(SELECT e.id, e.received_at, e.connection, e.direction, e.message_id,
        e.user_key, e.state, e.state_reason, e.action, e.updated_at,
        coalesce(o.attempts, e.attempts) AS attempts, coalesce(o.solo, e.solo) AS solo,
        o.next_attempt_at, o.lease_until, o.lease_owner
    FROM event e LEFT JOIN outbox o
      ON o.connection = e.connection AND o.direction = e.direction AND o.event_id = e.id) AS event";

pub const API_KEY: &str = "test-key";

/// A connection named `name` with the test's Iterable key and the default settings.
pub fn connection(name: &str) -> ConnectionSettings {
    serde_json::from_value(json!({"name": name, "iterable_api_key": API_KEY})).unwrap()
}

pub struct Harness {
    pub pool: PgPool,
    _db: DbGuard,
    pub iterable: MockServer,
    pub settings: Settings,
    pub clients: Clients,
}

/// An event's row, as a test reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub state: String,
    pub state_reason: Option<String>,
    pub action: Option<String>,
    pub attempts: i32,
    pub solo: bool,
}

/// A `delivery_attempt` row, as a test reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub endpoint: String,
    pub outcome: String,
    pub status: Option<i16>,
    pub dry_run: bool,
    pub attempt: i32,
    pub error: Option<String>,
    pub request_headers: Value,
    pub request_body: Option<Value>,
    pub response_body: Option<String>,
}

impl Harness {
    /// Runs the dispatcher loop (`worker::run`, as `gateway serve` does) until the returned
    /// token is cancelled; the handle ends once every worker has stopped.
    pub fn spawn_workers(
        &self,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let cancel = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(worker::run(
            self.pool.clone(),
            std::sync::Arc::new(self.settings.clone()),
            self.clients.clone(),
            cancel.clone(),
        ));
        (cancel, run)
    }

    /// Live mode, one connection `shop` with key [`API_KEY`], fast retries, no rate limits.
    pub async fn start() -> Harness {
        Harness::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Settings)) -> Harness {
        let (pool, db) = fresh_database().await;
        gateway::database::migrate(&pool).await.unwrap();
        let iterable = MockServer::start().await;
        let config = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
        let mut settings = Settings::load(&config).unwrap();
        let d = &mut settings.delivery;
        d.mode = DeliveryMode::Live;
        d.retry_base_ms = 1;
        d.retry_max_secs = 1;
        d.max_attempts = 5;
        d.request_timeout_ms = 2000;
        d.poll_interval_ms = 10;
        d.claim_batch = 100;
        d.rate_limits = [("default".to_string(), 0)].into();
        settings.iterable = UpstreamSettings {
            us_url: iterable.uri(),
            eu_url: iterable.uri(),
        };
        settings.connections = vec![connection("shop")];
        tweak(&mut settings);
        // No jitter: 0.5 is the middle of the ±20 % band.
        let clients = Clients::new(&settings.delivery)
            .unwrap()
            .with_jitter(|| 0.5);
        Harness {
            pool,
            _db: db,
            iterable,
            settings,
            clients,
        }
    }

    /// Writes Segment events to the outbox of `shop` as ingest does (user key: userId, else
    /// anonymousId).
    pub async fn insert(&self, events: &[Value]) {
        self.insert_into("shop", events).await
    }

    /// [`insert`](Self::insert) for any connection.
    pub async fn insert_into(&self, connection: &str, events: &[Value]) {
        let events = events
            .iter()
            .map(|e| NewEvent {
                message_id: e["messageId"].as_str().unwrap().to_string(),
                call_type: e["type"].as_str().map(str::to_string),
                user_key: e["userId"]
                    .as_str()
                    .or(e["anonymousId"].as_str())
                    .unwrap()
                    .to_string(),
                payload: e.clone(),
                state: EventState::Pending,
                state_reason: None,
            })
            .collect();
        let record = InboundRecord {
            route: "/v1/batch".into(),
            connection: Some(connection.into()),
            direction: Direction::SegmentToIterable,
            status: 200,
            error_code: None,
            error_message: None,
            headers: json!({}),
            content_encoding: None,
            body: b"{}".to_vec(),
            body_size: 2,
            body_truncated: false,
            events,
            sealed: None,
        };
        write_group(&self.pool, &[&record]).await.unwrap();
    }

    /// One `drain`: until nothing is due right now.
    pub async fn drain(&self) -> usize {
        worker::drain(&self.pool, &self.settings, &self.clients)
            .await
            .unwrap()
    }

    /// Drains until no event is pending (retries included).
    pub async fn drain_all(&self) {
        crate::helpers::drain_until_settled(&self.pool, &self.settings, &self.clients).await;
    }

    pub async fn event(&self, message_id: &str) -> EventRow {
        sqlx::query_as(&format!(
            "SELECT state, state_reason, action, attempts, solo FROM {EVENTS} WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// The attempts that carried an event, oldest first.
    pub async fn attempts(&self, message_id: &str) -> Vec<AttemptRow> {
        sqlx::query_as(
            "SELECT d.endpoint, d.outcome, d.status, d.dry_run, d.attempt, d.error, d.request_headers,
                    d.request_body, d.response_body
             FROM delivery_attempt d JOIN event e ON e.id = ANY (d.event_ids)
             WHERE e.message_id = $1 ORDER BY d.attempted_at, d.id",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The bodies Iterable received on `path`, in order.
    pub async fn received(&self, path: &str) -> Vec<Value> {
        let requests = self.iterable.received_requests().await.unwrap();
        requests
            .iter()
            .filter(|r| r.url.path() == path)
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

/// What the mapping engine plans for an event with the default settings.
pub fn planned(event: &Value) -> Vec<PlannedRequest> {
    let parsed = SegmentEvent::from_value(event.clone(), None).unwrap();
    match Destination::default().plan(&parsed, 0).remove(0) {
        Outcome::Requests { requests, .. } => requests,
        other => panic!("{other:?}"),
    }
}

/// A body as Iterable receives it (numbers formatted as JavaScript formats them).
pub fn wire(body: &Value) -> Value {
    serde_json::from_str(&js::to_json_string(body)).unwrap()
}

pub fn track(message_id: &str, user: &str, event: &str) -> Value {
    json!({
        "type": "track", "messageId": message_id, "userId": user, "event": event,
        "timestamp": "2024-05-01T10:00:00.000Z",
        "properties": {"plan": "pro", "amount": 19.5},
        "context": {"traits": {"email": format!("{user}@example.com")}}
    })
}

pub fn identify(message_id: &str, user: &str, email: &str) -> Value {
    json!({
        "type": "identify", "messageId": message_id, "userId": user,
        "traits": {"email": email, "name": "Ann", "plan": "pro"}
    })
}
