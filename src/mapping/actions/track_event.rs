//! `trackEvent` ("Custom Event"): `/api/events/track` and `/api/events/trackBulk`.

use super::{converted, require_identity, set, take, ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::dates;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("email", Schema::email("Email Address")),
            ("userId", Schema::string("User ID")),
            ("eventName", Schema::string("Event name")),
            ("dataFields", Schema::object("Event Data Fields", None)),
            ("id", Schema::string("Event ID")),
            ("createdAt", Schema::datetime("Timestamp")),
            ("campaignId", Schema::of("Campaign ID", Ty::Integer)),
            ("templateId", Schema::of("Template ID", Ty::Integer)),
            (
                "enable_batching",
                Schema::of("Enable Batching", Ty::Boolean),
            ),
            ("batch_size", Schema::of("Batch Size", Ty::Number)),
        ],
        vec!["eventName"],
    )
});

/// `transformIterableEventPayload`, without Segment's internal `enable_batching` and
/// `batch_size` keys (DESIGN §2, difference 1).
pub(crate) fn event_body(mut body: Map<String, Value>, now_ms: i64) -> Map<String, Value> {
    let data_fields = converted(take(&mut body, "dataFields"));
    set(&mut body, "dataFields", data_fields);
    let created_at = dates::dayjs_unix(body.get("createdAt"), now_ms);
    set(&mut body, "createdAt", created_at);
    body.shift_remove("enable_batching");
    body.shift_remove("batch_size");
    body
}

pub fn perform(
    payload: Map<String, Value>,
    now_ms: i64,
) -> Result<Vec<PlannedRequest>, ActionError> {
    require_identity(&payload)?;
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::EventsTrack,
        body: Value::Object(event_body(payload, now_ms)),
    }])
}

pub fn perform_batch(payloads: &[&Map<String, Value>], now_ms: i64) -> PlannedRequest {
    let events = payloads
        .iter()
        .map(|p| Value::Object(event_body((*p).clone(), now_ms)))
        .collect();
    let mut body = Map::new();
    body.insert("events".into(), Value::Array(events));
    PlannedRequest {
        endpoint: Endpoint::EventsTrackBulk,
        body: Value::Object(body),
    }
}
