//! Single-user and bulk calls are never mixed for one user within
//! `delivery.user_call_window_ms` (issue 9): across batches and dispatcher processes (the
//! attempt log remembers), within one batch, and not at all when the window is 0. The mock
//! notes when each request arrived.

use super::{identify, track, Harness, API_KEY};
use gateway::configuration::Settings;
use gateway::delivery::{worker, Clients};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::method;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const WINDOW: Duration = Duration::from_millis(1500);

/// Answers every request 200 and notes its path, body and arrival.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(String, Value, Instant)>>>);

impl Respond for Arrivals {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        self.0
            .lock()
            .unwrap()
            .push((r.url.path().to_string(), body, Instant::now()));
        ResponseTemplate::new(200).set_body_json(json!({"successCount": 1, "failCount": 0}))
    }
}

impl Arrivals {
    /// When the first request to `path` whose body satisfies `which` arrived.
    fn at(&self, path: &str, which: impl Fn(&Value) -> bool) -> Instant {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .find(|(p, b, _)| p == path && which(b))
            .map(|(.., t)| *t)
            .unwrap_or_else(|| {
                let paths: Vec<&str> = seen.iter().map(|(p, ..)| p.as_str()).collect();
                panic!("no request to {path} matched; seen {paths:?}")
            })
    }

    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(p, ..)| p.clone())
            .collect()
    }
}

/// `shop` with aliases sent to users/updateEmail and subscription traits to
/// users/updateSubscriptions, and the given window.
async fn harness(window: Duration) -> (Harness, Arrivals) {
    let h = Harness::with(|s: &mut Settings| {
        s.delivery.user_call_window_ms = window.as_millis() as u64;
        s.connections = vec![serde_json::from_value(json!({
            "name": "shop", "iterable_api_key": API_KEY,
            "settings": {"aliasToUpdateEmail": true, "updateSubscriptions": true}
        }))
        .unwrap()];
    })
    .await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .respond_with(arrivals.clone())
        .mount(&h.iterable)
        .await;
    (h, arrivals)
}

/// An alias that changes `from`'s email to `to` (users/updateEmail: currentEmail, newEmail).
fn alias(message_id: &str, from: &str, to: &str) -> Value {
    json!({"type": "alias", "messageId": message_id, "previousId": from, "userId": to})
}

fn names_email(email: &'static str) -> impl Fn(&Value) -> bool {
    move |b| b.to_string().contains(email)
}

#[tokio::test]
async fn an_alias_after_a_bulk_identify_waits_the_window_even_in_another_process() {
    // Arrange: process 1 delivers ann's identify by users/bulkUpdate.
    let (h, arrivals) = harness(WINDOW).await;
    h.insert(&[identify("m-1", "u-1", "ann@example.com")]).await;
    worker::drain(&h.pool, &h.settings, &h.clients)
        .await
        .unwrap();
    assert_eq!(h.event("m-1").await.state, "delivered");

    // Act: process 2 (its own clients, nothing in memory) gets ann's alias and bob's at once.
    let other = Clients::new(&h.settings.delivery)
        .unwrap()
        .with_jitter(|| 0.5);
    h.insert(&[
        alias("m-2", "ann@example.com", "ann@new.example.com"),
        alias("m-3", "bob@example.com", "bob@new.example.com"),
    ])
    .await;
    worker::drain(&h.pool, &h.settings, &other).await.unwrap();

    // Assert 1: ann's alias is held back, with why, its attempt given back; bob's is not.
    let held = h.event("m-2").await;
    assert_eq!((held.state.as_str(), held.attempts), ("pending", 0));
    let why = held.state_reason.unwrap_or_default();
    assert!(
        why.contains("bulk call (/api/users/bulkUpdate)")
            && why.contains("user_call_window_ms = 1500"),
        "{why}"
    );
    assert_eq!(h.event("m-3").await.state, "delivered");

    // Assert 2: ann's updateEmail reaches Iterable no earlier than the window after her
    // bulkUpdate; bob's went at once.
    crate::helpers::drain_until_settled(&h.pool, &h.settings, &other).await;
    let e = h.event("m-2").await;
    assert_eq!((e.state.as_str(), e.attempts), ("delivered", 1));
    let bulk = arrivals.at("/api/users/bulkUpdate", names_email("ann@example.com"));
    let ann = arrivals.at("/api/users/updateEmail", names_email("ann@example.com"));
    let bob = arrivals.at("/api/users/updateEmail", names_email("bob@example.com"));
    assert!(
        ann.duration_since(bulk) >= WINDOW,
        "updateEmail {:?} after bulkUpdate",
        ann.duration_since(bulk)
    );
    assert!(
        bob.duration_since(bulk) < WINDOW,
        "another user's single call was delayed: {:?}",
        bob.duration_since(bulk)
    );
}

