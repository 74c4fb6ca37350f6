//! Shared test helpers: building a destination for one action and running Segment's pipeline.

use gateway::delivery::iterable::bulk::{self, BulkItem};
use gateway::iterable::api::Hosts;
use gateway::mapping::{Action, ActionError, Destination, Mode, PlannedRequest};
use serde_json::{json, Map, Value};

/// A destination with one subscription that matches every event.
pub fn destination(
    settings: &Value,
    action: &str,
    mapping: Option<&Value>,
    lists: Option<&str>,
) -> Destination {
    let mut s: Map<String, Value> = settings.as_object().cloned().unwrap_or_default();
    if let Some(flavor) = lists {
        s.insert("listsDestination".into(), json!(flavor));
    }
    let mut sub = json!({"name": "test", "trigger": "type != \"\"", "action": action});
    if let Some(m) = mapping {
        sub["mapping"] = m.clone();
    }
    s.insert("subscriptions".into(), json!([sub]));
    Destination::from_settings(&Value::Object(s)).expect("test settings compile")
}

/// A request as `{method, url, body}` for comparison with the reference.
pub fn request_json(r: &PlannedRequest, d: &Destination) -> Value {
    json!({
        "method": "POST",
        "url": format!("{}{}", Hosts::default().base(d.data_center), r.endpoint.path()),
        "body": r.body,
    })
}

/// Runs a batch through the dispatcher's bulk builder (`delivery::iterable::bulk`, which
/// `gateway map --batch` prints with): each event validated in batch mode, the refused ones
/// reported by index, the rest sent together, as actions-core's `performBatch` does.
pub fn run_batch(
    d: &Destination,
    events: &[Value],
    now_ms: i64,
) -> (Vec<PlannedRequest>, Vec<(usize, ActionError)>) {
    let sub = &d.subscriptions[0];
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match d.prepare(sub, e, Mode::Batch) {
            Ok(payload) => items.push((
                i,
                BulkItem {
                    action: sub.action,
                    subscription: 0,
                    payload,
                    event: e.clone(),
                },
            )),
            Err(err) => errors.push((i, err)),
        }
    }
    let keyed: Vec<(usize, &BulkItem, bool)> = items.iter().map(|(i, b)| (*i, b, false)).collect();
    let built = bulk::build(d, &keyed, now_ms);
    errors.extend(built.errors.into_iter().map(|(i, _, e)| (i, e)));
    errors.sort_by_key(|(i, _)| *i);
    (
        built.requests.into_iter().map(|b| b.request).collect(),
        errors,
    )
}

/// Removes what DESIGN §2 difference 1 removes from Segment's trackEvent bodies.
pub fn without_internal_batching_keys(action: Action, body: &mut Value) {
    if action != Action::TrackEvent {
        return;
    }
    let strip = |b: &mut Value| {
        if let Value::Object(m) = b {
            m.shift_remove("enable_batching");
            m.shift_remove("batch_size");
        }
    };
    strip(body);
    if let Some(Value::Array(events)) = body.get_mut("events") {
        events.iter_mut().for_each(strip);
    }
}

/// Dispatches both directions until no event is pending (retries included); panics after 10 s.
/// (A claimed event stays `pending` under its lease.)
pub async fn drain_until_settled(
    pool: &sqlx::PgPool,
    settings: &gateway::configuration::Settings,
    clients: &gateway::delivery::Clients,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        gateway::delivery::worker::drain(pool, settings, clients)
            .await
            .unwrap();
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'pending'")
            .fetch_one(pool)
            .await
            .unwrap();
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} events still open after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
