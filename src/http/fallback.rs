//! Requests no route takes: unknown paths (404) and wrong methods on known ones (405), answered
//! with the JSON error body and audited like every other request (their bodies bounded as any
//! unauthenticated caller's).

use super::record::Ingest;
use crate::audit::Direction;
use crate::error::IngestError;
use actix_web::{web, HttpRequest, HttpResponse};

fn direction_of(path: &str) -> Direction {
    if path.starts_with("/webhooks/iterable/") {
        Direction::IterableToSegment
    } else {
        Direction::SegmentToIterable
    }
}

/// The application's default service.
pub async fn not_found(
    req: HttpRequest,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
) -> Result<HttpResponse, IngestError> {
    refuse(req, payload, ingest, |req| {
        IngestError::NotFound(format!("{} {}", req.method(), req.path()))
    })
    .await
}

/// The default service of a POST-only resource.
pub async fn post_only(
    req: HttpRequest,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
) -> Result<HttpResponse, IngestError> {
    only(req, payload, ingest, "POST").await
}

/// The default service of a GET-only resource.
pub async fn get_only(
    req: HttpRequest,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
) -> Result<HttpResponse, IngestError> {
    only(req, payload, ingest, "GET").await
}

async fn only(
    req: HttpRequest,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
    allowed: &'static str,
) -> Result<HttpResponse, IngestError> {
    refuse(req, payload, ingest, |req| IngestError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_string(),
        allowed,
    })
    .await
}

async fn refuse(
    req: HttpRequest,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
    error: impl FnOnce(&HttpRequest) -> IngestError,
) -> Result<HttpResponse, IngestError> {
    let limit = ingest.limits.max_event_bytes;
    let mut body = ingest.read_body(&req, payload, limit).await;
    body.problem = None;
    let audit = ingest.open(&req, body, direction_of(req.path()));
    Err(audit.refuse(error(&req)).await)
}
