//! The delivery page `/ui`: off unless configured, behind the operator token, and safe with
//! hostile events, checked over HTTP and in a real browser (headless Chromium from Debian's
//! packages: `apt-get install -y chromium`).

use crate::app::{spawn_app_with, TestApp};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const TOKEN: &str = "operator-token-for-tests";
/// Marks that a script ran: none of the page's own code sets it.
const HOSTILE_USER: &str = "<img src=x onerror=\"document.title='PWNED'\">";
const HOSTILE_EVENT: &str =
    "</pre><script>document.documentElement.setAttribute('data-pwned','1')</script><b>bold</b>";

async fn app_with_traffic() -> TestApp {
    let app = spawn_app_with(|s| {
        s.ui.token = Some(TOKEN.to_string().into());
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"successCount": 2})))
        .mount(&app.iterable)
        .await;
    // `ui-bad-1` has no event name: the mapping refuses it before sending (a track without
    // email or userId is sent, as Segment's performBatch sends it).
    let batch = json!({"batch": [
        {"type": "track", "messageId": "ui-ok-1", "userId": "ann", "event": "Signed Up",
         "context": {"traits": {"email": "ann@example.com"}}},
        {"type": "track", "messageId": "ui-hostile-1", "userId": HOSTILE_USER, "event": HOSTILE_EVENT,
         "properties": {"note": HOSTILE_EVENT}},
        {"type": "track", "messageId": "ui-bad-1", "anonymousId": "anon-1"}
    ]});
    assert_eq!(app.post_v1("batch", &batch).await.status(), 200);
    app.drain_until_settled().await;
    app
}

fn get(app: &TestApp, url: &str) -> reqwest::RequestBuilder {
    app.api.get(format!("{}{url}", app.address))
}

