//! One round's planned requests grouped into HTTP requests: `users/update` bodies into
//! `users/bulkUpdate`, `events/track` bodies into `events/trackBulk` (per connection, at most
//! 1,000 items and 4 MB each; a `solo` event alone), everything else one request each.

use super::plan::{Conn, Job};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Most items in one bulk request (reference §1.3: RudderStack's and Segment's chunk size).
pub const MAX_BULK_ITEMS: usize = 1000;
/// Largest bulk body: Iterable's "max body 4MB" for bulkUpdate, applied to trackBulk too as
/// RudderStack does (reference §1.3).
pub const MAX_BULK_BYTES: usize = 4_000_000;

/// One event's part in a request, with the identifiers a bulk answer names it by.
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// Index into the batch's jobs.
    pub job: usize,
    pub email: Option<String>,
    pub user_id: Option<String>,
    pub event_name: Option<String>,
}

/// One HTTP request to send.
#[derive(Debug)]
pub(super) struct Request {
    pub conn: Arc<Conn>,
    pub endpoint: Endpoint,
    pub bulk: bool,
    /// The body as sent: numbers formatted as JavaScript formats them.
    pub wire: String,
    /// The same body, for the audit log.
    pub body: Value,
    pub members: Vec<Member>,
}

/// The bulk endpoint a single-item endpoint is grouped into, and the body's array key.
fn bulk_of(endpoint: Endpoint) -> Option<(Endpoint, &'static str)> {
    match endpoint {
        Endpoint::UsersUpdate => Some((Endpoint::UsersBulkUpdate, "users")),
        Endpoint::EventsTrack => Some((Endpoint::EventsTrackBulk, "events")),
        _ => None,
    }
}

fn member(job: usize, body: &Value) -> Member {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    Member {
        job,
        email: text("email"),
        user_id: text("userId"),
        event_name: text("eventName"),
    }
}

/// A bulk request being filled.
struct Open {
    request: usize,
    items: Vec<String>,
    values: Vec<Value>,
    bytes: usize,
}

/// Groups step `round` of each job in `alive` (job indexes, oldest event first).
pub(super) fn build(jobs: &[Job], alive: &[usize], round: usize) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    let mut fillings: Vec<Open> = Vec::new();
    // The bulk request still open for more items, per (connection, endpoint).
    let mut open: HashMap<(&str, Endpoint), usize> = HashMap::new();
    for &j in alive {
        let job = &jobs[j];
        let Some(step) = job.steps.get(round) else {
            continue;
        };
        let Some((endpoint, key)) = bulk_of(step.endpoint) else {
            out.push(Request {
                conn: job.conn.clone(),
                endpoint: step.endpoint,
                bulk: false,
                wire: js::to_json_string(&step.body),
                body: step.body.clone(),
                members: vec![member(j, &step.body)],
            });
            continue;
        };
        let item = js::to_json_string(&step.body);
        let overhead = key.len() + "{\"\":[]}".len();
        let slot = (job.conn.name.as_str(), endpoint);
        let fits = |o: &Open| {
            o.items.len() < MAX_BULK_ITEMS && o.bytes + 1 + item.len() + overhead <= MAX_BULK_BYTES
        };
        let f = match open.get(&slot) {
            Some(&f) if !job.event.solo && fits(&fillings[f]) => f,
            _ => {
                out.push(Request {
                    conn: job.conn.clone(),
                    endpoint,
                    bulk: true,
                    wire: String::new(),
                    body: Value::Null,
                    members: vec![],
                });
                fillings.push(Open {
                    request: out.len() - 1,
                    items: vec![],
                    values: vec![],
                    bytes: 0,
                });
                // A solo event's request takes nothing else.
                if !job.event.solo {
                    open.insert(slot, fillings.len() - 1);
                }
                fillings.len() - 1
            }
        };
        let o = &mut fillings[f];
        o.bytes += item.len() + usize::from(!o.items.is_empty());
        o.items.push(item);
        o.values.push(step.body.clone());
        out[o.request].members.push(member(j, &step.body));
    }
    for o in fillings {
        let request = &mut out[o.request];
        let key = bulk_key(request.endpoint);
        request.wire = format!("{{\"{key}\":[{}]}}", o.items.join(","));
        let mut body = Map::new();
        body.insert(key.to_string(), Value::Array(o.values));
        request.body = Value::Object(body);
    }
    out
}

fn bulk_key(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::UsersBulkUpdate => "users",
        _ => "events",
    }
}
