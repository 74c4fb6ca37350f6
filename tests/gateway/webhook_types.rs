//! Every Iterable system webhook type (users-and-peers.md §4, issue 11 part 4), each with a
//! realistic body (`tests/data/iterable-webhook-types.json`), through `gateway map --from
//! iterable` and through the service, on both Segment regions; and Journey webhooks.

use crate::app::{spawn_app_with, TestApp};
use crate::cli_map::gateway_map;
use gateway::mapping::reverse::{EVENT_NAMES, GATEWAY_EVENT_NAMES};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "demo-webhook-token";
const US: &str = "https://api.segment.io/v1/batch";
const EU: &str = "https://events.eu1.segmentapis.com/v1/batch";

struct Case {
    event_name: String,
    segment: String,
    named_by: String,
    body: Value,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/iterable-webhook-types.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            event_name: c["eventName"].as_str().unwrap().into(),
            segment: c["segment"].as_str().unwrap().into(),
            named_by: c["named_by"].as_str().unwrap().into(),
            body: c["body"].clone(),
        })
        .collect()
}

fn case(event_name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.event_name == event_name)
        .unwrap_or_else(|| panic!("no body for {event_name} in iterable-webhook-types.json"))
}

/// What every Segment track made from `c` must hold.
fn assert_track(c: &Case, track: &Value) {
    let name = &c.event_name;
    assert_eq!(track["type"], "track", "{name}");
    assert_eq!(track["event"], c.segment.as_str(), "{name}");
    assert_eq!(
        track["properties"], c.body["dataFields"],
        "{name}: dataFields kept exactly"
    );
    match c.body.get("userId") {
        Some(u) => {
            assert_eq!(&track["userId"], u, "{name}");
            assert!(track.get("anonymousId").is_none(), "{name}");
        }
        None => assert_eq!(track["anonymousId"], c.body["email"], "{name}"),
    }
    match c.body.get("email") {
        Some(e) => assert_eq!(&track["context"]["traits"]["email"], e, "{name}"),
        None => assert!(
            track["context"].get("traits").is_none(),
            "{name}: a userId-only body has no email trait"
        ),
    }
    let created = c.body["dataFields"]["createdAt"].as_str().unwrap();
    let expected = gateway::mapping::reverse::parse_iterable_time(created).unwrap();
    assert_eq!(track["timestamp"], expected, "{name}");
    assert!(track["messageId"]
        .as_str()
        .unwrap()
        .starts_with("iterable-"));
    assert_eq!(
        track["integrations"],
        json!({"Iterable": false, "Iterable (Actions)": false})
    );
}

/// One event type through `gateway map --from iterable`, in both regions.
fn maps_in_both_regions(event_name: &str) {
    let c = case(event_name);
    for (region, url) in [("us", US), ("eu", EU)] {
        let line = json!({"segmentRegion": region});
        let settings = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(settings.path(), line.to_string()).unwrap();
        let (lines, _, ok) = gateway_map(
            &[
                "--from",
                "iterable",
                "--settings",
                settings.path().to_str().unwrap(),
            ],
            &c.body.to_string(),
        );
        assert!(ok);
        assert_eq!(lines.len(), 1, "{event_name}");
        let request = &lines[0]["requests"][0];
        assert_eq!(request["url"], url, "{event_name} in {region}");
        let batch = request["body"]["batch"].as_array().unwrap();
        assert_eq!(batch.len(), 1);
        assert_track(&c, &batch[0]);
    }
}

macro_rules! one_test_per_event_type {
    ($($test:ident => $event:literal,)*) => {
        $(
            #[test]
            fn $test() {
                maps_in_both_regions($event);
            }
        )*

        #[test]
        fn the_per_type_tests_cover_every_type_of_the_table() {
            let tested = [$($event),*];
            let table: Vec<&str> = EVENT_NAMES
                .iter()
                .chain(GATEWAY_EVENT_NAMES.iter())
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(tested.len(), table.len());
            for name in &table {
                assert!(tested.contains(name), "{name} has no test");
            }
            assert_eq!(cases().len(), table.len(), "one body per type");
        }
    };
}