#[tokio::test]
async fn an_identify_and_an_alias_of_one_user_in_one_batch_go_the_window_apart() {
    // Arrange: the identify and the alias arrive together (two user keys, one Iterable user:
    // the alias's previousId is the identify's email), with another user's alias.
    let (h, arrivals) = harness(WINDOW).await;
    h.insert(&[
        identify("m-1", "u-1", "ann@example.com"),
        alias("m-2", "ann@example.com", "ann@new.example.com"),
        alias("m-3", "bob@example.com", "bob@new.example.com"),
    ])
    .await;

    // Act
    h.drain_all().await;

    // Assert
    let bulk = arrivals.at("/api/users/bulkUpdate", names_email("ann@example.com"));
    let ann = arrivals.at("/api/users/updateEmail", names_email("ann@example.com"));
    let bob = arrivals.at("/api/users/updateEmail", names_email("bob@example.com"));
    assert!(
        ann.duration_since(bulk) >= WINDOW,
        "updateEmail {:?} after bulkUpdate",
        ann.duration_since(bulk)
    );
    assert!(
        bob.duration_since(bulk) < WINDOW,
        "bob waited {:?}",
        bob.duration_since(bulk)
    );
    for m in ["m-1", "m-2", "m-3"] {
        let e = h.event(m).await;
        assert_eq!((e.state.as_str(), e.attempts), ("delivered", 1), "{m}");
    }
}

#[tokio::test]
async fn a_bulk_identify_after_single_profile_calls_waits_and_tracks_are_not_held() {
    // Arrange: an identify with subscription traits (users/update and
    // users/updateSubscriptions: one event, one kind), then a plain identify (bulkUpdate) and
    // an anonymous track naming the same email (another family, another user key).
    let (h, arrivals) = harness(WINDOW).await;
    let mut lists = identify("m-1", "u-1", "ann@example.com");
    lists["traits"]["emailListIds"] = json!([12]);
    h.insert(&[lists]).await;
    h.drain().await;
    let mut anonymous = track("t-1", "u-1", "Viewed");
    anonymous.as_object_mut().unwrap().remove("userId");
    anonymous["anonymousId"] = json!("a-1");
    anonymous["context"]["traits"]["email"] = json!("ann@example.com");
    h.insert(&[identify("m-2", "u-1", "ann@example.com"), anonymous])
        .await;

    // Act
    h.drain_all().await;

    // Assert
    let paths = arrivals.paths();
    assert_eq!(
        paths[..2],
        ["/api/users/update", "/api/users/updateSubscriptions"],
        "the first identify's profile calls are single, with no bulkUpdate: {paths:?}"
    );
    let single = arrivals.at("/api/users/updateSubscriptions", |_| true);
    let bulk = arrivals.at("/api/users/bulkUpdate", names_email("ann@example.com"));
    let tracked = arrivals.at("/api/events/trackBulk", names_email("ann@example.com"));
    assert!(
        bulk.duration_since(single) >= WINDOW,
        "{:?}",
        bulk.duration_since(single)
    );
    assert!(
        tracked.duration_since(single) < WINDOW,
        "{:?}",
        tracked.duration_since(single)
    );
}

#[tokio::test]
async fn a_window_of_0_sends_both_kinds_at_once_as_before() {
    // Arrange
    let (h, arrivals) = harness(Duration::ZERO).await;
    h.insert(&[
        identify("m-1", "u-1", "ann@example.com"),
        alias("m-2", "ann@example.com", "ann@new.example.com"),
    ])
    .await;

    // Act: one drain, nothing left for later.
    h.drain().await;

    // Assert
    let bulk = arrivals.at("/api/users/bulkUpdate", names_email("ann@example.com"));
    let ann = arrivals.at("/api/users/updateEmail", names_email("ann@example.com"));
    let apart = if ann > bulk {
        ann.duration_since(bulk)
    } else {
        bulk.duration_since(ann)
    };
    assert!(apart < WINDOW, "{apart:?}");
    for m in ["m-1", "m-2"] {
        let e = h.event(m).await;
        assert_eq!(
            (e.state.as_str(), e.state_reason),
            ("delivered", None),
            "{m}"
        );
    }
}
