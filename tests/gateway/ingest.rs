//! The Segment routes: auth in all forms, limits, gzip, duplicates, filters, the webhook
//! signature, and that nothing is acknowledged without a commit.

use crate::app::{spawn_app, SHARED_SECRET, WRITE_KEY};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::io::Write;

fn track(message_id: &str) -> Value {
    json!({"type": "track", "event": "Video Played", "userId": "u-1", "messageId": message_id,
           "timestamp": "2024-05-01T10:00:00Z", "properties": {"title": "Intro"}})
}

#[tokio::test]
async fn a_track_call_is_acknowledged_after_it_is_stored_as_pending() {
    let app = spawn_app().await;
    let res = app.post_v1("track", &track("m-1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"success": true}));
    assert_eq!(
        app.event_states("m-1").await,
        vec![("pending".to_string(), None)]
    );
    let (route, status, _, body, connection) = app.last_request().await;
    assert_eq!(
        (route.as_str(), status, connection.as_deref()),
        ("/v1/track", 200, Some("shop"))
    );
    assert!(body.contains("\"m-1\""));
}

#[tokio::test]
async fn the_write_key_is_accepted_in_all_three_forms_and_never_stored() {
    let app = spawn_app().await;
    let url = |r: &str| format!("{}/v1/{r}", app.address);
    let with_header = app
        .api
        .post(url("t"))
        .header("X-Write-Key", WRITE_KEY)
        .json(&track("m-h"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_header.status(), 200);
    let mut body = track("m-b");
    body["writeKey"] = json!(WRITE_KEY);
    // analytics.js sends text/plain.
    let in_body = app
        .api
        .post(url("track"))
        .header("Content-Type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(in_body.status(), 200);
    let browser_batch = json!({"batch": [{"writeKey": WRITE_KEY, "type": "identify", "userId": "u-2", "messageId": "m-bb"}]});
    let res = app
        .api
        .post(url("b"))
        .body(browser_batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let basic_without_colon = app
        .api
        .post(url("track"))
        .header(
            "Authorization",
            format!("Basic {}", base64_encode(WRITE_KEY)),
        )
        .json(&track("m-nc"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic_without_colon.status(), 200);
    for id in ["m-h", "m-b", "m-bb", "m-nc"] {
        assert_eq!(app.event_states(id).await.len(), 1, "{id}");
    }
    let leaked: i64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM inbound_request WHERE position($1::bytea in body) > 0 OR headers::text LIKE '%' || $2 || '%'
         UNION ALL SELECT count(*) FROM event WHERE gateway_event_payload(event)::text LIKE '%' || $2 || '%'
         UNION ALL SELECT count(*) FROM inbound_request WHERE position($1::bytea in events_body) > 0",
    )
    .bind(WRITE_KEY.as_bytes())
    .bind(WRITE_KEY)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .sum();
    assert_eq!(leaked, 0, "the write key reached the database");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn a_wrong_write_key_is_refused_and_audited() {
    let app = spawn_app().await;
    let res = app
        .api
        .post(format!("{}/v1/track", app.address))
        .basic_auth("not-the-key", Some(""))
        .json(&track("m-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "code": "unauthorized", "message": "invalid write key"})
    );
    let (_, status, code, raw, connection) = app.last_request().await;
    assert_eq!(
        (status, code.as_deref(), connection),
        (401, Some("unauthorized"), None)
    );
    assert!(raw.contains("m-x"), "the raw body is kept");
    assert!(app.event_states("m-x").await.is_empty());
}

#[tokio::test]
async fn invalid_json_and_oversize_bodies_are_refused_with_the_raw_body_kept() {
    let app = spawn_app().await;
    let res = app
        .api
        .post(format!("{}/v1/batch", app.address))
        .basic_auth(WRITE_KEY, Some(""))
        .body("{\"batch\": [ oops")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "invalid_json");
    let (_, status, code, raw, _) = app.last_request().await;
    assert_eq!(
        (status, code.as_deref(), raw.as_str()),
        (400, Some("invalid_json"), "{\"batch\": [ oops")
    );

    let mut big = track("m-big");
    big["properties"]["blob"] = json!("x".repeat(40_000));
    let res = app.post_v1("track", &big).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "too_large");
    let (_, status, _, raw, _) = app.last_request().await;
    assert_eq!(status, 400);
    let (size, truncated): (i64, bool) = sqlx::query_as(
        "SELECT body_size, body_truncated FROM inbound_request ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(raw.len(), 1024, "the oversize body's first KiB is kept");
    assert!(truncated && size > 32_768, "{size} {truncated}");

    let many = json!({"batch": (0..2501).map(|i| json!({"type": "track", "event": "E", "userId": "u", "messageId": format!("b-{i}")})).collect::<Vec<_>>()});
    let res = app.post_v1("batch", &many).await;
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("2501 events"));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM event")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn gzip_bodies_are_decompressed_and_limited_by_their_decompressed_size() {
    let app = spawn_app().await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json!({"batch": [track("m-gz")]}).to_string().as_bytes())
        .unwrap();
    let res = app
        .api
        .post(format!("{}/v1/batch", app.address))
        .basic_auth(WRITE_KEY, Some(""))
        .header("Content-Encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.event_states("m-gz").await.len(), 1);
    let encoding: Option<String> =
        sqlx::query_scalar("SELECT content_encoding FROM inbound_request ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(encoding.as_deref(), Some("gzip"));
    // 600 KB of zeros compresses to a few KB but is over the 500 KB batch limit.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 600_000]).unwrap();
    let res = app
        .api
        .post(format!("{}/v1/batch", app.address))
        .basic_auth(WRITE_KEY, Some(""))
        .header("Content-Encoding", "gzip")
        .body(bomb.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "too_large");
}

#[tokio::test]
async fn a_duplicate_message_id_is_acknowledged_but_not_delivered_twice() {
    let app = spawn_app().await;
    assert_eq!(app.post_v1("track", &track("m-dup")).await.status(), 200);
    assert_eq!(
        app.post_v1("batch", &json!({"batch": [track("m-dup"), track("m-dup")]}))
            .await
            .status(),
        200
    );
    let states = app.event_states("m-dup").await;
    assert_eq!(states.len(), 3);
    assert_eq!(states[0].0, "pending");
    for (state, reason) in &states[1..] {
        assert_eq!(state, "skipped");
        assert!(reason.as_deref().unwrap().starts_with("duplicate"));
    }
}

#[tokio::test]
async fn a_batch_mixing_seen_and_new_message_ids_keeps_the_new_ones_and_is_recorded_once() {
    // The group is first written as if every messageId were new; the one seen before makes
    // that statement fail whole, and the group is written again marking its duplicate.
    let app = spawn_app().await;
    assert_eq!(app.post_v1("track", &track("m-seen")).await.status(), 200);
    let batch = json!({"batch": [track("m-new-1"), track("m-seen"), track("m-new-2")]});
    assert_eq!(app.post_v1("batch", &batch).await.status(), 200);

    for new in ["m-new-1", "m-new-2"] {
        assert_eq!(app.event_states(new).await, [("pending".to_string(), None)]);
    }
    let seen = app.event_states("m-seen").await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "pending");
    assert_eq!(seen[1].0, "skipped");
    assert!(seen[1].1.as_deref().unwrap().starts_with("duplicate"));
    let (requests, keys): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM inbound_request WHERE route = '/v1/batch'),
                (SELECT count(*) FROM message_seen)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((requests, keys), (1, 3));
}

#[tokio::test]
async fn the_same_message_id_posted_concurrently_is_pending_once() {
    // Requests in flight together share a group, or go to different group commits whose
    // inserts into message_seen meet on its unique index: one event is pending either way.
    let app = spawn_app().await;
    let posts = (0..8).map(|i| {
        let mut event = track("m-race");
        event["properties"] = json!({"try": i});
        let app = &app;
        async move { app.post_v1("track", &event).await.status() }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let states = app.event_states("m-race").await;
    assert_eq!(states.len(), 8);
    let pending = states.iter().filter(|(s, _)| s == "pending").count();
    assert_eq!(pending, 1, "{states:?}");
}

#[tokio::test]
async fn filtered_and_unsubscribed_calls_are_skipped_with_the_reason() {
    let app = spawn_app().await;
    let mut off = track("m-off");
    off["integrations"] = json!({"Iterable": false});
    let group = json!({"type": "group", "groupId": "g-1", "userId": "u-1", "messageId": "m-group"});
    // A body without `type` takes the route's; a numeric userId becomes a string.
    let untyped = json!({"userId": 42, "messageId": "m-untyped", "traits": {"email": "a@b.co"}});
    assert_eq!(app.post_v1("track", &off).await.status(), 200);
    assert_eq!(app.post_v1("group", &group).await.status(), 200);
    assert_eq!(app.post_v1("identify", &untyped).await.status(), 200);
    assert_eq!(
        app.event_states("m-off").await[0].1.as_deref(),
        Some("integrations[\"Iterable\"] is false")
    );
    assert_eq!(
        app.event_states("m-group").await[0].1.as_deref(),
        Some("no subscription matches this group call")
    );
    let (call, user, payload): (String, String, Value) = sqlx::query_as(
        "SELECT call_type, user_key, gateway_event_payload(event) FROM event WHERE message_id = 'm-untyped'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (call.as_str(), user.as_str(), &payload["userId"]),
        ("identify", "u:42", &json!("42"))
    );
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn segment_webhooks_need_a_valid_signature() {
    let app = spawn_app().await;
    let url = format!("{}/webhooks/segment/shop", app.address);
    let one = track("m-wh").to_string();
    let res = app
        .api
        .post(&url)
        .header("X-Signature", sign(one.as_bytes()))
        .body(one.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // An array body is signed over its first element's raw bytes.
    let (a, b) = (track("m-wh1").to_string(), track("m-wh2").to_string());
    let array = format!("[{a},{b}]");
    let res = app
        .api
        .post(&url)
        .header("X-Signature", sign(a.as_bytes()))
        .body(array.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.event_states("m-wh2").await.len(), 1);
    let res = app
        .api
        .post(&url)
        .header("X-Signature", sign(array.as_bytes()))
        .body(array)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app.api.post(&url).body(one.clone()).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let missing = res.text().await.unwrap();
    assert!(
        missing.contains("missing or invalid credentials"),
        "{missing}"
    );
    // An unknown connection gets the very same answer: names cannot be probed.
    let res = app
        .api
        .post(format!("{}/webhooks/segment/nobody", app.address))
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.text().await.unwrap(), missing);
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT error_message FROM inbound_request WHERE status = 401 ORDER BY id DESC LIMIT 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        reasons[0].contains("no connection is named \"nobody\""),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("X-Signature header is missing"),
        "{reasons:?}"
    );
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbound_request WHERE status >= 400")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(refused, 3, "refusals are audited");
}

#[tokio::test]
async fn when_the_database_cannot_commit_nothing_is_acknowledged() {
    let app = spawn_app().await;
    app.pool.close().await;
    let res = app.post_v1("track", &track("m-down")).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "unavailable");
    let pool = sqlx::PgPool::connect_with(app.db.connect_options())
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let get = |p: &str| app.api.get(format!("{}{p}", app.address)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(
        get("/readyz").await.unwrap().json::<Value>().await.unwrap()["status"],
        "ready"
    );
    app.post_v1("track", &track("m-metrics")).await;
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(text.contains("gateway_inbound_requests_total"), "{text}");
    assert_eq!(get("/nope").await.unwrap().status(), 404);
}

#[tokio::test]
async fn an_event_this_gateway_made_from_iterable_is_skipped_when_it_comes_back() {
    let app = spawn_app().await;
    // What the Iterable webhook route produces, as Segment would forward it to the gateway.
    let back = json!({"type": "track", "event": "Email Opened", "anonymousId": "a@b.co", "messageId": "iterable-x",
        "context": {"integration": {"name": "Iterable", "version": "1.0.0"}}, "properties": {}});
    assert_eq!(app.post_v1("track", &back).await.status(), 200);
    let states = app.event_states("iterable-x").await;
    assert_eq!(states[0].0, "skipped");
    assert!(states[0]
        .1
        .as_deref()
        .unwrap()
        .contains("came from Iterable"));
}
