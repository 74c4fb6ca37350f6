//! The dispatchers' database connections: a pool of their own (`delivery.database_connections`),
//! apart from ingest's, so that delivery's statements never run more than that many at once.

use super::{track, Harness, EVENTS};
use serde_json::json;
use std::time::{Duration, Instant};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

/// Connections named `gateway delivery` on the test's database.
async fn delivery_backends(h: &Harness) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'gateway delivery'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_dispatchers_of_a_process_share_the_database_connections_they_are_given() {
    // Arrange: three connections with two dispatchers per direction each (twelve loops), one
    // database connection for all of them, and an Iterable that takes 20 ms per answer, so
    // that the loops' batches overlap.
    let h = Harness::with(|s| {
        s.delivery.workers = 2;
        s.delivery.database_connections = 1;
        s.delivery.claim_batch = 20;
        for name in ["a", "b"] {
            s.connections.push(
                serde_json::from_value(json!({"name": name, "iterable_api_key": "test-key"}))
                    .unwrap(),
            );
        }
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
    assert_eq!(delivery_backends(&h).await, 0);

    // Act: the loops deliver everything, the connections watched meanwhile.
    let (cancel, workers) = h.spawn_workers();
    let started = Instant::now();
    let mut most = 0;
    loop {
        most = most.max(delivery_backends(&h).await);
        let pending: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {EVENTS} WHERE state = 'pending'"
        ))
        .fetch_one(&h.pool)
        .await
        .unwrap();
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

    // Assert: every event delivered, through one connection, which closed with the loops.
    let delivered: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {EVENTS} WHERE state = 'delivered'"
    ))
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(delivered, 180);
    assert_eq!(most, 1, "connections the dispatchers had open at once");
    let closed = async {
        while delivery_backends(&h).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the dispatchers' connection closes when they stop");
}