one_test_per_event_type! {
    map_email_send => "emailSend",
    map_email_open => "emailOpen",
    map_email_click => "emailClick",
    map_email_bounce => "emailBounce",
    map_email_complaint => "emailComplaint",
    map_email_send_skip => "emailSendSkip",
    map_email_subscribe => "emailSubscribe",
    map_email_unsubscribe => "emailUnSubscribe",
    map_hosted_unsubscribe_click => "hostedUnsubscribeClick",
    map_push_send => "pushSend",
    map_push_open => "pushOpen",
    map_push_bounce => "pushBounce",
    map_push_uninstall => "pushUninstall",
    map_push_send_skip => "pushSendSkip",
    map_sms_send => "smsSend",
    map_sms_bounce => "smsBounce",
    map_sms_click => "smsClick",
    map_sms_received => "smsReceived",
    map_sms_send_skip => "smsSendSkip",
    map_in_app_send => "inAppSend",
    map_in_app_delivery => "inAppDelivery",
    map_in_app_open => "inAppOpen",
    map_in_app_click => "inAppClick",
    map_in_app_send_skip => "inAppSendSkip",
    map_web_push_send => "webPushSend",
    map_web_push_click => "webPushClick",
    map_web_push_send_skip => "webPushSendSkip",
    map_embedded_send => "embeddedSend",
    map_embedded_send_skip => "embeddedSendSkip",
    map_embedded_received => "embeddedReceived",
    map_embedded_click => "embeddedClick",
    map_embedded_impression => "embeddedImpression",
    map_embedded_session => "embeddedSession",
    map_whatsapp_send => "whatsAppSend",
    map_whatsapp_received => "whatsAppReceived",
    map_whatsapp_seen => "whatsAppSeen",
    map_whatsapp_click => "whatsAppClick",
    map_whatsapp_bounce => "whatsAppBounce",
    map_whatsapp_send_skip => "whatsAppSendSkip",
    map_journey_exit => "journeyExit",
    map_in_app_close => "inAppClose",
    map_in_app_delete => "inAppDelete",
    map_in_app_recall => "inAppRecall",
    map_inbox_session => "inboxSession",
    map_inbox_message_impression => "inboxMessageImpression",
    map_rcs_send => "rcsSend",
    map_rcs_send_skip => "rcsSendSkip",
    map_sms_usage_info => "smsUsageInfo",
    map_whatsapp_usage_info => "whatsAppUsageInfo",
}

