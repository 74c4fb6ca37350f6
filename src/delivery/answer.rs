//! Reading a partner's answer to one request: for each event in it, go on (its next request,
//! or delivered) or stop in a state, and what the attempt came to. The same rules for both
//! partners (DESIGN §2 "Delivery"): each event is judged by its own attempt count.

use super::engine::{Job, Partner, Request};
use super::http::Reply;
use super::retry::{classify, CallOutcome, Class, RetryPolicy, Verdict};
use super::store::{pg_text, truncate, AttemptOutcome, Next};
use super::Jitter;
use serde_json::{json, Value};

/// How much of an unparseable error body a state reason quotes.
const QUOTED_BODY_BYTES: usize = 1000;

/// One event's result for one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Ok,
    Stop(Next, String),
}

/// The answer, read.
#[derive(Debug)]
pub(crate) struct Verdicts {
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    /// Per member of the request, in its order: (job, step).
    pub steps: Vec<(usize, Step)>,
    /// The partner refused the connection's credentials: `unauthorized` or `forbidden`.
    pub refusal: Option<&'static str>,
}

fn all(request: &Request, step: Step) -> Vec<(usize, Step)> {
    request
        .members
        .iter()
        .map(|m| (m.job, step.clone()))
        .collect()
}

/// Dry-run mode: every member went through, nothing was sent.
pub(crate) fn dry_run(request: &Request) -> Verdicts {
    Verdicts {
        outcome: AttemptOutcome::DryRun,
        error: None,
        steps: all(request, Step::Ok),
        refusal: None,
    }
}

/// A request not sent: its members stop with `next` (their attempt is given back).
pub(crate) fn unsent(request: &Request, next: Next, why: &str) -> Verdicts {
    Verdicts {
        outcome: AttemptOutcome::Retry,
        error: None,
        steps: all(request, Step::Stop(next, why.to_string())),
        refusal: None,
    }
}

/// What the connection-level refusal of an answer is, if it is one: 401 and 403 refuse the
/// key (Iterable's `BadApiKey`, Segment's unknown write key), whatever the request carried.
pub(crate) fn refusal(reply: &Reply) -> Option<&'static str> {
    match reply.status() {
        Some(401) => Some("unauthorized"),
        Some(403) => Some("forbidden"),
        _ => None,
    }
}

pub(crate) fn read<P: Partner>(
    partner: &P,
    request: &Request,
    reply: &Reply,
    jobs: &[Job<P::Part>],
    policy: &RetryPolicy,
    jitter: &Jitter,
) -> Verdicts {
    let members = &request.members;
    let what = describe(request, reply);
    if let Some(reason) = refusal(reply) {
        // Not the events' fault: they wait, untouched, until the key works again.
        return Verdicts {
            outcome: AttemptOutcome::Paused,
            error: Some(format!("{what}; the connection is paused")),
            steps: all(
                request,
                Step::Stop(
                    Next::Pause,
                    format!("{what}; waiting while the connection is paused"),
                ),
            ),
            refusal: Some(reason),
        };
    }
    match classify(&reply.outcome) {
        Class::Delivered if request.bulk => {
            let body: Value = reply
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null);
            let refused = partner.refused(request, &body);
            let mut steps: Vec<(usize, Step)> = all(request, Step::Ok);
            for (i, why) in &refused {
                steps[*i].1 = Step::Stop(Next::Failed, why.clone());
            }
            Verdicts {
                outcome: if refused.is_empty() {
                    AttemptOutcome::Delivered
                } else {
                    AttemptOutcome::Partial
                },
                error: (!refused.is_empty())
                    .then(|| format!("{} of {} items refused", refused.len(), members.len())),
                steps,
                refusal: None,
            }
        }
        Class::Delivered => Verdicts {
            outcome: AttemptOutcome::Delivered,
            error: None,
            steps: all(request, Step::Ok),
            refusal: None,
        },
        Class::Retryable => {
            let retry_after = reply.outcome.retry_after();
            let max = policy.max_attempts;
            let steps: Vec<(usize, Step)> = members
                .iter()
                .map(|m| {
                    // Each event by its own attempts: an old one dies, fresh ones retry.
                    let n = jobs[m.job].event.attempts;
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
                refusal: None,
            }
        }
        // One bad item must not fail its batch: each event is retried alone, so that only the
        // bad one fails (Block's client does the same, reference §1.4).
        Class::Permanent if members.len() > 1 => Verdicts {
            outcome: AttemptOutcome::Retry,
            error: Some(format!("{what}; each of its events is retried alone")),
            steps: all(
                request,
                Step::Stop(Next::Split, format!("{what}; retried alone")),
            ),
            refusal: None,
        },
        Class::Permanent => Verdicts {
            outcome: AttemptOutcome::Failed,
            error: Some(what.clone()),
            steps: all(request, Step::Stop(Next::Failed, what)),
            refusal: None,
        },
    }
}

/// "HTTP 400 from /api/events/track: {"msg":...,"code":...}", "no answer ...", etc. Safe to
/// store: no NUL.
fn describe(request: &Request, reply: &Reply) -> String {
    let path = request.endpoint;
    let text = match &reply.outcome {
        CallOutcome::Timeout => format!("no answer from {path} within the request timeout"),
        CallOutcome::Network(e) => format!("cannot reach {path}: {e}"),
        CallOutcome::Status { status, .. } => {
            let body = reply.body.as_deref().unwrap_or("");
            let parsed: Option<Value> = serde_json::from_str(body).ok();
            // Iterable's `{msg, code}` (reference §1.4) is what an operator needs; anything
            // else is quoted as received.
            let detail = match parsed.as_ref().filter(|v| v.get("code").is_some()) {
                Some(v) => json!({"msg": v.get("msg"), "code": v.get("code")}).to_string(),
                None => truncate(body.trim(), QUOTED_BODY_BYTES).to_string(),
            };
            format!("HTTP {status} from {path}: {detail}")
        }
    };
    pg_text(&text).into_owned()
}
