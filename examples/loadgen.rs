//! Load generator for `gateway serve` (driven by `scripts/bench-load`; DESIGN §6, issue 12).
//!
//! ```text
//! loadgen mock  --port-file FILE [--port 0] [--api-key KEY]
//!     a fast mock of Iterable's API on 127.0.0.1: answers 200 with Iterable-shaped bodies
//!     ({"successCount": N, ...} for bulk endpoints) and counts requests and items per endpoint;
//!     GET /__stats returns the counts as JSON.
//! loadgen drive --url URL[,URL...] --write-key KEY [--modes rate,max] [--connections 16]
//!               [--duration 20] [--rate 5000] [--mock URL] [--database-url URL] [--gateway-pid PID]
//!     POST /v1/batch with 100-event batches (identify, track, Order Completed; unique messageIds;
//!     many userIds) and prints a Markdown table: committed events/s, acknowledgement latency,
//!     delivered events/s (from the mock's counts), event states (from the database) and the
//!     gateway's peak RSS (VmHWM).
//! loadgen storage --database-url URL [--drain-secs 120]
//!     waits until no event is pending, then prints the bytes per event of every table (heap,
//!     TOAST and indexes, partitions summed into their parent) as a multiple of the event's JSON.
//! loadgen report --json FILE
//!     the rows `drive` and `storage` appended to FILE as one report, with the gateway's figures
//!     as ratios of the baseline measured in the same run.
//! ```
//!
//! `scripts/chaos` adds `--ack-log FILE --pause-ms N` to `drive` (one line per answer, with the
//! messageIds it acknowledged or refused) and `--record FILE` to `mock` (one line per event
//! received), and compares them with the database.
//!
//! Modes: `max` keeps `--connections` requests in flight (closed loop, one HTTP connection per
//! worker) for `--duration` seconds; `ingest` is `max` run against a gateway that does not
//! dispatch (`delivery.workers = 0`, which `scripts/bench-load` arranges); `rate` sends `--rate`
//! events/s as an open loop (each batch at its scheduled time; latency is measured from that time,
//! so a stall counts in full); `soak` is `rate` with a report every `--every` seconds (RSS, window
//! p99, backlog, table sizes). `base-max` and `base-rate` are the baseline: the same batches from
//! the same generator, written by the same number of clients straight into PostgreSQL
//! (`--database-url`): one `INSERT … SELECT FROM unnest($1::text[])` per batch into a table with
//! one index (bigserial primary key + jsonb), each its own transaction, as the gateway's cluster
//! is configured (fsync on). The table is dropped after the mode.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
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
    /// Drive POST /v1/batch (or the baseline) and print a Markdown table of the results.
    Drive(Box<DriveArgs>),
    /// Bytes per event in the database once delivery is done.
    Storage(StorageArgs),
    /// One report from the JSON lines `drive` and `storage` wrote, with the baseline ratios.
    Report(ReportArgs),
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
    /// Milliseconds every answer waits, as a partner across the internet makes its callers wait
    /// (the default, none, measures the gateway alone).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

/// The event mix (shared by `drive` and `storage`, so that both see the same events).
#[derive(Args, Clone)]
struct Mix {
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
    /// How messageIds are spelled: `counter` (`{run}-{worker}-{seq}`, growing per client, as
    /// analytics-node's `node-next-<ms>-<uuid>` grow with time) or `uuid` (a UUID derived from
    /// the same, in no order, as analytics-python's uuid4s): the index entries messageIds make
    /// cost PostgreSQL more when they come in no order.
    #[arg(long, value_enum, default_value_t = MessageIds::Counter)]
    message_ids: MessageIds,
}

/// [`Mix::message_ids`].
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum MessageIds {
    Counter,
    Uuid,
}

