//! Load generator for `gateway serve` (driven by `scripts/bench-load`; DESIGN §6).
//!
//! ```text
//! loadgen mock  --port-file FILE [--port 0] [--api-key KEY]
//!     a fast mock of Iterable's API on 127.0.0.1: answers 200 with Iterable-shaped bodies
//!     ({"successCount": N, ...} for bulk endpoints) and counts requests and items per endpoint;
//!     GET /__stats returns the counts as JSON.
//! loadgen drive --url URL --write-key KEY [--modes rate,max] [--connections 16] [--duration 20]
//!               [--rate 5000] [--mock URL] [--database-url URL] [--gateway-pid PID]
//!     POST /v1/batch with 100-event batches (identify, track, Order Completed; unique messageIds;
//!     many userIds) and prints a Markdown table: committed events/s, acknowledgement latency,
//!     delivered events/s (from the mock's counts), event states (from the database) and the
//!     gateway's peak RSS (VmHWM).
//! ```
//!
//! `scripts/chaos` adds `--ack-log FILE --pause-ms N` to `drive` (one line per answer, with the
//! messageIds it acknowledged or refused) and `--record FILE` to `mock` (one line per event
//! received), and compares them with the database.
//!
//! Modes: `max` keeps `--connections` requests in flight (closed loop, one HTTP connection per
//! worker) for `--duration` seconds; `rate` sends `--rate` events/s as an open loop (each batch at
//! its scheduled time; latency is measured from that time, so a stall counts in full).

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load generator and mock Iterable for scripts/bench-load")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A mock Iterable API that keeps up with thousands of requests per second.
    Mock(MockArgs),
    /// Drive POST /v1/batch and print a Markdown table of the results.
    Drive(Box<DriveArgs>),
}

#[derive(Parser)]
struct MockArgs {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write the bound port once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// When set, requests without this Api-Key get 401 BadApiKey (as Iterable answers).
    #[arg(long)]
    api_key: Option<String>,
    /// Append one line per event received: `path<TAB>ref<TAB>id`, where ref is the sender's own
    /// reference (trackEvent `dataFields.ref`; a Segment call's `properties.messageId`, which
    /// carries the Iterable webhook's) and id the id it arrived with (trackEvent `id`, Segment
    /// `messageId`). Written before the 200 is sent.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[derive(Parser, Clone)]
struct DriveArgs {
    /// The gateway's base URL.
    #[arg(long)]
    url: String,
    /// The connection's write key (sent as HTTP Basic user).
    #[arg(long)]
    write_key: String,
    /// Modes to run, in order: `rate` (fixed rate) and/or `max` (max throughput).
    #[arg(long, value_delimiter = ',', default_value = "rate,max")]
    modes: Vec<String>,
    /// Concurrent connections in `max` mode.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Measured seconds per mode.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Unmeasured seconds of load before each mode's measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Events per second in `rate` mode.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Distinct userIds the events are spread over.
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// Percent of events that are identify calls.
    #[arg(long, default_value_t = 20)]
    identify_pct: u32,
    /// Percent of events that are Order Completed (the rest are other track calls).
    #[arg(long, default_value_t = 5)]
    order_pct: u32,
    /// The mock Iterable's base URL (for delivered counts).
    #[arg(long)]
    mock: Option<String>,
    /// The gateway's database (for event states).
    #[arg(long)]
    database_url: Option<String>,
    /// The gateway's process id (for its peak RSS and CPU time).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The gateway's PostgreSQL postmaster (for the CPU time of the server and its backends).
    #[arg(long)]
    postmaster_pid: Option<u32>,
    /// Also append one JSON object per mode to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// `webhook` mode: the connection whose Iterable webhook route is driven.
    #[arg(long, default_value = "bench")]
    webhook_connection: String,
    /// `webhook` mode: the connection's webhook token (sent as `Authorization: Bearer ...`).
    #[arg(long, default_value = "")]
    webhook_token: String,
    /// `max` and `webhook` modes: append one line per answer, `unix_ms<TAB>status<TAB>
    /// latency_us<TAB>kind<TAB>ref,ref,...` (status `err` when there was no HTTP answer), the
    /// refs being the request's messageIds (batch) or `dataFields.messageId` (webhook). Track
    /// events then also carry their messageId as `properties.ref`.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// `max` and `webhook` modes: milliseconds each worker waits after each answer.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

/// The `--ack-log` file: one `write` per line, so that lines from concurrent workers never mix
/// and a killed load generator loses at most the answer in hand.
struct AckLog(Mutex<std::fs::File>);

impl AckLog {
    fn open(path: &std::path::Path) -> anyhow::Result<AckLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AckLog(Mutex::new(f)))
    }