async fn post(app: &TestApp, body: &str) -> reqwest::Response {
    app.api
        .post(format!("{}/webhooks/iterable/shop", app.address))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Every type through the service: the connection's region gets all of them, the other none.
async fn every_type_reaches_segment_in(region: &str) {
    let other = MockServer::start().await;
    let other_uri = other.uri();
    let region_owned = region.to_string();
    let app = spawn_app_with(move |s| {
        // The connection's region is the app's segment mock; the other region is `other`.
        if region_owned == "eu" {
            s.segment.eu_url = s.segment.us_url.clone();
            s.segment.us_url = other_uri;
        } else {
            s.segment.eu_url = other_uri;
        }
        s.connections[0].segment_region = region_owned;
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(&app.segment)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&other)
        .await;
    let cases = cases();
    for c in &cases {
        let res = post(&app, &c.body.to_string()).await;
        assert_eq!(res.status(), 200, "{}", c.event_name);
    }
    app.drain_until_settled().await;
    let mut sent: Vec<Value> = Vec::new();
    for r in app.segment.received_requests().await.unwrap() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        sent.extend(body["batch"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(sent.len(), cases.len());
    for c in &cases {
        let track = sent
            .iter()
            .find(|t| t["event"] == c.segment.as_str())
            .unwrap_or_else(|| panic!("{} did not reach Segment", c.event_name));
        assert_track(c, track);
    }
    let states: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT state FROM event WHERE direction = 'iterable_to_segment'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(states, ["delivered"]);
}

#[tokio::test]
async fn every_webhook_type_reaches_segment_us() {
    every_type_reaches_segment_in("us").await;
}

#[tokio::test]
async fn every_webhook_type_reaches_segment_eu() {
    every_type_reaches_segment_in("eu").await;
}

#[test]
fn the_gateways_own_names_follow_iterables_pattern_and_do_not_collide() {
    let iterable: Vec<&str> = EVENT_NAMES.iter().map(|(_, v)| *v).collect();
    for (k, v) in GATEWAY_EVENT_NAMES {
        assert!(!iterable.contains(&v), "{k}: {v} is already Iterable's");
        assert!(!EVENT_NAMES.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)));
    }
    for c in cases() {
        let own = GATEWAY_EVENT_NAMES.iter().any(|(k, _)| *k == c.event_name);
        assert_eq!(own, c.named_by == "gateway", "{}", c.event_name);
    }
}

const JOURNEY: &str = r#"{"email":"ann@example.com","workflowId":41230,"workflowName":"Onboarding","nodeName":"Send to CRM","createdAt":"2026-11-02 10:00:00 +00:00","plan":{"tier":"gold","seats":3}}"#;

#[tokio::test]
async fn journey_webhooks_pass_through_under_the_connections_event_name() {
    let app = spawn_app_with(|s| {
        s.connections[0].journey_event_name = Some("Iterable Journey Step".into());
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v1/batch"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.segment)
        .await;
    assert_eq!(post(&app, JOURNEY).await.status(), 200);
    let user_id_only = r#"{"userId":"u-9","workflowId":41230}"#;
    assert_eq!(post(&app, user_id_only).await.status(), 200);
    let res = post(&app, r#"{"workflowId":41230,"note":"no user"}"#).await;
    assert_eq!(res.status(), 400);
    let message = res.json::<Value>().await.unwrap()["message"].clone();
    assert!(
        message.as_str().unwrap().contains("Journey webhook"),
        "{message}"
    );
    app.drain_until_settled().await;
    let received = app.segment.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    let batch = body["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["event"], "Iterable Journey Step");
    assert_eq!(batch[0]["anonymousId"], "ann@example.com");
    assert_eq!(batch[0]["timestamp"], "2026-11-02T10:00:00Z");
    assert_eq!(
        batch[0]["properties"],
        serde_json::from_str::<Value>(JOURNEY).unwrap()
    );
    assert_eq!(batch[1]["userId"], "u-9");
}

#[tokio::test]
async fn a_connection_can_refuse_journey_webhooks() {
    let app = spawn_app_with(|s| s.connections[0].journey_event_name = Some(String::new())).await;
    let res = post(&app, JOURNEY).await;
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("takes no Journey webhooks"));
}

#[test]
fn journey_webhooks_through_gateway_map() {
    let (lines, _, ok) = gateway_map(&["--from", "iterable"], JOURNEY);
    assert!(ok);
    assert_eq!(
        lines[0]["requests"][0]["body"]["batch"][0]["event"],
        "Journey Webhook"
    );
    let settings = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(settings.path(), r#"{"journeyEventName": "Journey Step"}"#).unwrap();
    let (lines, _, _) = gateway_map(
        &[
            "--from",
            "iterable",
            "--settings",
            settings.path().to_str().unwrap(),
        ],
        JOURNEY,
    );
    let track = &lines[0]["requests"][0]["body"]["batch"][0];
    assert_eq!(track["event"], "Journey Step");
    assert_eq!(
        track["properties"]["plan"],
        json!({"tier": "gold", "seats": 3})
    );
}
