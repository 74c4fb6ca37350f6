//! Segment → Iterable, as a [`Partner`] of the engine: each event through its connection's
//! mapping ([`bulk::plan_event`]), the bulk-capable parts of a round grouped into bulk requests
//! ([`bulk::build`], shared with `gateway map --batch`), the rest one request each, with the
//! connection's `Api-Key`; a 2xx bulk answer's refused items read back from its lists
//! ([`answer`]).

mod answer;
pub mod bulk;

pub use bulk::{MAX_BULK_BYTES, MAX_BULK_ITEMS};

use super::engine::{Job, Member, Partner, Planned, Request, Round};
use super::store::{Claimed, Next, Settle};
use super::window::{Family, Kind, UserCall};
use super::Compiled;
use crate::audit::{redact, Direction};
use crate::configuration::{secret, Settings};
use crate::iterable::api::{DataCenter, Endpoint, API_KEY_HEADER};
use crate::mapping::{js, Destination, OnceKey};
use crate::segment::event::SegmentEvent;
use bulk::Part;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

/// One Iterable connection, for one batch.
pub(crate) struct Iterable {
    name: String,
    destination: Compiled,
    api_key: Option<String>,
    /// The Iterable base URL of the connection's data center.
    base: String,
    live: bool,
    now_ms: i64,
    /// The request headers as audited: with a body, and without (a `DELETE`).
    headers: Value,
    headers_no_body: Value,
}

impl Iterable {
    pub fn new(settings: &Settings, destination: Compiled, connection: &str) -> Iterable {
        let c = settings.connection(connection);
        // Either place may say Europe: the connection's `data_center`, or Segment's
        // `dataCenterLocation` in its mapping settings.
        let europe = destination
            .as_ref()
            .as_ref()
            .is_ok_and(|d| d.data_center == DataCenter::Europe)
            || c.is_some_and(|c| c.data_center == DataCenter::Europe);
        let dc = if europe {
            DataCenter::Europe
        } else {
            DataCenter::UnitedStates
        };
        Iterable {
            name: connection.to_string(),
            destination,
            api_key: c
                .and_then(|c| secret(&c.iterable_api_key))
                .map(str::to_string),
            base: settings.iterable.hosts().base(dc).to_string(),
            live: settings.delivery.mode == crate::configuration::DeliveryMode::Live,
            now_ms: chrono::Utc::now().timestamp_millis(),
            headers: redact::headers([
                (API_KEY_HEADER, b"-".as_slice()),
                (CONTENT_TYPE.as_str(), super::http::JSON.as_bytes()),
            ]),
            headers_no_body: redact::headers([(API_KEY_HEADER, b"-".as_slice())]),
        }
    }

    /// A request to `endpoint`. A user deletion by path (`DELETE users/{email}`) names its
    /// user in the URL only, taken from the planned `body`; its `endpoint` stays the template.
    fn request(
        &self,
        endpoint: Endpoint,
        body: Option<&Value>,
        wire: String,
        members: Vec<Member>,
        full: bool,
    ) -> Request {
        let sends_body = endpoint.sends_body();
        let path = match (sends_body, body) {
            (false, Some(body)) => endpoint.request_path(body),
            _ => std::borrow::Cow::Borrowed(endpoint.path()),
        };
        Request {
            endpoint: endpoint.path(),
            method: endpoint.method(),
            sends_body,
            url: format!("{}{path}", self.base),
            credential: self.api_key.clone().map(|k| (API_KEY_HEADER, k)),
            audit_headers: if sends_body {
                self.headers.clone()
            } else {
                self.headers_no_body.clone()
            },
            wire,
            bulk: bulk::is_bulk(endpoint),
            full,
            members,
        }
    }
}

/// A member with the identifiers Iterable's bulk answers name items by.
fn member(job: usize, body: &serde_json::Map<String, Value>) -> Member {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    Member {
        job,
        email: text("email"),
        user_id: text("userId"),
        event_name: text("eventName"),
    }
}

impl Partner for Iterable {
    type Part = Part;

    fn direction(&self) -> Direction {
        Direction::SegmentToIterable
    }

    fn connection(&self) -> &str {
        &self.name
    }

