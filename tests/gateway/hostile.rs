//! Hostile input over HTTP on every route: each case is one line of the table below. For every
//! case: the status and code expected, a message that names what is wrong, never a 5xx, and
//! exactly one audit row per request with the status the client got.

use crate::app::{spawn_app_with, TestApp, SHARED_SECRET, WRITE_KEY};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const TOKEN: &str = "demo-webhook-token";

/// One request and what it must get.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// A piece of the answer's message.
    says: &'static str,
}

impl Case {
    fn header(mut self, name: &str, value: impl Into<String>) -> Case {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn basic(self, key: &str) -> Case {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
        self.header("Authorization", format!("Basic {encoded}"))
    }
    fn gzip(mut self) -> Case {
        self.body = gzip(&self.body);
        self.header("Content-Encoding", "gzip")
    }
    fn signed(self) -> Case {
        let signature = sign(&self.body);
        self.header("X-Signature", signature)
    }
    fn method(mut self, method: &'static str) -> Case {
        self.method = method;
        self
    }
}

/// A POST of `body` to `path`, expected to get `status` / `code` / a message with `says`.
fn post(
    name: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    (status, code, says): (u16, &'static str, &'static str),
) -> Case {
    Case {
        name,
        method: "POST",
        path: path.into(),
        headers: vec![],
        body: body.into(),
        status,
        code,
        says,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn track(extra: Value) -> Vec<u8> {
    let mut t = json!({"type": "track", "event": "E", "userId": "u-1", "messageId": "m-1", "properties": {}});
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t.to_string().into_bytes()
}

const OK: (u16, &str, &str) = (200, "", "");
const NO_WEBHOOK: (u16, &str, &str) = (401, "unauthorized", "missing or invalid credentials");

fn cases() -> Vec<Case> {
    let long = "x".repeat(3000);
    let deep = format!(
        r#"{{"type":"track","event":"E","userId":"u","properties":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let big_property = track(json!({"properties": {"blob": "y".repeat(40_000)}}));
    let big_batch = json!({"batch": (0..30).map(|i| json!({"type": "track", "event": "E", "userId": "u",
        "messageId": format!("b-{i}"), "properties": {"p": "z".repeat(20_000)}})).collect::<Vec<_>>()})
    .to_string();
    let many = json!({"batch": (0..2501).map(|i| json!({"type": "track", "userId": "u", "messageId": format!("n-{i}")})).collect::<Vec<_>>()}).to_string();
    let bomb = vec![b' '; 20_000_000];
    let nul_value =
        br#"{"type":"track","event":"E","userId":"u","properties":{"note":"a\u0000b"}}"#;
    let nul_key = br#"{"type":"identify","userId":"u","traits":{"k\u0000":1}}"#;
    let iterable_ok = br#"{"email":"a@b.co","eventName":"emailOpen","dataFields":{}}"#.to_vec();
    let mut bad_gzip = gzip(&track(json!({})));
    bad_gzip.truncate(bad_gzip.len() / 2);
    let with_key = |key: &str| track(json!({"writeKey": key}));
    vec![
        // Bodies that are not JSON, or not the JSON of a call.
        post("invalid JSON", "/v1/track", "{\"type\":", (400, "invalid_json", "not valid JSON")).basic(WRITE_KEY),
        post("trailing comma", "/v1/batch", "{\"batch\":[],}", (400, "invalid_json", "not valid JSON")).basic(WRITE_KEY),
        post("invalid UTF-8", "/v1/track", b"{\"type\":\"track\",\"event\":\"\xff\xfe\"}".to_vec(), (400, "invalid_json", "")).basic(WRITE_KEY),
        post("lone surrogate", "/v1/track", r#"{"type":"track","userId":"\ud800"}"#, (400, "invalid_json", "not valid JSON")).basic(WRITE_KEY),
        post("1e999", "/v1/track", r#"{"type":"track","userId":"u","properties":{"n":1e999}}"#, (400, "invalid_json", "number out of range")).basic(WRITE_KEY),
        post("deep nesting", "/v1/track", deep, (400, "invalid_json", "recursion limit")).basic(WRITE_KEY),
        post("an array for one call", "/v1/track", "[1,2]", (400, "invalid_body", "must be a JSON object")).basic(WRITE_KEY),
        post("a number for one call", "/v1/identify", "42", (400, "invalid_body", "must be a JSON object")).basic(WRITE_KEY),
        post("type of the wrong type", "/v1/track", r#"{"type":5,"userId":"u"}"#, (400, "invalid_body", "\"type\" must be one of")).basic(WRITE_KEY),
        post("unknown type in a webhook", "/webhooks/segment/shop", r#"{"type":"merge"}"#, (400, "invalid_body", "\"type\" must be one of")).signed(),
        post("batch not an array", "/v1/batch", r#"{"batch":{}}"#, (400, "invalid_body", "\"batch\" must be an array")).basic(WRITE_KEY),
        post("batch missing", "/v1/batch", r#"{"events":[]}"#, (400, "invalid_body", "needs a \"batch\" array")).basic(WRITE_KEY),
        post("duplicate keys (the last wins)", "/v1/track", r#"{"type":"track","event":"A","event":"B","userId":"u","messageId":"dup-keys"}"#, OK).basic(WRITE_KEY),
        // Sizes.
        post("huge string in one call", "/v1/track", big_property, (400, "too_large", "larger than 32768 bytes")).basic(WRITE_KEY),
        post("batch over 500 KB", "/v1/batch", big_batch, (400, "too_large", "larger than 512000 bytes")).basic(WRITE_KEY),
        post("2,501 events", "/v1/batch", many, (400, "too_large", "2501 events")).basic(WRITE_KEY),
        post("gzip bomb", "/v1/batch", bomb.clone(), (400, "too_large", "decompressed body is larger")).basic(WRITE_KEY).gzip(),
        post("gzip bomb, key in the body", "/v1/track", [with_key(WRITE_KEY), bomb.clone()].concat(), (400, "too_large", "larger than")).gzip(),
        post("oversize signed webhook", "/webhooks/segment/shop", bomb.clone(), (400, "too_large", "larger than")).gzip().signed(),
        post("oversize webhook, no token", "/webhooks/iterable/shop", vec![b' '; 600_000], (400, "too_large", "larger than")),
        post("oversize webhook, unknown name", "/webhooks/iterable/zz", vec![b' '; 600_000], (400, "too_large", "larger than")),
        // Encodings.
        post("broken gzip", "/v1/track", bad_gzip, (400, "bad_encoding", "not valid gzip")).basic(WRITE_KEY).header("Content-Encoding", "gzip"),
        post("not gzip at all", "/v1/track", track(json!({})), (400, "bad_encoding", "not valid gzip")).basic(WRITE_KEY).header("Content-Encoding", "gzip"),
        post("unsupported encoding", "/v1/track", track(json!({})), (400, "bad_encoding", "\"br\" is not supported")).basic(WRITE_KEY).header("Content-Encoding", "br"),
        post("gzip twice", "/v1/track", gzip(&track(json!({}))), (400, "bad_encoding", "\"gzip, gzip\" is not supported")).basic(WRITE_KEY).header("Content-Encoding", "gzip, gzip"),
        // What the audit log cannot store.
        post("\\u0000 in a value", "/v1/track", nul_value.to_vec(), (400, "unstorable", "properties.note contains \\u0000")).basic(WRITE_KEY),
        post("\\u0000 in a key", "/v1/identify", nul_key.to_vec(), (400, "unstorable", "(a key) contains \\u0000")).basic(WRITE_KEY),
        post("\\u0000 in a batch item", "/v1/batch", format!(r#"{{"batch":[{{"type":"track","userId":"u","messageId":"ok"}},{}]}}"#, String::from_utf8_lossy(nul_value)), (400, "unstorable", "event 1: properties.note")).basic(WRITE_KEY),
        post("\\u0000 in a webhook", "/webhooks/iterable/shop", r#"{"email":"a@b.co","eventName":"emailOpen","dataFields":{"x":"\u0000"}}"#, (400, "unstorable", "properties.x contains \\u0000")).header("Authorization", TOKEN),
        post("\\u0000 in an event name", "/webhooks/iterable/shop", r#"{"email":"a@b.co","eventName":"e\u0000"}"#, (400, "unstorable", "contains \\u0000")).header("Authorization", TOKEN),
        post("long messageId", "/v1/track", track(json!({"messageId": long})), (400, "unstorable", "messageId is 3000 bytes")).basic(WRITE_KEY),
        post("long userId", "/v1/track", track(json!({"userId": long})), (400, "unstorable", "userId is 3000 bytes")).basic(WRITE_KEY),
        post("long anonymousId", "/v1/page", json!({"type": "page", "anonymousId": long}).to_string(), (400, "unstorable", "anonymousId is 3000 bytes")).basic(WRITE_KEY),
        post("long email", "/v1/identify", json!({"type": "identify", "traits": {"email": long}}).to_string(), (400, "unstorable", "email (identity) is 3000 bytes")).basic(WRITE_KEY),
        post("long webhook email", "/webhooks/iterable/shop", json!({"email": long, "eventName": "emailOpen"}).to_string(), (400, "unstorable", "email (identity) is 3000 bytes")).header("Authorization", TOKEN),
        post("long webhook userId", "/webhooks/iterable/shop", json!({"userId": long, "eventName": "emailOpen"}).to_string(), (400, "unstorable", "userId is 3000 bytes")).header("Authorization", TOKEN),
        post("webhook without identity", "/webhooks/iterable/shop", r#"{"eventName":"emailOpen"}"#, (400, "invalid_body", "no identity")).header("Authorization", TOKEN),
        post("webhook empty array", "/webhooks/iterable/shop", "[]", (400, "invalid_body", "empty array")).header("Authorization", TOKEN),
        post("webhook invalid JSON", "/webhooks/iterable/shop", "{", (400, "invalid_json", "not valid JSON")).header("Authorization", TOKEN),
        // Every form of authentication, wrong.
        post("no credentials", "/v1/track", track(json!({})), (401, "unauthorized", "no write key")),
        post("wrong Basic user", "/v1/track", track(json!({})), (401, "unauthorized", "invalid write key")).basic("nope"),
        post("Basic, not base64", "/v1/track", track(json!({})), (401, "unauthorized", "no write key")).header("Authorization", "Basic %%%"),
        post("wrong X-Write-Key", "/v1/track", track(json!({})), (401, "unauthorized", "invalid write key")).header("X-Write-Key", "nope"),
        post("wrong body writeKey", "/v1/track", with_key("nope"), (401, "unauthorized", "invalid write key")),
        post("writeKey of the wrong type", "/v1/track", track(json!({"writeKey": 42})), (401, "unauthorized", "invalid write key")),
        post("header and body disagree", "/v1/track", with_key("another-key"), (401, "ambiguous_credentials", "more than one write key")).basic(WRITE_KEY),
        post("Basic and X-Write-Key disagree", "/v1/track", track(json!({})), (401, "ambiguous_credentials", "more than one write key")).basic(WRITE_KEY).header("X-Write-Key", "other"),
        post("batch items disagree", "/v1/b", json!({"batch": [{"writeKey": WRITE_KEY, "type": "track", "userId": "u"}, {"writeKey": "x", "type": "track", "userId": "u"}]}).to_string(), (401, "ambiguous_credentials", "batch items disagree")),
        post("webhook without signature", "/webhooks/segment/shop", track(json!({})), NO_WEBHOOK),
        post("webhook with a wrong signature", "/webhooks/segment/shop", track(json!({})), NO_WEBHOOK).header("X-Signature", "00ff"),
        post("webhook signature not hex", "/webhooks/segment/shop", track(json!({})), NO_WEBHOOK).header("X-Signature", "zz"),
        post("webhook of an unknown connection", "/webhooks/segment/zz", track(json!({})), NO_WEBHOOK).signed(),
        post("iterable webhook without token", "/webhooks/iterable/shop", iterable_ok.clone(), NO_WEBHOOK),
        post("iterable webhook, wrong token", "/webhooks/iterable/shop", iterable_ok.clone(), NO_WEBHOOK).header("Authorization", "Bearer nope"),
        post("iterable webhook, unknown connection", "/webhooks/iterable/zz", iterable_ok.clone(), NO_WEBHOOK).header("Authorization", TOKEN),
        // Routes and methods.
        post("unknown call", "/v1/merge", track(json!({})), (404, "not_found", "no route /v1/merge")).basic(WRITE_KEY),
        post("unknown call, no key", "/v1/xyz", "junk", (404, "not_found", "no route /v1/xyz")),
        post("too deep a webhook path", "/webhooks/segment/x/y", "{}", (404, "not_found", "no route POST /webhooks/segment/x/y")),
        post("no route at all", "/nope", "{}", (404, "not_found", "no route POST /nope")),
        post("a long URL", &format!("/v1/{}", "u".repeat(8000)), "{}", (404, "not_found", "no route /v1/uuu")),
        post("GET on a POST route", "/v1/track", "", (405, "method_not_allowed", "use POST")).method("GET"),
        post("PUT on a webhook", "/webhooks/iterable/shop", "{}", (405, "method_not_allowed", "method PUT is not allowed")).method("PUT"),
        post("POST on an operator route", "/healthz", "{}", (405, "method_not_allowed", "use GET")),
        post("DELETE elsewhere", "/x/y/z", "", (404, "not_found", "no route DELETE /x/y/z")).method("DELETE"),
        // Long headers (under the HTTP parser's 128 KiB) are kept only in part, and do not hurt.
        post("a 100 KB header", "/v1/track", track(json!({"messageId": "long-header"})), OK).basic(WRITE_KEY).header("X-Junk", "j".repeat(100_000)),
        post("many long headers", "/v1/xyz", "", (404, "not_found", "no route")).header("X-A", "a".repeat(30_000)).header("X-B", "b".repeat(30_000)).header("X-C", "c".repeat(30_000)),
    ]
}

async fn send(app: &TestApp, case: &Case) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut req = app
        .api
        .request(method, format!("{}{}", app.address, case.path))
        .body(case.body.clone());
    for (k, v) in &case.headers {
        req = req.header(k, v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

async fn audit_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inbound_request")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn short_timeouts(s: &mut gateway::configuration::Settings) {
    s.application.body_timeout_ms = 1000;
    s.application.request_head_timeout_ms = 1000;
}

#[tokio::test]
async fn every_hostile_request_is_refused_with_a_reason_and_audited_with_its_status() {
    let app = spawn_app_with(short_timeouts).await;
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let res = send(&app, case).await;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert!(status < 500, "{}: {status} {text}", case.name);
        assert_eq!(status, case.status, "{}: {text}", case.name);
        if status != 200 {
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{}: not JSON: {text}", case.name));
            assert_eq!(body["success"], false, "{}", case.name);
            assert_eq!(body["code"], case.code, "{}: {text}", case.name);
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(case.says),
                "{}: {message:?} does not say {:?}",
                case.name,
                case.says
            );
        }
        // One audit row per request, with the status the client got.
        let (rows, last): (i64, i16) = sqlx::query_as(
            "SELECT count(*), (SELECT status FROM inbound_request ORDER BY id DESC LIMIT 1) FROM inbound_request",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(rows, i as i64 + 1, "{}: audit rows", case.name);
        assert_eq!(last as u16, status, "{}: audited status", case.name);
    }
    // Unauthenticated callers store at most the first KiB of what they send.
    let largest: i32 = sqlx::query_scalar(
        "SELECT max(length(body)) FROM inbound_request WHERE connection IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(largest <= 1024, "{largest}");
    let headers: i32 = sqlx::query_scalar("SELECT max(length(headers::text)) FROM inbound_request")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(headers < 10_000, "headers stored: {headers} bytes");
    // The webhook refusals all read the same, whatever the cause.
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT error_code) FROM inbound_request WHERE status = 401 AND route LIKE '/webhooks/%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(distinct, 1);
}

/// Writes a request head and then the body a few bytes at a time; returns the answer's status
/// line and how long it took.
fn slow_request(port: u16, head: &str, body_bytes: usize, every: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..body_bytes / 10 {
        if s.write_all(b"          ").is_err() {
            break;
        }
        std::thread::sleep(every);
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let answered = matches!(s.peek(&mut probe), Ok(n) if n > 0);
        s.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (
        answer.lines().next().unwrap_or("").to_string(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_bodies_and_slow_heads_are_timed_out() {
    let app = spawn_app_with(short_timeouts).await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: 2000\r\n\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    );
    let (status, took) = tokio::task::spawn_blocking(move || {
        slow_request(port, &head, 2000, Duration::from_millis(100))
    })
    .await
    .unwrap();
    assert!(status.contains("408"), "{status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (code, truncated, connection): (String, bool, Option<String>) = sqlx::query_as(
        "SELECT error_code, body_truncated, connection FROM inbound_request ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(code, "body_timeout");
    assert!(truncated);
    assert_eq!(
        connection.as_deref(),
        Some("shop"),
        "the header said whose it is"
    );

    // A head that never ends: closed after the head timeout, with nothing to audit.
    let (status, took) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        (answer, started.elapsed())
    })
    .await
    .unwrap();
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 408"),
        "{status}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(audit_rows(&app).await, 1);
}

#[tokio::test]
async fn a_head_over_the_parsers_limit_is_refused_before_routing() {
    let app = spawn_app_with(short_timeouts).await;
    let res = app
        .api
        .post(format!("{}/v1/track", app.address))
        .header("X-Junk", "j".repeat(140_000))
        .body("{}")
        .send()
        .await;
    // actix-http refuses a head over its buffer (431, or the connection closed): there is no
    // request to route or audit yet, and nothing of it is stored.
    match res {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    assert_eq!(audit_rows(&app).await, 0);
}
