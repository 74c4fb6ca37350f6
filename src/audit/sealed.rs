//! A request's events serialised once, as the outbox stores them (migration 20261202000800):
//! one blob of JSON lines beside the raw body (`inbound_request.events_body`), each `event` row
//! pointing at its line. Built in the request's own task ([`InboundRecord::seal`]), so that the
//! group commit's writer, one at a time per group, only copies bytes.

use super::{storable, InboundRecord, NewEvent};
use serde_json::Value;

/// A request's events as one blob of JSON lines, where each line is (byte offset, length), and
/// the email each event is about.
#[derive(Debug, Clone, Default)]
pub struct SealedEvents {
    pub bytes: Option<Vec<u8>>,
    pub lines: Vec<(i32, i32)>,
    pub emails: Vec<Option<String>>,
}

impl SealedEvents {
    /// Refused (as a value the database cannot hold, so the group commit isolates the request)
    /// when an event holds U+0000, which `jsonb` cannot: every line must read back as `jsonb`.
    /// Ingest refuses those before (`storable`); this keeps the writer's own promise.
    pub fn of(events: &[NewEvent]) -> Result<SealedEvents, String> {
        if events.is_empty() {
            return Ok(SealedEvents::default());
        }
        let mut bytes = Vec::with_capacity(events.len() * 512);
        let mut lines = Vec::with_capacity(events.len());
        for e in events {
            let start = bytes.len();
            // A `Value` always serialises (its keys are strings).
            serde_json::to_writer(&mut bytes, &e.payload).expect("a JSON value serialises");
            let line = &bytes[start..];
            if storable::may_hold_nul(line) {
                if let Some(path) = storable::find_nul(&e.payload) {
                    return Err(format!(
                        "{path} holds \\u0000 (U+0000): unsupported Unicode escape sequence for jsonb"
                    ));
                }
            }
            // Offsets are int4 in the table; a request is at most max_batch_bytes (checked at
            // start-up to be far below 2 GiB), and its normalised events about as large.
            lines.push((start as i32, (bytes.len() - start) as i32));
            bytes.push(b'\n');
        }
        Ok(SealedEvents {
            bytes: Some(bytes),
            lines,
            emails: events.iter().map(|e| event_email(&e.payload)).collect(),
        })
    }
}

impl InboundRecord {
    /// Serialises the events' payloads into their blob and drops the parsed values. Left
    /// unsealed when that fails: the writer then meets the same error and isolates the request.
    pub fn seal(&mut self) {
        if self.sealed.is_some() || self.events.is_empty() {
            return;
        }
        if let Ok(sealed) = SealedEvents::of(&self.events) {
            for e in &mut self.events {
                e.payload = Value::Null;
            }
            self.sealed = Some(sealed);
        }
    }
}

/// The email an event is about, as `gateway_event_email(payload)` reads it before lower-casing
/// (which the INSERT does, so that it is PostgreSQL's lower()): the first of `email`,
/// `traits.email`, `context.traits.email`, `properties.email` that is there and not null.
fn event_email(payload: &Value) -> Option<String> {
    let at = |path: &[&str]| -> Option<String> {
        let mut v = payload;
        for key in path {
            v = v.as_object()?.get(*key)?;
        }
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    at(&["email"])
        .or_else(|| at(&["traits", "email"]))
        .or_else(|| at(&["context", "traits", "email"]))
        .or_else(|| at(&["properties", "email"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_email_is_the_first_present_as_gateway_event_email_reads_it() {
        assert_eq!(
            event_email(&json!({"traits": {"email": "A@x.io"}, "properties": {"email": "b@x.io"}}))
                .as_deref(),
            Some("A@x.io")
        );
        assert_eq!(
            event_email(&json!({"email": null, "context": {"traits": {"email": 7}}})).as_deref(),
            Some("7")
        );
        assert_eq!(
            event_email(&json!({"traits": "x", "properties": {"email": "p@x.io"}})).as_deref(),
            Some("p@x.io")
        );
        assert_eq!(event_email(&json!([1])), None);
    }

    #[test]
    fn lines_point_at_each_event_and_sealing_drops_the_values() {
        let e = |p: Value| NewEvent {
            message_id: "m".into(),
            call_type: None,
            user_key: "u:1".into(),
            payload: p,
            state: super::super::EventState::Pending,
            state_reason: None,
        };
        let events = vec![e(json!({"a": "é"})), e(json!({"b": [1, 2]}))];
        let s = SealedEvents::of(&events).unwrap();
        let bytes = s.bytes.as_deref().unwrap();
        for ((at, len), ev) in s.lines.iter().zip(&events) {
            let line = &bytes[*at as usize..(*at + *len) as usize];
            assert_eq!(serde_json::from_slice::<Value>(line).unwrap(), ev.payload);
        }
        assert!(SealedEvents::of(&[e(json!({"x": "a\u{0}b"}))]).is_err());
    }
}
