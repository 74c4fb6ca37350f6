//! No secret reaches the database or the logs, whatever the traffic: the real `gateway serve`
//! (logs captured at debug level, in both formats) gets requests carrying every configured secret
//! of two connections, in well-formed, malformed, truncated, oversized, gzip-bomb, badly encoded
//! and mixed-credential bodies, in headers, paths and JSON escapes; then `pg_dump` of its
//! database and the captured logs are searched for each secret, as text, hex and base64.

use base64::Engine;
use gateway::audit::redact::unescape_json_lossy;
use gateway::database::testing::fresh_database;
use hmac::{Hmac, Mac};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Distinctive secrets: (connection, key, value). Mixed case, so that a header name carrying one
/// (which HTTP lowercases) is a real test.
const SECRETS: [(&str, &str, &str); 10] = [
    ("a", "write_key", "Sekrit-WKA-5d2f81c7"),
    ("a", "iterable_api_key", "Sekrit-IKA-a04be913"),
    ("a", "webhook_token", "Sekrit-WTA-6c1e77d0"),
    ("a", "shared_secret", "Sekrit-SSA-39fa0b42"),
    ("a", "segment_write_key", "Sekrit-SWA-e8d45c16"),
    ("b", "write_key", "Sekrit-WKB-71c0de55"),
    ("b", "iterable_api_key", "Sekrit-IKB-0b9f3a28"),
    ("b", "webhook_token", "Sekrit-WTB-c6a2e94f"),
    ("b", "shared_secret", "Sekrit-SSB-14e8b7d3"),
    ("b", "segment_write_key", "Sekrit-SWB-93d17f60"),
];

fn s(connection: &str, key: &str) -> &'static str {
    SECRETS
        .iter()
        .find(|(c, k, _)| *c == connection && *k == key)
        .unwrap()
        .2
}

/// A config directory: the default configuration with connections `a` and `b` instead of demo.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let default =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
            .unwrap();
    let mut text = default[..default.find("[[connections]]").unwrap()].to_string();
    for c in ["a", "b"] {
        text.push_str(&format!("[[connections]]\nname = \"{c}\"\n"));
        for (_, key, value) in SECRETS.iter().filter(|(cc, _, _)| *cc == c) {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    std::fs::write(dir.path().join("default.toml"), text).unwrap();
    dir
}

struct Gateway {
    child: Child,
    logs: Arc<Mutex<String>>,
    address: String,
}

fn start(config: &std::path::Path, url: &str, format: &str) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--config"])
        .arg(config)
        .env("GATEWAY__DATABASE__URL", url)
        .env("GATEWAY__APPLICATION__PORT", "0")
        .env("GATEWAY__APPLICATION__LOG_FORMAT", format)
        .env("RUST_LOG", "debug")
        .env_remove("GATEWAY_ENVIRONMENT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let (logs, tx) = (logs.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(i) = line.find("http://127.0.0.1:") {
                    let port: String = line[i + 17..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    let _ = tx.send(format!("http://127.0.0.1:{port}"));
                }
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
    }
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the gateway did not start: {}", logs.lock().unwrap()));
    Gateway {
        child,
        logs,
        address,
    }
}