    fn write(&self, kind: &str, outcome: &Result<u16, String>, latency: Duration, refs: &str) {
        use std::io::Write as _;
        let status = match outcome {
            Ok(code) => code.to_string(),
            Err(_) => "err".to_string(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let line = format!("{now}\t{status}\t{}\t{kind}\t{refs}\n", latency.as_micros());
        let _ = self
            .0
            .lock()
            .expect("ack log lock")
            .write_all(line.as_bytes());
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mock(args) => runtime.block_on(mock(args)),
        Command::Drive(args) => runtime.block_on(drive(*args)),
    }
}

// ---------------------------------------------------------------------------------------------
// The mock Iterable

#[derive(Default)]
struct MockStats {
    /// Path -> (requests, items).
    by_path: Mutex<BTreeMap<String, (u64, u64)>>,
    items: AtomicU64,
    requests: AtomicU64,
    bad_api_key: AtomicU64,
}

struct MockState {
    stats: MockStats,
    api_key: Option<String>,
    record: Option<Mutex<std::fs::File>>,
}

/// The `--record` lines of one request: `path<TAB>ref<TAB>id` per event.
fn record_lines(path: &str, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let items: Vec<(String, String)> = match path {
        "/v1/batch" => v["batch"]
            .as_array()
            .map(|b| {
                b.iter()
                    .map(|e| (text(&e["properties"]["messageId"]), text(&e["messageId"])))
                    .collect()
            })
            .unwrap_or_default(),
        "/api/events/trackBulk" => v["events"]
            .as_array()
            .map(|b| {
                b.iter()
                    .map(|e| (text(&e["dataFields"]["ref"]), text(&e["id"])))
                    .collect()
            })
            .unwrap_or_default(),
        "/api/events/track" => vec![(text(&v["dataFields"]["ref"]), text(&v["id"]))],
        _ => vec![(String::new(), String::new())],
    };
    items
        .iter()
        .map(|(r, id)| format!("{path}\t{r}\t{id}\n"))
        .collect()
}

#[derive(serde::Deserialize)]
struct BulkBody {
    #[serde(default)]
    users: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    events: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    subscribers: Vec<serde::de::IgnoredAny>,
}

const FAILED_UPDATES: &str = r#"{"conflictEmails":[],"conflictUserIds":[],"forgottenEmails":[],"forgottenUserIds":[],"invalidDataEmails":[],"invalidDataUserIds":[],"invalidEmails":[],"invalidUserIds":[],"notFoundEmails":[],"notFoundUserIds":[]}"#;

async fn mock_api(req: HttpRequest, body: web::Bytes, state: web::Data<MockState>) -> HttpResponse {
    let path = req.path().to_string();
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(file) = &state.record {
        use std::io::Write as _;
        let lines = record_lines(&path, &body);
        let _ = file
            .lock()
            .expect("record lock")
            .write_all(lines.as_bytes());
    }
    if path == "/v1/batch" {
        // Segment's tracking API: count the events of the batch.
        let items = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("batch")
                    .and_then(|b| b.as_array())
                    .map(|b| b.len() as u64)
            })
            .unwrap_or(0);
        stats.items.fetch_add(items, Ordering::Relaxed);
        let mut by_path = stats.by_path.lock().expect("mock stats lock");
        let entry = by_path.entry(path.clone()).or_default();
        entry.0 += 1;
        entry.1 += items;
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"success":true}"#);
    }
    if let Some(key) = &state.api_key {
        let given = req.headers().get("api-key").and_then(|v| v.to_str().ok());
        if given != Some(key.as_str()) {
            stats.bad_api_key.fetch_add(1, Ordering::Relaxed);
            return HttpResponse::Unauthorized()
                .content_type("application/json")
                .body(r#"{"msg":"Invalid API key","code":"BadApiKey","params":null}"#);
        }
    }
    let bulk = matches!(
        path.as_str(),
        "/api/users/bulkUpdate"
            | "/api/events/trackBulk"
            | "/api/lists/subscribe"
            | "/api/lists/unsubscribe"
    );
    let items = if bulk {
        match serde_json::from_slice::<BulkBody>(&body) {
            Ok(b) => (b.users.len() + b.events.len() + b.subscribers.len()) as u64,
            Err(e) => {
                return HttpResponse::BadRequest()
                    .content_type("application/json")
                    .body(
                        serde_json::json!({
                            "msg": format!("[{path}] Invalid JSON body: {e}"),
                            "code": "BadJsonBody",
                            "params": null
                        })
                        .to_string(),
                    )
            }
        }
    } else {
        1
    };
    stats.items.fetch_add(items, Ordering::Relaxed);
    {
        let mut by_path = stats.by_path.lock().expect("mock stats lock");
        let entry = by_path.entry(path.clone()).or_default();
        entry.0 += 1;
        entry.1 += items;
    }
    let reply = if bulk {
        let mut s = format!(
            r#"{{"successCount":{items},"failCount":0,"createdFields":[],"filteredOutFields":[],"invalidEmails":[],"invalidUserIds":[],"failedUpdates":{FAILED_UPDATES}"#
        );
        if path == "/api/events/trackBulk" {
            s.push_str(r#","disallowedEventNames":[]"#);
        }
        s.push('}');
        s
    } else {
        r#"{"msg":"","code":"Success","params":null}"#.to_string()
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(reply)
}

async fn mock_stats(state: web::Data<MockState>) -> HttpResponse {
    let s = &state.stats;
    let by_path: serde_json::Map<String, serde_json::Value> = s
        .by_path
        .lock()
        .expect("mock stats lock")
        .iter()
        .map(|(k, (r, i))| (k.clone(), serde_json::json!({"requests": r, "items": i})))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "requests": s.requests.load(Ordering::Relaxed),
        "items": s.items.load(Ordering::Relaxed),
        "bad_api_key": s.bad_api_key.load(Ordering::Relaxed),
        "by_path": by_path,
    }))
}

