//! Differential test: 4,000 generated events (tools/differential/generate.py) through the
//! gateway's mapping and through Segment's published code (recorded in
//! tests/data/differential/oracle.jsonl). They must agree apart from DESIGN §2's differences:
//!
//! 1. trackEvent bodies lack `enable_batching` / `batch_size`;
//! 2. a date-like string Segment turns into `null` is sent unchanged;
//! 3. offset-less times are UTC (the oracle ran in UTC, so no difference shows).
//!
//! `createdAt` is "now" (the injected clock) when the event has no timestamp; numeric ids
//! beyond 2^53 keep their digits; a `__proto__` key stays data.

use crate::helpers::{request_json, run_batch, without_internal_batching_keys};
use gateway::mapping::{dates, js, Action, Destination, Outcome};
use gateway::segment::event::SegmentEvent;
use serde_json::{json, Map, Value};

const NOW_MS: i64 = 1_795_569_405_000;

pub fn lines(file: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/data/differential/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("recorded lines are JSON"))
        .collect()
}

/// Equal as JSON, with numbers compared as JavaScript doubles and difference 2 allowed.
fn agrees(ours: &Value, theirs: &Value, path: &str, diffs: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (Value::String(s), Value::Null) if dates::is_iso_candidate(s) => {} // difference 2
        // Numeric ids beyond 2^53 keep their digits here; JavaScript rounds them.
        (Value::String(a), Value::String(b))
            if a.len() > 15
                && a.bytes().all(|c| c.is_ascii_digit())
                && a.parse::<f64>().ok() == b.parse::<f64>().ok() => {}
        // A `__proto__` key is data here; in JavaScript it sets the prototype, whose keys
        // then show up in the parent (prototype pollution, not reproduced).
        (Value::Object(a), Value::Object(b)) if a.contains_key("__proto__") => {
            let mut flat = a.clone();
            if let Some(Value::Object(p)) = flat.shift_remove("__proto__") {
                for (k, v) in p {
                    flat.entry(k).or_insert(v);
                }
            }
            agrees(&Value::Object(flat), &Value::Object(b.clone()), path, diffs);
        }
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => agrees(x, y, &format!("{path}/{k}"), diffs),
                    (x, y) => diffs.push(format!("{path}/{k}: ours {x:?}, Segment's {y:?}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                agrees(x, y, &format!("{path}/{i}"), diffs);
            }
        }
        (a, b) if a == b => {}
        (a, b) => diffs.push(format!("{path}: ours {a}, Segment's {b}")),
    }
}

fn timestamp_missing(event: &Value) -> bool {
    matches!(event.get("timestamp"), None | Some(Value::Null)) || event["timestamp"] == json!("")
}

/// Segment's requests with difference 1 applied, and `createdAt` replaced by ours where the
/// oracle used its own clock.
fn expected_requests(out: &Value, action: Action, events: &[&Value]) -> Vec<Value> {
    let mut reqs: Vec<Value> = out
        .get("requests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &mut reqs {
        without_internal_batching_keys(action, &mut r["body"]);
        let now = json!(NOW_MS / 1000);
        if let Some(Value::Array(evs)) = r["body"].get_mut("events") {
            for (e, src) in evs.iter_mut().zip(events) {
                if timestamp_missing(src) {
                    e["createdAt"] = now.clone();
                }
            }
        } else if events.first().is_some_and(|e| timestamp_missing(e))
            && r["body"].get("createdAt").is_some()
        {
            r["body"]["createdAt"] = now;
        }
        if let Value::Object(m) = r {
            m.shift_remove("headers");
        }
    }
    reqs
}

/// Counts of what a comparison covered.
#[derive(Default)]
pub struct Tally {
    pub requests: usize,
    pub errors: usize,
    pub byte_identical: usize,
}

