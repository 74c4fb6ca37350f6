//! Each kind of event reaches its endpoint with the body the mapping engine plans; dry-run
//! sends nothing; skipped and refused events never reach the network.

use super::{identify, planned, track, wire, Harness, API_KEY};
use gateway::configuration::DeliveryMode;
use gateway::delivery::engine::DRY_RUN_REASON;
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

async fn ok(h: &Harness, endpoint: &str, calls: u64) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .and(header("Api-Key", API_KEY))
        .and(header("Content-Type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"msg": "", "code": "Success", "successCount": 1, "failCount": 0}),
        ))
        .expect(calls)
        .mount(&h.iterable)
        .await;
}

fn cart_updated() -> Value {
    json!({
        "type": "track", "event": "Cart Updated", "messageId": "m-cart", "userId": "u-cart",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"products": [{"product_id": "p1", "sku": "S1", "name": "Mug", "price": 12.5, "quantity": 2}]},
        "context": {"traits": {"email": "cart@example.com"}}
    })
}

fn order_completed() -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": "m-order", "userId": "u-order",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"order_id": "o-1", "total": 25, "products": [{"product_id": "p1", "sku": "S1", "name": "Mug", "price": 12.5, "quantity": 2}]},
        "context": {"traits": {"email": "order@example.com"}}
    })
}

fn page() -> Value {
    json!({
        "type": "page", "name": "Pricing", "messageId": "m-page", "userId": "u-page",
        "timestamp": "2024-05-01T10:00:00Z", "properties": {"path": "/pricing"}
    })
}

#[tokio::test]
async fn identify_track_cart_order_and_page_reach_their_endpoints_with_the_mapped_bodies() {
    // Arrange
    let h = Harness::start().await;
    let events = [
        identify("m-identify", "u-identify", "ann@example.com"),
        track("m-track", "u-track", "Video Played"),
        cart_updated(),
        order_completed(),
        page(),
    ];
    h.insert(&events).await;
    ok(&h, "/api/users/bulkUpdate", 1).await;
    ok(&h, "/api/events/trackBulk", 1).await;
    ok(&h, "/api/commerce/updateCart", 1).await;
    ok(&h, "/api/commerce/trackPurchase", 1).await;

    // Act
    h.drain().await;

    // Assert: identify and track go in bulk (track and page together), the rest one by one.
    let body = |e: &Value| wire(&planned(e)[0].body);
    assert_eq!(
        h.received("/api/users/bulkUpdate").await,
        [json!({"users": [body(&events[0])]})]
    );
    assert_eq!(
        h.received("/api/events/trackBulk").await,
        [json!({"events": [body(&events[1]), body(&events[4])]})]
    );
    assert_eq!(
        h.received("/api/commerce/updateCart").await,
        [body(&events[2])]
    );
    assert_eq!(
        h.received("/api/commerce/trackPurchase").await,
        [body(&events[3])]
    );
    for (mid, action) in [
        ("m-identify", "updateUser"),
        ("m-track", "trackEvent"),
        ("m-cart", "updateCart"),
        ("m-order", "trackPurchase"),
        ("m-page", "trackEvent"),
    ] {
        let e = h.event(mid).await;
        assert_eq!(
            (e.state.as_str(), e.action.as_deref(), e.attempts),
            ("delivered", Some(action), 1),
            "{mid}"
        );
        let attempts = h.attempts(mid).await;
        assert_eq!(attempts.len(), 1, "{mid}");
        let a = &attempts[0];
        assert_eq!(
            (a.outcome.as_str(), a.status, a.dry_run),
            ("delivered", Some(200), false)
        );
        // The key never reaches the database.
        assert_eq!(a.request_headers["api-key"], "<redacted>");
        assert!(!a.request_headers.to_string().contains(API_KEY));
    }
}