async fn mock(args: MockArgs) -> anyhow::Result<()> {
    let record = match &args.record {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let state = web::Data::new(MockState {
        stats: MockStats::default(),
        api_key: args.api_key,
        record,
    });
    let listener = std::net::TcpListener::bind(("127.0.0.1", args.port))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 << 20))
            .route("/__stats", web::get().to(mock_stats))
            .default_service(web::to(mock_api))
    })
    .workers(1)
    .listen(listener)?
    .run();
    if let Some(file) = &args.port_file {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{port}\n"))?;
        std::fs::rename(&tmp, file)?;
    }
    eprintln!("mock Iterable listening on http://127.0.0.1:{port}");
    server.await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batches

const CONTEXT: &str = r#"{"ip":"203.0.113.7","library":{"name":"loadgen","version":"1.0.0"},"locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36","page":{"path":"/shop","url":"https://shop.example.com/shop"}}"#;
const EVENTS: [&str; 4] = [
    "Video Played",
    "Product Viewed",
    "Signed In",
    "Article Read",
];

/// Makes batches of events with unique messageIds (`{run}-{worker}-{seq}`).
struct BatchMaker {
    run: String,
    worker: usize,
    seq: u64,
    rng: StdRng,
    users: u64,
    identify_pct: u32,
    order_pct: u32,
    events: usize,
    /// Put each track's messageId in `properties.ref` too (`--ack-log`).
    tag_refs: bool,
}

impl BatchMaker {
    fn new(args: &DriveArgs, run: &str, worker: usize) -> BatchMaker {
        BatchMaker {
            run: run.to_string(),
            worker,
            seq: 0,
            rng: StdRng::seed_from_u64(worker as u64 * 7919 + 1),
            users: args.users.max(1),
            identify_pct: args.identify_pct,
            order_pct: args.order_pct,
            events: args.batch,
            tag_refs: args.ack_log.is_some(),
        }
    }

