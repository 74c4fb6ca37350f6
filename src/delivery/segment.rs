//! Iterable → Segment, as a [`Partner`] of the engine: claimed events (already Segment `track`
//! calls, made at ingest) go to `POST {region}/v1/batch` with HTTP Basic (the connection's
//! Segment write key), in batches of at most 2,500 events and 500 KB, each event at most 32 KB
//! (Segment's limits, DESIGN §3). The answer rules are the engine's: a 400 is permanent, and a
//! refused batch of several events is split so that only the one Segment refuses fails.

use super::engine::{Job, Member, Partner, Planned, Request, Round};
use super::http::JSON;
use super::store::{Claimed, Next, Settle};
use crate::audit::{redact, Direction};
use crate::configuration::{secret, DeliveryMode, Settings};
use crate::mapping::js;
use base64::Engine;
use serde_json::Value;

pub const MAX_BATCH_EVENTS: usize = 2500;
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
pub const PATH: &str = "/v1/batch";
/// The action recorded on the events.
const ACTION: &str = "segment.track";

/// One Segment connection, for one batch.
pub(crate) struct Segment {
    name: String,
    /// `None`: not configured in this process.
    url: Option<String>,
    /// `Basic base64(writeKey:)`.
    authorization: Option<String>,
    live: bool,
    headers: Value,
}

impl Segment {
    pub fn new(settings: &Settings, connection: &str) -> Segment {
        let c = settings.connection(connection);
        Segment {
            name: connection.to_string(),
            url: c.map(|c| {
                format!(
                    "{}{PATH}",
                    c.segment_base(&settings.segment).trim_end_matches('/')
                )
            }),
            authorization: c.and_then(|c| secret(&c.segment_write_key)).map(|key| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
                )
            }),
            live: settings.delivery.mode == DeliveryMode::Live,
            headers: redact::headers([
                ("authorization", b"-".as_slice()),
                ("content-type", JSON.as_bytes()),
            ]),
        }
    }
}

impl Partner for Segment {
    /// The event's JSON as sent.
    type Part = String;

    fn direction(&self) -> Direction {
        Direction::IterableToSegment
    }

    fn connection(&self) -> &str {
        &self.name
    }

    fn plan(&self, claimed: Vec<Claimed>) -> Planned<String> {
        let mut planned = Planned {
            jobs: Vec::new(),
            done: Vec::new(),
        };
        for event in claimed {
            let wire = js::to_json_string(&event.payload);
            let refusal = if wire.len() > MAX_EVENT_BYTES {
                Some(format!(
                    "the event is {} bytes; Segment accepts at most {MAX_EVENT_BYTES}",
                    wire.len()
                ))
            } else if self.url.is_none() {
                Some(format!("connection {:?} is not configured", self.name))
            } else if self.live && self.authorization.is_none() {
                Some(format!(
                    "connection {:?} has no segment_write_key",
                    self.name
                ))
            } else {
                None
            };
            match refusal {
                Some(why) => planned.done.push(Settle::of(
                    &event,
                    Next::Failed,
                    Some(why),
                    Some(ACTION.into()),
                )),
                None => planned.jobs.push(Job {
                    event,
                    parts: vec![wire],
                    action: Some(ACTION.into()),
                    errors: Vec::new(),
                    notes: Vec::new(),
                }),
            }
        }
        planned
    }

    fn requests(&self, jobs: &[Job<String>], alive: &[usize], round: usize) -> Round {
        let mut round_out = Round::default();
        if round > 0 {
            return round_out;
        }
        let Some(url) = &self.url else {
            return round_out;
        };
        let batch = |members: Vec<Member>, wire: String, full: bool| Request {
            endpoint: PATH,
            method: "POST",
            sends_body: true,
            url: url.clone(),
            credential: self.authorization.clone().map(|a| ("Authorization", a)),
            audit_headers: self.headers.clone(),
            wire,
            bulk: true,
            full,
            members,
        };
        // The open batch: its members and the events' JSON joined by commas.
        let mut open: Option<(Vec<Member>, String)> = None;
        for &j in alive {
            let wire = &jobs[j].parts[0];
            let member = Member {
                job: j,
                ..Member::default()
            };
            if jobs[j].event.solo {
                round_out.requests.push(batch(
                    vec![member],
                    format!("{{\"batch\":[{wire}]}}"),
                    true,
                ));
                continue;
            }
            if let Some((members, body)) = &open {
                let fits = members.len() < MAX_BATCH_EVENTS
                    && body.len() + wire.len() + 16 <= MAX_BATCH_BYTES;
                if !fits {
                    let (members, body) = open.take().expect("checked");
                    round_out.requests.push(batch(
                        members,
                        format!("{{\"batch\":[{body}]}}"),
                        true,
                    ));
                }
            }
            match &mut open {
                Some((members, body)) => {
                    body.push(',');
                    body.push_str(wire);
                    members.push(member);
                }
                None => open = Some((vec![member], wire.clone())),
            }
        }
        if let Some((members, body)) = open {
            let full = members.len() >= MAX_BATCH_EVENTS || body.len() * 10 >= MAX_BATCH_BYTES * 9;
            round_out
                .requests
                .push(batch(members, format!("{{\"batch\":[{body}]}}"), full));
        }
        round_out
    }
}
