//! The dispatchers' database connections: each gateway connection's dispatchers (both
//! directions) have a pool of their own (`delivery.database_connections`), apart from ingest's
//! and from the other connections', so that their statements never run more than that many at
//! once.

use super::{connection, track, Harness, EVENTS};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

/// Backends of the test's database per `gateway delivery …` application name.
async fn delivery_backends(h: &Harness) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT application_name, count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'gateway delivery%'
         GROUP BY 1",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Events (all connections) in `state`.
async fn events_in(h: &Harness, state: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {EVENTS} WHERE state = $1"))
        .bind(state)
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_connections_dispatchers_share_the_database_connections_they_are_given() {
    // Arrange: three connections with two dispatchers per direction each (twelve loops), one
    // database connection for each connection's four, and an Iterable that takes 20 ms per
    // answer, so that the loops' batches overlap.
    let h = Harness::with(|s| {
        s.delivery.workers = 2;
        s.delivery.database_connections = 1;
        s.delivery.claim_batch = 20;
        s.connections.extend(["a", "b"].map(connection));
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"successCount": 1}))
                .set_delay(Duration::from_millis(20)),
        )
        .mount(&h.iterable)
        .await;
    for name in ["shop", "a", "b"] {
        let events: Vec<_> = (0..60)
            .map(|i| {
                track(
                    &format!("{name}-{i}"),
                    &format!("{name}-user-{i}"),
                    "Viewed",
                )
            })
            .collect();
        h.insert_into(name, &events).await;
    }
    assert!(delivery_backends(&h).await.is_empty());

    // Act: the loops deliver everything, their connections watched meanwhile.
    let (cancel, workers) = h.spawn_workers();
    let started = Instant::now();
    let mut most: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        for (name, n) in delivery_backends(&h).await {
            let seen = most.entry(name).or_default();
            *seen = (*seen).max(n);
        }
        let pending = events_in(&h, "pending").await;
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{pending} events still pending"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel.cancel();
    workers.await.unwrap();

    // Assert: every event delivered, each connection's through one database connection of its
    // own, and those closed with the loops.
    assert_eq!(events_in(&h, "delivered").await, 180);
    let expected: BTreeMap<String, i64> = ["a", "b", "shop"]
        .into_iter()
        .map(|c| (format!("gateway delivery {c}"), 1))
        .collect();
    assert_eq!(
        most, expected,
        "the most connections open at once, per name"
    );
    let closed = async {
        while !delivery_backends(&h).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the dispatchers' connections close when they stop");
}
