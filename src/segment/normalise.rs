//! From a parsed body to the events that enter the outbox, as Segment's tracking API accepts
//! them: batch-level `context` and `integrations` merged into each item, a `messageId` when
//! the sender gave none, `receivedAt` set, `writeKey` removed; each event pending, or skipped
//! (filters, no subscription) or failed (not a valid call) with the reason.

use super::event::{CallType, SegmentEvent};
use crate::audit::{EventState, NewEvent};
use crate::error::IngestError;
use crate::mapping::{filters, Destination};
use serde_json::{Map, Value};

/// Limits of one request.
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
}

/// The items of a batch body (`{"batch": [...]}`, or a bare array from Segment's webhooks),
/// with the batch-level `context` and `integrations` merged in.
pub fn batch_items(body: Value, limits: &Limits) -> Result<Vec<Value>, IngestError> {
    let (items, shared) = match body {
        Value::Array(items) => (items, Map::new()),
        Value::Object(mut m) => match m.remove("batch") {
            Some(Value::Array(items)) => (items, m),
            Some(_) => {
                return Err(IngestError::InvalidBody(
                    "\"batch\" must be an array of events".into(),
                ))
            }
            None => {
                return Err(IngestError::InvalidBody(
                    "a batch needs a \"batch\" array of events".into(),
                ))
            }
        },
        _ => {
            return Err(IngestError::InvalidBody(
                "a batch must be a JSON object with a \"batch\" array".into(),
            ))
        }
    };
    if items.len() > limits.max_batch_events {
        return Err(IngestError::TooLarge(format!(
            "the batch has {} events; at most {} are accepted",
            items.len(),
            limits.max_batch_events
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, mut item) in items.into_iter().enumerate() {
        let size = json_len(&item);
        if size > limits.max_event_bytes {
            return Err(IngestError::TooLarge(format!(
                "event {i} of the batch is {size} bytes; at most {} are accepted per event",
                limits.max_event_bytes
            )));
        }
        if let Value::Object(m) = &mut item {
            for key in ["context", "integrations"] {
                if let Some(Value::Object(batch_level)) = shared.get(key) {
                    merge_under(m, key, batch_level);
                }
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// The length of a value's JSON, counted without building it.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// The item's own keys win over the batch's.
fn merge_under(item: &mut Map<String, Value>, key: &str, batch_level: &Map<String, Value>) {
    match item.get_mut(key) {
        Some(Value::Object(own)) => {
            for (k, v) in batch_level {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        None | Some(Value::Null) => {
            item.insert(key.into(), Value::Object(batch_level.clone()));
        }
        Some(_) => {}
    }
}

/// One inbound item → one outbox event. `route_type` is the call type of a single-event route.
pub fn to_event(
    mut item: Value,
    route_type: Option<CallType>,
    destination: &Destination,
    received_at: &str,
) -> NewEvent {
    let mut generated_id = None;
    if let Value::Object(m) = &mut item {
        let has_id = matches!(m.get("messageId"), Some(Value::String(s)) if !s.is_empty())
            || matches!(m.get("messageId"), Some(Value::Number(_)));
        if !has_id {
            // Deterministic, so a sender's retry of the same bytes is recognised as a duplicate.
            generated_id = Some(generated_message_id(&*m));
        }
        m.shift_remove("writeKey");
        if let Some(id) = &generated_id {
            m.insert("messageId".into(), Value::String(id.clone()));
        }
        m.insert("receivedAt".into(), Value::String(received_at.into()));
    }
    match SegmentEvent::parse(item, route_type) {
        Ok(event) => {
            let (state, reason) = if let Some(why) = filters::skip_reason(event.as_value()) {
                (EventState::Skipped, Some(why))
            } else if !destination.matches_any(&event) {
                (
                    EventState::Skipped,
                    Some(format!(
                        "no subscription matches this {} call",
                        event.call_type()
                    )),
                )
            } else {
                (EventState::Pending, None)
            };
            NewEvent {
                // Every object has a messageId by now (its own, or the generated one).
                message_id: event.message_id().unwrap_or_default().to_string(),
                call_type: Some(event.call_type().as_str().into()),
                user_key: user_key(&event),
                payload: event.into_value(),
                state,
                state_reason: reason,
            }
        }
        Err((e, item)) => {
            let message_id = item
                .get("messageId")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or(generated_id)
                .unwrap_or_else(|| generated_message_id(&item));
            NewEvent {
                user_key: format!("m:{message_id}"),
                message_id,
                call_type: None,
                payload: item,
                state: EventState::Failed,
                state_reason: Some(e.to_string()),
            }
        }
    }
}

/// `gateway-` + UUID v5 of the item's JSON.
fn generated_message_id(item: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(item).unwrap_or_default();
    format!(
        "gateway-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &bytes)
    )
}

/// Whose events these are, for in-order delivery: the userId, else the anonymousId, else an
/// email the event carries, else the event alone.
fn user_key(e: &SegmentEvent) -> String {
    if let Some(u) = e.user_id() {
        return format!("u:{u}");
    }
    if let Some(a) = e.anonymous_id() {
        return format!("a:{a}");
    }
    let v = e.as_value();
    for p in [
        "/traits/email",
        "/properties/email",
        "/context/traits/email",
    ] {
        if let Some(email) = v
            .pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            return format!("e:{email}");
        }
    }
    format!("m:{}", e.message_id().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_event_bytes: 32_768,
        max_batch_events: 2500,
    };

    #[test]
    fn batch_context_and_integrations_merge_under_the_items() {
        let body = json!({"batch": [{"type": "track", "context": {"ip": "1.1.1.1"}}, {"type": "identify"}],
                          "context": {"ip": "2.2.2.2", "locale": "fr"}, "integrations": {"Iterable": false}});
        let items = batch_items(body, &LIMITS).unwrap();
        assert_eq!(
            items[0]["context"],
            json!({"ip": "1.1.1.1", "locale": "fr"})
        );
        assert_eq!(
            items[1]["context"],
            json!({"ip": "2.2.2.2", "locale": "fr"})
        );
        assert_eq!(items[1]["integrations"], json!({"Iterable": false}));
    }

    #[test]
    fn oversized_batches_and_events_are_refused() {
        let many = json!({"batch": vec![json!({}); 2501]});
        assert!(matches!(
            batch_items(many, &LIMITS),
            Err(IngestError::TooLarge(_))
        ));
        let big = json!({"batch": [{"type": "track", "properties": {"x": "a".repeat(40_000)}}]});
        let e = batch_items(big, &LIMITS).unwrap_err().to_string();
        assert!(e.starts_with("event 0 of the batch is"), "{e}");
    }

    #[test]
    fn events_get_an_id_a_receipt_time_and_a_state() {
        let d = Destination::default();
        let e = to_event(
            json!({"type": "track", "event": "A", "userId": 7, "writeKey": "k"}),
            None,
            &d,
            "2024-01-01T00:00:00Z",
        );
        assert_eq!(e.state, EventState::Pending);
        assert!(e.message_id.starts_with("gateway-"));
        assert_eq!(e.user_key, "u:7");
        assert!(e.payload.get("writeKey").is_none());
        let again = to_event(
            json!({"type": "track", "event": "A", "userId": 7, "writeKey": "k"}),
            None,
            &d,
            "2024-01-02T00:00:00Z",
        );
        assert_eq!(
            e.message_id, again.message_id,
            "the same bytes get the same id"
        );
        let g = to_event(json!({"type": "group", "groupId": "g"}), None, &d, "t");
        assert_eq!(g.state, EventState::Skipped);
        let bad = to_event(json!({"type": "merge"}), None, &d, "t");
        assert_eq!(bad.state, EventState::Failed);
    }
}
