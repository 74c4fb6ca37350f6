//! Bulk answers: the items Iterable lists as failed fail alone; a refused bulk request is
//! split so that only its bad event fails.

use super::{identify, track, Harness};
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test]
async fn a_bulk_answer_listing_one_invalid_email_fails_only_that_user() {
    // Arrange
    let h = Harness::start().await;
    h.insert(&[
        identify("m-1", "u-1", "ann@example.com"),
        identify("m-2", "u-2", "Bo@Example.com"),
        identify("m-3", "u-3", "cy@example.com"),
    ])
    .await;
    Mock::given(method("POST"))
        .and(path("/api/users/bulkUpdate"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "successCount": 2, "failCount": 1, "createdFields": [],
            "failedUpdates": {"invalidEmails": ["bo@example.com"], "invalidUserIds": []}
        })))
        .expect(1)
        .mount(&h.iterable)
        .await;

    // Act
    h.drain_all().await;

    // Assert: one request carried all three; only the listed one failed.
    assert_eq!(
        h.received("/api/users/bulkUpdate").await[0]["users"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(h.event("m-1").await.state, "delivered");
    assert_eq!(h.event("m-3").await.state, "delivered");
    let bad = h.event("m-2").await;
    assert_eq!(bad.state, "failed");
    assert!(bad
        .state_reason
        .unwrap()
        .contains("failedUpdates.invalidEmails"));
    let attempt = &h.attempts("m-1").await[0];
    assert_eq!(
        (attempt.outcome.as_str(), attempt.status),
        ("partial", Some(200))
    );
}

#[tokio::test]
async fn top_level_lists_and_disallowed_event_names_are_mapped_back_too() {
    // Arrange
    let h = Harness::start().await;
    h.insert(&[
        track("m-1", "u-1", "Signed Up"),
        track("m-2", "u-2", "Forbidden Event"),
        track("m-3", "u-3", "Signed Up"),
    ])
    .await;
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "successCount": 1, "failCount": 2,
            "invalidUserIds": ["u-3"], "disallowedEventNames": ["Forbidden Event"]
        })))
        .expect(1)
        .mount(&h.iterable)
        .await;

    // Act
    h.drain_all().await;

    // Assert
    assert_eq!(h.event("m-1").await.state, "delivered");
    for (mid, list) in [("m-2", "disallowedEventNames"), ("m-3", "invalidUserIds")] {
        let e = h.event(mid).await;
        assert_eq!(e.state, "failed", "{mid}");
        assert!(e.state_reason.unwrap().ends_with(list), "{mid}");
    }
}

#[tokio::test]
async fn a_refused_bulk_request_is_split_and_only_the_bad_event_fails() {
    // Arrange: Iterable refuses any request that carries m-bad.
    let h = Harness::start().await;
    h.insert(&[
        track("m-1", "u-1", "Signed Up"),
        track("m-bad", "u-2", "Signed Up"),
        track("m-3", "u-3", "Signed Up"),
    ])
    .await;
    let refusal = json!({"msg": "[/api/events/trackBulk] Invalid JSON body", "code": "BadJsonBody",
                         "params": {"obj.events[1].createdAt": "Number value expected"}});
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .and(body_string_contains("m-bad"))
        .respond_with(ResponseTemplate::new(400).set_body_json(refusal))
        .expect(2)
        .mount(&h.iterable)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"successCount": 1})))
        .expect(2)
        .mount(&h.iterable)
        .await;

    // Act
    h.drain_all().await;

    // Assert: after the refused bulk request, each event went alone.
    for mid in ["m-1", "m-3"] {
        let e = h.event(mid).await;
        assert_eq!((e.state.as_str(), e.solo), ("delivered", true), "{mid}");
        let outcomes: Vec<String> = h
            .attempts(mid)
            .await
            .into_iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(outcomes, ["retry", "delivered"], "{mid}");
    }
    let bad = h.event("m-bad").await;
    assert_eq!((bad.state.as_str(), bad.solo), ("failed", true));
    let reason = bad.state_reason.unwrap();
    assert!(reason.contains("BadJsonBody"), "{reason}");
    // The split gives the attempt back: each event was tried once on its own.
    assert_eq!(bad.attempts, 1);
    let requests = h.received("/api/events/trackBulk").await;
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| r["events"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [3, 1, 1, 1]);
}
