//! End to end through HTTP: webhooks and tracking calls in, the partners (wiremock) out.

use crate::app::{spawn_app, spawn_app_with, WRITE_KEY};
use base64::Engine;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, ResponseTemplate};

const TOKEN: &str = "demo-webhook-token";
const SEGMENT_KEY: &str = "test-segment-write-key";

async fn webhook(app: &crate::app::TestApp, body: &str) {
    let res = app
        .api
        .post(format!("{}/webhooks/iterable/shop", app.address))
        .header("Authorization", TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

async fn states(app: &crate::app::TestApp) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT state, state_reason FROM event ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SEGMENT_KEY}:"))
    )
}

#[tokio::test]
async fn iterable_events_reach_segment_in_one_batch_with_basic_auth() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .and(header("Authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&app.segment)
        .await;
    webhook(&app, r#"{"email":"a@b.co","eventName":"emailOpen","dataFields":{"createdAt":"2024-03-01 10:00:00 +00:00"}}"#).await;
    webhook(&app, r#"{"userId":"u2","eventName":"pushSend"}"#).await;
    app.drain_until_settled().await;
    let received = app.segment.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    let batch = body["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["event"], "Email Opened");
    assert_eq!(batch[0]["timestamp"], "2024-03-01T10:00:00Z");
    assert_eq!(batch[1]["userId"], "u2");
    assert_eq!(
        states(&app).await,
        vec![("delivered".into(), None), ("delivered".into(), None)]
    );
    let (headers, status): (Value, i16) =
        sqlx::query_as("SELECT request_headers, status FROM delivery_attempt")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (headers["authorization"].as_str(), status),
        (Some("<redacted>"), 200)
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_until_segment_accepts() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&app.segment)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .expect(2)
        .mount(&app.segment)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.segment)
        .await;
    webhook(&app, r#"{"userId":"u1","eventName":"smsClick"}"#).await;
    app.drain_until_settled().await;
    assert_eq!(states(&app).await[0].0, "delivered");
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM delivery_attempt ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outcomes, ["retry", "retry", "retry", "delivered"]);
}

#[tokio::test]
async fn a_400_is_permanent_and_fails_only_the_event_segment_refuses() {
    let app = spawn_app().await;
    // Segment refuses any batch holding the bad event.
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .and(body_string_contains("bad@example.com"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"code": "bad_request", "message": "nope"})),
        )
        .mount(&app.segment)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.segment)
        .await;
    webhook(&app, r#"[{"email":"bad@example.com","eventName":"emailOpen"},{"email":"good@example.com","eventName":"emailOpen"}]"#).await;
    app.drain_until_settled().await;
    let s = states(&app).await;
    assert_eq!(s[0].0, "failed");
    assert!(
        s[0].1
            .as_deref()
            .unwrap()
            .contains("HTTP 400 from /v1/batch"),
        "{s:?}"
    );
    assert_eq!(s[1].0, "delivered");
}

#[tokio::test]
async fn an_eu_connection_sends_to_the_eu_host_and_dry_run_sends_nothing() {
    let eu = wiremock::MockServer::start().await;
    let eu_uri = eu.uri();
    let app = spawn_app_with(move |s| {
        s.segment.eu_url = eu_uri;
        s.connections[0].segment_region = "eu".into();
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&eu)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&app.segment)
        .await;
    webhook(&app, r#"{"userId":"u1","eventName":"pushOpen"}"#).await;
    app.drain_until_settled().await;
    assert_eq!(states(&app).await[0].0, "delivered");

    let dry =
        spawn_app_with(|s| s.delivery.mode = gateway::configuration::DeliveryMode::DryRun).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&dry.segment)
        .await;
    webhook(&dry, r#"{"userId":"u1","eventName":"pushOpen"}"#).await;
    dry.drain_until_settled().await;
    assert_eq!(
        states(&dry).await[0],
        ("dry_run".into(), Some("dry-run: not sent".into()))
    );
    let (outcome, dry_run): (String, bool) =
        sqlx::query_as("SELECT outcome, dry_run FROM delivery_attempt")
            .fetch_one(&dry.pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), dry_run), ("dry_run", true));
}

#[tokio::test]
async fn segment_calls_in_over_http_reach_iterable_and_survive_a_restart() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/api/users/bulkUpdate"))
        .and(header("Api-Key", crate::app::ITERABLE_KEY))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"successCount": 1, "failCount": 0})),
        )
        .expect(1)
        .mount(&app.iterable)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"successCount": 1, "failCount": 0})),
        )
        .expect(1)
        .mount(&app.iterable)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/commerce/trackPurchase"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.iterable)
        .await;
    let batch = json!({"batch": [
        {"type": "identify", "userId": "u-1", "messageId": "m-1", "traits": {"email": "ann@example.com"}},
        {"type": "track", "event": "Video Played", "userId": "u-2", "messageId": "m-2", "timestamp": "2024-05-01T10:00:00Z"},
        {"type": "track", "event": "Order Completed", "userId": "u-3", "messageId": "m-3", "timestamp": "2024-05-01T10:00:00Z",
         "properties": {"order_id": "o-1", "total": 10, "products": [{"product_id": "p", "name": "Mug", "price": 10, "quantity": 1}]}}
    ]});
    let res = app
        .api
        .post(format!("{}/v1/batch", app.address))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The process that acknowledged them is gone; a new dispatcher on the same database finds them.
    app.drain_until_settled().await;
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'delivered'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(delivered, 3);
    let received = app.iterable.received_requests().await.unwrap();
    let track = received
        .iter()
        .find(|r| r.url.path() == "/api/events/trackBulk")
        .unwrap();
    let body: Value = serde_json::from_slice(&track.body).unwrap();
    assert_eq!(body["events"][0]["id"], "m-2");
    assert_eq!(body["events"][0]["createdAt"], 1714557600);
}
