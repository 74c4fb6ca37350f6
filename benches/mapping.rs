//! The mapping core (DESIGN §6: at least 300,000 events/s on one core with the default
//! presets). Three measurements over the same realistic mix of identify, track, Cart Updated
//! and Order Completed events:
//!
//! * `plan`: a parsed event → planned requests (the dispatcher's work per event);
//! * `plan+serialize`: plus writing the request bodies as JSON;
//! * `map_line`: `gateway map`'s whole per-line work: parse the line, map, render the output.
//!
//! And the dispatcher's bulk building (`delivery::iterable::bulk::build`): 1,000 planned items
//! (identifies and tracks) into bulkUpdate and trackBulk bodies, serialised.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::cli::map::Mapper;
use gateway::delivery::iterable::bulk::{build, plan_event, BulkItem, Part};
use gateway::mapping::{js, Destination, Outcome};
use gateway::segment::event::SegmentEvent;
use serde_json::{json, Map, Value};
use std::hint::black_box;

// The same allocator as the `gateway` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_714_557_600_000;

pub fn sample_events() -> Vec<Value> {
    let context = json!({"ip": "8.8.8.8", "library": {"name": "analytics.js", "version": "2.11.1"},
        "traits": {"email": "ann@example.com", "phone": "+14158675309"},
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 9_1 like Mac OS X)", "locale": "en-US"});
    vec![
        json!({"type": "identify", "userId": "u-1", "messageId": "m-1", "timestamp": "2024-05-01T10:00:00.000Z",
            "context": context, "traits": {"email": "ann@example.com", "phone": "+14158675309", "firstName": "Ann",
            "lastName": "Lee", "plan": "pro", "signupDate": "2024-04-30T08:15:00Z", "birthday": "1990-05-06",
            "address": {"city": "Lyon", "country": "FR"}}}),
        json!({"type": "track", "event": "Video Played", "userId": "u-1", "messageId": "m-2",
            "timestamp": "2024-05-01T10:00:00.000Z", "context": context,
            "properties": {"title": "Intro", "campaignId": "1234", "templateId": 5678, "position": 12,
                "watchedAt": "2024-05-01T09:59:00+02:00", "tags": ["a", "b"]}}),
        json!({"type": "track", "event": "Cart Updated", "anonymousId": "anon-1", "messageId": "m-3",
            "timestamp": "2024-05-01T10:00:00.000Z", "context": context,
            "properties": {"email": "guest@example.com", "products": [
                {"product_id": "p-1", "name": "Mug", "price": "12.50", "quantity": "2", "description": "Blue", "category": "Kitchen"},
                {"product_id": "p-2", "name": "Tea", "price": 15, "quantity": 1}]}}),
        json!({"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "m-4",
            "timestamp": "2024-05-01T10:00:00.000Z", "context": context,
            "properties": {"order_id": "o-9", "total": 27.5, "revenue": 25, "products": [
                {"product_id": "p-1", "sku": "SKU1", "name": "Mug", "price": 12.5, "quantity": 1, "category": "Kitchen",
                 "url": "https://example.com/p/1", "image_url": "https://example.com/p/1.jpg"},
                {"product_id": "p-2", "name": "Tea", "price": 15, "quantity": 1}]}}),
    ]
}

fn bench(c: &mut Criterion) {
    let dest = Destination::default();
    let raw = sample_events();
    let events: Vec<SegmentEvent> = raw
        .iter()
        .map(|v| SegmentEvent::from_value(v.clone(), None).unwrap())
        .collect();
    let lines: Vec<String> = raw.iter().map(|v| v.to_string()).collect();

    let mut g = c.benchmark_group("mapping");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("plan", |b| {
        b.iter(|| {
            for e in &events {
                black_box(dest.plan(black_box(e), NOW));
            }
        })
    });
    g.bench_function("plan+serialize", |b| {
        b.iter(|| {
            for e in &events {
                for o in dest.plan(black_box(e), NOW) {
                    if let Outcome::Requests { requests, .. } = o {
                        for r in requests {
                            black_box(js::to_json_string(&r.body));
                        }
                    }
                }
            }
        })
    });
    let mut mapper = Mapper::new(Map::new());
    g.bench_function("map_line", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(js::to_json_string(&mapper.map_line(black_box(l), NOW)));
            }
        })
    });
    g.finish();
}

fn bulk(c: &mut Criterion) {
    let dest = Destination::from_settings(&json!({"apiKey": "k"})).unwrap();
    let raw = sample_events();
    let items: Vec<BulkItem> = (0..1000)
        .flat_map(|i| {
            let e = SegmentEvent::from_value(raw[i % 2].clone(), None).unwrap();
            plan_event(&dest, &e, NOW)
                .parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::Bulk(b) => Some(b),
                    Part::Single(_) => None,
                })
        })
        .collect();
    assert_eq!(items.len(), 1000, "every identify and track is a bulk item");
    let refs: Vec<(usize, &BulkItem, bool)> = items
        .iter()
        .enumerate()
        .map(|(i, b)| (i, b, false))
        .collect();
    let mut g = c.benchmark_group("delivery");
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function("bulk build", |b| {
        b.iter(|| black_box(build(&dest, black_box(&refs), NOW)))
    });
    g.finish();
}

criterion_group!(benches, bench, bulk);
criterion_main!(benches);