#[derive(Parser, Clone)]
struct DriveArgs {
    /// The gateway's base URL; several, comma-separated, spread the load over several processes
    /// (worker or batch `i` goes to URL `i mod n`).
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// The connection's write key (sent as HTTP Basic user).
    #[arg(long)]
    write_key: String,
    /// Modes to run, in order: rate, max, ingest, soak, base-max, base-rate, webhook.
    #[arg(long, value_delimiter = ',', default_value = "rate,max")]
    modes: Vec<String>,
    /// Concurrent connections in `max`, `ingest`, `webhook` and `base-*` modes.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Measured seconds per mode.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Unmeasured seconds of load before each mode's measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Events per second in `rate`, `soak` and `base-rate` modes.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// `soak` mode: seconds per reported window.
    #[arg(long, default_value_t = 30)]
    every: u64,
    #[command(flatten)]
    mix: Mix,
    /// The mock Iterable's base URL (for delivered counts).
    #[arg(long)]
    mock: Option<String>,
    /// The gateway's database (for event states, and where the baseline writes).
    #[arg(long)]
    database_url: Option<String>,
    /// The gateway's process ids, comma-separated (for peak RSS and CPU time).
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// The gateway's PostgreSQL postmaster (for the CPU time of the server and its backends).
    #[arg(long)]
    postmaster_pid: Option<u32>,
    /// Recorded with each row: the gateway's `delivery.workers` (0: ingest only).
    #[arg(long)]
    gateway_workers: Option<u32>,
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

#[derive(Parser)]
struct StorageArgs {
    /// The gateway's database.
    #[arg(long)]
    database_url: String,
    /// Seconds to wait for the pending events to be delivered before measuring.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    #[command(flatten)]
    mix: Mix,
    /// Also append the result as one JSON object to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Parser)]
struct ReportArgs {
    /// The JSON lines written by `drive --json-out` and `storage --json-out`.
    #[arg(long)]
    json: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mock(args) => runtime.block_on(mock(args)),
        Command::Drive(args) => runtime.block_on(drive(*args)),
        Command::Storage(args) => runtime.block_on(storage(args)),
        Command::Report(args) => report(args),
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
    latency: Duration,
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
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
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
        latency: Duration::from_millis(args.latency_ms),
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
    message_ids: MessageIds,
}

impl BatchMaker {
    fn new(mix: &Mix, run: &str, worker: usize) -> BatchMaker {
        BatchMaker {
            run: run.to_string(),
            worker,
            seq: 0,
            rng: StdRng::seed_from_u64(worker as u64 * 7919 + 1),
            users: mix.users.max(1),
            identify_pct: mix.identify_pct,
            order_pct: mix.order_pct,
            events: mix.batch,
            tag_refs: false,
            message_ids: mix.message_ids,
        }
    }

    /// The messageId of event `seq` of this worker.
    fn message_id(&self, seq: u64) -> String {
        let counter = format!("{}-{}-{seq}", self.run, self.worker);
        match self.message_ids {
            MessageIds::Counter => counter,
            MessageIds::Uuid => {
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, counter.as_bytes()).to_string()
            }
        }
    }