/// The page with a search for `q` (URL-encoded), as the operator sees it.
async fn search(app: &TestApp, q: &str) -> String {
    let r = get(app, &format!("/ui?q={q}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn the_page_is_off_unless_a_token_is_configured() {
    let app = crate::app::spawn_app().await;
    let r = get(&app, "/ui")
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_page_needs_the_token_and_escapes_every_value_of_an_event() {
    let app = app_with_traffic().await;

    // Without the token, or with a wrong one: 401 and the browser's prompt.
    let r = get(&app, "/ui").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    let r = get(&app, "/ui")
        .bearer_auth("operator-token-for-test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get(&app, "/ui/style.css").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // With it (Bearer, or Basic with any user name).
    let r = get(&app, "/ui")
        .basic_auth("op", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let body = r.text().await.unwrap();
    assert!(body.contains("<h3>shop</h3>"), "the connection's charts");
    assert!(body.contains("<svg class=\"chart\""), "inline SVG charts");
    assert!(
        body.contains("last hour: 3 in (bars), 2 out (line)"),
        "{body}"
    );
    assert!(
        body.contains("PAYLOAD_VALIDATION_FAILED"),
        "failures by reason"
    );
    assert!(!body.contains("<script"), "no script at all");

    // A search by messageId shows the event, its mapped request and its attempt, escaped.
    let r = get(&app, "/ui?q=ui-hostile-1")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script"), "{body}");
    assert!(!body.contains("<img"), "{body}");
    assert!(
        body.contains("&lt;/pre&gt;&lt;script&gt;document.documentElement"),
        "{body}"
    );
    assert!(body.contains("&lt;img src=x onerror=&quot;document.title=&#39;PWNED&#39;&quot;&gt;"));
    assert!(body.contains("mapped request") && body.contains("/api/events/trackBulk"));
    assert!(
        body.contains("attempt </b>") || body.contains("<b>attempt 1</b>"),
        "{body}"
    );

    // A search by email finds the user's events.
    let body = search(&app, "ANN%40example.com").await;
    assert!(body.contains("ui-ok-1"), "{body}");
    // And by userId (ingest keys it u:ann).
    let body = search(&app, "ann").await;
    assert!(
        body.contains("ui-ok-1") && !body.contains("No event has"),
        "{body}"
    );
}

/// Headless Chromium, as Debian packages it.
fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Runs Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`), returns stdout.
fn browse(url: &str, mode: &[&str]) -> String {
    let browser = chromium().expect(
        "headless Chromium is needed for this test: apt-get install -y chromium \
         (.ci/run installs it), or set GATEWAY_SKIP_BROWSER=1",
    );
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1400",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(mode)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn in_a_real_browser_the_page_loads_searches_and_runs_no_script_from_an_event() {
    if std::env::var_os("GATEWAY_SKIP_BROWSER").is_some() {
        eprintln!("GATEWAY_SKIP_BROWSER is set: the browser test does not run");
        return;
    }
    let app = app_with_traffic().await;
    let base = app
        .address
        .replace("http://", &format!("http://op:{TOKEN}@"));

    // Load.
    let url = format!("{base}/ui");
    let dom = tokio::task::spawn_blocking(move || browse(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(dom.contains("<title>Gateway delivery</title>"), "{dom}");
    assert!(dom.contains("<h3>shop</h3>"), "{dom}");
    assert!(
        dom.contains("<form method=\"get\" action=\"/ui\" role=\"search\">"),
        "{dom}"
    );

    // Search (what the form submits): the hostile event shows as text and runs nothing.
    let url = format!("{base}/ui?q=ui-hostile-1");
    let dom = tokio::task::spawn_blocking(move || browse(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(dom.contains("ui-hostile-1"), "{dom}");
    assert!(
        !dom.contains("data-pwned=\"1\""),
        "a script from the event ran: {dom}"
    );
    assert!(
        !dom.contains("PWNED</title>"),
        "an event handler ran: {dom}"
    );
    assert!(dom.contains("<title>Gateway delivery</title>"));
    assert!(
        dom.contains("&lt;script&gt;document.documentElement.setAttribute"),
        "the script shows as text: {dom}"
    );
    assert!(dom.contains("&lt;img src=x onerror="), "{dom}");
    assert!(
        !dom.contains("<b>bold</b>"),
        "no markup from the event: {dom}"
    );

    // The README's screenshot, when asked for.
    if let Ok(target) = std::env::var("GATEWAY_UI_SCREENSHOT") {
        let url = format!("{base}/ui?q=ann");
        let shot = format!("--screenshot={target}");
        tokio::task::spawn_blocking(move || browse(&url, &[&shot]))
            .await
            .unwrap();
        assert!(Path::new(&std::env::var("GATEWAY_UI_SCREENSHOT").unwrap()).exists());
    }
}

/// A connection paused by any gateway process on the database (a row of `connection_pause`, as
/// the dispatchers write it) shows on the page, escaped, with the partner's answer; the
/// dispatcher's gauge has its HELP line in /metrics.
#[tokio::test]
async fn a_paused_connection_shows_on_the_page_and_in_the_metrics() {
    let app = app_with_traffic().await;
    sqlx::query(
        "INSERT INTO connection_pause (connection, direction, reason, detail, probe_at)
         VALUES ('paused-shop', 'segment_to_iterable', 'unauthorized', '<b>invalid api key</b>', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let body = search(&app, "").await;
    let paused = body.split("<section id=\"paused\">").nth(1).unwrap();
    let paused = paused.split("</section>").next().unwrap();
    assert!(
        paused.contains("<td>paused-shop</td><td>segment_to_iterable</td>"),
        "{paused}"
    );
    assert!(
        paused.contains("unauthorized: &lt;b&gt;invalid api key&lt;/b&gt;"),
        "escaped: {paused}"
    );

    let labels = [
        ("connection", "paused-shop"),
        ("direction", "segment_to_iterable"),
        ("reason", "unauthorized"),
    ];
    metrics::gauge!("gateway_connection_paused", &labels).set(1.0);
    let metrics = get(&app, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# HELP gateway_connection_paused "),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE gateway_connection_paused gauge"),
        "{metrics}"
    );
    metrics::gauge!("gateway_connection_paused", &labels).set(0.0);

    // Resumed: the dispatcher deletes the row.
    sqlx::query("DELETE FROM connection_pause WHERE connection = 'paused-shop'")
        .execute(&app.pool)
        .await
        .unwrap();
    let body = search(&app, "").await;
    assert!(!body.contains("paused-shop"), "resumed: no longer listed");
}
