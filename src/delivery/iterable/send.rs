//! One HTTP request to Iterable, turned into a [`Reply`] the retry policy can read. Never
//! fails: a timeout or a broken connection is an outcome like any status.

use super::requests::Request;
use crate::audit::redact;
use crate::delivery::retry::{parse_retry_after, CallOutcome};
use crate::delivery::Clients;
use crate::iterable::api::API_KEY_HEADER;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::time::{Duration, Instant};

const JSON: &str = "application/json";

/// What came back.
#[derive(Debug)]
pub(super) struct Reply {
    pub outcome: CallOutcome,
    /// Response headers, secrets redacted.
    pub headers: Option<Value>,
    pub body: Option<String>,
    pub duration: Duration,
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            CallOutcome::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

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

/// Waits for the rate limiter, then sends.
pub(super) async fn send(clients: &Clients, request: &Request) -> Reply {
    let path = request.endpoint.path();
    clients.limiters.wait(&request.conn.name, path).await;
    let mut builder = clients
        .http
        .post(url(request))
        .header(CONTENT_TYPE, JSON)
        .body(request.wire.clone());
    if let Some(key) = &request.conn.api_key {
        builder = builder.header(API_KEY_HEADER, key.expose_secret());
    }
    let started = Instant::now();
    let result = builder.send().await;
    let reply = match result {
        Err(e) => Reply {
            outcome: failure(&e),
            headers: None,
            body: None,
            duration: started.elapsed(),
        },
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = redact::headers(
                response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes())),
            );
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            match response.text().await {
                Ok(body) => Reply {
                    outcome: CallOutcome::Status {
                        status,
                        retry_after,
                    },
                    headers: Some(headers),
                    body: Some(body),
                    duration: started.elapsed(),
                },
                // The answer broke off: whatever its status said, it was not heard in full.
                Err(e) => Reply {
                    outcome: failure(&e),
                    headers: Some(headers),
                    body: None,
                    duration: started.elapsed(),
                },
            }
        }
    };
    metrics::histogram!("gateway_delivery_request_seconds", "endpoint" => path)
        .record(reply.duration.as_secs_f64());
    reply
}

fn failure(e: &reqwest::Error) -> CallOutcome {
    if e.is_timeout() {
        return CallOutcome::Timeout;
    }
    // reqwest's own message is terse ("error sending request"); the causes say what happened.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CallOutcome::Network(message)
}
