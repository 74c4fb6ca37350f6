//! What the ingest boundary adds per request, beside the parse it always does: a 100-event
//! batch body (about 60 KB, the write key in every item as analytics.js sends it) through
//!
//! * `parse`: `serde_json::from_slice` of the body (the baseline: ingest parses every body);
//! * `scrub`: the byte-level search for every configured secret (12 secrets), with the redaction;
//! * `checks`: the `\u0000` and escape searches over the body, and the id/identity limits of the
//!   100 events;
//! * `deep scrub`: the scrub of the parsed events' values, done only when the body holds a secret
//!   other than its `writeKey` members, or JSON escapes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::audit::redact::Scrubber;
use gateway::audit::{storable, EventState, NewEvent};
use serde_json::{json, Value};
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn body() -> Vec<u8> {
    let items: Vec<Value> = (0..100)
        .map(|i| {
            json!({"type": "track", "event": "Video Played", "userId": format!("u-{i}"), "messageId": format!("m-{i}"),
                "writeKey": "wk-0123456789abcdef", "timestamp": "2024-05-01T10:00:00.000Z",
                "context": {"ip": "8.8.8.8", "library": {"name": "analytics.js", "version": "2.11.1"},
                    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 9_1 like Mac OS X)", "locale": "en-US",
                    "traits": {"email": "ann@example.com"}},
                "properties": {"title": "Intro", "campaignId": "1234", "position": i, "tags": ["a", "b"],
                    "description": "A longer text property that an event might carry along with it."}})
        })
        .collect();
    serde_json::to_vec(&json!({"batch": items})).unwrap()
}

fn secrets() -> Vec<String> {
    (0..12)
        .map(|i| format!("secret-{i:02}-0123456789abcdef"))
        .chain(["wk-0123456789abcdef".into()])
        .collect()
}

fn boundary(c: &mut Criterion) {
    let body = body();
    let secrets = secrets();
    let scrubber = Scrubber::new(secrets.iter().map(String::as_str));
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    let events: Vec<NewEvent> = parsed["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| NewEvent {
            message_id: e["messageId"].as_str().unwrap().into(),
            call_type: Some("track".into()),
            user_key: format!("u:{}", e["userId"].as_str().unwrap()),
            payload: e.clone(),
            state: EventState::Pending,
            state_reason: None,
        })
        .collect();
    let mut g = c.benchmark_group("boundary");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
    });
    g.bench_function("scrub", |b| {
        b.iter(|| {
            let mut bytes = black_box(&body).clone();
            scrubber.scrub(&mut bytes);
            bytes
        })
    });
    g.bench_function("checks", |b| {
        b.iter(|| {
            let nul = storable::may_hold_nul(black_box(&body));
            let deep = scrubber.has_escapes(&body);
            (nul, deep, storable::check_events(black_box(&events), nul))
        })
    });
    g.bench_function("deep scrub", |b| {
        b.iter_batched_ref(
            || events.clone(),
            |events| {
                for e in events.iter_mut() {
                    scrubber.scrub_value(&mut e.payload);
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, boundary);
criterion_main!(benches);
