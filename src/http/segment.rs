//! The Segment routes: the tracking API (`POST /v1/{call}`) for SDKs pointed at the gateway,
//! and `POST /webhooks/segment/{connection}` for Segment's Webhooks destination.
//!
//! Order of checks, the same on every ingest route: the body's size, encoding and read time
//! (before any authentication, so an oversized body is "too large" whoever sends it), then the
//! credentials, then the body's content. Every request is audited with its answer.

use super::record::{header, Ingest};
use crate::audit::Direction;
use crate::configuration::secret;
use crate::connection::Connections;
use crate::error::IngestError;
use crate::segment::auth::{
    secrets_equal, verify_signature, write_key_from_headers, write_keys_in_body,
};
use crate::segment::ingest::{events_of, Route};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

/// Verified against when a webhook names no connection, so that the answer takes as long.
pub(super) const NO_SUCH_SECRET: &str = "no connection has this name";

/// `POST /v1/{call}`.
pub async fn tracking_api(
    req: HttpRequest,
    call: web::Path<String>,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
    connections: web::Data<Connections>,
) -> Result<HttpResponse, IngestError> {
    let route = Route::parse(&call);
    let limits = &ingest.limits;
    let limit = match route {
        Some(Route::Batch) => limits.max_batch_bytes,
        _ => limits.max_event_bytes,
    };
    let mut body = ingest.read_body(&req, payload, limit).await;
    let problem = body.problem.take();
    let parsed = problem
        .is_none()
        .then(|| serde_json::from_slice::<Value>(&body.bytes));
    let mut audit = ingest.open(&req, body, Direction::SegmentToIterable);
    let Some(route) = route else {
        let e = IngestError::NotFound(format!(
            "{} (the tracking API's calls are /v1/identify, track, page, screen, group, alias, batch, import)",
            req.path()
        ));
        return Err(audit.refuse(e).await);
    };
    // Every write key presented, in the headers and in the body: they must agree.
    let mut presented: Vec<String> = [
        write_key_from_headers(header(&req, "authorization"), None),
        write_key_from_headers(None, header(&req, "x-write-key")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(problem) = problem {
        // Refused for its body whoever sent it; the headers may still say whose it is.
        if let Some(c) = presented.first().and_then(|k| connections.by_write_key(k)) {
            audit.set_connection(&c.settings.name);
        }
        return Err(audit.refuse(problem).await);
    }
    let parsed = parsed.expect("parsed when the body has no problem");
    let mut in_body = 0;
    if let Ok(json) = &parsed {
        let keys = write_keys_in_body(json);
        in_body = keys.len();
        presented.extend(keys);
    }
    let Some(key) = presented.first() else {
        let why = "no write key: send it as the HTTP Basic user, in X-Write-Key, or as writeKey in the body";
        return Err(audit.refuse(IngestError::Unauthorized(why.into())).await);
    };
    let Some(connection) = connections.by_write_key(key) else {
        let e = IngestError::Unauthorized("invalid write key".into());
        return Err(audit.refuse(e).await);
    };
    if presented.iter().any(|k| !secrets_equal(k, key)) {
        let e = IngestError::AmbiguousCredentials(
            "the request presents more than one write key (the headers, the body's writeKey or its batch items disagree); send one".into(),
        );
        return Err(audit.refuse(e).await);
    }
    audit.set_connection(&connection.settings.name);
    audit.set_write_keys_in_body(in_body);
    let events = parsed
        .map_err(|e| IngestError::InvalidJson(e.to_string()))
        .and_then(|json| events_of(json, route, &connection.destination, &limits.segment()));
    audit.finish(events).await
}

/// `POST /webhooks/segment/{connection}`: Segment's Webhooks destination, signed with the
/// connection's shared secret.
pub async fn segment_webhook(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
    connections: web::Data<Connections>,
) -> Result<HttpResponse, IngestError> {
    let limits = &ingest.limits;
    let mut body = ingest
        .read_body(&req, payload, limits.max_batch_bytes)
        .await;
    let problem = body.problem.take();
    let connection = connections.by_name(&name);
    let secret = connection.and_then(|c| secret(&c.settings.shared_secret));
    let signature = verify_signature(
        secret.unwrap_or(NO_SUCH_SECRET),
        &body.bytes,
        header(&req, "x-signature"),
    );
    let verified = match (connection, secret, signature) {
        (None, _, _) => Err(format!("no connection is named {:?}", name.as_str())),
        (Some(_), None, _) => {
            Err("this connection has no shared_secret, so it accepts no Segment webhooks".into())
        }
        (Some(_), Some(_), Err(e)) => Err(e.to_string()),
        (Some(c), Some(_), Ok(())) => Ok(c),
    };
    let size = body.bytes.len();
    let parsed = (problem.is_none() && verified.is_ok())
        .then(|| serde_json::from_slice::<Value>(&body.bytes));
    let (audit, connection) = ingest
        .open(&req, body, Direction::SegmentToIterable)
        .authenticate_webhook(problem, verified)
        .await?;
    let dest = &connection.destination;
    let events = parsed
        .expect("parsed once verified")
        .map_err(|e| IngestError::InvalidJson(e.to_string()))
        .and_then(|json| match json {
            Value::Array(_) => events_of(json, Route::Batch, dest, &limits.segment()),
            obj if size <= limits.max_event_bytes => {
                events_of(obj, Route::Event, dest, &limits.segment())
            }
            _ => Err(IngestError::TooLarge(format!(
                "the event is larger than {} bytes",
                limits.max_event_bytes
            ))),
        });
    audit.finish(events).await
}
