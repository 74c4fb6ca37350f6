//! Dispatch benchmark (issue 9; run by `scripts/bench-dispatch`): the dispatcher against a mock
//! Iterable on a fresh database, with the shipped rate limits of `config/default.toml`.
//!
//! 1. backlog: 30,000 track and 15,000 identify events of one connection waiting; the
//!    dispatcher runs for `--secs`. Per endpoint: requests/s over the steady window (after the
//!    first second's burst), items per request, events/s as a share of Iterable's ceiling
//!    (limit × 1,000 items).
//! 2. fairness: two connections with a track backlog each, alone and then beside a third whose
//!    Iterable is down (answers after 5 s, past the 2 s request timeout) or refuses its key
//!    (401): the two healthy connections' events/s.
//! 3. latency: one event every 50 ms for `--secs`; from the event's commit (`received_at`) to
//!    the mock's answer: p50, p99, max.
//!
//! Prints a Markdown table. Keep runs short: the machine is shared.

use gateway::audit::writer::write_group;
use gateway::audit::{Direction, EventState, InboundRecord, NewEvent};
use gateway::configuration::{DeliveryMode, Settings, UpstreamSettings};
use gateway::database::testing::fresh_database;
use gateway::delivery::{worker, Clients};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

type Seen = (String, String, Instant, usize);

/// What the mock saw: per (api key, path), each request's arrival and item count; per event id,
/// when it arrived.
#[derive(Clone, Default)]
struct Log {
    /// (Api-Key, path, arrival, items).
    requests: Arc<Mutex<Vec<Seen>>>,
    arrivals: Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>>,
}

struct Recording {
    log: Log,
    answer: ResponseTemplate,
}

impl Respond for Recording {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let items = body
            .get("events")
            .or_else(|| body.get("users"))
            .and_then(Value::as_array)
            .map(|a| a.len())
            .unwrap_or(1);
        let key = r
            .headers
            .get("Api-Key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(events) = body.get("events").and_then(Value::as_array) {
            let at = chrono::Utc::now();
            let mut arrivals = self.log.arrivals.lock().unwrap();
            for e in events {
                if let Some(id) = e.get("id").and_then(Value::as_str) {
                    arrivals.insert(id.to_string(), at);
                }
            }
        }
        self.log
            .requests
            .lock()
            .unwrap()
            .push((key, r.url.path().to_string(), now, items));
        self.answer.clone()
    }
}

fn settings(iterable: &MockServer, connections: &[&str]) -> Settings {
    let config = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    let mut s = Settings::load(&config).expect("the shipped configuration loads");
    s.delivery.mode = DeliveryMode::Live;
    s.delivery.request_timeout_ms = 2000;
    s.delivery.retry_base_ms = 1000;
    // The shipped workers, claim_batch and database_connections unless BENCH_WORKERS /
    // BENCH_CLAIM / BENCH_DB_CONNECTIONS say otherwise.
    if let Some(w) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.delivery.workers = w;
    }
    if let Some(c) = std::env::var("BENCH_CLAIM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.delivery.claim_batch = c;
    }
    if let Some(n) = std::env::var("BENCH_DB_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.delivery.database_connections = n;
    }
    s.iterable = UpstreamSettings {
        us_url: iterable.uri(),
        eu_url: iterable.uri(),
    };
    s.connections = connections
        .iter()
        .map(|c| {
            serde_json::from_value(json!({"name": c, "iterable_api_key": format!("key-{c}")}))
                .unwrap()
        })
        .collect();
    s
}