impl Gateway {
    /// SIGTERM, then waits for the exit; returns the logs.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the gateway did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        let logs = self.logs.lock().unwrap().clone();
        logs
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Requests that carry the secrets every way we could think of; returns how many were sent.
async fn traffic(address: &str) -> usize {
    let api = reqwest::Client::new();
    let (wka, wkb) = (s("a", "write_key"), s("b", "write_key"));
    let every: Vec<&str> = SECRETS.iter().map(|x| x.2).collect();
    let all_in_properties = json!({"type": "track", "event": "E", "userId": "u", "writeKey": wka,
        "properties": {"all": every, "one": s("b", "iterable_api_key")}, "context": {"k": s("a", "shared_secret")}})
    .to_string();
    let first_escaped = format!(
        r#"{{"writeKey":"\u0053{}","type":"track","event":"E","userId":"u-esc"}}"#,
        &wka[1..]
    );
    let mut bomb = format!(r#"{{"writeKey":"{wka}","type":"track","pad":""#).into_bytes();
    bomb.extend(std::iter::repeat_n(b' ', 600_000));
    bomb.extend(format!(r#"","also":"{wkb}"}}"#).bytes());
    let mut broken = gzip(all_in_properties.as_bytes());
    broken.truncate(broken.len() * 2 / 3);
    // Unauthenticated, so only its first KiB is kept: the key straddles byte 1024.
    let cut_at_kib = format!(r#"{{"p":"{}","writeKey":"{wkb}"}}"#, "x".repeat(1000));
    let iterable_body = json!({"email": "a@b.co", "eventName": "emailOpen",
        "dataFields": {"token": s("b", "webhook_token"), "k": s("a", "iterable_api_key"), "w": s("a", "segment_write_key")}})
    .to_string();
    let segment_body = json!({"type": "track", "event": "E", "userId": "u-wh", "messageId": "wh-1",
        "properties": {"secret": s("b", "shared_secret"), "key": s("b", "iterable_api_key")}})
    .to_string();
    let requests: Vec<reqwest::RequestBuilder> = vec![
        api.post(format!("{address}/v1/track")).body(all_in_properties.clone()),
        api.post(format!("{address}/v1/track")).basic_auth(wka, Some("")).body(format!(r#"{{"writeKey":"{wka}","type":"track",}}"#)),
        api.post(format!("{address}/v1/track")).body(format!(r#"{{"writeKey":"{wka}","type":"tra"#)),
        api.post(format!("{address}/v1/track")).body(format!(r#"{{"writeKey":"{wkb}","x":"{}","y":"{wka}"}}"#, "p".repeat(40_000))),
        api.post(format!("{address}/v1/batch")).header("Content-Encoding", "gzip").body(gzip(&bomb)),
        api.post(format!("{address}/v1/track")).header("Content-Encoding", "gzip").body(broken),
        api.post(format!("{address}/v1/track")).header("Content-Encoding", "br").body(all_in_properties.clone()),
        api.post(format!("{address}/v1/track")).body(cut_at_kib),
        api.post(format!("{address}/v1/track")).basic_auth(wka, Some("")).body(format!(r#"{{"writeKey":"{wkb}","type":"track","userId":"u"}}"#)),
        api.post(format!("{address}/v1/track")).header("X-Write-Key", wkb).body(format!(r#"{{"writeKey":"{wka}","type":"track","userId":"u"}}"#)),
        api.post(format!("{address}/v1/b")).body(json!({"batch": [{"writeKey": wka, "type": "track", "userId": "u"}, {"writeKey": wkb, "type": "track", "userId": "u"}]}).to_string()),
        api.post(format!("{address}/v1/track")).body(first_escaped.clone()),
        api.post(format!("{address}/v1/track")).body(format!("{first_escaped},")),
        api.post(format!("{address}/v1/track")).body(format!("{first_escaped}{}", " ".repeat(40_000))),
        api.post(format!("{address}/v1/track")).basic_auth(wka, Some("")).body(json!({"type": "identify", "userId": "u-k", "traits": {s("b", "segment_write_key"): 1}}).to_string()),
        api.post(format!("{address}/v1/track")).basic_auth(wka, Some(""))
            .header("X-Note", s("a", "iterable_api_key")).header("Cookie", wkb)
            .header("Referer", format!("https://x/?k={}", s("b", "segment_write_key")))
            .header(format!("X-{}", s("a", "webhook_token")), "1")
            .body(json!({"type": "track", "event": "H", "userId": "u-h"}).to_string()),
        api.post(format!("{address}/v1/{wka}")).body("{}"),
        // The write key as the body's own (not kept in the event) and again in a property (kept).
        api.post(format!("{address}/v1/track")).basic_auth(wka, Some(""))
            .body(json!({"type": "track", "event": "E", "userId": "u-n", "writeKey": wka, "properties": {"writeKey": wka}}).to_string()),
        api.post(format!("{address}/v1/batch")).basic_auth(wka, Some("")).body(json!({"batch": [
            {"type": wka, "userId": "u"},
            {"type": "track", "event": "E", "messageId": wkb, "userId": s("a", "iterable_api_key")},
            {"type": "identify", "anonymousId": s("b", "iterable_api_key"), "traits": {"email": s("a", "segment_write_key")}}]}).to_string()),
        api.post(format!("{address}/webhooks/iterable/{}", s("b", "webhook_token"))).body("{}"),
        api.post(format!("{address}/webhooks/iterable/a")).header("Authorization", format!("Bearer {}", s("a", "webhook_token"))).body(iterable_body.clone()),
        api.post(format!("{address}/webhooks/iterable/a")).header("Authorization", s("b", "webhook_token")).body(iterable_body),
        api.post(format!("{address}/webhooks/segment/b")).header("X-Signature", sign(s("b", "shared_secret"), segment_body.as_bytes())).body(segment_body.clone()),
        api.post(format!("{address}/webhooks/segment/a")).header("X-Signature", sign(s("b", "shared_secret"), segment_body.as_bytes())).body(segment_body),
        api.put(format!("{address}/v1/track")).basic_auth(wkb, Some(s("a", "write_key"))).body(wka),
    ];
    let n = requests.len();
    for r in requests {
        let res = r.send().await.unwrap();
        assert!(res.status().as_u16() < 500, "{}", res.text().await.unwrap());
    }
    n
}

/// Every spelling of every secret found in `text`.
fn leaks(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut found = vec![];
    for (_, key, secret) in SECRETS {
        let forms = [
            secret.to_ascii_lowercase(),
            hex::encode(secret),
            b64(secret).to_ascii_lowercase(),
            b64(&format!("{secret}:")).to_ascii_lowercase(),
        ];
        for f in forms {
            if lower.contains(&f) {
                found.push(format!("{key} as {f}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_database_or_the_logs() {
    let (pool, db) = fresh_database().await;
    let config = config_dir();
    let mut sent = 0;
    let mut logs = String::new();
    for format in ["pretty", "json"] {
        let gateway = start(config.path(), &db.url(), format);
        sent += traffic(&gateway.address).await;
        // Let the dry-run dispatcher record what it would send.
        tokio::time::sleep(Duration::from_millis(500)).await;
        logs.push_str(&gateway.stop());
    }
    assert!(logs.contains("The gateway is listening"), "{logs}");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_request")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited as usize, sent, "every request is audited");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_attempt")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(attempts > 0, "the dispatcher recorded what it would send");
    // Bodies read back with JSON's escapes undone (`\u0053ekrit...` is a secret too).
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM inbound_request")
        .fetch_all(&pool)
        .await
        .unwrap();
    for body in bodies {
        let text = String::from_utf8_lossy(&unescape_json_lossy(&body)).into_owned();
        assert_eq!(
            leaks(&text),
            Vec::<String>::new(),
            "a secret spelt with escapes: {text:.300}"
        );
    }
    pool.close().await;

    let pg_dump = gateway::database::PgBinaries::find()
        .unwrap()
        .program("pg_dump");
    let dump = Command::new(pg_dump)
        .args(["--data-only", "--dbname"])
        .arg(db.url())
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dump.contains("inbound_request"),
        "the dump has the audit log"
    );
    assert!(dump.contains("<redacted>") || dump.contains("3c72656461637465643e"));
    assert_eq!(leaks(&dump), Vec::<String>::new(), "secrets in pg_dump");
    assert_eq!(leaks(&logs), Vec::<String>::new(), "secrets in the logs");
}