#[tokio::test]
async fn dry_run_records_what_would_be_sent_and_makes_no_request() {
    // Arrange
    let h = Harness::with(|s| s.delivery.mode = DeliveryMode::DryRun).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&h.iterable)
        .await;
    let event = track("m-1", "u-1", "Signed Up");
    h.insert(&[event.clone(), cart_updated()]).await;

    // Act
    h.drain().await;

    // Assert
    for mid in ["m-1", "m-cart"] {
        let e = h.event(mid).await;
        assert_eq!(e.state, "dry_run");
        assert_eq!(e.state_reason.as_deref(), Some(DRY_RUN_REASON));
        let a = &h.attempts(mid).await[0];
        assert_eq!(
            (a.outcome.as_str(), a.status, a.dry_run),
            ("dry_run", None, true)
        );
    }
    let a = &h.attempts("m-1").await[0];
    assert_eq!(a.endpoint, "/api/events/trackBulk");
    assert_eq!(
        a.request_body,
        Some(json!({"events": [planned(&event)[0].body]}))
    );
}

#[tokio::test]
async fn skipped_and_unmappable_events_are_settled_and_an_anonymous_bulk_item_counts_as_refused() {
    // Arrange: Iterable counts one failure in its answer and cannot name it.
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"successCount": 0, "failCount": 1})),
        )
        .expect(1)
        .mount(&h.iterable)
        .await;
    let mut opted_out = track("m-skip", "u-1", "Signed Up");
    opted_out["integrations"] = json!({"Iterable": false});
    let anonymous =
        json!({"type": "track", "event": "X", "messageId": "m-bad", "anonymousId": "a-1"});
    h.insert(&[opted_out, anonymous]).await;

    // Act
    h.drain().await;

    // Assert
    let skipped = h.event("m-skip").await;
    assert_eq!(skipped.state, "skipped");
    assert!(skipped.state_reason.unwrap().contains("Iterable"));
    // Segment's performBatch sends a track without email or userId in the bulk as it is
    // (`gateway map --batch` shows the same); Iterable's count of failures settles it.
    let failed = h.event("m-bad").await;
    assert_eq!(failed.state, "failed");
    assert_eq!(failed.action.as_deref(), Some("trackEvent"));
    let reason = failed.state_reason.unwrap();
    assert!(reason.contains("neither email nor userId"), "{reason}");
    assert_eq!(h.attempts("m-bad").await[0].outcome, "partial");
}

#[tokio::test]
async fn an_event_with_two_requests_is_delivered_only_when_both_are() {
    // Arrange: an Order Completed matches trackEvent (a trackBulk item) and trackPurchase.
    let h = Harness::with(|s| {
        s.connections[0].settings = serde_json::from_value(json!({"subscriptions": [
            {"trigger": "type = \"track\"", "action": "trackEvent"},
            {"trigger": "event = \"Order Completed\"", "action": "trackPurchase"}
        ]}))
        .unwrap();
    })
    .await;
    h.insert(&[order_completed()]).await;
    ok(&h, "/api/events/trackBulk", 2).await;
    Mock::given(method("POST"))
        .and(path("/api/commerce/trackPurchase"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.iterable)
        .await;
    ok(&h, "/api/commerce/trackPurchase", 1).await;

    // Act
    h.drain_all().await;

    // Assert: the whole plan was sent again after trackPurchase's 503.
    let e = h.event("m-order").await;
    assert_eq!((e.state.as_str(), e.attempts), ("delivered", 2));
    assert_eq!(e.action.as_deref(), Some("trackEvent,trackPurchase"));
    let outcomes: Vec<(String, String)> = h
        .attempts("m-order")
        .await
        .into_iter()
        .map(|a| (a.endpoint, a.outcome))
        .collect();
    let expected = [
        ("/api/events/trackBulk", "delivered"),
        ("/api/commerce/trackPurchase", "retry"),
        ("/api/events/trackBulk", "delivered"),
        ("/api/commerce/trackPurchase", "delivered"),
    ];
    assert_eq!(
        outcomes,
        expected.map(|(a, b)| (a.to_string(), b.to_string()))
    );
}
