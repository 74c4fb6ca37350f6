//! `gateway map`: the dry run of the mapping layer (DESIGN §1). No database, no network.
//!
//! Each input line is a Segment event, or `{"event": {...}, "settings": {...}}`. Each output
//! line is what would be sent: `{"action", "requests"}`, `{"action", "error"}` or
//! `{"action": null, "skipped"}`. Secrets print as `"<redacted>"`.

use super::read_json_file;
use crate::delivery::iterable::bulk::{self, BulkItem, Part};
use crate::iterable::api::Hosts;
use crate::mapping::{js, ActionError, Destination, Outcome, PlannedRequest};
use crate::segment::event::SegmentEvent;
use clap::Args;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct MapArgs {
    /// Settings applied to every line (a line's own "settings" override them key by key).
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Map all lines as one batch and print the bulk requests.
    #[arg(long)]
    pub batch: bool,
    /// What the input lines are: Segment events (default) or Iterable webhook bodies (then the
    /// output is the Segment batch each becomes; settings: segmentRegion, eventNames,
    /// journeyEventName).
    #[arg(long, value_parser = ["segment", "iterable"], default_value = "segment")]
    pub from: String,
    /// "Now" for createdAt defaults: RFC 3339 or Unix milliseconds (default: the clock).
    #[arg(long)]
    pub now: Option<String>,
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let defaults = match &args.settings {
        Some(p) => match read_json_file(p)? {
            Value::Object(m) => m,
            _ => anyhow::bail!("{} must hold a JSON object of settings", p.display()),
        },
        None => Map::new(),
    };
    let now_ms = parse_now(args.now.as_deref())?;
    if args.from == "iterable" {
        return run_from_iterable(defaults, now_ms);
    }
    let mut mapper = Mapper::new(defaults);
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.batch {
        let lines: Vec<String> = stdin.lines().collect::<Result<_, _>>()?;
        for line in mapper.map_batch(&lines, now_ms) {
            out.write_all(js::to_json_string(&line).as_bytes())?;
            out.write_all(b"\n")?;
        }
    } else {
        for line in stdin.lines() {
            let line = line?;
            out.write_all(js::to_json_string(&mapper.map_line(&line, now_ms)).as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `--from iterable`: each line is an Iterable webhook body; each output line is the Segment
/// request it becomes (`POST {region}/v1/batch`). Settings: `segmentRegion` (`us`/`eu`),
/// `segmentWriteKey` (only redacted), `eventNames` (overrides of the event-name table),
/// `journeyEventName` (the event name of Journey webhooks; `""` refuses them).
fn run_from_iterable(settings: Map<String, Value>, now_ms: i64) -> anyhow::Result<ExitCode> {
    use crate::mapping::reverse::{split_body, to_segment_track, Context, EventNames};
    let names = match settings.get("eventNames") {
        Some(Value::Object(o)) => EventNames::with_overrides(o),
        _ => EventNames::with_overrides(&Map::new()),
    }
    .with_journey_name(settings.get("journeyEventName").and_then(Value::as_str));
    let host = match settings.get("segmentRegion").and_then(Value::as_str) {
        Some("eu") => "https://events.eu1.segmentapis.com",
        _ => "https://api.segment.io",
    };
    let received_at = chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ctx = Context {
        names: &names,
        received_at: &received_at,
    };
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let line = line?;
        let answer = match split_body(line.as_bytes()) {
            Err(e) => error_line("INVALID_JSON", format!("the line is not JSON: {e}")),
            Ok(items) => {
                let tracks: Result<Vec<Value>, _> = items
                    .iter()
                    .map(|(raw, v)| to_segment_track(raw, v, &ctx))
                    .collect();
                match tracks {
                    Err(e) => error_line("INVALID_WEBHOOK", e.to_string()),
                    Ok(batch) => json!({"action": "track", "requests": [{
                        "method": "POST",
                        "url": format!("{host}/v1/batch"),
                        "headers": {"Authorization": "<redacted>", "Content-Type": "application/json"},
                        "body": {"batch": batch},
                    }]}),
                }
            }
        };
        out.write_all(js::to_json_string(&answer).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn parse_now(now: Option<&str>) -> anyhow::Result<i64> {
    match now {
        None => Ok(chrono::Utc::now().timestamp_millis()),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|d| d.timestamp_millis())
            })
            .ok_or_else(|| {
                anyhow::anyhow!("--now {s:?} is neither RFC 3339 nor Unix milliseconds")
            }),
    }
}

/// Compiles each distinct settings object once and maps lines with it.
pub struct Mapper {
    defaults: Map<String, Value>,
    hosts: Hosts,
    compiled: HashMap<String, Result<(Destination, bool), String>>,
}

/// One parsed input line.
struct Line {
    event: SegmentEvent,
    settings_key: String,
}

impl Mapper {
    pub fn new(defaults: Map<String, Value>) -> Mapper {
        Mapper {
            defaults,
            hosts: Hosts::default(),
            compiled: HashMap::new(),
        }
    }

    /// Maps one input line to its output line.
    pub fn map_line(&mut self, line: &str, now_ms: i64) -> Value {
        let parsed = match self.parse(line) {
            Ok(p) => p,
            Err(out) => return out,
        };
        let (dest, has_key) = match &self.compiled[&parsed.settings_key] {
            Ok((d, k)) => (d, *k),
            Err(_) => unreachable!("parse() rejects lines whose settings do not compile"),
        };
        let outcomes = dest.plan(&parsed.event, now_ms);
        let render = |o: &Outcome| render_outcome(o, dest, &self.hosts, has_key);
        match outcomes.as_slice() {
            [one] => render(one),
            many => json!({ "actions": many.iter().map(render).collect::<Vec<_>>() }),
        }
    }

    fn parse(&mut self, line: &str) -> Result<Line, Value> {
        if line.trim().is_empty() {
            return Err(json!({"action": null, "skipped": "empty line"}));
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| error_line("INVALID_JSON", format!("the line is not JSON: {e}")))?;
        let (event, line_settings) = match value {
            Value::Object(mut m) if m.get("event").is_some_and(Value::is_object) => {
                let event = m.remove("event").unwrap_or(Value::Null);
                let settings = match m.remove("settings") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(s)) => s,
                    Some(_) => {
                        return Err(error_line(
                            "INVALID_SETTINGS",
                            "\"settings\" must be an object".into(),
                        ))
                    }
                };
                (event, settings)
            }
            other => (other, Map::new()),
        };
        let mut settings = self.defaults.clone();
        settings.extend(line_settings);
        let key = js::to_json_string(&Value::Object(settings.clone()));
        let compiled = self.compiled.entry(key.clone()).or_insert_with(|| {
            let has_key = settings.get("apiKey").is_some_and(js::truthy);
            Destination::from_settings(&Value::Object(settings))
                .map(|d| (d, has_key))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = compiled {
            return Err(error_line("INVALID_SETTINGS", e.clone()));
        }
        let event = SegmentEvent::from_value(event, None)
            .map_err(|e| error_line("INVALID_EVENT", e.to_string()))?;
        Ok(Line {
            event,
            settings_key: key,
        })
    }

    /// `--batch`: the lines as one batch of the dispatcher, built by the dispatcher's own bulk
    /// builder (`delivery::iterable::bulk`), so that what prints is what `serve` sends. First
    /// the per-line results of parts that go one by one, and the refusals; then one line per
    /// bulk request with the input lines (1-based) it carries.
    pub fn map_batch(&mut self, lines: &[String], now_ms: i64) -> Vec<Value> {
        let mut out = Vec::new();
        // Per settings (in order of first appearance): the bulk items, keyed by line number.
        let mut batches: Vec<(String, Vec<(usize, BulkItem)>)> = Vec::new();
        for (i, raw) in lines.iter().enumerate() {
            let n = i + 1;
            let parsed = match self.parse(raw) {
                Ok(p) => p,
                Err(mut e) => {
                    e["line"] = json!(n);
                    out.push(e);
                    continue;
                }
            };
            let Ok((dest, has_key)) = &self.compiled[&parsed.settings_key] else {
                continue;
            };
            let plan = bulk::plan_event(dest, &parsed.event, now_ms);
            for (action, error) in &plan.errors {
                out.push(json!({"line": n, "action": action.name(), "error": error_json(error)}));
            }
            let mut singles = Vec::new();
            for part in plan.parts {
                match part {
                    Part::Single(r) => singles.push(r),
                    Part::Bulk(item) => {
                        match batches.iter_mut().find(|(k, _)| *k == parsed.settings_key) {
                            Some((_, items)) => items.push((n, item)),
                            None => batches.push((parsed.settings_key.clone(), vec![(n, item)])),
                        }
                    }
                }
            }
            if !singles.is_empty() {
                out.push(json!({
                    "line": n,
                    "action": plan.action,
                    "requests": render_requests(&singles, dest, &self.hosts, *has_key),
                }));
            } else if plan.errors.is_empty()
                && !plan.skipped.is_empty()
                && !plan_has_bulk(&batches, n)
            {
                out.push(json!({"line": n, "action": null, "skipped": plan.skipped.join("; ")}));
            }
        }
        for (settings_key, items) in batches {
            let Ok((dest, has_key)) = &self.compiled[&settings_key] else {
                continue;
            };
            let keyed: Vec<(usize, &BulkItem, bool)> =
                items.iter().map(|(n, item)| (*n, item, false)).collect();
            let built = bulk::build(dest, &keyed, now_ms);
            for (n, action, error) in &built.errors {
                out.push(json!({"line": n, "action": action.name(), "error": error_json(error)}));
            }
            for b in built.requests {
                let action = items
                    .iter()
                    .find(|(n, _)| b.members.first() == Some(n))
                    .map(|(_, item)| item.action.name());
                let mut lines = b.members.clone();
                lines.dedup();
                out.push(json!({
                    "action": action,
                    "lines": lines,
                    "requests": render_requests(std::slice::from_ref(&b.request), dest, &self.hosts, *has_key),
                }));
            }
        }
        out
    }
}

/// Whether line `n` has a bulk item (then its skips, of other subscriptions, do not print).
fn plan_has_bulk(batches: &[(String, Vec<(usize, BulkItem)>)], n: usize) -> bool {
    batches
        .iter()
        .any(|(_, items)| items.iter().any(|(m, _)| *m == n))
}

fn error_line(code: &str, message: String) -> Value {
    json!({"action": null, "error": {"code": code, "message": message}})
}

fn error_json(e: &ActionError) -> Value {
    json!({"code": e.code, "message": e.message})
}

fn render_outcome(o: &Outcome, dest: &Destination, hosts: &Hosts, has_key: bool) -> Value {
    match o {
        Outcome::Requests { action, requests } => json!({
            "action": action.name(),
            "requests": render_requests(requests, dest, hosts, has_key),
        }),
        Outcome::Error { action, error } => {
            json!({"action": action.name(), "error": error_json(error)})
        }
        Outcome::Skipped { reason } => json!({"action": null, "skipped": reason}),
    }
}

/// Requests as DESIGN §1 prints them. Segment sends `Api-Key` only when a key is configured.
pub fn render_requests(
    requests: &[PlannedRequest],
    dest: &Destination,
    hosts: &Hosts,
    has_key: bool,
) -> Value {
    Value::Array(
        requests
            .iter()
            .map(|r| {
                let mut headers = Map::new();
                if has_key {
                    headers.insert("Api-Key".into(), json!("<redacted>"));
                }
                let base = hosts.base(dest.data_center);
                let url = format!("{base}{}", r.endpoint.request_path(&r.body));
                // A user deletion by path sends no body: its user is in the URL.
                let mut request = if r.endpoint.sends_body() {
                    headers.insert("Content-Type".into(), json!("application/json"));
                    json!({"method": "POST", "url": url, "headers": headers, "body": r.body})
                } else {
                    json!({"method": r.endpoint.method(), "url": url, "headers": headers})
                };
                // Token registrations: the key the dispatcher sends once per window by.
                if let Some(once) = dest.once_key(r) {
                    request["sendOnce"] =
                        json!({"key": once.key, "withinSeconds": once.window_secs});
                }
                request
            })
            .collect(),
    )
}
