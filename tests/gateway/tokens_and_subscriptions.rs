//! Push and browser tokens, and subscription preferences (issue 11 parts 2 and 3): through the
//! service against a wiremock Iterable, and through `gateway map`.

use crate::app::{spawn_app_with, TestApp};
use crate::cli_map::gateway_map;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

const IOS_TOKEN: &str = "ff15bc0c20c4aa6cd50854ff165fd265c838e5405bfeb9571066395b8c9da449";
const ANDROID_TOKEN: &str = "dGVzdC1mY20tdG9rZW4:APA91bH-example";

fn ios_identify(message_id: &str) -> Value {
    json!({
        "type": "identify", "userId": "u-1", "messageId": message_id,
        "traits": {"email": "ann@example.com"},
        "context": {
            "device": {"token": IOS_TOKEN, "type": "ios", "id": "B8C2-0A1E", "manufacturer": "Apple", "model": "iPhone15,2"},
            "os": {"name": "iOS", "version": "17.4"},
            "app": {"namespace": "com.example.shop", "version": "3.2.0", "build": "412"}
        }
    })
}

async fn accept_everything(app: &TestApp) {
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"msg": "", "code": "Success"})),
        )
        .mount(&app.iterable)
        .await;
}

/// The bodies Iterable received on `endpoint`, in order.
async fn received(app: &TestApp, endpoint: &str) -> Vec<Value> {
    app.iterable
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == endpoint)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

async fn send(app: &TestApp, route: &str, event: &Value) {
    let res = app.post_v1(route, event).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    app.drain_until_settled().await;
}

fn with_settings(settings: Value) -> impl FnOnce(&mut gateway::configuration::Settings) {
    move |s| {
        s.connections[0].settings = settings.as_object().unwrap().clone();
    }
}

#[tokio::test]
async fn device_tokens_are_registered_once_per_user_and_token_within_the_window() {
    let app = spawn_app_with(with_settings(
        json!({"pushTokens": true, "pushApplicationName": "shop-android"}),
    ))
    .await;
    accept_everything(&app).await;

    send(&app, "identify", &ios_identify("m-1")).await;
    let registered = received(&app, "/api/users/registerDeviceToken").await;
    assert_eq!(
        registered,
        [json!({"userId": "u-1", "device": {
            "token": IOS_TOKEN, "platform": "APNS", "applicationName": "com.example.shop",
            "dataFields": {"deviceId": "B8C2-0A1E", "brand": "Apple", "model": "iPhone15,2",
                "systemName": "iOS", "systemVersion": "17.4", "appVersion": "3.2.0", "appBuild": "412"}}})]
    );
    assert_eq!(
        received(&app, "/api/users/bulkUpdate").await.len(),
        1,
        "the user is updated first"
    );

    // The same user and token again, by identify and by Application Opened: not re-sent.
    send(&app, "identify", &ios_identify("m-2")).await;
    let opened = json!({"type": "track", "event": "Application Opened", "userId": "u-1", "messageId": "m-3",
        "context": ios_identify("")["context"].clone(), "properties": {"from_background": true}});
    send(&app, "track", &opened).await;
    assert_eq!(
        received(&app, "/api/users/registerDeviceToken").await.len(),
        1
    );
    for m in ["m-2", "m-3"] {
        let (state, reason) = app.event_states(m).await.remove(0);
        assert_eq!(state, "delivered", "{m}: its other request went out");
        assert!(
            reason
                .as_deref()
                .unwrap()
                .contains("/api/users/registerDeviceToken not sent: the same token was registered for this user within the last 24 h"),
            "{m}: {reason:?}"
        );
    }
    assert_eq!(received(&app, "/api/events/trackBulk").await.len(), 1);

    // Another user's Android install, without context.app.namespace: GCM and the setting.
    let installed = json!({"type": "track", "event": "Application Installed", "userId": "u-2", "messageId": "m-4",
        "context": {"device": {"token": ANDROID_TOKEN, "type": "android"}, "os": {"name": "Android", "version": "14"}}});
    send(&app, "track", &installed).await;
    let registered = received(&app, "/api/users/registerDeviceToken").await;
    assert_eq!(
        registered[1],
        json!({"userId": "u-2", "device": {"token": ANDROID_TOKEN, "platform": "GCM",
            "applicationName": "shop-android", "dataFields": {"systemName": "Android", "systemVersion": "14"}}})
    );

    // Once the window has passed, the next identify registers the token again.
    sqlx::query("UPDATE sent_once SET sent_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    send(&app, "identify", &ios_identify("m-5")).await;
    assert_eq!(
        received(&app, "/api/users/registerDeviceToken").await.len(),
        3
    );
    let (keys, fresh): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE sent_at > now() - interval '1 hour') FROM sent_once",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (keys, fresh),
        (2, 1),
        "one key per (user, token), refreshed when sent"
    );
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sent_once WHERE key LIKE '%u-1%' OR key LIKE '%' || $1 || '%'",
    )
    .bind(IOS_TOKEN)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "keys hold no email or token");
}

