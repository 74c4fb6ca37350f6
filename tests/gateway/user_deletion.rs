//! User deletion (issue 11 part 1), end to end: Segment `delete` messages on every Segment
//! route and `gateway forget` / `unforget`, against wiremock as Iterable and Segment; the audit
//! log searched, column by column, for the user afterwards.

use crate::app::{spawn_app_with, TestApp, SHARED_SECRET};
use crate::cli_map::gateway_map;
use gateway::privacy::{self, Identity};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The deleted user: ids that no other text of the tests contains.
const USER: &str = "usr/7f3a+del";
const EMAIL: &str = "Dana.Deleted+gdpr@example.org";
/// Another user, whose data must stay.
const OTHER: &str = "usr-keep-9c21";
const OTHER_EMAIL: &str = "kept.user@example.org";
const WEBHOOK_TOKEN: &str = "deletion-webhook-token";

fn iterable_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"msg": "", "code": "Success", "params": null}))
}

async fn accept(app: &TestApp) {
    Mock::given(method("POST"))
        .respond_with(iterable_ok())
        .mount(&app.iterable)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(&app.segment)
        .await;
}

fn settings(
    mapping: Value,
    eu: Option<&MockServer>,
) -> impl FnOnce(&mut gateway::configuration::Settings) {
    let eu = eu.map(|s| s.uri());
    move |s| {
        s.connections[0].settings = mapping.as_object().unwrap().clone();
        s.connections[0].webhook_token = Some(WEBHOOK_TOKEN.to_string().into());
        if let Some(eu) = eu {
            s.iterable.eu_url = eu;
            s.connections[0].data_center = gateway::iterable::api::DataCenter::Europe;
        }
    }
}

async fn post_v1(app: &TestApp, route: &str, body: &Value) {
    let res = app.post_v1(route, body).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn post_segment_webhook(app: &TestApp, body: &Value) {
    let raw = body.to_string();
    let res = app
        .api
        .post(format!("{}/webhooks/segment/shop", app.address))
        .header("X-Signature", sign(raw.as_bytes()))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

async fn post_iterable_webhook(app: &TestApp, body: &Value) {
    let res = app
        .api
        .post(format!("{}/webhooks/iterable/shop", app.address))
        .header("Authorization", WEBHOOK_TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// Every request Iterable (or Segment) received: (method, path, body as text).
async fn received(server: &MockServer) -> Vec<(String, String, String)> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.url.path().to_string(),
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        })
        .collect()
}

/// Rows of every table whose text, jsonb, bytea or array columns contain `needle` (any case),
/// as "table.column: n".
async fn mentions(app: &TestApp, needle: &str) -> Vec<String> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text
         FROM information_schema.columns c
         JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
           AND c.data_type IN ('text', 'jsonb', 'json', 'bytea', 'character varying', 'ARRAY')
         ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(columns.len() > 20, "the search sees the audit tables");
    let mut hits = Vec::new();
    for (table, column, ty) in columns {
        let text = match ty.as_str() {
            "bytea" => format!("gateway_body_text(\"{column}\")"),
            _ => format!("\"{column}\"::text"),
        };
        let sql =
            format!("SELECT count(*) FROM \"{table}\" WHERE strpos(lower({text}), lower($1)) > 0");
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(needle)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if n > 0 {
            hits.push(format!("{table}.{column}: {n}"));
        }
    }
    hits
}

fn hash(kind: &str, value: &str) -> String {
    hex::encode(Sha256::digest(format!("{kind}:{value}").as_bytes()))
}

