//! The Iterable request of a [`Request`]: its URL, its audited headers, and the call.

use super::requests::Request;
use crate::audit::redact;
use crate::delivery::http::{post_json, Reply, JSON};
use crate::delivery::Clients;
use crate::iterable::api::API_KEY_HEADER;
use reqwest::header::CONTENT_TYPE;
use secrecy::ExposeSecret;
use serde_json::Value;

/// The request headers as the audit log keeps them.
pub(super) fn audit_headers() -> Value {
    redact::headers([
        (API_KEY_HEADER, b"-".as_slice()),
        (CONTENT_TYPE.as_str(), JSON.as_bytes()),
    ])
}

pub(super) fn url(request: &Request) -> String {
    format!("{}{}", request.conn.base, request.endpoint.path())
}

/// Waits for the rate limiter, then sends with the connection's `Api-Key`.
pub(super) async fn send(clients: &Clients, request: &Request) -> Reply {
    let key = request.conn.api_key.as_ref().map(|k| k.expose_secret());
    let credential = key.map(|k| (API_KEY_HEADER, k));
    post_json(
        clients,
        &request.conn.name,
        request.endpoint.path(),
        &url(request),
        credential,
        request.wire.clone(),
    )
    .await
}