#[tokio::test]
async fn a_failed_registration_is_not_remembered_and_is_sent_again() {
    let app = spawn_app_with(with_settings(json!({"pushTokens": true}))).await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/api/users/registerDeviceToken"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"msg": "Maximum of 500 devices per user", "code": "BadParams"}),
            ),
        )
        .up_to_n_times(1)
        .mount(&app.iterable)
        .await;
    accept_everything(&app).await;
    send(&app, "identify", &ios_identify("m-1")).await;
    let (state, reason) = app.event_states("m-1").await.remove(0);
    assert_eq!(state, "failed");
    assert!(reason.unwrap().contains("BadParams"));
    send(&app, "identify", &ios_identify("m-2")).await;
    assert_eq!(
        received(&app, "/api/users/registerDeviceToken").await.len(),
        2
    );
    assert_eq!(app.event_states("m-2").await[0], ("delivered".into(), None));
}

#[tokio::test]
async fn browser_tokens_sandbox_apple_tokens_and_a_zero_window() {
    let app = spawn_app_with(with_settings(
        json!({"pushTokens": true, "apnsSandbox": true, "pushTokenWindowHours": 0}),
    ))
    .await;
    accept_everything(&app).await;
    let web = json!({"type": "identify", "anonymousId": "anon-7", "messageId": "w-1", "traits": {"email": "web@example.com"},
        "context": {"device": {"type": "web", "token": "fcm-web-token-123"}}});
    send(&app, "identify", &web).await;
    assert_eq!(
        received(&app, "/api/users/registerBrowserToken").await,
        [json!({"email": "web@example.com", "browserToken": "fcm-web-token-123"})]
    );
    assert!(received(&app, "/api/users/registerDeviceToken")
        .await
        .is_empty());
    for m in ["s-1", "s-2"] {
        send(&app, "identify", &ios_identify(m)).await;
    }
    let registered = received(&app, "/api/users/registerDeviceToken").await;
    assert_eq!(registered.len(), 2, "window 0: every identify registers");
    assert_eq!(registered[0]["device"]["platform"], "APNS_SANDBOX");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM sent_once")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test]
async fn update_subscriptions_sends_only_the_fields_the_event_carries() {
    let app = spawn_app_with(with_settings(json!({"updateSubscriptions": true}))).await;
    accept_everything(&app).await;
    let identify = json!({"type": "identify", "userId": "u-3", "messageId": "p-1",
        "traits": {"email": "pref@example.com", "emailListIds": [1201, "1202"], "unsubscribedChannelIds": [],
            "subscribedMessageTypeIds": null}});
    send(&app, "identify", &identify).await;
    let sent = app
        .iterable
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/api/users/updateSubscriptions")
        .expect("updateSubscriptions was called");
    let wire = String::from_utf8(sent.body).unwrap();
    assert_eq!(
        wire, r#"{"userId":"u-3","emailListIds":[1201,1202],"unsubscribedChannelIds":[]}"#,
        "no key for what the event does not carry (or carries as null)"
    );
    assert_eq!(app.event_states("p-1").await[0], ("delivered".into(), None));
    let audited: Value = sqlx::query_scalar(
        "SELECT request_body FROM delivery_attempt WHERE endpoint = '/api/users/updateSubscriptions'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, serde_json::from_str::<Value>(&wire).unwrap());

    // An identify without any subscription trait does not call it.
    let plain =
        json!({"type": "identify", "userId": "u-3", "messageId": "p-2", "traits": {"plan": "pro"}});
    send(&app, "identify", &plain).await;
    let calls = received(&app, "/api/users/updateSubscriptions").await.len();
    assert_eq!(calls, 1);
}

fn map_lines(lines: &[Value]) -> Vec<Value> {
    let input: Vec<String> = lines.iter().map(Value::to_string).collect();
    let (out, _, ok) = gateway_map(&["--now", "2026-11-02T10:00:00Z"], &input.join("\n"));
    assert!(ok);
    out
}

#[test]
fn tokens_and_subscriptions_are_off_by_default() {
    let mut event = ios_identify("m-1");
    event["traits"]["emailListIds"] = json!([1201]);
    let out = map_lines(&[event]);
    assert_eq!(out[0]["action"], "updateUser", "{}", out[0]);
}

#[test]
fn gateway_map_shows_the_token_requests_and_their_once_key() {
    let on = json!({"pushTokens": true});
    let no_token = json!({"type": "identify", "userId": "u-1", "traits": {"email": "a@b.co"}});
    let unknown_os = json!({"type": "track", "event": "Application Opened", "userId": "u-1",
        "context": {"device": {"token": "t"}, "os": {"name": "Tizen"}, "app": {"namespace": "a"}}});
    let out = map_lines(&[
        json!({"event": ios_identify("m-1"), "settings": on}),
        json!({"event": ios_identify("m-1"), "settings": {"pushTokens": true, "pushTokenWindowHours": 0}}),
        json!({"event": no_token, "settings": on}),
        json!({"event": unknown_os, "settings": on}),
    ]);
    let token = &out[0]["actions"][1];
    assert_eq!(token["action"], "registerDeviceToken");
    let request = &token["requests"][0];
    assert_eq!(
        request["url"],
        "https://api.iterable.com/api/users/registerDeviceToken"
    );
    assert_eq!(request["sendOnce"]["withinSeconds"], 86400);
    assert!(request["sendOnce"]["key"]
        .as_str()
        .unwrap()
        .starts_with("token-"));
    assert!(out[1]["actions"][1]["requests"][0]
        .get("sendOnce")
        .is_none());
    assert_eq!(
        out[2]["action"], "updateUser",
        "no token: no token subscription"
    );
    let error = &out[3]["actions"][1];
    assert_eq!(error["action"], "registerDeviceToken");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Cannot tell the push platform of \"tizen\""));
}

