//! The steps every inbound route shares: the audit record of the request, and answering it
//! only after that record (and its events) is committed.

use crate::audit::{redact, Direction, InboundRecord, NewEvent};
use crate::body::Body;
use crate::connection::Connection;
use crate::error::IngestError;
use crate::startup::AppState;
use actix_web::{web, HttpRequest, HttpResponse};

/// The first steps of a `/webhooks/{partner}/{connection}` route: read the body (batch limit),
/// start its audit record, and find the connection; a request for an unknown connection is
/// refused here (after its audit).
pub async fn open_webhook<'a>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &'a AppState,
    name: &str,
    direction: Direction,
) -> Result<(Body, InboundRecord, &'a Connection), IngestError> {
    let body = crate::body::read(
        payload,
        header(req, "content-encoding"),
        state.settings.application.max_batch_bytes,
    )
    .await;
    let mut record = new_record(req, &body, direction);
    let Some(connection) = state.connections.by_name(name) else {
        return Err(refuse(
            state,
            record,
            IngestError::UnknownConnection(name.to_string()),
        )
        .await);
    };
    record.connection = Some(connection.settings.name.clone());
    Ok((body, record, connection))
}

/// The audit record of a request, before anyone knows whether it is accepted.
pub fn new_record(req: &HttpRequest, body: &Body, direction: Direction) -> InboundRecord {
    InboundRecord {
        route: req.path().to_string(),
        connection: None,
        direction,
        status: 200,
        error_code: None,
        error_message: None,
        headers: redact::headers(
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        ),
        content_encoding: body.content_encoding.clone(),
        body: body.bytes.clone(),
        events: Vec::new(),
    }
}

/// Commits an accepted request with its events, then acknowledges it.
pub async fn accept(state: &AppState, record: InboundRecord) -> Result<HttpResponse, IngestError> {
    let n = record.events.len() as u64;
    let direction = record.direction.as_str();
    commit(state, record).await?;
    metrics::counter!("gateway_inbound_events_total", "direction" => direction).increment(n);
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true})))
}

/// Audits a refused request and returns the error to answer with: `error` itself, or 503 if
/// even the audit cannot be committed.
pub async fn refuse(
    state: &AppState,
    mut record: InboundRecord,
    error: IngestError,
) -> IngestError {
    use actix_web::ResponseError;
    record.status = error.status_code().as_u16();
    record.error_code = Some(error.code().into());
    record.error_message = Some(error.to_string());
    record.events.clear();
    match commit(state, record).await {
        Ok(()) => error,
        Err(unavailable) => unavailable,
    }
}

async fn commit(state: &AppState, record: InboundRecord) -> Result<(), IngestError> {
    let status = record.status;
    let timeout = std::time::Duration::from_millis(state.settings.database.commit_timeout_ms);
    match state.committer.commit(record, timeout).await {
        Ok(_) => {
            metrics::counter!("gateway_inbound_requests_total", "status" => status.to_string())
                .increment(1);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "The audit log could not commit a request; answering 503.");
            metrics::counter!("gateway_inbound_requests_total", "status" => "503").increment(1);
            Err(IngestError::Unavailable {
                retry_after_secs: state.settings.application.retry_after_secs,
            })
        }
    }
}

/// A request header's value, when it is text.
pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Accepts the request with `events`, or refuses it with their error; audited either way.
pub async fn accept_or_refuse(
    state: &AppState,
    record: InboundRecord,
    events: Result<Vec<NewEvent>, IngestError>,
) -> Result<HttpResponse, IngestError> {
    match events {
        Err(e) => Err(refuse(state, record, e).await),
        Ok(events) => {
            let mut record = record;
            record.events = events;
            accept(state, record).await
        }
    }
}
