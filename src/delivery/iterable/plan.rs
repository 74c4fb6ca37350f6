//! Each claimed event through its connection's mapping: the requests to send, or the state it
//! goes to without sending anything (skipped, failed, dead).

use crate::configuration::{secret, DeliveryMode, Settings};
use crate::delivery::store::{Claimed, Next, Settle};
use crate::delivery::Clients;
use crate::iterable::api::DataCenter;
use crate::mapping::{Destination, Outcome, PlannedRequest};
use crate::segment::event::SegmentEvent;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;

/// What a request needs to know about its connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub name: String,
    pub api_key: Option<SecretString>,
    /// The Iterable base URL of the connection's data center.
    pub base: String,
}

/// An event with requests to send.
#[derive(Debug)]
pub(super) struct Job {
    pub event: Claimed,
    pub conn: Arc<Conn>,
    /// In order: step `n + 1` is sent only once step `n` succeeded.
    pub steps: Vec<PlannedRequest>,
    pub action: Option<String>,
    /// Errors of other subscriptions that matched the event: it ends `failed` even when its
    /// requests are delivered.
    pub errors: Vec<String>,
    /// Steps left out because they were sent within their window (`once`): the reason.
    pub notes: Vec<String>,
}

pub(super) enum Planned {
    Send(Job),
    Done(Settle),
}

/// Plans one event with "now" = `now_ms`; `conns` caches the connections of this batch.
pub(super) fn plan(
    settings: &Settings,
    clients: &Clients,
    conns: &mut HashMap<String, Arc<Conn>>,
    event: Claimed,
    now_ms: i64,
) -> Planned {
    let max = settings.delivery.max_attempts;
    if event.attempts > max {
        // Only reachable through expired leases: every claim counts as an attempt.
        let why = format!("claimed {} times (max_attempts {max}) without an answer: a dispatcher lost its lease each time", event.attempts);
        return Planned::Done(Settle::of(&event, Next::Dead, Some(why), None));
    }
    let destination = clients.destination(settings, &event.connection);
    let destination = match destination.as_ref() {
        Ok(d) => d,
        Err(why) => {
            return Planned::Done(Settle::of(&event, Next::Failed, Some(why.clone()), None))
        }
    };
    let conn = match conns.get(&event.connection) {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(connection(settings, destination, &event.connection));
            conns.insert(event.connection.clone(), c.clone());
            c
        }
    };
    if conn.api_key.is_none() && settings.delivery.mode == DeliveryMode::Live {
        let why = format!(
            "connection {:?} has no iterable_api_key: nothing can be sent in live mode",
            conn.name
        );
        return Planned::Done(Settle::of(&event, Next::Failed, Some(why), None));
    }
    let parsed = match SegmentEvent::from_value(event.payload.clone(), None) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("not a Segment event: {e}");
            return Planned::Done(Settle::of(&event, Next::Failed, Some(why), None));
        }
    };

    let (mut actions, mut steps, mut errors, mut skipped) = (vec![], vec![], vec![], vec![]);
    for outcome in destination.plan(&parsed, now_ms) {
        match outcome {
            Outcome::Requests { action, requests } => {
                actions.push(action.name());
                steps.extend(requests);
            }
            Outcome::Error { action, error } => {
                actions.push(action.name());
                errors.push(format!(
                    "{}: {} ({})",
                    action.name(),
                    error.message,
                    error.code
                ));
            }
            Outcome::Skipped { reason } => skipped.push(reason),
        }
    }
    let action = (!actions.is_empty()).then(|| actions.join(","));
    if !steps.is_empty() {
        return Planned::Send(Job {
            event,
            conn,
            steps,
            action,
            errors,
            notes: vec![],
        });
    }
    let done = if !errors.is_empty() {
        Settle::of(&event, Next::Failed, Some(errors.join("; ")), action)
    } else if !skipped.is_empty() {
        Settle::of(&event, Next::Skipped, Some(skipped.join("; ")), action)
    } else {
        let why = "the mapping planned no request".to_string();
        Settle::of(&event, Next::Skipped, Some(why), action)
    };
    Planned::Done(done)
}

fn connection(settings: &Settings, destination: &Destination, name: &str) -> Conn {
    let c = settings.connection(name);
    // Either place may say Europe: the connection's `data_center`, or Segment's
    // `dataCenterLocation` in its mapping settings.
    let europe = destination.data_center == DataCenter::Europe
        || c.is_some_and(|c| c.data_center == DataCenter::Europe);
    let dc = if europe {
        DataCenter::Europe
    } else {
        DataCenter::UnitedStates
    };
    Conn {
        name: name.to_string(),
        api_key: c
            .and_then(|c| secret(&c.iterable_api_key))
            .map(|k| SecretString::from(k.to_string())),
        base: settings.iterable.hosts().base(dc).to_string(),
    }
}