async fn deletions(app: &TestApp) -> Vec<Value> {
    sqlx::query_scalar("SELECT to_jsonb(d) FROM audit_deletions d ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn state_of(app: &TestApp, message_id: &str) -> (String, String) {
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, state_reason FROM event WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (state, reason.unwrap_or_default())
}

fn track(message_id: &str, user: &str, event: &str) -> Value {
    json!({"type": "track", "userId": user, "messageId": message_id, "event": event,
           "properties": {"plan": "pro"}})
}

#[tokio::test]
async fn a_deletion_reaches_iterable_once_suppresses_the_user_and_leaves_no_trace_in_the_audit_log()
{
    let app = spawn_app_with(settings(json!({}), None)).await;
    accept(&app).await;
    // Iterable's answer names the user: the audit log must not keep it.
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "msg": format!("Deleted user with userId {USER}"), "code": "Success", "params": null})))
        .mount(&app.iterable)
        .await;

    // Before: both users, in one batch and alone, both directions; all delivered.
    post_v1(&app, "batch", &json!({"batch": [
        {"type": "identify", "userId": USER, "messageId": "before-1", "traits": {"email": EMAIL, "name": "Dana"}},
        {"type": "identify", "userId": OTHER, "messageId": "before-2", "traits": {"email": OTHER_EMAIL}},
        track("before-3", USER, "Signed Up"),
        track("before-4", OTHER, "Signed Up"),
        // Another user's event that names the deleted one.
        {"type": "track", "userId": OTHER, "messageId": "before-5", "event": "Referred",
         "properties": {"referred": EMAIL}},
    ]}))
    .await;
    post_iterable_webhook(
        &app,
        &json!({"email": EMAIL, "eventName": "emailOpen",
        "dataFields": {"campaignId": 7, "createdAt": "2026-12-01 10:00:00 +00:00"}}),
    )
    .await;
    app.drain_until_settled().await;
    // Pending when the deletion arrives: never delivered.
    post_v1(&app, "track", &track("pending-1", USER, "Viewed Plan")).await;
    post_v1(
        &app,
        "identify",
        &json!({"type": "identify", "anonymousId": "anon-1",
        "messageId": "pending-2", "traits": {"email": EMAIL}}),
    )
    .await;
    let before = received(&app.iterable).await.len();

    // The deletion, by userId only as Segment sends it, inside a batch with another user's event.
    post_v1(&app, "batch", &json!({"batch": [
        track("with-delete", OTHER, "Renewed"),
        {"type": "delete", "userId": USER, "messageId": "delete-1", "timestamp": "2026-12-02T10:00:00Z"},
    ]}))
    .await;
    for m in ["pending-1", "pending-2"] {
        let (state, reason) = state_of(&app, m).await;
        assert_eq!(state, "skipped", "{m}");
        assert!(reason.starts_with("suppressed: user deletion"), "{reason}");
    }
    app.drain_until_settled().await;

    // After: by userId on /v1 and the Segment webhook, by the learned email alone, from Iterable.
    post_v1(&app, "track", &track("after-1", USER, "Came Back")).await;
    post_v1(
        &app,
        "identify",
        &json!({"type": "identify", "anonymousId": "anon-2",
        "messageId": "after-2", "traits": {"email": "dana.deleted+GDPR@example.org"}}),
    )
    .await;
    post_segment_webhook(&app, &track("after-3", USER, "Webhook Event")).await;
    post_iterable_webhook(
        &app,
        &json!({"email": EMAIL, "eventName": "emailClick",
        "dataFields": {"campaignId": 7}}),
    )
    .await;
    post_v1(&app, "track", &track("after-4", OTHER, "Still Here")).await;
    app.drain_until_settled().await;

    // Iterable got the deletion exactly once, by userId, percent-encoded, and then nothing of
    // the user; the other user's event went through.
    let sent = received(&app.iterable).await;
    let deletes: Vec<_> = sent.iter().filter(|r| r.0 == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{sent:#?}");
    assert_eq!(deletes[0].1, "/api/users/byUserId/usr%2F7f3a%2Bdel");
    let later = &sent[before..];
    assert!(
        later
            .iter()
            .all(|r| !r.2.contains(USER) && !r.2.to_lowercase().contains(&EMAIL.to_lowercase())),
        "{later:#?}"
    );
    assert!(later.iter().any(|r| r.2.contains("Still Here")));
    assert!(received(&app.segment)
        .await
        .iter()
        .all(|r| !r.2.contains("emailClick") && !r.2.contains("Email Link Clicked")));

    for m in ["after-1", "after-2", "after-3"] {
        let (state, reason) = state_of(&app, m).await;
        assert_eq!(state, "skipped", "{m}");
        assert!(reason.contains("suppressed: user deletion"), "{reason}");
    }
    assert_eq!(state_of(&app, "after-4").await.0, "delivered");
    assert_eq!(state_of(&app, "delete-1").await.0, "delivered");

    // No trace of the user in any column of any table; the other user's data is intact.
    assert_eq!(mentions(&app, USER).await, Vec::<String>::new());
    assert_eq!(mentions(&app, EMAIL).await, Vec::<String>::new());
    assert_eq!(mentions(&app, "anon-1").await, Vec::<String>::new());
    // Nor in the hashes of whom each request named (the single/bulk window's memory).
    let hashed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_attempt d JOIN event e ON e.id = ANY (d.event_ids)
         WHERE e.user_key LIKE 'deleted:%' AND d.user_hashes IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(hashed, 0, "attempts of the deleted user keep user_hashes");
    let kept = mentions(&app, OTHER).await;
    for table in [
        "inbound_request.events_body",
        "inbound_request.body",
        "delivery_attempt.request_body",
    ] {
        assert!(kept.iter().any(|h| h.starts_with(table)), "{kept:?}");
    }
    let (batch_body,): (String,) = sqlx::query_as(
        "SELECT gateway_body_text(body) FROM inbound_request WHERE gateway_body_text(body) LIKE '%with-delete%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let batch: Value = serde_json::from_str(&batch_body).unwrap();
    assert_eq!(batch["batch"][0]["messageId"], "with-delete");
    assert_eq!(
        batch["batch"][1],
        json!({"type": "delete", "messageId": "delete-1", "redacted": "user deletion 1"})
    );

    // The tombstone: hashes, what was asked, Iterable's answer without the user.
    let d = deletions(&app).await;
    assert_eq!(d.len(), 1, "{d:#?}");
    let d = &d[0];
    assert_eq!(
        (&d["source"], &d["mode"], &d["outcome"], &d["route"]),
        (
            &json!("segment"),
            &json!("delete"),
            &json!("delivered"),
            &json!("/v1/batch")
        )
    );
    assert_eq!(
        (
            &d["iterable_status"],
            &d["iterable_code"],
            &d["suppressing"]
        ),
        (&json!(200), &json!("Success"), &json!(true))
    );
    assert_eq!(
        d["iterable_endpoint"], "/api/users/byUserId/{userId}",
        "{d:#}"
    );
    assert!(d["iterable_answer"]
        .as_str()
        .unwrap()
        .contains("userId <redacted>"));
    let ids: Vec<String> = serde_json::from_value(d["identities"].clone()).unwrap();
    for h in [
        hash("userId", USER),
        hash("email", &EMAIL.to_lowercase()),
        hash("anonymousId", "anon-1"),
    ] {
        assert!(ids.contains(&h), "{ids:?}");
    }
    // Redacted when Iterable answered: before-1, before-3, before-5 (names the user), the
    // Iterable webhook's event, pending-1, pending-2 and the request itself (the after-* events
    // were redacted as they arrived).
    assert_eq!(d["redacted"]["event"], 7, "{d:#}");
}

#[tokio::test]
async fn forget_mode_posts_to_the_eu_forget_endpoint_and_unforget_lifts_the_suppression() {
    let eu = MockServer::start().await;
    let app = spawn_app_with(settings(json!({"deletion": "forget"}), Some(&eu))).await;
    for server in [&eu, &app.iterable] {
        Mock::given(method("POST"))
            .respond_with(iterable_ok())
            .mount(server)
            .await;
    }
    post_v1(
        &app,
        "identify",
        &json!({"type": "identify", "userId": USER, "messageId": "f-1",
        "traits": {"email": EMAIL}}),
    )
    .await;
    app.drain_until_settled().await;
    // The Segment webhook route, with the email in context.traits.
    post_segment_webhook(
        &app,
        &json!({"type": "delete", "userId": USER, "messageId": "f-del",
        "context": {"traits": {"email": EMAIL}}}),
    )
    .await;
    app.drain_until_settled().await;
    post_v1(&app, "track", &track("f-2", USER, "Suppressed")).await;
    app.drain_until_settled().await;

    let sent = received(&eu).await;
    let forgets: Vec<_> = sent.iter().filter(|r| r.1 == "/api/users/forget").collect();
    assert_eq!(forgets.len(), 1, "{sent:#?}");
    let body: Value = serde_json::from_str(&forgets[0].2).unwrap();
    assert_eq!(body, json!({"email": EMAIL}));
    assert!(
        received(&app.iterable).await.is_empty(),
        "nothing on the US host"
    );
    assert_eq!(state_of(&app, "f-2").await.0, "skipped");
    assert_eq!(mentions(&app, EMAIL).await, Vec::<String>::new());
    let d = deletions(&app).await;
    assert_eq!(
        (&d[0]["mode"], &d[0]["source"], &d[0]["route"]),
        (
            &json!("forget"),
            &json!("segment"),
            &json!("/webhooks/segment/shop")
        )
    );

    // Unforget: the suppression is lifted, Iterable is asked to unforget, events flow again.
    let who = Identity {
        user_id: Some(USER.into()),
        email: None,
    };
    let lifted = privacy::lift(&app.pool, "shop", &who).await.unwrap();
    assert_eq!((lifted.deletions.len(), lifted.was_forget), (1, true));
    privacy::request(
        &app.pool,
        "shop",
        &who,
        Some(gateway::mapping::Deletion::Unforget),
    )
    .await
    .unwrap();
    app.drain_until_settled().await;
    post_v1(&app, "track", &track("f-3", USER, "Back Again")).await;
    app.drain_until_settled().await;
    let sent = received(&eu).await;
    let unforget: Vec<_> = sent
        .iter()
        .filter(|r| r.1 == "/api/users/unforget")
        .collect();
    assert_eq!(unforget.len(), 1, "{sent:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&unforget[0].2).unwrap(),
        json!({"userId": USER})
    );
    assert_eq!(state_of(&app, "f-3").await.0, "delivered");
    assert!(sent.last().unwrap().2.contains("Back Again"));
    let d = deletions(&app).await;
    assert_eq!(
        (
            &d[0]["suppressing"],
            &d[1]["mode"],
            &d[1]["source"],
            &d[1]["outcome"]
        ),
        (
            &json!(false),
            &json!("unforget"),
            &json!("operator"),
            &json!("delivered")
        )
    );
}

#[tokio::test]
async fn a_deletion_answered_503_is_retried_until_iterable_takes_it() {
    let app = spawn_app_with(settings(json!({}), None)).await;
    accept(&app).await;
    Mock::given(method("DELETE"))
        .and(path("/api/users/Dana.Deleted%2Bgdpr@example.org"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&app.iterable)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(iterable_ok())
        .mount(&app.iterable)
        .await;
    // By email only: DELETE /api/users/{email}.
    post_v1(
        &app,
        "track",
        &json!({"type": "delete", "traits": {"email": EMAIL}, "messageId": "r-del"}),
    )
    .await;
    app.drain_until_settled().await;
    let deletes: Vec<_> = received(&app.iterable)
        .await
        .into_iter()
        .filter(|r| r.0 == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:#?}");
    assert!(
        deletes.iter().all(|r| r.2.is_empty()),
        "a DELETE has no body"
    );
    type Row = (String, Option<i16>, String, String, Option<Value>);
    let attempts: Vec<Row> = sqlx::query_as(
        "SELECT method, status, outcome, url, request_body FROM delivery_attempt ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let shape: Vec<_> = attempts
        .iter()
        .map(|a| (a.0.as_str(), a.1, a.2.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("DELETE", Some(503), "retry"),
            ("DELETE", Some(200), "delivered")
        ]
    );
    for a in &attempts {
        assert_eq!(a.3, format!("{}/api/users/<redacted>", app.iterable.uri()));
        assert_eq!(a.4, None);
    }
    let d = deletions(&app).await;
    assert_eq!(
        (&d[0]["iterable_status"], &d[0]["outcome"], &d[0]["mode"]),
        (&json!(200), &json!("delivered"), &json!("delete"))
    );
    assert_eq!(mentions(&app, EMAIL).await, Vec::<String>::new());
}

/// A copy of the default configuration whose connection is the tests' `shop`.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .unwrap()
        .replace("name = \"demo\"", "name = \"shop\"");
    std::fs::write(dir.path().join("default.toml"), text).unwrap();
    dir
}

fn gateway_cli(app: &TestApp, config: &std::path::Path, args: &[&str]) -> (Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("GATEWAY__DATABASE__URL", app.db.url())
        .env_remove("GATEWAY_ENVIRONMENT")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    (serde_json::from_str(last).unwrap(), stderr)
}

#[tokio::test]
async fn gateway_forget_and_unforget_go_through_the_outbox() {
    let app = spawn_app_with(settings(json!({}), None)).await;
    accept(&app).await;
    let config = config_dir();
    post_v1(
        &app,
        "identify",
        &json!({"type": "identify", "userId": USER, "messageId": "c-1",
        "traits": {"email": EMAIL}}),
    )
    .await;
    app.drain_until_settled().await;

    let (row, stderr) = gateway_cli(
        &app,
        config.path(),
        &[
            "forget",
            "--connection",
            "shop",
            "--email",
            EMAIL,
            "--mode",
            "forget",
            "--wait",
            "0",
        ],
    );
    assert!(stderr.contains("is queued"), "{stderr}");
    assert_eq!(
        (
            &row["source"],
            &row["mode"],
            &row["route"],
            &row["completed_at"]
        ),
        (
            &json!("operator"),
            &json!("forget"),
            &json!("gateway forget"),
            &Value::Null
        )
    );
    assert!(row.get("identities").is_none(), "{row}");
    app.drain_until_settled().await;
    let forgets: Vec<_> = received(&app.iterable)
        .await
        .into_iter()
        .filter(|r| r.1 == "/api/users/forget")
        .collect();
    assert_eq!(forgets.len(), 1);
    assert_eq!(forgets[0].2, format!(r#"{{"email":"{EMAIL}"}}"#));
    // The email was given, and the identify linked it to the userId: both are gone.
    assert_eq!(mentions(&app, EMAIL).await, Vec::<String>::new());
    assert_eq!(mentions(&app, USER).await, Vec::<String>::new());
    post_v1(&app, "track", &track("c-2", USER, "Suppressed")).await;
    assert_eq!(state_of(&app, "c-2").await.0, "skipped");

    let (row, stderr) = gateway_cli(
        &app,
        config.path(),
        &[
            "unforget",
            "--connection",
            "shop",
            "--email",
            EMAIL,
            "--wait",
            "0",
        ],
    );
    assert!(stderr.contains("Iterable is asked to unforget"), "{stderr}");
    assert_eq!(row["mode"], "unforget");
    app.drain_until_settled().await;
    assert!(received(&app.iterable)
        .await
        .iter()
        .any(|r| r.1 == "/api/users/unforget" && r.2 == format!(r#"{{"email":"{EMAIL}"}}"#)));
    post_v1(&app, "track", &track("c-3", USER, "Back")).await;
    app.drain_until_settled().await;
    assert_eq!(state_of(&app, "c-3").await.0, "delivered");

    // Without an identity, or for an unknown connection: a clear refusal.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "forget",
            "--connection",
            "nope",
            "--user-id",
            "x",
            "--config",
        ])
        .arg(config.path())
        .env("GATEWAY__DATABASE__URL", app.db.url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection \"nope\""));
}

#[test]
fn gateway_map_shows_the_deletion_request_of_a_delete_message() {
    let input = [
        json!({"type": "delete", "userId": "u/1+x", "messageId": "m1"}),
        json!({"type": "delete", "traits": {"email": "a+b/c@example.com"}, "integrations": {"All": false}}),
        json!({"event": {"type": "delete", "userId": "u9", "context": {"traits": {"email": "eu@example.com"}}},
               "settings": {"deletion": "forget", "dataCenterLocation": "europe", "apiKey": "k"}}),
        json!({"event": {"type": "delete", "userId": "u9"}, "settings": {"subscriptions": []}}),
        json!({"type": "delete", "anonymousId": "a-1"}),
        json!({"event": {"type": "delete", "userId": "u9"}, "settings": {"deletion": "erase"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let (lines, stderr, ok) = gateway_map(&[], &input);
    assert!(ok, "{stderr}");
    let request = |i: usize| lines[i]["requests"][0].clone();
    assert_eq!(lines[0]["action"], "deleteUser");
    assert_eq!(
        request(0),
        json!({"method": "DELETE", "url": "https://api.iterable.com/api/users/byUserId/u%2F1%2Bx", "headers": {}})
    );
    assert_eq!(
        request(1)["url"],
        "https://api.iterable.com/api/users/a%2Bb%2Fc@example.com"
    );
    assert_eq!(
        request(2),
        json!({"method": "POST", "url": "https://api.eu.iterable.com/api/users/forget",
               "headers": {"Api-Key": "<redacted>", "Content-Type": "application/json"},
               "body": {"email": "eu@example.com"}})
    );
    // Deletion is not a subscription: it holds with none.
    assert_eq!(request(3)["method"], "DELETE");
    assert_eq!(lines[4]["error"]["code"], "PAYLOAD_VALIDATION_FAILED");
    assert!(lines[4]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs a userId or an email"));
    assert!(lines[5]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"deletion\" must be \"delete\" or \"forget\""));
}

#[tokio::test]
async fn a_refused_deletion_is_kept_as_failed_with_iterables_answer_and_the_log_is_still_redacted()
{
    let app = spawn_app_with(settings(json!({}), None)).await;
    accept(&app).await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "msg": format!("User does not exist. Email:  UserId: {USER}"), "code": "BadParams", "params": null})))
        .mount(&app.iterable)
        .await;
    post_v1(&app, "track", &track("x-1", USER, "Signed Up")).await;
    // A body that spells the user with JSON escapes ("\/", "\u0040") is found too.
    let raw = r#"{"type":"identify","userId":"usr\/7f3a+del","messageId":"x-0","traits":{"email":"Dana.Deleted+gdpr\u0040example.org"}}"#;
    let res = app
        .api
        .post(format!("{}/v1/identify", app.address))
        .basic_auth(crate::app::WRITE_KEY, Some(""))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.drain_until_settled().await;
    post_v1(
        &app,
        "track",
        &json!({"type": "delete", "userId": USER, "messageId": "x-del"}),
    )
    .await;
    app.drain_until_settled().await;
    let d = deletions(&app).await;
    assert_eq!(
        (
            &d[0]["outcome"],
            &d[0]["iterable_status"],
            &d[0]["iterable_code"]
        ),
        (&json!("failed"), &json!(400), &json!("BadParams"))
    );
    assert!(
        d[0]["reason"].as_str().unwrap().contains("<redacted>"),
        "{:#}",
        d[0]
    );
    assert_eq!(mentions(&app, USER).await, Vec::<String>::new());
    let (body,): (String,) = sqlx::query_as(
        "SELECT gateway_body_text(body) FROM inbound_request WHERE route = '/v1/identify'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"type": "identify", "messageId": "x-0", "redacted": "user deletion 1"})
    );
    // The gateway's own suppression holds whatever Iterable said.
    post_v1(&app, "track", &track("x-2", USER, "Again")).await;
    assert_eq!(state_of(&app, "x-2").await.0, "skipped");
}

#[test]
fn the_default_configuration_holds_iterables_deletion_rate_limits_and_camel_cased_paths_find_theirs(
) {
    let s = gateway::configuration::Settings::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config"
    )))
    .unwrap();
    let limits = gateway::delivery::limiter::Limiters::new(&s.delivery);
    use gateway::iterable::api::Endpoint::*;
    let rates: Vec<u32> = [UsersForget, UsersUnforget, UsersDelete, UsersDeleteByUserId]
        .iter()
        .map(|e| limits.rate(e.path()))
        .collect();
    assert_eq!(rates, [3, 3, 100, 100]);
    // Paths match their keys case-insensitively.
    assert_eq!(limits.rate("/api/users/bulkUpdate"), 5);
    assert_eq!(limits.rate("/api/events/trackBulk"), 10);
}
