//! What a Segment request body becomes: the tracking API's routes (`/v1/track`, ...,
//! `/v1/batch`) and Segment's webhooks, from a parsed body to the events that enter the outbox.
//! The HTTP side (reading, authenticating, answering) is `http::segment`.

use super::event::CallType;
use super::normalise::{batch_items, to_event, Limits};
use crate::audit::{EventState, NewEvent};
use crate::error::IngestError;
use crate::mapping::Destination;
use serde_json::Value;

/// What a `/v1/...` path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Single(CallType),
    Batch,
    /// One event that must say its own type (Segment's webhooks).
    Event,
}

impl Route {
    /// `/v1/{name}`: the six call types, their one-letter forms (analytics.js), batch and import.
    pub fn parse(name: &str) -> Option<Route> {
        Some(match name {
            "identify" | "i" => Route::Single(CallType::Identify),
            "track" | "t" => Route::Single(CallType::Track),
            "page" | "p" => Route::Single(CallType::Page),
            "screen" | "s" => Route::Single(CallType::Screen),
            "group" | "g" => Route::Single(CallType::Group),
            "alias" | "a" => Route::Single(CallType::Alias),
            "batch" | "b" | "import" => Route::Batch,
            _ => return None,
        })
    }
}

/// The events of a parsed body that arrived on `route`, for a connection's `destination`.
pub fn events_of(
    json: Value,
    route: Route,
    destination: &Destination,
    limits: &Limits,
) -> Result<Vec<NewEvent>, IngestError> {
    let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match route {
        Route::Batch => Ok(batch_items(json, limits)?
            .into_iter()
            .map(|item| to_event(item, None, destination, &received_at))
            .collect()),
        Route::Single(_) | Route::Event => {
            if !json.is_object() {
                return Err(IngestError::InvalidBody(
                    "the body must be a JSON object (one Segment call)".into(),
                ));
            }
            let call = match route {
                Route::Single(call) => Some(call),
                _ => None,
            };
            let event = to_event(json, call, destination, &received_at);
            match event.state {
                EventState::Failed => Err(IngestError::InvalidBody(
                    event.state_reason.unwrap_or_default(),
                )),
                _ => Ok(vec![event]),
            }
        }
    }
}
