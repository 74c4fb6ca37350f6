//! Transient failures are retried and then delivered; permanent ones fail with Iterable's
//! reason; retries stop at `max_attempts`; `Retry-After` is honoured.

use super::{track, Harness};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const TRACK_BULK: &str = "/api/events/trackBulk";

/// Answers `status` to the first `times` requests on `endpoint`.
async fn first(h: &Harness, endpoint: &str, times: u64, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .respond_with(response)
        .up_to_n_times(times)
        .expect(times)
        .mount(&h.iterable)
        .await;
}

async fn then_ok(h: &Harness, endpoint: &str) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"successCount": 1})))
        .expect(1)
        .mount(&h.iterable)
        .await;
}

async fn outcomes(h: &Harness, message_id: &str) -> Vec<(String, Option<i16>)> {
    h.attempts(message_id)
        .await
        .into_iter()
        .map(|a| (a.outcome, a.status))
        .collect()
}

fn pairs(list: &[(&str, Option<i16>)]) -> Vec<(String, Option<i16>)> {
    list.iter().map(|(o, s)| (o.to_string(), *s)).collect()
}

#[tokio::test]
async fn a_429_is_retried_and_then_delivered() {
    // Arrange
    let h = Harness::start().await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    let limited = json!({"msg": "Exceeded rate limit", "code": "RateLimitExceeded"});
    first(
        &h,
        TRACK_BULK,
        1,
        ResponseTemplate::new(429).set_body_json(limited),
    )
    .await;
    then_ok(&h, TRACK_BULK).await;

    // Act
    h.drain_all().await;

    // Assert
    let e = h.event("m-1").await;
    assert_eq!((e.state.as_str(), e.attempts), ("delivered", 2));
    let expected = [("retry", Some(429)), ("delivered", Some(200))];
    assert_eq!(outcomes(&h, "m-1").await, pairs(&expected));
    let attempts = h.attempts("m-1").await;
    assert_eq!((attempts[0].attempt, attempts[1].attempt), (1, 2));
    assert!(attempts[0]
        .error
        .as_ref()
        .unwrap()
        .contains("RateLimitExceeded"));
}

#[tokio::test]
async fn server_errors_are_retried_until_iterable_answers() {
    // Arrange
    let h = Harness::start().await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    first(&h, TRACK_BULK, 2, ResponseTemplate::new(500)).await;
    then_ok(&h, TRACK_BULK).await;

    // Act
    h.drain_all().await;

    // Assert
    assert_eq!(h.event("m-1").await.state, "delivered");
    let expected = [
        ("retry", Some(500)),
        ("retry", Some(500)),
        ("delivered", Some(200)),
    ];
    assert_eq!(outcomes(&h, "m-1").await, pairs(&expected));
}

#[tokio::test]
async fn a_timeout_is_retried_and_then_delivered() {
    // Arrange
    let h = Harness::with(|s| s.delivery.request_timeout_ms = 200).await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_millis(1000));
    first(&h, TRACK_BULK, 1, slow).await;
    then_ok(&h, TRACK_BULK).await;

    // Act
    h.drain_all().await;

    // Assert
    assert_eq!(h.event("m-1").await.state, "delivered");
    let attempts = h.attempts("m-1").await;
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (attempts[0].outcome.as_str(), attempts[0].status),
        ("retry", None)
    );
    assert!(attempts[0].error.as_ref().unwrap().contains("timeout"));
}

#[tokio::test]
async fn a_permanent_400_fails_the_event_and_keeps_iterables_msg_and_code() {
    // Arrange
    let h = Harness::start().await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    let refusal = json!({"msg": "[/api/events/trackBulk] Invalid JSON body", "code": "BadJsonBody",
                         "params": {"obj.events[0].createdAt": "Number value expected"}});
    first(
        &h,
        TRACK_BULK,
        1,
        ResponseTemplate::new(400).set_body_json(&refusal),
    )
    .await;

    // Act
    h.drain_all().await;

    // Assert: one attempt, no retry.
    let e = h.event("m-1").await;
    assert_eq!((e.state.as_str(), e.attempts), ("failed", 1));
    let reason = e.state_reason.unwrap();
    assert!(reason.contains("HTTP 400"), "{reason}");
    assert!(reason.contains("Invalid JSON body"), "{reason}");
    assert!(reason.contains("BadJsonBody"), "{reason}");
    let attempts = h.attempts("m-1").await;
    assert_eq!(outcomes(&h, "m-1").await, pairs(&[("failed", Some(400))]));
    let kept: serde_json::Value =
        serde_json::from_str(attempts[0].response_body.as_ref().unwrap()).unwrap();
    assert_eq!(kept, refusal);
}

#[tokio::test]
async fn an_event_is_dead_once_its_attempts_are_used_up() {
    // Arrange
    let h = Harness::with(|s| s.delivery.max_attempts = 3).await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    first(&h, TRACK_BULK, 3, ResponseTemplate::new(503)).await;

    // Act
    h.drain_all().await;

    // Assert
    let e = h.event("m-1").await;
    assert_eq!((e.state.as_str(), e.attempts), ("dead", 3));
    assert!(e.state_reason.unwrap().contains("no attempts left"));
    let expected = [
        ("retry", Some(503)),
        ("retry", Some(503)),
        ("dead", Some(503)),
    ];
    assert_eq!(outcomes(&h, "m-1").await, pairs(&expected));
}

#[tokio::test]
async fn retry_after_postpones_the_next_attempt_up_to_the_cap() {
    // Arrange
    let h = Harness::with(|s| s.delivery.retry_max_secs = 600).await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    let busy = ResponseTemplate::new(429).insert_header("Retry-After", "120");
    first(&h, TRACK_BULK, 1, busy).await;

    // Act
    h.drain().await;

    // Assert
    let wait: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM o.next_attempt_at - now())::float8
         FROM outbox o JOIN event e ON e.id = o.event_id WHERE e.message_id = 'm-1'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!((100.0..=121.0).contains(&wait), "{wait}");
    assert_eq!(h.event("m-1").await.state, "pending");
}
