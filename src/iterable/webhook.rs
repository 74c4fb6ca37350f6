//! Iterable system webhooks (email, push, SMS, in-app events): who is calling, and what a
//! body becomes (Segment `track` calls in the outbox, DESIGN §1, §3). The route is
//! `http::iterable`.
//!
//! Iterable signs nothing: the caller is authenticated by the connection's webhook token in
//! `Authorization`, sent raw or after `Basic`, `OAuth2` or `Bearer` (Iterable sends
//! `Authorization: <type> <token>`, sometimes without the type). Compared in constant time.

use crate::audit::{EventState, NewEvent};
use crate::error::IngestError;
use crate::mapping::reverse::{split_body, to_segment_track, Context, EventNames};
use serde_json::Value;

/// The token of an `Authorization` header, with or without its scheme.
pub fn presented_token(header: &str) -> &str {
    let header = header.trim();
    for scheme in [
        "Basic ", "OAuth2 ", "Bearer ", "basic ", "oauth2 ", "bearer ", "OAUTH2 ", "BEARER ",
        "BASIC ",
    ] {
        if let Some(token) = header.strip_prefix(scheme) {
            return token.trim();
        }
    }
    header
}

/// Every event of the body as a Segment call; one bad event refuses the request, naming it.
pub fn events_of(bytes: &[u8], names: &EventNames) -> Result<Vec<NewEvent>, IngestError> {
    let items = split_body(bytes).map_err(|e| IngestError::InvalidJson(e.to_string()))?;
    if items.is_empty() {
        return Err(IngestError::InvalidBody(
            "the body is an empty array".into(),
        ));
    }
    let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ctx = Context {
        names,
        received_at: &received_at,
    };
    let several = items.len() > 1;
    items
        .into_iter()
        .enumerate()
        .map(|(i, (raw, event))| {
            let track = to_segment_track(raw, &event, &ctx).map_err(|e| {
                IngestError::InvalidBody(if several {
                    format!("event {i}: {e}")
                } else {
                    e.to_string()
                })
            })?;
            let user_key = match (track.get("userId"), track.get("anonymousId")) {
                (Some(Value::String(u)), _) => format!("u:{u}"),
                (_, Some(Value::String(a))) => format!("e:{a}"),
                _ => String::new(),
            };
            Ok(NewEvent {
                message_id: track["messageId"].as_str().unwrap_or_default().to_string(),
                call_type: event
                    .get("eventName")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                user_key,
                payload: track,
                state: EventState::Pending,
                state_reason: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::presented_token;

    #[test]
    fn tokens_are_read_with_or_without_a_scheme() {
        for h in [
            "tok",
            "Basic tok",
            "OAuth2 tok",
            "Bearer tok",
            " bearer  tok ",
        ] {
            assert_eq!(presented_token(h), "tok", "{h}");
        }
    }
}