    /// The messageIds of the batch [`next`](Self::next) made last, comma-separated.
    fn last_refs(&self) -> String {
        let first = self.seq + 1 - self.events as u64;
        (first..=self.seq)
            .map(|seq| format!("{}-{}-{seq}", self.run, self.worker))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn next(&mut self) -> String {
        let ts = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let mut s = String::with_capacity(self.events * 560 + 128);
        s.push_str(r#"{"batch":["#);
        for i in 0..self.events {
            if i > 0 {
                s.push(',');
            }
            self.seq += 1;
            let user = self.rng.gen_range(0..self.users);
            let roll = self.rng.gen_range(0..100u32);
            let (run, worker, seq) = (&self.run, self.worker, self.seq);
            let common = format!(
                r#""messageId":"{run}-{worker}-{seq}","userId":"user-{user}","timestamp":"{ts}","context":{CONTEXT}"#
            );
            if roll < self.identify_pct {
                let _ = write!(
                    s,
                    r#"{{"type":"identify",{common},"traits":{{"email":"user-{user}@example.com","firstName":"Ann","lastName":"Lee","plan":"pro","logins":{seq},"signupDate":"2024-04-30T08:15:00Z"}}}}"#
                );
            } else if roll < self.identify_pct + self.order_pct {
                let qty = 1 + seq % 3;
                let total = 12.5 * qty as f64 + 15.0;
                let _ = write!(
                    s,
                    r#"{{"type":"track","event":"Order Completed",{common},"properties":{{"order_id":"o-{run}-{worker}-{seq}","total":{total},"currency":"USD","products":[{{"product_id":"p-1","sku":"SKU-1","name":"Mug","price":12.5,"quantity":{qty},"category":"Kitchen"}},{{"product_id":"p-2","sku":"SKU-2","name":"Tea","price":15,"quantity":1,"category":"Pantry"}}]}}}}"#
                );
            } else {
                let event = EVENTS[(seq % EVENTS.len() as u64) as usize];
                let tag = if self.tag_refs {
                    format!(r#""ref":"{run}-{worker}-{seq}","#)
                } else {
                    String::new()
                };
                let _ = write!(
                    s,
                    r#"{{"type":"track","event":"{event}",{common},"properties":{{{tag}"title":"Item {seq}","position":{p},"campaignId":"1234","category":"Demo"}}}}"#,
                    p = seq % 100
                );
            }
        }
        let _ = write!(s, r#"],"sentAt":"{ts}"}}"#);
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Driving

#[derive(Clone)]
struct Stats {
    latency_us: Histogram<u64>,
    ok: u64,
    statuses: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            ok: 0,
            statuses: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        self.ok += other.ok;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
    }

    fn record(&mut self, outcome: &Result<u16, String>, latency: Duration) {
        match outcome {
            Ok(200) => {
                self.ok += 1;
                let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
                self.latency_us.record(us).expect("within bounds");
            }
            Ok(code) => *self.statuses.entry(code.to_string()).or_default() += 1,
            Err(e) => *self.statuses.entry(e.clone()).or_default() += 1,
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: String) -> Result<u16, String> {
    send(
        client
            .post(url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Sends and reads the whole answer: the acknowledgement is complete only then.
async fn send(request: reqwest::RequestBuilder) -> Result<u16, String> {
    let resp = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_string()
        } else {
            "network error".to_string()
        }
    })?;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    Ok(status)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .expect("a reqwest client")
}

/// Closed loop: `connections` workers, each with its own HTTP connection, one request at a time.
async fn run_max(args: &DriveArgs, run: &str, start: Instant, end: Instant) -> Stats {
    let url = format!("{}/v1/batch", args.url.trim_end_matches('/'));
    let logging = args.ack_log.is_some();
    closed_loop(args, "batch", start, end, |worker| {
        let (url, key) = (url.clone(), args.write_key.clone());
        let mut maker = BatchMaker::new(args, run, worker);
        move |client: &reqwest::Client| {
            let body = maker.next();
            let refs = if logging {
                maker.last_refs()
            } else {
                String::new()
            };
            let request = client
                .post(&url)
                .basic_auth(&key, Some(""))
                .header("content-type", "application/json")
                .body(body);
            (request, refs)
        }
    })
    .await
}

/// Closed loop of Iterable system webhooks, one event per POST (DESIGN §6: ≥ 5,000/s).
async fn run_webhook(args: &DriveArgs, run: &str, start: Instant, end: Instant) -> Stats {
    const NAMES: [&str; 6] = [
        "emailSend",
        "emailOpen",
        "emailClick",
        "pushSend",
        "pushOpen",
        "smsSend",
    ];
    let url = format!(
        "{}/webhooks/iterable/{}",
        args.url.trim_end_matches('/'),
        args.webhook_connection
    );
    let auth = format!("Bearer {}", args.webhook_token);
    closed_loop(args, "webhook", start, end, |worker| {
        let (url, auth, run, users) = (
            url.clone(),
            auth.clone(),
            run.to_string(),
            args.users.max(1),
        );
        let mut rng = StdRng::seed_from_u64(worker as u64 + 17);
        let mut seq = 0u64;
        move |client: &reqwest::Client| {
            let n = seq;
            seq += 1;
            let seq = n;
            let user = rng.gen_range(0..users);
            let name = NAMES[(seq % NAMES.len() as u64) as usize];
            let body = format!(
                r#"{{"email":"user-{user}@example.com","eventName":"{name}","dataFields":{{"createdAt":"2026-11-25 10:00:00 +00:00","campaignId":{c},"templateId":93849,"messageId":"{run}-{worker}-{seq}","emailSubject":"Hello","ip":"162.245.22.184","userAgent":"Mozilla/5.0"}}}}"#,
                c = seq % 1000
            );
            let request = client
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(body);
            (request, format!("{run}-{worker}-{seq}"))
        }
    })
    .await
}

/// Closed loop: `--connections` workers, each with its own HTTP connection and one request in
/// flight; `worker(i)` gives worker `i` its request builder (and the request's refs, for
/// `--ack-log`).
async fn closed_loop<W>(
    args: &DriveArgs,
    kind: &'static str,
    start: Instant,
    end: Instant,
    mut worker: impl FnMut(usize) -> W,
) -> Stats
where
    W: FnMut(&reqwest::Client) -> (reqwest::RequestBuilder, String) + Send + 'static,
{
    let ack_log = args
        .ack_log
        .as_ref()
        .map(|path| Arc::new(AckLog::open(path).expect("the --ack-log file opens")));
    let pause = Duration::from_millis(args.pause_ms);
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let mut next = worker(i);
        let ack_log = ack_log.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut stats = Stats::new();
            loop {
                let (request, refs) = next(&client);
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = send(request).await;
                let done = Instant::now();
                if sent >= start && done <= end {
                    stats.record(&outcome, done - sent);
                }
                if let Some(log) = &ack_log {
                    log.write(kind, &outcome, done - sent, &refs);
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            stats
        }));
    }
    let mut total = Stats::new();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(&s);
        }
    }
    total
}

/// Open loop: one batch every 1/rate seconds at its scheduled time, however slow the answers.
async fn run_rate(args: &DriveArgs, run: &str, start: Instant, end: Instant) -> Stats {
    let url = format!("{}/v1/batch", args.url.trim_end_matches('/'));
    let per_sec = (args.rate as f64 / args.batch as f64).max(0.1);
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let client = client();
    let stats = Arc::new(Mutex::new(Stats::new()));
    // At most this many requests in flight; a batch that finds none free counts as "overloaded".
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let mut maker = BatchMaker::new(args, run, 10_000);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0u64.. {
        let due = t0 + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let body = maker.next();
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if due >= start {
                let mut s = stats.lock().expect("stats lock");
                *s.statuses.entry("overloaded".into()).or_default() += 1;
            }
            continue;
        };
        let (client, url, key, stats) = (
            client.clone(),
            url.clone(),
            args.write_key.clone(),
            stats.clone(),
        );
        handles.push(tokio::spawn(async move {
            let outcome = post(&client, &url, &key, body).await;
            let done = Instant::now();
            drop(permit);
            if due >= start && done <= end + Duration::from_secs(30) {
                stats
                    .lock()
                    .expect("stats lock")
                    .record(&outcome, done - due);
            }
        }));
        handles.retain(|h| !h.is_finished());
    }
    for h in handles {
        let _ = h.await;
    }
    let s = stats.lock().expect("stats lock").clone();
    s
}

async fn mock_items(http: &reqwest::Client, mock: &Option<String>) -> Option<u64> {
    let url = format!("{}/__stats", mock.as_ref()?.trim_end_matches('/'));
    let v: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
    v.get("items")?.as_u64()
}

async fn mock_stats_json(
    http: &reqwest::Client,
    mock: &Option<String>,
) -> Option<serde_json::Value> {
    let url = format!("{}/__stats", mock.as_ref()?.trim_end_matches('/'));
    http.get(url).send().await.ok()?.json().await.ok()
}

async fn event_states(db: &Option<sqlx::PgPool>) -> Option<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM event GROUP BY state ORDER BY state")
            .fetch_all(db.as_ref()?)
            .await
            .ok()?;
    Some(rows.into_iter().collect())
}

fn proc_status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Fields 3.. of `/proc/PID/stat` (after the command name, which may hold spaces).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU seconds of a process, all threads (USER_HZ is 100 on Linux); with
/// `children`, also the time of its children, exited (reaped) and running.
fn cpu_secs(pid: Option<u32>, children: bool) -> Option<f64> {
    let pid = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    let f = stat_fields(&pid)?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let mut ticks = num(11)? + num(12)?;
    if children {
        ticks += num(13)? + num(14)?;
        let own = pid.clone();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some(c) = stat_fields(&name) {
                if c.get(1) == Some(&own) {
                    let n = |i: usize| c.get(i).and_then(|v| v.parse::<f64>().ok());
                    ticks += n(11).unwrap_or(0.0) + n(12).unwrap_or(0.0);
                }
            }
        }
    }
    Some(ticks / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Row {
    mode: String,
    target: String,
    conns: String,
    secs: f64,
    stats: Stats,
    delivered: Option<u64>,
    states: Option<BTreeMap<String, i64>>,
    hwm_kb: Option<u64>,
    /// CPU cores used on average during the mode (warm-up included): gateway, load generator.
    gateway_cores: Option<f64>,
    postgres_cores: Option<f64>,
    loadgen_cores: Option<f64>,
    load_before: String,
    load_after: String,
    batch: usize,
}

impl Row {
    fn committed_per_sec(&self) -> f64 {
        (self.stats.ok * self.batch as u64) as f64 / self.secs
    }
    fn pct_ms(&self, q: f64) -> f64 {
        self.stats.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    fn errors(&self) -> String {
        if self.stats.statuses.is_empty() {
            "0".into()
        } else {
            self.stats
                .statuses
                .iter()
                .map(|(k, v)| format!("{v}× {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
    fn states(&self) -> String {
        match &self.states {
            None => "–".into(),
            Some(m) if m.is_empty() => "none".into(),
            Some(m) => m
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode, "target": self.target, "connections": self.conns, "seconds": self.secs,
            "batches_ok": self.stats.ok, "errors": self.stats.statuses,
            "events_per_sec_committed": self.committed_per_sec(),
            "p50_ms": self.pct_ms(0.50), "p90_ms": self.pct_ms(0.90), "p99_ms": self.pct_ms(0.99),
            "max_ms": self.stats.latency_us.max() as f64 / 1000.0,
            "events_per_sec_delivered": self.delivered.map(|d| d as f64 / self.secs),
            "event_states": self.states, "gateway_vmhwm_kb": self.hwm_kb,
            "gateway_cpu_cores": self.gateway_cores,
            "postgres_cpu_cores": self.postgres_cores, "loadgen_cpu_cores": self.loadgen_cores,
            "loadavg_before": self.load_before, "loadavg_after": self.load_after,
        })
    }
}

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0 && args.connections > 0 && args.duration > 0);
    let run = format!("lg{:x}", rand::random::<u32>());
    let http = reqwest::Client::new();
    let db = match &args.database_url {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?,
        ),
        None => None,
    };
    let mut rows = Vec::new();
    for mode in &args.modes {
        let load_before = loadavg();
        let cpu = || {
            (
                cpu_secs(args.gateway_pid, false),
                cpu_secs(args.postmaster_pid, true),
                cpu_secs(None, false),
            )
        };
        let (cpu0, t0) = (cpu(), Instant::now());
        let start = Instant::now() + Duration::from_secs(args.warmup);
        let end = start + Duration::from_secs(args.duration);
        // The mock's count at the start of the measurement.
        let before = {
            let http = http.clone();
            let mock = args.mock.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                mock_items(&http, &mock).await
            })
        };
        let after = {
            let http = http.clone();
            let mock = args.mock.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(end.into()).await;
                mock_items(&http, &mock).await
            })
        };
        eprintln!(
            "loadgen: {mode}: {}s warm-up + {}s measured ...",
            args.warmup, args.duration
        );
        let (stats, target, conns) = match mode.as_str() {
            "max" => (
                run_max(&args, &run, start, end).await,
                "max".to_string(),
                args.connections.to_string(),
            ),
            "rate" => (
                run_rate(&args, &run, start, end).await,
                format!("{} ev/s", args.rate),
                "open loop".to_string(),
            ),
            "webhook" => (
                run_webhook(&args, &run, start, end).await,
                "max (webhooks)".to_string(),
                args.connections.to_string(),
            ),
            other => anyhow::bail!("unknown mode {other:?}: use rate, max or webhook"),
        };
        let wall = t0.elapsed().as_secs_f64();
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall);
        let cpu1 = cpu();
        let gateway_cores = cores(cpu0.0, cpu1.0);
        let postgres_cores = cores(cpu0.1, cpu1.1);
        let loadgen_cores = cores(cpu0.2, cpu1.2);
        let delivered = match (before.await?, after.await?) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let row = Row {
            mode: mode.clone(),
            target,
            conns,
            secs: args.duration as f64,
            stats,
            delivered,
            states: event_states(&db).await,
            hwm_kb: proc_status_kb(args.gateway_pid, "VmHWM:"),
            gateway_cores,
            postgres_cores,
            loadgen_cores,
            load_before,
            load_after: loadavg(),
            batch: if mode == "webhook" { 1 } else { args.batch },
        };
        eprintln!(
            "loadgen: {mode}: {:.0} events/s committed, p99 {:.1} ms",
            row.committed_per_sec(),
            row.pct_ms(0.99)
        );
        if let Some(path) = &args.json_out {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{}", row.json())?;
        }
        rows.push(row);
    }
    print_table(&args, &rows);
    if let Some(stats) = mock_stats_json(&http, &args.mock).await {
        println!(
            "\nMock Iterable over the whole run (items: users, events or purchases received; \
             bad_api_key: requests refused 401 for a wrong Api-Key): `{stats}`"
        );
    }
    Ok(())
}

