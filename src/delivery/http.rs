//! One outbound HTTP request, for either partner, turned into a [`Reply`] the retry policy can
//! read. Never fails: a timeout or a broken connection is an outcome like any status.

use super::retry::{parse_retry_after, CallOutcome};
use super::Clients;
use crate::audit::redact;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use std::time::{Duration, Instant};

pub const JSON: &str = "application/json";

/// What came back.
#[derive(Debug)]
pub struct Reply {
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

/// One request: `method` to `url` with the credential header and, when there is one, a JSON
/// `body` (`None`: no body and no `Content-Type`, as Iterable's `DELETE` user deletions);
/// reads the whole answer (the engine has taken the rate limit's token).
pub async fn call(
    clients: &Clients,
    method: reqwest::Method,
    url: &str,
    credential: Option<(&str, &str)>,
    body: Option<String>,
) -> Reply {
    let mut builder = clients.http.request(method, url);
    if let Some(body) = body {
        builder = builder.header(CONTENT_TYPE, JSON).body(body);
    }
    if let Some((name, value)) = credential {
        builder = builder.header(name, value);
    }
    let started = Instant::now();
    let reply = match builder.send().await {
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
