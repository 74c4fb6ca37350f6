//! A Segment call, parsed leniently as Segment parses it.
//!
//! The event stays a JSON object with every key it arrived with, because mappings may read any
//! path of it. What is normalised: the call type (from the body, or from the route it came
//! on), and identifiers sent as numbers (`userId: 42`), which become strings as Segment's
//! libraries make them. Nulls are kept: a mapping treats them as Segment does.

use serde_json::{Map, Value};
use std::fmt;

/// The six Segment call types, and `delete`: a user deletion request (Segment sends it to
/// webhooks and to destinations with `onDelete`; segment-side.md §3.2, §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
    Delete,
}

impl CallType {
    pub const ALL: [CallType; 7] = [
        CallType::Identify,
        CallType::Track,
        CallType::Page,
        CallType::Screen,
        CallType::Group,
        CallType::Alias,
        CallType::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Identify => "identify",
            CallType::Track => "track",
            CallType::Page => "page",
            CallType::Screen => "screen",
            CallType::Group => "group",
            CallType::Alias => "alias",
            CallType::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<CallType> {
        CallType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for CallType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a JSON value is not a Segment call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("a Segment event must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error(
        "the event has no \"type\" (one of identify, track, page, screen, group, alias, delete)"
    )]
    MissingType,
    #[error(
        "\"type\" must be one of identify, track, page, screen, group, alias, delete; got {0}"
    )]
    UnknownType(String),
}

/// Identifier fields that Segment turns into strings when they arrive as numbers.
const ID_FIELDS: [&str; 5] = [
    "userId",
    "anonymousId",
    "messageId",
    "previousId",
    "groupId",
];

/// A Segment call: the JSON object as received, with a known type.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentEvent {
    call: CallType,
    body: Value,
}

impl SegmentEvent {
    /// Parses a call. `route_type` is the type of the route it arrived on (`/v1/track`), which
    /// wins when the body has none, as some libraries omit it on single-call routes.
    pub fn from_value(
        value: Value,
        route_type: Option<CallType>,
    ) -> Result<SegmentEvent, EventError> {
        SegmentEvent::parse(value, route_type).map_err(|(e, _)| e)
    }

    /// [`from_value`](Self::from_value) that hands the value back, unchanged, when it is not a
    /// call (ingest keeps it as the payload of a failed event).
    pub fn parse(
        value: Value,
        route_type: Option<CallType>,
    ) -> Result<SegmentEvent, (EventError, Value)> {
        let mut map = match value {
            Value::Object(map) => map,
            other => return Err((EventError::NotAnObject(kind(&other)), other)),
        };
        let call = match map.get("type") {
            Some(Value::String(s)) => match CallType::parse(s) {
                Some(t) => t,
                None => {
                    let e = EventError::UnknownType(format!("{s:?}"));
                    return Err((e, Value::Object(map)));
                }
            },
            None | Some(Value::Null) => match route_type {
                Some(t) => {
                    map.insert("type".into(), Value::String(t.as_str().into()));
                    t
                }
                None => return Err((EventError::MissingType, Value::Object(map))),
            },
            Some(other) => {
                let e = EventError::UnknownType(other.to_string());
                return Err((e, Value::Object(map)));
            }
        };
        normalise_ids(&mut map);
        Ok(SegmentEvent {
            call,
            body: Value::Object(map),
        })
    }

    pub fn call_type(&self) -> CallType {
        self.call
    }

    /// The whole event, for mappings.
    pub fn as_value(&self) -> &Value {
        &self.body
    }

    pub fn into_value(self) -> Value {
        self.body
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.body
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn message_id(&self) -> Option<&str> {
        self.str_field("messageId")
    }

    pub fn user_id(&self) -> Option<&str> {
        self.str_field("userId")
    }

    pub fn anonymous_id(&self) -> Option<&str> {
        self.str_field("anonymousId")
    }

    /// `event` of a track call.
    pub fn event_name(&self) -> Option<&str> {
        self.str_field("event")
    }

    /// `name` of a page or screen call, else `properties.name`.
    pub fn page_name(&self) -> Option<&str> {
        self.str_field("name")
            .or_else(|| {
                self.body
                    .pointer("/properties/name")
                    .and_then(Value::as_str)
            })
            .filter(|s| !s.is_empty())
    }

    /// `category` of a page call, else `properties.category`.
    pub fn page_category(&self) -> Option<&str> {
        self.str_field("category")
            .or_else(|| {
                self.body
                    .pointer("/properties/category")
                    .and_then(Value::as_str)
            })
            .filter(|s| !s.is_empty())
    }
}

fn normalise_ids(map: &mut Map<String, Value>) {
    for key in ID_FIELDS {
        if let Some(v) = map.get_mut(key) {
            if let Value::Number(n) = v {
                *v = Value::String(crate::mapping::js::json_number_to_string(n));
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_ids_become_strings_and_unknown_keys_stay() {
        let e = SegmentEvent::from_value(
            json!({"type": "identify", "userId": 42, "messageId": 1.5, "x": {"y": null}}),
            None,
        )
        .unwrap();
        assert_eq!(e.user_id(), Some("42"));
        assert_eq!(e.message_id(), Some("1.5"));
        assert_eq!(e.as_value()["x"], json!({"y": null}));
    }

    #[test]
    fn the_route_supplies_a_missing_type() {
        let e = SegmentEvent::from_value(json!({"event": "A"}), Some(CallType::Track)).unwrap();
        assert_eq!(e.call_type(), CallType::Track);
        assert_eq!(e.as_value()["type"], "track");
        let e = SegmentEvent::from_value(json!({"type": "page"}), Some(CallType::Track)).unwrap();
        assert_eq!(e.call_type(), CallType::Page);
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        assert_eq!(
            SegmentEvent::from_value(json!([1]), None)
                .unwrap_err()
                .to_string(),
            "a Segment event must be a JSON object, not an array"
        );
        assert!(matches!(
            SegmentEvent::from_value(json!({"type": "merge"}), None),
            Err(EventError::UnknownType(_))
        ));
        assert_eq!(
            SegmentEvent::from_value(json!({}), None).unwrap_err(),
            EventError::MissingType
        );
    }
}
