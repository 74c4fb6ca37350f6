//! `/webhooks/iterable/{connection}`: every Iterable event of the fixtures, and the edge cases of
//! DESIGN §3. The fixtures' outputs are another product's; only their inputs are used.

use crate::app::{spawn_app, TestApp};
use gateway::mapping::reverse::EVENT_NAMES;
use serde_json::{json, Value};

const TOKEN: &str = "demo-webhook-token";

async fn post(app: &TestApp, auth: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = app
        .api
        .post(format!("{}/webhooks/iterable/shop", app.address))
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap()
}

async fn tracks(app: &TestApp) -> Vec<(String, String, Value)> {
    sqlx::query_as("SELECT state, message_id, gateway_event_payload(event) FROM event WHERE direction = 'iterable_to_segment' ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

fn fixtures() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/iterable-inbound-fixtures.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["input"].clone())
        .collect()
}

#[tokio::test]
async fn every_fixture_event_becomes_the_segment_track_of_design_section_3() {
    let app = spawn_app().await;
    let mut accepted = 0;
    for input in fixtures() {
        let body = input.to_string();
        let res = post(&app, Some(&format!("Basic {TOKEN}")), &body).await;
        let name = input.get("eventName").and_then(Value::as_str);
        let has_identity = input
            .get("userId")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
            || input
                .get("email")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            || input
                .pointer("/dataFields/email")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
        if !has_identity {
            assert_eq!(res.status(), 400, "{body}");
            continue;
        }
        assert_eq!(res.status(), 200, "{body}");
        accepted += 1;
        let (state, message_id, track) = tracks(&app).await.pop().unwrap();
        assert_eq!(state, "pending");
        assert_eq!(track["type"], "track");
        assert_eq!(track["messageId"], message_id);
        let Some(name) = name else {
            // No eventName: a Journey webhook, the whole body kept as properties.
            assert_eq!(track["event"], "Journey Webhook", "{body}");
            assert_eq!(track["properties"], input, "{body}");
            continue;
        };
        let expected = EVENT_NAMES
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or(name, |(_, v)| *v);
        assert_eq!(track["event"], expected, "{name}");
        assert_eq!(
            track["properties"],
            input.get("dataFields").cloned().unwrap_or(json!({})),
            "dataFields kept exactly"
        );
        match input
            .get("userId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(u) => assert_eq!(track["userId"], u),
            None => assert_eq!(
                track["anonymousId"],
                input
                    .get("email")
                    .or(input.pointer("/dataFields/email"))
                    .unwrap()
                    .clone()
            ),
        }
        assert_eq!(
            track["integrations"],
            json!({"Iterable": false, "Iterable (Actions)": false})
        );
        assert_eq!(
            track["context"]["integration"],
            json!({"name": "Iterable", "version": "1.0.0"})
        );
    }
    assert!(accepted >= 28, "{accepted} fixtures accepted");
}

#[tokio::test]
async fn identity_names_and_timestamps_follow_the_rules() {
    let app = spawn_app().await;
    let cases = [
        (
            r#"{"userId":"42","eventName":"pushOpen","dataFields":{"createdAt":"2024-03-01 10:00:00 +02:00"}}"#,
            "u",
        ),
        (
            r#"{"eventName":"emailUnsubscribe","dataFields":{"email":"ünïcödé@example.com","createdAt":"not a date","nested":{"a":[1,null,{"b":"ç"}]},"n":null}}"#,
            "e",
        ),
        (r#"{"email":"a@b.co","eventName":"emailUnSubscribe"}"#, "e"),
        (
            r#"{"email":"a@b.co","eventName":"someFutureEvent","dataFields":{"createdAt":"2024-03-01 10:00:00 +00:00"}}"#,
            "e",
        ),
    ];
    for (body, _) in cases {
        assert_eq!(post(&app, Some(TOKEN), body).await.status(), 200, "{body}");
    }
    let t = tracks(&app).await;
    assert_eq!(t[0].2["userId"], "42");
    assert_eq!(
        t[0].2["timestamp"], "2024-03-01T08:00:00Z",
        "offsets become UTC"
    );
    assert_eq!(t[1].2["event"], "Unsubscribed");
    assert_eq!(t[1].2["anonymousId"], "ünïcödé@example.com");
    assert_eq!(t[1].2["context"]["traits"]["email"], "ünïcödé@example.com");
    assert_eq!(
        t[1].2["properties"]["createdAt"], "not a date",
        "the raw value stays in properties"
    );
    assert_eq!(
        t[1].2["properties"]["nested"],
        json!({"a": [1, null, {"b": "ç"}]})
    );
    assert_eq!(t[1].2["properties"]["n"], Value::Null);
    let received = t[1].2["timestamp"].as_str().unwrap();
    assert!(
        received.starts_with("20") && received.ends_with('Z'),
        "receipt time: {received}"
    );
    assert_eq!(t[2].2["event"], "Unsubscribed");
    assert_eq!(t[2].2["properties"], json!({}));
    assert_eq!(
        t[3].2["event"], "someFutureEvent",
        "unknown names pass through"
    );
}

#[tokio::test]
async fn bad_bodies_and_bad_tokens_are_refused_and_audited() {
    let app = spawn_app().await;
    let ok = r#"{"email":"a@b.co","eventName":"emailOpen"}"#;
    let res = post(&app, Some("Bearer wrong"), ok).await;
    assert_eq!(res.status(), 401);
    assert_eq!(post(&app, None, ok).await.status(), 401);
    let res = post(&app, Some(TOKEN), r#"{"email":"a@b.co","eventName":""}"#).await;
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("no eventName"));
    let res = post(
        &app,
        Some(TOKEN),
        r#"{"eventName":"emailOpen","dataFields":{}}"#,
    )
    .await;
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("no identity"));
    let (_, status, code, body, _) = app.last_request().await;
    assert_eq!((status, code.as_deref()), (400, Some("invalid_body")));
    assert!(body.contains("emailOpen"));
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_request WHERE status >= 400 AND direction = 'iterable_to_segment'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(refused, 4);
    assert!(tracks(&app).await.is_empty());
}

#[tokio::test]
async fn an_array_body_gives_one_event_each_and_a_repeat_is_one_message() {
    let app = spawn_app().await;
    let body =
        r#"[{"email":"a@b.co","eventName":"emailOpen"},{"userId":"u2","eventName":"pushSend"}]"#;
    assert_eq!(
        post(&app, Some(&format!("OAuth2 {TOKEN}")), body)
            .await
            .status(),
        200
    );
    let single = r#"{"email":"c@d.co","eventName":"emailClick","dataFields":{"url":"https://x"}}"#;
    assert_eq!(post(&app, Some(TOKEN), single).await.status(), 200);
    assert_eq!(post(&app, Some(TOKEN), single).await.status(), 200);
    let t = tracks(&app).await;
    assert_eq!(t.len(), 4);
    assert_eq!(
        (t[0].2["event"].as_str(), t[1].2["event"].as_str()),
        (Some("Email Opened"), Some("Push Delivered"))
    );
    assert_eq!(t[2].1, t[3].1, "the same body has the same messageId");
    assert_eq!((t[2].0.as_str(), t[3].0.as_str()), ("pending", "skipped"));
}