fn print_table(args: &DriveArgs, rows: &[Row]) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\n`POST /v1/batch`, {} events per batch ({}% identify, {}% Order Completed, the rest other tracks; {} userIds), {} cores; {}s measured after {}s warm-up per mode.\n",
        args.batch,
        args.identify_pct,
        args.order_pct,
        args.users,
        cores,
        args.duration,
        args.warmup
    );
    println!("| mode | target | connections | batches acked 200 | errors | events/s committed | p50 ms | p90 ms | p99 ms | max ms | events/s delivered | event states after | gateway peak RSS | CPU cores: gateway / postgres / loadgen | load avg before → after |");
    println!("|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|---|--:|--:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} / {} / {} | {} → {} |",
            r.mode,
            r.target,
            r.conns,
            r.stats.ok,
            r.errors(),
            r.committed_per_sec(),
            r.pct_ms(0.50),
            r.pct_ms(0.90),
            r.pct_ms(0.99),
            r.stats.latency_us.max() as f64 / 1000.0,
            r.delivered
                .map(|d| format!("{:.0}", d as f64 / r.secs))
                .unwrap_or_else(|| "–".into()),
            r.states(),
            r.hwm_kb
                .map(|k| format!("{:.0} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "–".into()),
            r.gateway_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "–".into()),
            r.postgres_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "–".into()),
            r.loadgen_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "–".into()),
            r.load_before,
            r.load_after
        );
    }
}