    fn plan(&self, claimed: Vec<Claimed>) -> Planned<Part> {
        let mut planned = Planned {
            jobs: Vec::new(),
            done: Vec::new(),
        };
        for event in claimed {
            let settle = |next, why: String, action| Settle::of(&event, next, Some(why), action);
            let destination: &Destination = match self.destination.as_ref() {
                Ok(d) => d,
                Err(why) => {
                    planned.done.push(settle(Next::Failed, why.clone(), None));
                    continue;
                }
            };
            if self.api_key.is_none() && self.live {
                let why = format!(
                    "connection {:?} has no iterable_api_key: nothing can be sent in live mode",
                    self.name
                );
                planned.done.push(settle(Next::Failed, why, None));
                continue;
            }
            let parsed = match SegmentEvent::from_value(event.payload.clone(), None) {
                Ok(p) => p,
                Err(e) => {
                    planned.done.push(settle(
                        Next::Failed,
                        format!("not a Segment event: {e}"),
                        None,
                    ));
                    continue;
                }
            };
            let plan = bulk::plan_event(destination, &parsed, self.now_ms);
            let errors: Vec<String> = plan
                .errors
                .iter()
                .map(|(action, e)| format!("{}: {} ({})", action.name(), e.message, e.code))
                .collect();
            if !plan.parts.is_empty() {
                planned.jobs.push(Job {
                    event,
                    parts: plan.parts,
                    action: plan.action,
                    errors,
                    notes: Vec::new(),
                });
                continue;
            }
            let done = if !errors.is_empty() {
                settle(Next::Failed, errors.join("; "), plan.action)
            } else if !plan.skipped.is_empty() {
                settle(Next::Skipped, plan.skipped.join("; "), plan.action)
            } else {
                settle(
                    Next::Skipped,
                    "the mapping planned no request".into(),
                    plan.action,
                )
            };
            planned.done.push(done);
        }
        planned
    }

    fn requests(&self, jobs: &[Job<Part>], alive: &[usize], round: usize) -> Round {
        let mut out = Round::default();
        let mut items = Vec::new();
        for &j in alive {
            match jobs[j].parts.get(round) {
                None => {}
                Some(Part::Single(r)) => {
                    let members = match &r.body {
                        Value::Object(m) => vec![member(j, m)],
                        _ => vec![Member {
                            job: j,
                            ..Member::default()
                        }],
                    };
                    out.requests.push(self.request(
                        r.endpoint,
                        Some(&r.body),
                        js::to_json_string(&r.body),
                        members,
                        true,
                    ));
                }
                Some(Part::Bulk(item)) => items.push((j, item, jobs[j].event.solo)),
            }
        }
        if items.is_empty() {
            return out;
        }
        let Ok(destination) = self.destination.as_ref() else {
            return out;
        };
        let built = bulk::build(destination, &items, self.now_ms);
        for b in built.requests {
            let members = b
                .members
                .iter()
                .map(|&j| match &jobs[j].parts[round] {
                    Part::Bulk(item) => member(j, &item.payload),
                    Part::Single(_) => Member {
                        job: j,
                        ..Member::default()
                    },
                })
                .collect();
            out.requests
                .push(self.request(b.request.endpoint, None, b.wire, members, b.full));
        }
        for (j, action, e) in built.errors {
            out.refused
                .push((j, format!("{}: {} ({})", action.name(), e.message, e.code)));
        }
        out
    }

    fn refused(&self, request: &Request, answer: &Value) -> Vec<(usize, String)> {
        answer::refused(&request.members, answer)
    }

    /// Profile and event calls, single or bulk (`bulk::user_call`), with the users they name.
    fn user_call(&self, part: &Part) -> Option<UserCall> {
        let (family, kind) = part.user_call()?;
        Some(UserCall {
            family,
            kind,
            identities: part.identities(),
        })
    }

    fn user_call_endpoints(&self) -> &'static [(&'static str, Family, Kind)] {
        &bulk::USER_CALL_ENDPOINTS
    }

    /// Token registrations are sent once per window (`Destination::once_key`).
    fn once(&self, part: &Part) -> Option<(OnceKey, &'static str)> {
        let Part::Single(request) = part else {
            return None;
        };
        let destination = self.destination.as_ref().as_ref().ok()?;
        destination
            .once_key(request)
            .map(|key| (key, request.endpoint.path()))
    }
}
