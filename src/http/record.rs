//! The request's audit record, and the two ways a request ends: accepted (its record and events
//! committed, then `200`) or refused (its record committed with the refusal, then the error).
//! Either way nothing is answered before the commit, except `503` when it cannot happen.
//!
//! What is stored of a body is bounded and scrubbed here, before anything is written: every
//! configured secret is removed by the byte-level scrubber; a request refused before it is
//! authenticated (or for its body: size, encoding, read timeout) keeps only its first
//! `unauthenticated_body_bytes`, flagged `body_truncated`, with `body_size` the size received.

use super::body::Body;
use crate::audit::redact::{self, Scrubber};
use crate::audit::writer::{Committed, GroupCommitter};
use crate::audit::{storable, Direction, InboundRecord, NewEvent};
use crate::configuration::Settings;
use crate::connection::Connection;
use crate::error::IngestError;
use actix_web::{HttpRequest, HttpResponse};
use std::time::Duration;
use tokio::time::Instant;

/// What ingest handlers share: the committer, the scrubber and the limits (narrow state, as
/// `web::Data<Ingest>`).
pub struct Ingest {
    pub committer: GroupCommitter,
    pub scrubber: Scrubber,
    pub limits: Limits,
    pub commit_timeout: Duration,
    pub retry_after_secs: u64,
}

/// The size and time limits of inbound requests (`[application]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub body_timeout_ms: u64,
    pub unauthenticated_body_bytes: usize,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Limits {
        let app = &settings.application;
        Limits {
            max_event_bytes: app.max_event_bytes,
            max_batch_bytes: app.max_batch_bytes,
            max_batch_events: app.max_batch_events,
            body_timeout_ms: app.body_timeout_ms,
            unauthenticated_body_bytes: app.unauthenticated_body_bytes,
        }
    }

    pub fn segment(&self) -> crate::segment::normalise::Limits {
        crate::segment::normalise::Limits {
            max_event_bytes: self.max_event_bytes,
            max_batch_events: self.max_batch_events,
        }
    }
}

impl Ingest {
    /// Reads the body of a request with `limit`, within the body read timeout.
    pub async fn read_body(
        &self,
        req: &HttpRequest,
        payload: actix_web::web::Payload,
        limit: usize,
    ) -> Body {
        let timeout = self.limits.body_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout);
        super::body::read(
            payload,
            header(req, "content-encoding"),
            limit,
            deadline,
            timeout,
        )
        .await
    }

    /// The audit record of a request, before anyone knows whether it is accepted; its body is
    /// scrubbed of every secret already.
    pub fn open(&self, req: &HttpRequest, body: Body, direction: Direction) -> Audit<'_> {
        let mut bytes = body.bytes;
        let nul_possible = storable::may_hold_nul(&bytes);
        let secrets_found = if body.truncated {
            self.scrubber.scrub_truncated(&mut bytes)
        } else {
            self.scrubber.scrub(&mut bytes)
        };
        let escapes = self.scrubber.has_escapes(&bytes);
        if escapes {
            // A secret spelt with JSON escapes is only visible once they are undone: the body
            // is then stored re-serialised from its parsed, scrubbed value, or (not JSON, or cut
            // at a limit) with its escapes undone and scrubbed.
            let mut unescaped = redact::unescape_json_lossy(&bytes);
            if self.scrubber.finds(&unescaped) {
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(mut v) => {
                        self.scrubber.scrub_value(&mut v);
                        bytes = serde_json::to_vec(&v).unwrap_or_default();
                    }
                    Err(_) => {
                        self.scrubber.scrub_truncated(&mut unescaped);
                        bytes = unescaped;
                    }
                }
            }
        }
        // The path is stored too, and anything can be written in it (`/v1/<a write key>`).
        let mut route = req.path().as_bytes().to_vec();
        self.scrubber.scrub(&mut route);
        let record = InboundRecord {
            route: String::from_utf8_lossy(&route).into_owned(),
            connection: None,
            direction,
            status: 200,
            error_code: None,
            error_message: None,
            headers: redact::scrubbed_headers(
                req.headers()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes())),
                &self.scrubber,
            ),
            content_encoding: body.content_encoding,
            body_size: body.size.max(bytes.len()),
            body_truncated: body.truncated,
            body: bytes,
            events: Vec::new(),
            sealed: None,
        };
        Audit {
            ingest: self,
            record,
            secrets_found,
            write_keys_in_body: 0,
            escapes,
            nul_possible,
            route: req
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
        }
    }
}

/// A request being answered: its audit record, and where it goes.
pub struct Audit<'a> {
    ingest: &'a Ingest,
    record: InboundRecord,
    /// Secrets the byte search found in the body, and how many of them are `writeKey` members
    /// that the events do not keep: when there are more, or the body uses escapes, the events'
    /// values are scrubbed too.
    secrets_found: usize,
    write_keys_in_body: usize,
    escapes: bool,
    /// Whether parsed values may hold U+0000 (see `storable::may_hold_nul`).
    nul_possible: bool,
    /// The route's pattern, for metrics.
    route: String,
}