#[test]
fn gateway_map_update_subscriptions_fields_coercion_and_errors() {
    let on = json!({"updateSubscriptions": true});
    let identify = |traits: Value| json!({"event": {"type": "identify", "userId": "u-1", "traits": traits}, "settings": on});
    let out = map_lines(&[
        identify(
            json!({"email": "a@b.co", "unsubscribedMessageTypeIds": 55, "campaignId": "9001"}),
        ),
        identify(json!({"subscribedMessageTypeIds": [101], "validateChannelAlignment": false})),
        identify(json!({"email": "a@b.co", "emailListIds": ["twelve"]})),
    ]);
    let body = |i: usize| out[i]["actions"][1]["requests"][0]["body"].clone();
    assert_eq!(
        body(0),
        json!({"userId": "u-1", "unsubscribedMessageTypeIds": [55], "campaignId": 9001})
    );
    assert_eq!(
        body(1),
        json!({"userId": "u-1", "subscribedMessageTypeIds": [101], "validateChannelAlignment": false})
    );
    assert_eq!(
        out[2]["actions"][1]["error"]["message"],
        "The value at /emailListIds/0 must be an integer but it was a string."
    );
    // A custom mapping that produces no list of ids is refused, naming them.
    let custom = json!({"event": {"type": "identify", "userId": "u-1"}, "settings": {"subscriptions": [
        {"trigger": "type = \"identify\"", "action": "updateSubscriptions", "mapping": {"userId": {"@path": "$.userId"}}}]}});
    let out = map_lines(&[custom]);
    assert!(out[0]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Nothing to update"));
}

#[tokio::test]
async fn a_dry_run_neither_reads_nor_writes_the_once_keys() {
    let app = spawn_app_with(|s| {
        s.delivery.mode = gateway::configuration::DeliveryMode::DryRun;
        s.connections[0].settings = json!({"pushTokens": true}).as_object().unwrap().clone();
    })
    .await;
    for m in ["d-1", "d-2"] {
        send(&app, "identify", &ios_identify(m)).await;
    }
    let planned: Vec<String> =
        sqlx::query_scalar("SELECT endpoint FROM delivery_attempt WHERE dry_run ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        planned,
        [
            "/api/users/bulkUpdate",
            "/api/users/registerDeviceToken",
            "/api/users/bulkUpdate",
            "/api/users/registerDeviceToken"
        ]
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM sent_once")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert!(app.iterable.received_requests().await.unwrap().is_empty());
}
