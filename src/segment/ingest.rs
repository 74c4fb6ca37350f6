//! The Segment routes: the tracking API (`/v1/track`, ..., `/v1/batch`) for SDKs pointed at
//! the gateway, and `/webhooks/segment/{connection}` for Segment's Webhooks destination.
//!
//! Every request, accepted or refused, is written to the audit log with its body before it is
//! answered; `200 {"success":true}` only after its events are committed (DESIGN §4).

use super::auth;
use super::event::CallType;
use super::normalise::{batch_items, to_event, Limits};
use crate::audit::{redact, Direction, NewEvent};
use crate::body;
use crate::connection::Connection;
use crate::error::IngestError;
use crate::inbound::{accept_or_refuse, header, new_record, open_webhook, refuse};
use crate::startup::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
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

/// `POST /v1/{call}`.
pub async fn tracking_api(
    req: HttpRequest,
    call: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let route = Route::parse(&call)
        .ok_or_else(|| IngestError::InvalidBody(format!("unknown route /v1/{call}")))?;
    let limit = match route {
        Route::Single(_) | Route::Event => state.settings.application.max_event_bytes,
        Route::Batch => state.settings.application.max_batch_bytes,
    };
    let body = body::read(payload, header(&req, "content-encoding"), limit).await;
    let mut record = new_record(&req, &body, Direction::SegmentToIterable);
    let mut bytes_json: Option<Result<Value, String>> = None;
    let presented = auth::write_key_from_headers(req.headers()).or_else(|| {
        let parsed = serde_json::from_slice::<Value>(&body.bytes).map_err(|e| e.to_string());
        let key = parsed.as_ref().ok().and_then(auth::write_key_from_body);
        bytes_json = Some(parsed);
        key
    });
    if let Some(key) = &presented {
        redact::scrub(&mut record.body, &[key]);
    }
    let Some(connection) = presented
        .as_deref()
        .and_then(|k| state.connections.by_write_key(k))
    else {
        let why = if presented.is_some() {
            "invalid write key"
        } else {
            "no write key: send it as the HTTP Basic user, in X-Write-Key, or as writeKey in the body"
        };
        return Err(refuse(&state, record, IngestError::Unauthorized(why.into())).await);
    };
    record.connection = Some(connection.settings.name.clone());
    if let Some(problem) = body.problem {
        return Err(refuse(&state, record, problem).await);
    }
    let parsed = bytes_json
        .unwrap_or_else(|| serde_json::from_slice(&body.bytes).map_err(|e| e.to_string()));
    let events = parsed
        .map_err(IngestError::InvalidJson)
        .and_then(|json| events_of(json, route, connection, &state));
    accept_or_refuse(&state, record, events).await
}

/// `POST /webhooks/segment/{connection}`: Segment's Webhooks destination, signed with the
/// connection's shared secret.
pub async fn segment_webhook(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let app = &state.settings.application;
    let (body, record, connection) =
        open_webhook(&req, payload, &state, &name, Direction::SegmentToIterable).await?;
    let Some(secret) = crate::configuration::secret(&connection.settings.shared_secret) else {
        let e = IngestError::Unauthorized(
            "this connection has no shared_secret, so it accepts no Segment webhooks".into(),
        );
        return Err(refuse(&state, record, e).await);
    };
    if let Err(e) = auth::verify_signature(secret, &body.bytes, header(&req, "x-signature")) {
        return Err(refuse(&state, record, IngestError::Unauthorized(e.to_string())).await);
    }
    if let Some(problem) = body.problem {
        return Err(refuse(&state, record, problem).await);
    }
    let events = serde_json::from_slice::<Value>(&body.bytes)
        .map_err(|e| IngestError::InvalidJson(e.to_string()))
        .and_then(|json| match json {
            Value::Array(_) => events_of(json, Route::Batch, connection, &state),
            obj if body.bytes.len() <= app.max_event_bytes => {
                events_of(obj, Route::Event, connection, &state)
            }
            _ => Err(IngestError::TooLarge(format!(
                "the event is larger than {} bytes",
                app.max_event_bytes
            ))),
        });
    accept_or_refuse(&state, record, events).await
}

fn events_of(
    json: Value,
    route: Route,
    connection: &Connection,
    state: &AppState,
) -> Result<Vec<NewEvent>, IngestError> {
    let app = &state.settings.application;
    let limits = Limits {
        max_event_bytes: app.max_event_bytes,
        max_batch_events: app.max_batch_events,
    };
    let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let dest = &connection.destination;
    match route {
        Route::Batch => Ok(batch_items(json, &limits)?
            .into_iter()
            .map(|item| to_event(item, None, dest, &received_at))
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
            let event = to_event(json, call, dest, &received_at);
            match event.state {
                crate::audit::EventState::Failed => Err(IngestError::InvalidBody(
                    event.state_reason.unwrap_or_default(),
                )),
                _ => Ok(vec![event]),
            }
        }
    }
}