/// Compares one oracle input line with the oracle's output; returns the differences.
/// `route_by_presets`: map with the connection's default subscriptions and check that they
/// pick the line's action (else the line's action runs with the line's mapping).
pub fn compare_case(
    case: &Value,
    out: &Value,
    route_by_presets: bool,
    tally: &mut Tally,
) -> Vec<String> {
    let action = Action::parse(case["action"].as_str().unwrap_or("")).expect("known action");
    let mut diffs = Vec::new();
    let d = if route_by_presets {
        let mut settings: Map<String, Value> =
            case["settings"].as_object().cloned().unwrap_or_default();
        settings.insert("pageCalls".into(), json!(false));
        Destination::from_settings(&Value::Object(settings)).expect("settings compile")
    } else {
        let mapping = effective_mapping(case, action);
        crate::helpers::destination(
            &case["settings"],
            action.name(),
            mapping.as_ref(),
            case["destination"].as_str(),
        )
    };
    let (ours, events): (Vec<Value>, Vec<&Value>) = if let Some(Value::Array(events)) =
        case.get("events")
    {
        // Batch: the subscription for the action, events validated in batch mode.
        let sub = d
            .subscriptions
            .iter()
            .find(|s| s.action == action)
            .expect("subscription")
            .clone();
        let single = Destination {
            subscriptions: vec![sub],
            ..d.clone()
        };
        let (requests, errors) = run_batch(&single, events, NOW_MS);
        let statuses: Vec<Value> = (0..events.len())
            .map(|i| match errors.iter().find(|(j, _)| *j == i) {
                Some((_, e)) => json!({"status": 400, "errormessage": e.message}),
                None => json!({"status": 200}),
            })
            .collect();
        // A non-2xx reply fails the whole batch in Segment: the dispatcher's business, not
        // the mapping's.
        let replied_ok = case["reply"]["status"].as_u64().is_none_or(|s| s < 300);
        if let (true, Some(ms)) = (replied_ok, out["multistatus"].as_array()) {
            let theirs: Vec<Value> = ms
                .iter()
                .map(|s| match s["status"].as_u64() {
                    Some(400) => json!({"status": 400, "errormessage": s["errormessage"]}),
                    _ => json!({"status": 200}),
                })
                .collect();
            agrees(&json!(statuses), &json!(theirs), "multistatus", &mut diffs);
        }
        // The bulk body carries only the events that passed validation.
        let sent = events
            .iter()
            .enumerate()
            .filter(|(i, _)| !errors.iter().any(|(j, _)| j == i))
            .map(|(_, e)| e)
            .collect();
        (
            requests.iter().map(|r| request_json(r, &single)).collect(),
            sent,
        )
    } else {
        let event = SegmentEvent::from_value(case["event"].clone(), None).expect("events parse");
        let outcomes = d.plan(&event, NOW_MS);
        match outcomes.as_slice() {
            [Outcome::Requests {
                action: a,
                requests,
            }] => {
                if *a != action {
                    diffs.push(format!(
                        "routed to {a:?}, Segment's presets route to {action:?}"
                    ));
                }
                (
                    requests.iter().map(|r| request_json(r, &d)).collect(),
                    vec![&case["event"]],
                )
            }
            [Outcome::Error { error, .. }] => {
                tally.errors += 1;
                if out.get("error").and_then(Value::as_str) != Some(error.message.as_str()) {
                    diffs.push(format!(
                        "ours: error {:?}; Segment's: {}",
                        error.message,
                        js::to_json_string(out)
                    ));
                }
                return diffs;
            }
            other => {
                diffs.push(format!("unexpected outcome {other:?}"));
                return diffs;
            }
        }
    };
    let theirs = expected_requests(out, action, &events);
    // Difference 4: `newEmail` also sends /api/users/updateEmail (the oracle's npm release
    // strips the field); the vectors check that request against the repository's HEAD.
    let ours: Vec<Value> = if action == Action::UpdateUser && ours.len() == theirs.len() + 1 {
        ours.into_iter()
            .filter(|r| !r["url"].as_str().unwrap_or("").ends_with("/updateEmail"))
            .collect()
    } else {
        ours
    };
    if ours.len() != theirs.len() {
        diffs.push(format!(
            "{} requests, Segment sends {}: {}",
            ours.len(),
            theirs.len(),
            js::to_json_string(out)
        ));
    } else {
        tally.requests += ours.len();
        for (o, t) in ours.iter().zip(&theirs) {
            agrees(o, t, "", &mut diffs);
            if js::to_json_string(o) == js::to_json_string(t) {
                tally.byte_identical += 1;
            }
        }
    }
    diffs
}

/// The mapping an oracle line asks for: its own, over the defaults when `useDefaultMappings`.
fn effective_mapping(case: &Value, action: Action) -> Option<Value> {
    let flavor = match case["destination"].as_str() {
        Some("iterable-lists") => gateway::mapping::ListsFlavor::Lists,
        _ => gateway::mapping::ListsFlavor::Audiences,
    };
    match case.get("mapping") {
        Some(Value::Object(m)) => {
            if case["useDefaultMappings"] == json!(true) {
                let mut base = gateway::mapping::default_mapping(action, flavor).clone();
                for (k, v) in m {
                    base[k] = v.clone();
                }
                Some(base)
            } else {
                Some(Value::Object(m.clone()))
            }
        }
        _ => None,
    }
}

#[test]
fn generated_events_map_as_segments_code_maps_them() {
    let cases = lines("cases.jsonl");
    let oracle = lines("oracle.jsonl");
    assert_eq!(cases.len(), oracle.len());
    assert!(cases.len() >= 4000);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (case, out) in cases.iter().zip(&oracle) {
        let diffs = compare_case(case, out, true, &mut tally);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n    {}", case["name"], diffs.join("\n    ")));
        }
    }
    eprintln!(
        "differential: {} cases, {} requests and {} errors compared, {} requests byte-identical",
        cases.len(),
        tally.requests,
        tally.errors,
        tally.byte_identical
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
