//! One round's planned requests grouped into HTTP requests: `users/update` bodies into
//! `users/bulkUpdate`, `events/track` bodies into `events/trackBulk` (per connection, at most
//! 1,000 items and 4 MB each; a `solo` event alone), everything else one request each.

use super::plan::{Conn, Job};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use serde_json::Value;
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
    /// The body as sent (numbers formatted as JavaScript formats them), and as audited.
    pub wire: String,
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
                    members: vec![],
                });
                fillings.push(Open {
                    request: out.len() - 1,
                    items: vec![],
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
        out[o.request].members.push(member(j, &step.body));
    }
    for o in fillings {
        let request = &mut out[o.request];
        let key = bulk_key(request.endpoint);
        request.wire = format!("{{\"{key}\":[{}]}}", o.items.join(","));
    }
    out
}

fn bulk_key(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::UsersBulkUpdate => "users",
        _ => "events",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::store::Claimed;
    use crate::mapping::PlannedRequest;
    use serde_json::json;

    fn job(id: i64, conn: &Arc<Conn>, solo: bool, steps: Vec<(Endpoint, Value)>) -> Job {
        Job {
            event: Claimed {
                id,
                received_at: chrono::Utc::now(),
                connection: conn.name.clone(),
                message_id: format!("m-{id}"),
                user_key: format!("u-{id}"),
                payload: json!({}),
                attempts: 1,
                solo,
            },
            conn: conn.clone(),
            steps: steps
                .into_iter()
                .map(|(endpoint, body)| PlannedRequest { endpoint, body })
                .collect(),
            action: None,
            errors: vec![],
            notes: vec![],
        }
    }

    fn conn(name: &str) -> Arc<Conn> {
        Arc::new(Conn {
            name: name.into(),
            api_key: None,
            base: "http://iterable".into(),
        })
    }

    fn shape(requests: &[Request]) -> Vec<(Endpoint, Vec<usize>)> {
        let jobs = |r: &Request| r.members.iter().map(|m| m.job).collect();
        requests.iter().map(|r| (r.endpoint, jobs(r))).collect()
    }

    #[test]
    fn bulkable_steps_are_grouped_per_connection_and_solo_events_go_alone() {
        let (a, b) = (conn("a"), conn("b"));
        let track = |n: i64| (Endpoint::EventsTrack, json!({"eventName": "E", "n": n}));
        let jobs = vec![
            job(1, &a, false, vec![track(1)]),
            job(
                2,
                &a,
                false,
                vec![(Endpoint::CommerceUpdateCart, json!({"n": 2}))],
            ),
            job(3, &b, false, vec![track(3)]),
            job(4, &a, true, vec![track(4)]),
            job(
                5,
                &a,
                false,
                vec![track(5), (Endpoint::UsersUpdateEmail, json!({}))],
            ),
        ];
        let requests = build(&jobs, &[0, 1, 2, 3, 4], 0);
        use Endpoint::*;
        assert_eq!(
            shape(&requests),
            [
                (EventsTrackBulk, vec![0, 4]),
                (CommerceUpdateCart, vec![1]),
                (EventsTrackBulk, vec![2]),
                (EventsTrackBulk, vec![3]),
            ]
        );
        assert_eq!(
            requests[0].wire,
            r#"{"events":[{"eventName":"E","n":1},{"eventName":"E","n":5}]}"#
        );
        assert_eq!(
            serde_json::from_str::<Value>(&requests[0].wire).unwrap(),
            json!({"events": [{"eventName": "E", "n": 1}, {"eventName": "E", "n": 5}]})
        );
        // Round 1: only job 4 has a second step.
        assert_eq!(
            shape(&build(&jobs, &[0, 1, 2, 3, 4], 1)),
            [(UsersUpdateEmail, vec![4])]
        );
    }

    #[test]
    fn bulk_requests_hold_at_most_1000_items_and_4_mb() {
        let a = conn("a");
        let user = |n: i64| (Endpoint::UsersUpdate, json!({"userId": format!("u-{n}")}));
        let jobs: Vec<Job> = (0..2500)
            .map(|n| job(n, &a, false, vec![user(n)]))
            .collect();
        let all: Vec<usize> = (0..jobs.len()).collect();
        let sizes: Vec<usize> = build(&jobs, &all, 0)
            .iter()
            .map(|r| r.members.len())
            .collect();
        assert_eq!(sizes, [1000, 1000, 500]);

        let big = "x".repeat(1_500_000);
        let jobs: Vec<Job> = (0..5)
            .map(|n| {
                job(
                    n,
                    &a,
                    false,
                    vec![(Endpoint::UsersUpdate, json!({"blob": big}))],
                )
            })
            .collect();
        let requests = build(&jobs, &[0, 1, 2, 3, 4], 0);
        assert_eq!(
            requests.iter().map(|r| r.members.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert!(requests.iter().all(|r| r.wire.len() <= MAX_BULK_BYTES));
    }
}