impl<'a> Audit<'a> {
    /// The end of a webhook route's checks, shared by both partners: a problem with the body
    /// (size, encoding, read time) is answered first, whoever sent it; then the credentials,
    /// with one answer for every failure (unknown connection, no secret configured, a missing
    /// or wrong signature or token: the detail goes to the audit only), so that connection
    /// names cannot be probed; then the request is the connection's.
    pub async fn authenticate_webhook<'c>(
        mut self,
        problem: Option<IngestError>,
        verified: Result<&'c Connection, String>,
    ) -> Result<(Audit<'a>, &'c Connection), IngestError> {
        if let Some(problem) = problem {
            if let Ok(c) = &verified {
                self.set_connection(&c.settings.name);
            }
            return Err(self.refuse(problem).await);
        }
        match verified {
            Ok(c) => {
                self.set_connection(&c.settings.name);
                Ok((self, c))
            }
            Err(detail) => Err(self
                .refuse(IngestError::WebhookUnauthorized { detail })
                .await),
        }
    }
}

impl Audit<'_> {
    /// The request is authenticated as (or, for the audit only, identified as) `connection`.
    pub fn set_connection(&mut self, connection: &str) {
        self.record.connection = Some(connection.to_string());
    }

    /// The body carries `n` write keys (top level and batch items), which the events do not
    /// keep (`segment::normalise` removes them).
    pub fn set_write_keys_in_body(&mut self, n: usize) {
        self.write_keys_in_body = n;
    }

    pub fn connection(&self) -> Option<&str> {
        self.record.connection.as_deref()
    }

    /// Accepts the request with `events`, or refuses it with their error; audited either way.
    pub async fn finish(
        self,
        events: Result<Vec<NewEvent>, IngestError>,
    ) -> Result<HttpResponse, IngestError> {
        let nul_possible = self.nul_possible;
        match events.and_then(|events| {
            storable::check_events(&events, nul_possible).map_err(IngestError::Unstorable)?;
            Ok(events)
        }) {
            Err(e) => Err(self.refuse(e).await),
            Ok(events) => self.accept(events).await,
        }
    }

    /// Commits an accepted request with its events, then acknowledges it.
    async fn accept(mut self, mut events: Vec<NewEvent>) -> Result<HttpResponse, IngestError> {
        if self.escapes || self.secrets_found > self.write_keys_in_body {
            let scrubber = &self.ingest.scrubber;
            let scrub = |s: &mut String| {
                let mut bytes = std::mem::take(s).into_bytes();
                scrubber.scrub(&mut bytes);
                *s = String::from_utf8_lossy(&bytes).into_owned();
            };
            for e in &mut events {
                scrubber.scrub_value(&mut e.payload);
                scrub(&mut e.message_id);
                scrub(&mut e.user_key);
                e.call_type.as_mut().map(scrub);
                e.state_reason.as_mut().map(scrub);
            }
        }
        let n = events.len() as u64;
        let direction = self.record.direction.as_str();
        self.record.events = events;
        match self.commit().await? {
            Committed::AsSent => {
                metrics::counter!("gateway_inbound_events_total", "direction" => direction)
                    .increment(n);
                Ok(HttpResponse::Ok().json(serde_json::json!({"success": true})))
            }
            Committed::Refused(why) => Err(IngestError::Unstorable(why)),
        }
    }

    /// Audits a refused request and returns the error to answer with: `error` itself, or 503 if
    /// even the audit cannot be committed.
    pub async fn refuse(mut self, error: IngestError) -> IngestError {
        let record = &mut self.record;
        record.status = super::error::status_of(&error).as_u16();
        record.error_code = Some(error.code().into());
        // Messages may quote the request (a path, a connection name): scrubbed like the rest.
        let mut message = error.audit_message().into_bytes();
        self.ingest.scrubber.scrub(&mut message);
        record.error_message = Some(String::from_utf8_lossy(&message).into_owned());
        record.events.clear();
        if record.connection.is_none() || error.is_body_problem() {
            let keep = self.ingest.limits.unauthenticated_body_bytes;
            if record.body.len() > keep {
                record.body.truncate(keep);
                record.body_truncated = true;
            }
        }
        match self.commit().await {
            Ok(Committed::AsSent) => error,
            Ok(Committed::Refused(why)) => IngestError::Unstorable(why),
            Err(unavailable) => unavailable,
        }
    }

    async fn commit(self) -> Result<Committed, IngestError> {
        let Audit {
            ingest,
            record,
            route,
            ..
        } = self;
        let status = record.status;
        let deadline = Instant::now() + ingest.commit_timeout;
        match ingest.committer.commit(record, deadline).await {
            Ok(committed) => {
                let status = match committed {
                    Committed::AsSent => status,
                    Committed::Refused(_) => 400,
                };
                metrics::counter!("gateway_inbound_requests_total", "route" => route, "status" => status.to_string())
                    .increment(1);
                Ok(committed)
            }
            Err(e) => {
                tracing::debug!(error = %e, "The audit log could not commit a request; answering 503.");
                metrics::counter!("gateway_inbound_requests_total", "route" => route, "status" => "503")
                    .increment(1);
                Err(IngestError::Unavailable {
                    retry_after_secs: ingest.retry_after_secs,
                    reason: e.reason(),
                })
            }
        }
    }
}

/// A request header's value, when it is text.
pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}
