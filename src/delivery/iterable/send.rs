//! The Iterable request of a [`Request`]: its URL, its audited headers, and the call.

use super::requests::Request;
use crate::audit::redact;
use crate::delivery::http::{call, Reply, JSON};
use crate::delivery::Clients;
use crate::iterable::api::{Endpoint, API_KEY_HEADER};
use reqwest::header::CONTENT_TYPE;
use secrecy::ExposeSecret;
use serde_json::Value;

/// The request headers as the audit log keeps them (a `DELETE` has no body, so no type).
pub(super) fn audit_headers(endpoint: Endpoint) -> Value {
    let key = (API_KEY_HEADER, b"-".as_slice());
    match endpoint.sends_body() {
        true => redact::headers([key, (CONTENT_TYPE.as_str(), JSON.as_bytes())]),
        false => redact::headers([key]),
    }
}

pub(super) fn url(request: &Request) -> String {
    // A user deletion names its user in the path (issue 11); every other path is fixed.
    let path = match request.endpoint.sends_body() {
        true => std::borrow::Cow::Borrowed(request.endpoint.path()),
        false => request
            .endpoint
            .request_path(&serde_json::from_str(&request.wire).unwrap_or_default()),
    };
    format!("{}{path}", request.conn.base)
}

/// Waits for the rate limiter, then sends with the connection's `Api-Key`.
pub(super) async fn send(clients: &Clients, request: &Request) -> Reply {
    let key = request.conn.api_key.as_ref().map(|k| k.expose_secret());
    let credential = key.map(|k| (API_KEY_HEADER, k));
    let method = match request.endpoint.method() {
        "DELETE" => reqwest::Method::DELETE,
        _ => reqwest::Method::POST,
    };
    let body = request.endpoint.sends_body().then(|| request.wire.clone());
    call(
        clients,
        method,
        &request.conn.name,
        request.endpoint.path(),
        &url(request),
        credential,
        body,
    )
    .await
}
