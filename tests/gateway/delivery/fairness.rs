//! Fairness: each (connection, direction) has dispatcher loops of its own (`worker::run`), so
//! a connection whose Iterable is down, slow or refusing its key delays only its own events.

use super::{track, Harness, API_KEY, EVENTS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wiremock::matchers::{header, method};
use wiremock::{Mock, ResponseTemplate};

/// How long the slow connection's Iterable takes to answer.
const SLOW: Duration = Duration::from_secs(6);
/// How soon each wave of the healthy connection's events must be delivered: far less than
/// `SLOW`, so that a healthy connection waiting behind the slow one would fail it.
const PROMPT: Duration = Duration::from_millis(2000);

fn troubled(name: &str) -> Value {
    json!({"name": name, "iterable_api_key": format!("key-{name}")})
}

fn tracks(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            track(
                &format!("{prefix}-{i}"),
                &format!("{prefix}-user-{i}"),
                "Viewed",
            )
        })
        .collect()
}

async fn count(h: &Harness, connection: &str, sql_where: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {EVENTS} WHERE connection = $1 AND {sql_where}"
    ))
    .bind(connection)
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_down_slow_or_refusing_iterable_delays_only_its_own_connection() {
    // Arrange: `shop` is healthy; `down` answers 503, `slow` answers after 6 s, `refused`
    // answers 401. Retries are far away, so that the 503s stay pending; the request timeout
    // outlasts the slow answers.
    let h = Harness::with(|s| {
        s.delivery.workers = 2;
        s.delivery.retry_base_ms = 60_000;
        s.delivery.retry_max_secs = 120;
        s.delivery.request_timeout_ms = 10_000;
        s.delivery.lease_secs = 60;
        for name in ["down", "slow", "refused"] {
            s.connections
                .push(serde_json::from_value(troubled(name)).unwrap());
        }
    })
    .await;
    let ok = || ResponseTemplate::new(200).set_body_json(json!({"successCount": 10}));
    Mock::given(method("POST"))
        .and(header("Api-Key", "key-down"))
        .respond_with(ResponseTemplate::new(503).set_body_string("Service Unavailable"))
        .mount(&h.iterable)
        .await;
    Mock::given(method("POST"))
        .and(header("Api-Key", "key-slow"))
        .respond_with(ok().set_delay(SLOW))
        .mount(&h.iterable)
        .await;
    Mock::given(method("POST"))
        .and(header("Api-Key", "key-refused"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"msg": "Invalid API key", "code": "BadApiKey", "params": null}),
            ),
        )
        .mount(&h.iterable)
        .await;
    Mock::given(method("POST"))
        .and(header("Api-Key", API_KEY))
        .respond_with(ok())
        .mount(&h.iterable)
        .await;
    for name in ["down", "slow", "refused"] {
        h.insert_into(name, &tracks(name, 10)).await;
    }
    let started = Instant::now();
    let (cancel, workers) = h.spawn_workers();

    // Act and assert: five waves of `shop` events, 300 ms apart, each delivered promptly while
    // the slow connection's requests are still out.
    for wave in 0..5 {
        let prefix = format!("shop{wave}");
        h.insert(&tracks(&prefix, 10)).await;
        let inserted = Instant::now();
        let pattern = format!("message_id LIKE '{prefix}-%' AND state = 'delivered'");
        while count(&h, "shop", &pattern).await < 10 {
            assert!(
                inserted.elapsed() < PROMPT,
                "wave {wave} of the healthy connection not delivered within {PROMPT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let healthy_done = started.elapsed();
    assert!(healthy_done < SLOW, "{healthy_done:?}");
    assert_eq!(
        count(&h, "shop", "state = 'delivered' AND attempts = 1").await,
        50
    );
    // The slow connection's events are still in flight: claimed once, their lease live.
    assert_eq!(
        count(
            &h,
            "slow",
            "state = 'pending' AND attempts = 1 AND lease_until > now()"
        )
        .await,
        10
    );
    // The 503s wait for their retry, an attempt spent.
    assert_eq!(
        count(
            &h,
            "down",
            "state = 'pending' AND attempts = 1 AND next_attempt_at > now() + interval '30 seconds'"
        )
        .await,
        10
    );
    // The refused key paused its connection: its events wait, their attempts untouched.
    assert_eq!(
        count(&h, "refused", "state = 'pending' AND attempts = 0").await,
        10
    );
    let paused: Vec<String> = sqlx::query_scalar("SELECT connection FROM connection_pause")
        .fetch_all(&h.pool)
        .await
        .unwrap();
    assert_eq!(paused, ["refused"]);

    // The slow answers come in the end, and then the loops stop.
    cancel.cancel();
    tokio::time::timeout(SLOW * 3, workers)
        .await
        .expect("the workers stop once the slow batch is answered")
        .unwrap();
    assert_eq!(count(&h, "slow", "state = 'delivered'").await, 10);
}
