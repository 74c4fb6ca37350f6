//! Reading Iterable's answer to one request: for each event in it, go on (its next request,
//! or delivered) or stop in a state, and what the attempt came to.

use super::plan::Job;
use super::requests::{Member, Request};
use crate::delivery::http::Reply;
use crate::delivery::retry::{classify, CallOutcome, Class, RetryPolicy, Verdict};
use crate::delivery::store::{truncate, AttemptOutcome, Next};
use crate::delivery::Jitter;
use serde_json::{json, Value};
use std::collections::HashMap;

/// How much of an unparseable error body a state reason quotes.
const QUOTED_BODY_BYTES: usize = 1000;

/// One event's result for one request.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Ok,
    Stop(Next, String),
}

/// The answer, read.
#[derive(Debug)]
pub(super) struct Verdicts {
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    /// Per member of the request, in its order.
    pub steps: Vec<(usize, Step)>,
}

pub(super) fn interpret(
    request: &Request,
    reply: &Reply,
    jobs: &[Job],
    policy: &RetryPolicy,
    jitter: &Jitter,
) -> Verdicts {
    let members = &request.members;
    let all = |step: Step| members.iter().map(|m| (m.job, step.clone())).collect();
    let what = describe(request, reply);
    match classify(&reply.outcome) {
        Class::Delivered if request.bulk => bulk(members, reply),
        Class::Delivered => Verdicts {
            outcome: AttemptOutcome::Delivered,
            error: None,
            steps: all(Step::Ok),
        },
        Class::Retryable => {
            let retry_after = reply.outcome.retry_after();
            let steps: Vec<(usize, Step)> = members
                .iter()
                .map(|m| {
                    let n = jobs[m.job].event.attempts;
                    let max = policy.max_attempts;
                    let step = match policy.after_failure(n, retry_after, jitter()) {
                        Verdict::RetryIn(d) => Step::Stop(
                            Next::Retry(d),
                            format!("{what} (attempt {n} of {max}; next in {d:.1?})"),
                        ),
                        Verdict::Dead => Step::Stop(
                            Next::Dead,
                            format!("{what} (attempt {n} of {max}: no attempts left)"),
                        ),
                    };
                    (m.job, step)
                })
                .collect();
            let any_retry = steps
                .iter()
                .any(|(_, s)| matches!(s, Step::Stop(Next::Retry(_), _)));
            Verdicts {
                outcome: if any_retry {
                    AttemptOutcome::Retry
                } else {
                    AttemptOutcome::Dead
                },
                error: Some(what),
                steps,
            }
        }
        // One bad item must not fail its batch: each event is retried alone, so that only the
        // bad one fails (Block's client does the same, reference §1.4). Not for 401/403: a bad
        // key refuses every item, and splitting would only multiply the refusals.
        Class::Permanent if members.len() > 1 && !matches!(reply.status(), Some(401 | 403)) => {
            Verdicts {
                outcome: AttemptOutcome::Retry,
                error: Some(format!("{what}; each of its events is retried alone")),
                steps: all(Step::Stop(Next::Split, format!("{what}; retried alone"))),
            }
        }
        Class::Permanent => Verdicts {
            outcome: AttemptOutcome::Failed,
            error: Some(what.clone()),
            steps: all(Step::Stop(Next::Failed, what)),
        },
    }
}

/// "HTTP 400 from /api/events/track: {"msg":...,"code":...}", "no answer ...", etc.
fn describe(request: &Request, reply: &Reply) -> String {
    let path = request.endpoint.path();
    match &reply.outcome {
        CallOutcome::Timeout => format!("no answer from {path} within the request timeout"),
        CallOutcome::Network(e) => format!("cannot reach {path}: {e}"),
        CallOutcome::Status { status, .. } => {
            let body = reply.body.as_deref().unwrap_or("");
            let parsed: Option<Value> = serde_json::from_str(body).ok();
            // Iterable's `{msg, code}` (reference §1.4) is what an operator needs; anything
            // else is quoted as received.
            let detail = match parsed.as_ref().filter(|v| v.get("code").is_some()) {
                Some(v) => json!({"msg": v.get("msg"), "code": v.get("code")}).to_string(),
                None => truncate(body.trim(), QUOTED_BODY_BYTES).replace('\0', "\u{fffd}"),
            };
            format!("HTTP {status} from {path}: {detail}")
        }
    }
}

/// A 2xx bulk answer: the items it lists as failed are refused, the others delivered.
fn bulk(members: &[Member], reply: &Reply) -> Verdicts {
    let body: Value = reply
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let refusals = Refusals::read(&body);
    let steps: Vec<(usize, Step)> = members
        .iter()
        .map(|m| match refusals.list_of(m) {
            Some(list) => {
                let why = format!("Iterable's bulk answer lists it in {list}");
                (m.job, Step::Stop(Next::Failed, why))
            }
            None => (m.job, Step::Ok),
        })
        .collect();
    let refused = steps.iter().filter(|(_, s)| *s != Step::Ok).count();
    Verdicts {
        outcome: if refused > 0 {
            AttemptOutcome::Partial
        } else {
            AttemptOutcome::Delivered
        },
        error: (refused > 0).then(|| format!("{refused} of {} items refused", members.len())),
        steps,
    }
}

/// The identifiers a bulk answer lists as failed, each with the name of its list.
#[derive(Debug, Default)]
struct Refusals {
    /// Lowercased: Iterable compares emails case-insensitively.
    emails: HashMap<String, String>,
    user_ids: HashMap<String, String>,
    event_names: HashMap<String, String>,
}

/// `failedUpdates` lists (reference §1.4: `UserBulkUpdateListResponse`, `BulkTrackResponse`).
const FAILED_UPDATES: [&str; 10] = [
    "invalidEmails",
    "invalidUserIds",
    "notFoundEmails",
    "notFoundUserIds",
    "forgottenEmails",
    "forgottenUserIds",
    "conflictEmails",
    "conflictUserIds",
    "invalidDataEmails",
    "invalidDataUserIds",
];

impl Refusals {
    fn read(body: &Value) -> Refusals {
        let mut r = Refusals::default();
        let mut add = |list: &Value, name: String| {
            let map = if name.ends_with("Emails") {
                &mut r.emails
            } else if name.ends_with("UserIds") {
                &mut r.user_ids
            } else {
                &mut r.event_names
            };
            let lower = name.ends_with("Emails");
            for id in list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let id = if lower {
                    id.to_lowercase()
                } else {
                    id.to_string()
                };
                map.entry(id).or_insert_with(|| name.clone());
            }
        };
        for list in FAILED_UPDATES {
            if let Some(ids) = body.get("failedUpdates").and_then(|f| f.get(list)) {
                add(ids, format!("failedUpdates.{list}"));
            }
        }
        for list in ["invalidEmails", "invalidUserIds", "disallowedEventNames"] {
            if let Some(ids) = body.get(list) {
                add(ids, list.to_string());
            }
        }
        r
    }

    fn list_of(&self, m: &Member) -> Option<&str> {
        let email = m
            .email
            .as_ref()
            .and_then(|e| self.emails.get(&e.to_lowercase()));
        let user = m.user_id.as_ref().and_then(|u| self.user_ids.get(u));
        let name = m.event_name.as_ref().and_then(|n| self.event_names.get(n));
        email.or(user).or(name).map(String::as_str)
    }
}