    /// The messageIds of the batch [`next`](Self::next) made last, comma-separated.
    fn last_refs(&self) -> String {
        let first = self.seq + 1 - self.events as u64;
        (first..=self.seq)
            .map(|seq| self.message_id(seq))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The next batch as a `/v1/batch` body.
    fn next(&mut self) -> String {
        let (events, ts) = self.next_events();
        let mut s = String::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 64);
        s.push_str(r#"{"batch":["#);
        s.push_str(&events.join(","));
        let _ = write!(s, r#"],"sentAt":"{ts}"}}"#);
        s
    }

    /// The next batch as one JSON text per event (what the baseline writes), and its `sentAt`.
    fn next_events(&mut self) -> (Vec<String>, String) {
        let ts = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let mut events = Vec::with_capacity(self.events);
        for _ in 0..self.events {
            self.seq += 1;
            let user = self.rng.gen_range(0..self.users);
            let roll = self.rng.gen_range(0..100u32);
            let (run, worker, seq) = (&self.run, self.worker, self.seq);
            let id = self.message_id(seq);
            let common = format!(
                r#""messageId":"{id}","userId":"user-{user}","timestamp":"{ts}","context":{CONTEXT}"#
            );
            let event = if roll < self.identify_pct {
                format!(
                    r#"{{"type":"identify",{common},"traits":{{"email":"user-{user}@example.com","firstName":"Ann","lastName":"Lee","plan":"pro","logins":{seq},"signupDate":"2024-04-30T08:15:00Z"}}}}"#
                )
            } else if roll < self.identify_pct + self.order_pct {
                let qty = 1 + seq % 3;
                let total = 12.5 * qty as f64 + 15.0;
                format!(
                    r#"{{"type":"track","event":"Order Completed",{common},"properties":{{"order_id":"o-{run}-{worker}-{seq}","total":{total},"currency":"USD","products":[{{"product_id":"p-1","sku":"SKU-1","name":"Mug","price":12.5,"quantity":{qty},"category":"Kitchen"}},{{"product_id":"p-2","sku":"SKU-2","name":"Tea","price":15,"quantity":1,"category":"Pantry"}}]}}}}"#
                )
            } else {
                let name = EVENTS[(seq % EVENTS.len() as u64) as usize];
                let tag = if self.tag_refs {
                    format!(r#""ref":"{id}","#)
                } else {
                    String::new()
                };
                format!(
                    r#"{{"type":"track","event":"{name}",{common},"properties":{{{tag}"title":"Item {seq}","position":{p},"campaignId":"1234","category":"Demo"}}}}"#,
                    p = seq % 100
                )
            };
            events.push(event);
        }
        (events, ts)
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

    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One request (an HTTP POST or a baseline INSERT), built before it is awaited: its outcome is
/// 200 for success, another status, or an error text.
type Outcome = Pin<Box<dyn Future<Output = Result<u16, String>> + Send>>;

fn post(client: &reqwest::Client, url: &str, key: &str, body: String) -> Outcome {
    Box::pin(send(
        client
            .post(url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(body),
    ))
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

/// The baseline's table: one index (the bigserial primary key) and the event as jsonb.
const BASELINE_TABLE: &str =
    "CREATE TABLE loadgen_baseline (id bigserial PRIMARY KEY, payload jsonb NOT NULL)";

/// One baseline batch: all its events in one statement, one transaction, one commit (fsync).
fn insert_batch(pool: &sqlx::PgPool, events: Vec<String>) -> Outcome {
    let pool = pool.clone();
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO loadgen_baseline (payload) SELECT e::jsonb FROM unnest($1::text[]) AS e",
        )
        .bind(events)
        .execute(&pool)
        .await
        .map(|_| 200)
        .map_err(|e| format!("database error: {e}"))
    })
}

fn gateway_url(args: &DriveArgs, i: usize, path: &str) -> String {
    format!(
        "{}{path}",
        args.url[i % args.url.len()].trim_end_matches('/')
    )
}

/// Closed loop of Segment batches, one HTTP connection per worker, one request at a time.
async fn run_max(args: &DriveArgs, run: &str, start: Instant, end: Instant) -> Stats {
    let logging = args.ack_log.is_some();
    closed_loop(args, "batch", start, end, |worker| {
        let (url, key) = (
            gateway_url(args, worker, "/v1/batch"),
            args.write_key.clone(),
        );
        let mut maker = BatchMaker::new(&args.mix, run, worker);
        maker.tag_refs = logging;
        let client = client();
        move || {
            let request = post(&client, &url, &key, maker.next());
            let refs = if logging {
                maker.last_refs()
            } else {
                String::new()
            };
            (request, refs)
        }
    })
    .await
}

/// The baseline of `max`: the same batches, the same number of clients, straight into PostgreSQL.
async fn run_base_max(
    pool: &sqlx::PgPool,
    args: &DriveArgs,
    run: &str,
    start: Instant,
    end: Instant,
) -> Stats {
    closed_loop(args, "baseline", start, end, |worker| {
        let mut maker = BatchMaker::new(&args.mix, run, worker);
        let pool = pool.clone();
        move || (insert_batch(&pool, maker.next_events().0), String::new())
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
    let auth = format!("Bearer {}", args.webhook_token);
    closed_loop(args, "webhook", start, end, |worker| {
        let url = gateway_url(
            args,
            worker,
            &format!("/webhooks/iterable/{}", args.webhook_connection),
        );
        let (auth, run, users) = (auth.clone(), run.to_string(), args.mix.users.max(1));
        let mut rng = StdRng::seed_from_u64(worker as u64 + 17);
        let mut seq = 0u64;
        let client = client();
        move || {
            let n = seq;
            seq += 1;
            let seq = n;
            let user = rng.gen_range(0..users);
            let name = NAMES[(seq % NAMES.len() as u64) as usize];
            let body = format!(
                r#"{{"email":"user-{user}@example.com","eventName":"{name}","dataFields":{{"createdAt":"2026-11-25 10:00:00 +00:00","campaignId":{c},"templateId":93849,"messageId":"{run}-{worker}-{seq}","emailSubject":"Hello","ip":"162.245.22.184","userAgent":"Mozilla/5.0"}}}}"#,
                c = seq % 1000
            );
            let request: Outcome = Box::pin(send(
                client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body),
            ));
            (request, format!("{run}-{worker}-{seq}"))
        }
    })
    .await
}

/// Closed loop: `--connections` workers, each with one request in flight; `worker(i)` gives
/// worker `i` the function that builds its next request (and the request's refs, for
/// `--ack-log`).
async fn closed_loop<W>(
    args: &DriveArgs,
    kind: &'static str,
    start: Instant,
    end: Instant,
    mut worker: impl FnMut(usize) -> W,
) -> Stats
where
    W: FnMut() -> (Outcome, String) + Send + 'static,
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
            let mut stats = Stats::new();
            loop {
                let (request, refs) = next();
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = request.await;
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

/// Open loop: `next()` builds one batch's request every `batch/rate` seconds at its scheduled
/// time, however slow the answers; latency counts from that time. Each answer is also recorded
/// in `window` (the soak's current window) when given.
async fn open_loop(
    args: &DriveArgs,
    start: Instant,
    end: Instant,
    window: Option<Arc<Mutex<Stats>>>,
    mut next: impl FnMut(u64) -> Outcome,
) -> Stats {
    let per_sec = (args.rate as f64 / args.mix.batch as f64).max(0.1);
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let stats = Arc::new(Mutex::new(Stats::new()));
    // At most this many requests in flight; a batch that finds none free counts as "overloaded".
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0u64.. {
        let due = t0 + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let request = next(i);
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if due >= start {
                let mut s = stats.lock().expect("stats lock");
                *s.statuses.entry("overloaded".into()).or_default() += 1;
            }
            continue;
        };
        let (stats, window) = (stats.clone(), window.clone());
        handles.push(tokio::spawn(async move {
            let outcome = request.await;
            let done = Instant::now();
            drop(permit);
            if due >= start && done <= end + Duration::from_secs(30) {
                stats
                    .lock()
                    .expect("stats lock")
                    .record(&outcome, done - due);
                if let Some(w) = window {
                    w.lock().expect("window lock").record(&outcome, done - due);
                }
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

async fn run_rate(
    args: &DriveArgs,
    run: &str,
    start: Instant,
    end: Instant,
    window: Option<Arc<Mutex<Stats>>>,
) -> Stats {
    let urls: Vec<String> = (0..args.url.len())
        .map(|i| gateway_url(args, i, "/v1/batch"))
        .collect();
    let client = client();
    let mut maker = BatchMaker::new(&args.mix, run, 10_000);
    let key = args.write_key.clone();
    open_loop(args, start, end, window, |i| {
        post(&client, &urls[i as usize % urls.len()], &key, maker.next())
    })
    .await
}

/// The baseline of `rate`: the same batches at the same rate, straight into PostgreSQL.
async fn run_base_rate(
    pool: &sqlx::PgPool,
    args: &DriveArgs,
    run: &str,
    start: Instant,
    end: Instant,
) -> Stats {
    let mut maker = BatchMaker::new(&args.mix, run, 10_000);
    open_loop(args, start, end, None, |_| {
        insert_batch(pool, maker.next_events().0)
    })
    .await
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

/// Bytes on disk per table (heap, TOAST, indexes), partitions summed into their root.
async fn table_bytes(db: &sqlx::PgPool) -> Option<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text, \
                sum(pg_total_relation_size(c.oid))::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm') GROUP BY 1",
    )
    .fetch_all(db)
    .await
    .ok()?;
    Some(rows.into_iter().collect())
}

async fn pending_events(db: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'pending'")
        .fetch_one(db)
        .await
        .ok()
}

/// The sum over the gateway processes of a `/proc/PID/status` field in kB.
fn gateways_kb(pids: &[u32], field: &str) -> Option<u64> {
    pids.iter()
        .map(|p| proc_status_kb(Some(*p), field))
        .sum::<Option<u64>>()
}

fn gateways_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_secs(Some(*p), false)).sum()
}

fn append_json(path: &Option<PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{value}")?;
    }
    Ok(())
}

/// The soak's report every `every` seconds: the window's acknowledgements, what was delivered
/// in it, the backlog, the gateway's RSS and the table sizes, with the load average.
async fn soak_windows(
    args: DriveArgs,
    window: Arc<Mutex<Stats>>,
    db: Option<sqlx::PgPool>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let every = Duration::from_secs(args.every.max(1));
    let mut delivered_before = mock_items(&http, &args.mock).await;
    for k in 1u64.. {
        let at = start + every * k as u32;
        if at > end + Duration::from_millis(500) {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let w = std::mem::replace(&mut *window.lock().expect("window lock"), Stats::new());
        let delivered = mock_items(&http, &args.mock).await;
        let delivered_per_sec = match (delivered_before, delivered) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / every.as_secs_f64()),
            _ => None,
        };
        delivered_before = delivered;
        let (pending, tables) = match &db {
            Some(db) => (pending_events(db).await, table_bytes(db).await),
            None => (None, None),
        };
        let row = serde_json::json!({
            "mode": "soak-window", "t": every.as_secs() * k, "seconds": every.as_secs(),
            "batch": args.mix.batch, "batches_ok": w.ok, "errors": w.statuses,
            "events_per_sec_committed": (w.ok * args.mix.batch as u64) as f64 / every.as_secs_f64(),
            "p50_ms": w.pct_ms(0.50), "p99_ms": w.pct_ms(0.99),
            "max_ms": w.latency_us.max() as f64 / 1000.0,
            "events_per_sec_delivered": delivered_per_sec, "pending": pending,
            "gateway_vmrss_kb": gateways_kb(&args.gateway_pid, "VmRSS:"),
            "table_bytes": tables, "loadavg": loadavg(),
        });
        eprintln!("loadgen: soak: {}", soak_line(&row));
        append_json(&args.json_out, &row)?;
    }
    Ok(())
}

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.mix.batch > 0 && args.connections > 0 && args.duration > 0);
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
        let baseline = mode.starts_with("base-");
        anyhow::ensure!(
            baseline || !args.url.is_empty(),
            "mode {mode} needs --url (the gateway)"
        );
        // The baseline's own pool: one connection per client, opened before the clock starts.
        let base_pool = match (baseline, &args.database_url) {
            (false, _) => None,
            (true, None) => anyhow::bail!("mode {mode} needs --database-url"),
            (true, Some(url)) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(args.connections as u32)
                    .min_connections(args.connections as u32)
                    .connect(url)
                    .await?;
                sqlx::query("DROP TABLE IF EXISTS loadgen_baseline")
                    .execute(&pool)
                    .await?;
                sqlx::query(BASELINE_TABLE).execute(&pool).await?;
                Some(pool)
            }
        };
        let load_before = loadavg();
        let cpu = || {
            (
                gateways_cpu(&args.gateway_pid),
                cpu_secs(args.postmaster_pid, true),
                cpu_secs(None, false),
            )
        };
        let (cpu0, t0) = (cpu(), Instant::now());
        let start = Instant::now() + Duration::from_secs(args.warmup);
        let end = start + Duration::from_secs(args.duration);
        // The mock's count at the start and at the end of the measurement.
        let mock_at = |at: Instant| {
            let (http, mock) = (http.clone(), args.mock.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                mock_items(&http, &mock).await
            })
        };
        let (before, after) = (mock_at(start), mock_at(end));
        eprintln!(
            "loadgen: {mode}: {}s warm-up + {}s measured ...",
            args.warmup, args.duration
        );
        let rate = format!("{} ev/s", args.rate);
        let (stats, target, conns) = match (mode.as_str(), &base_pool) {
            ("max" | "ingest", _) => (
                run_max(&args, &run, start, end).await,
                "max".to_string(),
                args.connections.to_string(),
            ),
            ("rate", _) => (
                run_rate(&args, &run, start, end, None).await,
                rate,
                "open loop".to_string(),
            ),
            ("soak", _) => {
                let window = Arc::new(Mutex::new(Stats::new()));
                let reporter = tokio::spawn(soak_windows(
                    args.clone(),
                    window.clone(),
                    db.clone(),
                    start,
                    end,
                ));
                let stats = run_rate(&args, &run, start, end, Some(window)).await;
                reporter.await??;
                (stats, rate, "open loop".to_string())
            }
            ("webhook", _) => (
                run_webhook(&args, &run, start, end).await,
                "max (webhooks)".to_string(),
                args.connections.to_string(),
            ),
            ("base-max", Some(pool)) => (
                run_base_max(pool, &args, &run, start, end).await,
                "max".to_string(),
                args.connections.to_string(),
            ),
            ("base-rate", Some(pool)) => (
                run_base_rate(pool, &args, &run, start, end).await,
                rate,
                format!("open loop, {} clients", args.connections),
            ),
            (other, _) => anyhow::bail!(
                "unknown mode {other:?}: use rate, max, ingest, soak, webhook, base-max or base-rate"
            ),
        };
        let wall = t0.elapsed().as_secs_f64();
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall);
        let cpu1 = cpu();
        let delivered = match (before.await?, after.await?) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        if let Some(pool) = base_pool {
            sqlx::query("DROP TABLE loadgen_baseline")
                .execute(&pool)
                .await?;
            pool.close().await;
        }
        let batch = if mode == "webhook" { 1 } else { args.mix.batch };
        let secs = args.duration as f64;
        let row = serde_json::json!({
            "mode": mode, "target": target, "connections": conns, "seconds": secs,
            "warmup": args.warmup, "batch": batch, "users": args.mix.users,
            "identify_pct": args.mix.identify_pct, "order_pct": args.mix.order_pct,
            "message_ids": format!("{:?}", args.mix.message_ids).to_lowercase(),
            "gateway_processes": args.url.len(), "gateway_workers": args.gateway_workers,
            "baseline": baseline,
            "batches_ok": stats.ok, "errors": stats.statuses,
            "events_per_sec_committed": (stats.ok * batch as u64) as f64 / secs,
            "p50_ms": stats.pct_ms(0.50), "p90_ms": stats.pct_ms(0.90), "p99_ms": stats.pct_ms(0.99),
            "max_ms": stats.latency_us.max() as f64 / 1000.0,
            "events_per_sec_delivered": if baseline { None } else { delivered.map(|d| d as f64 / secs) },
            "event_states": if baseline { None } else { event_states(&db).await },
            "gateway_vmhwm_kb": if baseline { None } else { gateways_kb(&args.gateway_pid, "VmHWM:") },
            "gateway_cpu_cores": cores(cpu0.0, cpu1.0),
            "postgres_cpu_cores": cores(cpu0.1, cpu1.1), "loadgen_cpu_cores": cores(cpu0.2, cpu1.2),
            "loadavg_before": load_before, "loadavg_after": loadavg(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        });
        eprintln!(
            "loadgen: {mode}: {:.0} events/s committed, p99 {:.1} ms",
            num(&row, "events_per_sec_committed"),
            num(&row, "p99_ms")
        );
        append_json(&args.json_out, &row)?;
        rows.push(row);
    }
    print_rows(&rows);
    if let Some(stats) = mock_stats_json(&http, &args.mock).await {
        println!(
            "\nMock Iterable over the whole run (items: users, events or purchases received; \
             bad_api_key: requests refused 401 for a wrong Api-Key): `{stats}`"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Storage

async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await?;
    let t0 = Instant::now();
    let mut pending = pending_events(&db).await.unwrap_or(0);
    while pending > 0 && t0.elapsed() < Duration::from_secs(args.drain_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pending = pending_events(&db).await.unwrap_or(0);
    }
    let waited = t0.elapsed().as_secs_f64();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event")
        .fetch_one(&db)
        .await?;
    let tables = table_bytes(&db).await.unwrap_or_default();
    // Where the bytes are: the indexes apart, and the table's dead row versions (claims and
    // settles are UPDATEs, each writing a new version until vacuum prunes the old).
    let split: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text, \
                sum(pg_indexes_size(c.oid))::bigint, \
                sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0))::bigint, \
                sum(coalesce(s.n_live_tup, 0))::bigint, sum(coalesce(s.n_dead_tup, 0))::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm') GROUP BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap_or_default();
    let split: serde_json::Map<String, serde_json::Value> = split
        .into_iter()
        .map(|(t, idx, toast, live, dead)| {
            (
                t,
                serde_json::json!({"index_bytes": idx, "toast_bytes": toast, "live_rows": live, "dead_rows": dead}),
            )
        })
        .collect();
    // The event's JSON as a Segment library sends it: the same generator, compact.
    let mut maker = BatchMaker::new(&args.mix, "lgstorage0", 0);
    let (mut json_bytes, mut body_bytes, mut n) = (0usize, 0usize, 0usize);
    while n < 10_000 {
        let (batch, _) = maker.next_events();
        n += batch.len();
        json_bytes += batch.iter().map(String::len).sum::<usize>();
        body_bytes += maker.next().len();
    }
    let json_per_event = json_bytes as f64 / n as f64;
    let total: i64 = tables.values().sum();
    let per_event = total as f64 / events.max(1) as f64;
    let row = serde_json::json!({
        "mode": "storage", "events": events, "pending": pending, "drain_seconds": waited,
        "table_bytes": tables, "split": split, "total_bytes": total, "bytes_per_event": per_event,
        "json_bytes_per_event": json_per_event,
        "batch_body_bytes_per_event": body_bytes as f64 / n as f64,
        "multiple": per_event / json_per_event, "loadavg": loadavg(),
    });
    append_json(&args.json_out, &row)?;
    print_storage(&row);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Printing

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key).and_then(|x| x.as_f64()).unwrap_or(f64::NAN)
}

fn opt(v: &serde_json::Value, key: &str, f: impl Fn(f64) -> String) -> String {
    v.get(key)
        .and_then(|x| x.as_f64())
        .map(f)
        .unwrap_or_else(|| "–".into())
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or("?")
        .to_string()
}

fn mb(bytes: f64) -> String {
    format!("{:.1}", bytes / 1_048_576.0)
}

fn map_text(v: &serde_json::Value, key: &str) -> String {
    match v.get(key).and_then(|x| x.as_object()) {
        None => "–".into(),
        Some(m) if m.is_empty() => "none".into(),
        Some(m) => m
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A row's label: the baseline, or the gateway with what its processes do.
fn who(r: &serde_json::Value) -> String {
    if r.get("baseline").and_then(|b| b.as_bool()) == Some(true) {
        return "PostgreSQL baseline".into();
    }
    let n = r
        .get("gateway_processes")
        .and_then(|x| x.as_u64())
        .unwrap_or(1);
    let role = match r.get("gateway_workers").and_then(|x| x.as_u64()) {
        Some(0) => ", ingest only",
        Some(_) => ", dispatching",
        None => "",
    };
    if n > 1 {
        format!("gateway ×{n}{role}")
    } else {
        format!("gateway{role}")
    }
}

fn print_rows(rows: &[serde_json::Value]) {
    let Some(first) = rows.first() else { return };
    println!(
        "\n`POST /v1/batch`, {} events per batch ({}% identify, {}% Order Completed, the rest other tracks; {} userIds; messageIds {}), {} cores; {}s measured after {}s warm-up per mode. The baseline writes the same batches from the same generator straight into PostgreSQL (one `INSERT … SELECT FROM unnest` per batch into a table with one index, on the gateway's cluster, fsync on).\n",
        num(first, "batch").max(100.0),
        num(first, "identify_pct"),
        num(first, "order_pct"),
        num(first, "users"),
        first["message_ids"].as_str().unwrap_or("counter"),
        num(first, "cores"),
        num(first, "seconds"),
        num(first, "warmup"),
    );
    println!("| mode | writer | target | connections | batches ok | errors | events/s committed | p50 ms | p90 ms | p99 ms | max ms | events/s delivered | event states after | gateway peak RSS (sum over processes) | CPU cores: gateway(s) / postgres / loadgen | load avg before → after |");
    println!("|---|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|---|--:|--:|---|");
    for r in rows {
        let cores = |k: &str| opt(r, k, |c| format!("{c:.2}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} / {} / {} | {} → {} |",
            text(r, "mode"),
            who(r),
            text(r, "target"),
            text(r, "connections"),
            num(r, "batches_ok"),
            match map_text(r, "errors").as_str() {
                "none" => "0".to_string(),
                e => e.to_string(),
            },
            num(r, "events_per_sec_committed"),
            num(r, "p50_ms"),
            num(r, "p90_ms"),
            num(r, "p99_ms"),
            num(r, "max_ms"),
            opt(r, "events_per_sec_delivered", |d| format!("{d:.0}")),
            map_text(r, "event_states"),
            opt(r, "gateway_vmhwm_kb", |k| format!("{:.0} MB", k / 1024.0)),
            cores("gateway_cpu_cores"),
            cores("postgres_cpu_cores"),
            cores("loadgen_cpu_cores"),
            text(r, "loadavg_before"),
            text(r, "loadavg_after"),
        );
    }
}

fn table_mb(r: &serde_json::Value, table: &str) -> String {
    r.get("table_bytes")
        .and_then(|t| t.get(table))
        .and_then(|b| b.as_f64())
        .map(mb)
        .unwrap_or_else(|| "–".into())
}

fn all_tables_bytes(r: &serde_json::Value) -> Option<f64> {
    let t = r.get("table_bytes")?.as_object()?;
    Some(t.values().filter_map(|b| b.as_f64()).sum())
}

fn soak_line(r: &serde_json::Value) -> String {
    format!(
        "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
        num(r, "t"),
        text(r, "loadavg"),
        opt(r, "gateway_vmrss_kb", |k| format!("{:.0} MB", k / 1024.0)),
        num(r, "events_per_sec_committed"),
        num(r, "p50_ms"),
        num(r, "p99_ms"),
        opt(r, "events_per_sec_delivered", |d| format!("{d:.0}")),
        opt(r, "pending", |p| format!("{p:.0}")),
        table_mb(r, "event"),
        table_mb(r, "inbound_request"),
        table_mb(r, "delivery_attempt"),
        all_tables_bytes(r).map(mb).unwrap_or_else(|| "–".into()),
        match map_text(r, "errors").as_str() {
            "none" => "0".to_string(),
            e => e.to_string(),
        },
    )
}

fn print_soak(rows: &[&serde_json::Value]) {
    println!("\nSoak, one line per window (`soak` mode): acknowledgements of the window, events the mock received in it, events still pending at its end, table sizes (heap + TOAST + indexes, partitions summed).\n");
    println!("| t s | load avg | gateway RSS | events/s committed | p50 ms | p99 ms | events/s delivered | pending | event MB | inbound_request MB | delivery_attempt MB | all tables MB | errors |");
    println!("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in rows {
        println!("{}", soak_line(r));
    }
}

fn print_storage(r: &serde_json::Value) {
    let events = num(r, "events");
    println!(
        "\nStorage after delivery ({} events, {} still pending after waiting {:.0} s; load average {}): bytes on disk per event (heap + TOAST + indexes, partitions summed into their table).\n",
        events,
        num(r, "pending"),
        num(r, "drain_seconds"),
        text(r, "loadavg")
    );
    println!(
        "| table | MB | bytes per event | of which indexes | of which TOAST | live / dead rows |"
    );
    println!("|---|--:|--:|--:|--:|--:|");
    if let Some(t) = r.get("table_bytes").and_then(|t| t.as_object()) {
        let mut t: Vec<_> = t
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
            .collect();
        t.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, bytes) in t {
            let part = |k: &str| {
                r.get("split")
                    .and_then(|s| s.get(name))
                    .and_then(|s| s.get(k))
                    .and_then(|v| v.as_f64())
            };
            let per_event = |k: &str| {
                part(k)
                    .map(|b| format!("{:.0}", b / events.max(1.0)))
                    .unwrap_or_else(|| "–".into())
            };
            println!(
                "| {name} | {} | {:.0} | {} | {} | {} / {} |",
                mb(bytes),
                bytes / events.max(1.0),
                per_event("index_bytes"),
                per_event("toast_bytes"),
                part("live_rows").unwrap_or(f64::NAN),
                part("dead_rows").unwrap_or(f64::NAN),
            );
        }
    }
    println!(
        "| **all tables** | {} | **{:.0}** | | | |",
        mb(num(r, "total_bytes")),
        num(r, "bytes_per_event")
    );
    println!(
        "\nThe event's JSON (compact, as sent): {:.0} bytes (the `/v1/batch` body: {:.0} bytes per event). **Storage: {:.2} × the event's JSON** (target ≤ 2).",
        num(r, "json_bytes_per_event"),
        num(r, "batch_body_bytes_per_event"),
        num(r, "multiple")
    );
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let text_in = std::fs::read_to_string(&args.json)?;
    let all: Vec<serde_json::Value> = text_in
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let is = |r: &&serde_json::Value, m: &str| r.get("mode").and_then(|x| x.as_str()) == Some(m);
    let runs: Vec<serde_json::Value> = all
        .iter()
        .filter(|r| !is(r, "soak-window") && !is(r, "storage"))
        .cloned()
        .collect();
    print_rows(&runs);
    let windows: Vec<&serde_json::Value> = all.iter().filter(|r| is(r, "soak-window")).collect();
    if !windows.is_empty() {
        print_soak(&windows);
    }
    for r in all.iter().filter(|r| is(r, "storage")) {
        print_storage(r);
    }
    let base_max = runs.iter().rfind(|r| is(r, "base-max"));
    let base_rate = runs.iter().rfind(|r| is(r, "base-rate"));
    if base_max.is_none() && base_rate.is_none() {
        return Ok(());
    }
    println!("\nAgainst the baseline of the same run:\n");
    println!("| gateway run | gateway | baseline | ratio | load avg (gateway run) |");
    println!("|---|--:|--:|--:|---|");
    for r in &runs {
        let mode = text(r, "mode");
        match (mode.as_str(), base_max, base_rate) {
            ("max" | "ingest" | "webhook", Some(b), _) => println!(
                "| {mode}, {}: events/s committed | {:.0} | {:.0} | **{:.0} %** | {} → {} |",
                who(r),
                num(r, "events_per_sec_committed"),
                num(b, "events_per_sec_committed"),
                100.0 * num(r, "events_per_sec_committed") / num(b, "events_per_sec_committed"),
                text(r, "loadavg_before"),
                text(r, "loadavg_after"),
            ),
            ("rate" | "soak", _, Some(b)) => {
                println!(
                    "| {mode} {}, {}: ack p99 | {:.1} ms | {:.1} ms | **{:.1} ×** | {} → {} |",
                    text(r, "target"),
                    who(r),
                    num(r, "p99_ms"),
                    num(b, "p99_ms"),
                    num(r, "p99_ms") / num(b, "p99_ms"),
                    text(r, "loadavg_before"),
                    text(r, "loadavg_after"),
                );
                println!(
                    "| {mode} {}, {}: ack p50 | {:.1} ms | {:.1} ms | {:.1} × | |",
                    text(r, "target"),
                    who(r),
                    num(r, "p50_ms"),
                    num(b, "p50_ms"),
                    num(r, "p50_ms") / num(b, "p50_ms"),
                );
            }
            _ => {}
        }
    }
    Ok(())
}