async fn insert(pool: &PgPool, connection: &str, events: Vec<Value>) {
    for chunk in events.chunks(2500) {
        let events = chunk
            .iter()
            .map(|e| NewEvent {
                message_id: e["messageId"].as_str().unwrap().to_string(),
                call_type: e["type"].as_str().map(str::to_string),
                user_key: e["userId"].as_str().unwrap().to_string(),
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
        write_group(pool, &[&record]).await.unwrap();
    }
}

fn track(c: &str, n: usize) -> Value {
    json!({"type": "track", "event": "Played", "messageId": format!("{c}-t-{n}"), "userId": format!("{c}-u-{n}"),
           "timestamp": "2024-05-01T10:00:00Z", "properties": {"n": n}})
}

fn identify(c: &str, n: usize) -> Value {
    json!({"type": "identify", "messageId": format!("{c}-i-{n}"), "userId": format!("{c}-v-{n}"),
           "traits": {"email": format!("{c}-{n}@example.com"), "plan": "pro"}})
}

async fn run_for(pool: &PgPool, settings: &Settings, secs: f64) {
    // Statistics for the backlog just written, as autovacuum would have them by now in a
    // running service (without them the first claims plan badly on a table filled seconds ago).
    sqlx::query("ANALYZE event").execute(pool).await.unwrap();
    let cancel = CancellationToken::new();
    let clients = Clients::new(&settings.delivery).unwrap();
    let run = tokio::spawn(worker::run(
        pool.clone(),
        Arc::new(settings.clone()),
        clients,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    cancel.cancel();
    run.await.unwrap();
}

/// What the mock saw of one key and path.
struct Rates {
    requests: usize,
    /// First to last request, seconds.
    span: f64,
    /// The most requests in any one-second window.
    busiest: usize,
    median_items: usize,
    items: usize,
}

impl Rates {
    /// Requests/s after the first second's burst of `limit`: (requests − limit) / span.
    fn sustained(&self, limit: f64) -> f64 {
        (self.requests as f64 - limit).max(0.0) / self.span.max(0.001)
    }

    /// Events/s over the same stretch (the burst's share of the items left out).
    fn events(&self, limit: f64) -> f64 {
        let share = (self.requests as f64 - limit).max(0.0) / self.requests.max(1) as f64;
        self.items as f64 * share / self.span.max(0.001)
    }
}

fn rates(log: &Log, key: &str, path: &str) -> Rates {
    let requests = log.requests.lock().unwrap();
    let mut mine: Vec<(Instant, usize)> = requests
        .iter()
        .filter(|(k, p, _, _)| k == key && p == path)
        .map(|(_, _, t, n)| (*t, *n))
        .collect();
    mine.sort();
    let span = match (mine.first(), mine.last()) {
        (Some(a), Some(b)) => (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    };
    let busiest = (0..mine.len())
        .map(|i| {
            mine[i..]
                .iter()
                .take_while(|(t, _)| *t < mine[i].0 + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let mut items: Vec<usize> = mine.iter().map(|(_, n)| *n).collect();
    items.sort();
    Rates {
        requests: mine.len(),
        span,
        busiest,
        median_items: items.get(items.len() / 2).copied().unwrap_or(0),
        items: items.iter().sum(),
    }
}

#[tokio::main]
async fn main() {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--secs")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6.0);
    if std::env::var("RUST_LOG").is_ok() {
        gateway::telemetry::init_logs(gateway::configuration::LogFormat::Pretty);
    }
    println!("| scenario | measure | value |\n|---|---|---|");

    // 1. Backlog per endpoint.
    {
        let (pool, _db) = fresh_database().await;
        gateway::database::migrate(&pool).await.unwrap();
        let iterable = MockServer::start().await;
        let log = Log::default();
        Mock::given(method("POST"))
            .respond_with(Recording {
                log: log.clone(),
                answer: ResponseTemplate::new(200)
                    .set_body_json(json!({"successCount": 1000, "failCount": 0})),
            })
            .mount(&iterable)
            .await;
        // One connection per endpoint's backlog (a connection sends its oldest events first).
        let s = settings(&iterable, &["a", "b"]);
        insert(&pool, "a", (0..50_000).map(|n| track("a", n)).collect()).await;
        insert(&pool, "b", (0..25_000).map(|n| identify("b", n)).collect()).await;
        run_for(&pool, &s, secs).await;
        for (key, path, limit) in [
            ("key-a", "/api/events/trackBulk", 10.0),
            ("key-b", "/api/users/bulkUpdate", 5.0),
        ] {
            let r = rates(&log, key, path);
            println!(
                "| backlog | {path}: requests, over | {} over {:.2} s |",
                r.requests, r.span
            );
            println!("| backlog | {path}: requests/s after the burst (limit {limit}); busiest 1 s window (limit + burst = {}) | {:.2}; {} |", 2.0 * limit, r.sustained(limit), r.busiest);
            println!(
                "| backlog | {path}: items per request (median) | {} |",
                r.median_items
            );
            println!("| backlog | {path}: events/s after the burst, share of ceiling ({:.0}/s) | {:.0} ({:.0} %) |", limit * 1000.0, r.events(limit), 100.0 * r.events(limit) / (limit * 1000.0));
        }
    }

    if std::env::var("BENCH_ONLY_BACKLOG").is_ok() {
        return;
    }

    // 2. Fairness: two healthy connections, alone and beside a failing one.
    for failing in ["none", "down", "bad key"] {
        let (pool, _db) = fresh_database().await;
        gateway::database::migrate(&pool).await.unwrap();
        let iterable = MockServer::start().await;
        let log = Log::default();
        let ok = ResponseTemplate::new(200).set_body_json(json!({"successCount": 1000}));
        match failing {
            "down" => {
                Mock::given(method("POST"))
                    .and(header("Api-Key", "key-c"))
                    .respond_with(Recording {
                        log: log.clone(),
                        answer: ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
                    })
                    .mount(&iterable)
                    .await;
            }
            "bad key" => {
                Mock::given(method("POST"))
                    .and(header("Api-Key", "key-c"))
                    .respond_with(Recording {
                        log: log.clone(),
                        answer: ResponseTemplate::new(401)
                            .set_body_json(json!({"msg": "Invalid API key", "code": "BadApiKey"})),
                    })
                    .mount(&iterable)
                    .await;
            }
            _ => {}
        }
        Mock::given(method("POST"))
            .respond_with(Recording {
                log: log.clone(),
                answer: ok,
            })
            .mount(&iterable)
            .await;
        let names: &[&str] = if failing == "none" {
            &["a", "b"]
        } else {
            &["a", "b", "c"]
        };
        let s = settings(&iterable, names);
        for c in names {
            insert(&pool, c, (0..30_000).map(|n| track(c, n)).collect()).await;
        }
        run_for(&pool, &s, secs).await;
        let total: f64 = ["a", "b"]
            .iter()
            .map(|c| rates(&log, &format!("key-{c}"), "/api/events/trackBulk").events(10.0))
            .sum();
        println!(
            "| fairness, third connection: {failing} | trackBulk events/s of a + b | {total:.0} |"
        );
    }

    // 3. Latency at light load.
    {
        let (pool, _db) = fresh_database().await;
        gateway::database::migrate(&pool).await.unwrap();
        let iterable = MockServer::start().await;
        let log = Log::default();
        Mock::given(method("POST"))
            .respond_with(Recording {
                log: log.clone(),
                answer: ResponseTemplate::new(200).set_body_json(json!({"successCount": 1})),
            })
            .mount(&iterable)
            .await;
        let s = settings(&iterable, &["a"]);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(worker::run(
            pool.clone(),
            Arc::new(s.clone()),
            Clients::new(&s.delivery).unwrap(),
            cancel.clone(),
        ));
        let n = (secs * 20.0) as usize;
        for i in 0..n {
            insert(&pool, "a", vec![track("a", i)]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        cancel.cancel();
        run.await.unwrap();
        let received: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT message_id, received_at FROM event")
                .fetch_all(&pool)
                .await
                .unwrap();
        let arrivals = log.arrivals.lock().unwrap();
        let mut ms: Vec<f64> = received
            .iter()
            .filter_map(|(m, at)| {
                arrivals
                    .get(m)
                    .map(|a| (*a - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            })
            .collect();
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        println!("| light load (20 events/s) | commit → mock, ms: p50 / p99 / max ({} of {n} events) | {:.0} / {:.0} / {:.0} |", ms.len(), q(0.5), q(0.99), ms[ms.len() - 1]);
    }
}
