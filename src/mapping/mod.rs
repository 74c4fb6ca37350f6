//! Segment events → Iterable requests, as Segment's Iterable (Actions) destination builds them.
//!
//! Pure: no I/O, no clock (the caller passes "now"). A [`Destination`] is a connection's
//! subscriptions compiled from configuration (triggers in FQL, mappings in the mapping
//! language); [`Destination::plan`] runs one event through them and returns what would be sent.

pub mod actions;
pub mod dates;
pub mod filters;
pub mod fql;
pub mod js;
pub mod kit;
pub mod page;
pub mod reverse;
pub mod schema;
mod settings;

pub use actions::delete_user::Deletion;
pub use actions::{Action, ActionError, ListsFlavor, PlannedRequest, PushOptions};
pub use settings::{default_mapping, ConfigError, Destination, Subscription};

use crate::segment::event::{CallType, SegmentEvent};
use serde_json::{Map, Value};

/// The result of one subscription for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The requests to send, in order.
    Requests {
        action: Action,
        requests: Vec<PlannedRequest>,
    },
    /// The action refused the event; nothing is sent.
    Error { action: Action, error: ActionError },
    /// No request, and why.
    Skipped { reason: String },
}

/// A request to send at most once per `window_secs` for its connection (see
/// [`Destination::once_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceKey {
    /// Deterministic, and no personal data: a UUID v5 of (endpoint, user, token, ...).
    pub key: String,
    pub window_secs: u64,
}

/// Whether payloads are prepared as `perform` (one event) or `performBatch` prepares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Batch,
}

impl Destination {
    /// Maps one event through every subscription whose trigger matches it.
    pub fn plan(&self, event: &SegmentEvent, now_ms: i64) -> Vec<Outcome> {
        if event.call_type() == CallType::Delete {
            return vec![self.plan_deletion(event)];
        }
        if let Some(reason) = filters::skip_reason(event.as_value()) {
            return vec![Outcome::Skipped { reason }];
        }
        let matching: Vec<&Subscription> = self.matching(event).collect();
        if matching.is_empty() {
            return vec![Outcome::Skipped {
                reason: no_match_reason(event),
            }];
        }
        matching
            .into_iter()
            .map(|sub| self.run(sub, event, now_ms))
            .collect()
    }

    /// Whether any subscription's trigger matches (ingest decides pending or skipped with it).
    pub fn matches_any(&self, event: &SegmentEvent) -> bool {
        event.call_type() == CallType::Delete || self.matching(event).next().is_some()
    }

    /// A `delete` message: the deletion of its user, whatever the subscriptions (see
    /// `actions::delete_user`).
    fn plan_deletion(&self, event: &SegmentEvent) -> Outcome {
        let action = Action::DeleteUser;
        let result = self
            .prepare_with(
                &self.deletion_mapping,
                action,
                event.as_value(),
                Mode::Single,
            )
            .and_then(|payload| {
                actions::delete_user::perform(payload, self.deletion, self.user_id_project)
            });
        match result {
            Ok(requests) => Outcome::Requests { action, requests },
            Err(error) => Outcome::Error { action, error },
        }
    }

    pub(crate) fn matching<'a>(
        &'a self,
        event: &'a SegmentEvent,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions
            .iter()
            .filter(move |s| s.trigger.matches(event.as_value()))
    }

    fn run(&self, sub: &Subscription, event: &SegmentEvent, now_ms: i64) -> Outcome {
        let action = sub.action;
        let derived;
        let inputs: &[Value] = if sub.pages {
            derived = page::derived_events(event, &self.page);
            if derived.is_empty() {
                return Outcome::Skipped {
                    reason: format!(
                        "the page settings track no event for this {} (no name or category)",
                        event.call_type()
                    ),
                };
            }
            &derived
        } else {
            std::slice::from_ref(event.as_value())
        };
        let mut requests = Vec::new();
        for input in inputs {
            let result = self
                .prepare(sub, input, Mode::Single)
                .and_then(|payload| self.perform(action, payload, input, now_ms));
            match result {
                Ok(r) => requests.extend(r),
                Err(error) => return Outcome::Error { action, error },
            }
        }
        Outcome::Requests { action, requests }
    }

    /// Mapping, `removeEmptyValues` and schema validation: the payload `perform` receives.
    pub fn prepare(
        &self,
        sub: &Subscription,
        event: &Value,
        mode: Mode,
    ) -> Result<Map<String, Value>, ActionError> {
        self.prepare_with(&sub.mapping, sub.action, event, mode)
    }

    fn prepare_with(
        &self,
        mapping: &kit::Mapping,
        action: Action,
        event: &Value,
        mode: Mode,
    ) -> Result<Map<String, Value>, ActionError> {
        let schema = action.schema(self.lists_flavor);
        let mut payload = match mapping.resolve(event) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        schema::remove_empty_values(&mut payload, schema, mode == Mode::Single);
        let mut value = Value::Object(payload);
        schema::validate(&mut value, schema).map_err(ActionError::validation)?;
        match value {
            Value::Object(m) => Ok(m),
            _ => unreachable!("the root schema is an object"),
        }
    }

    fn context<'a>(&'a self, event: &'a Value, now_ms: i64) -> actions::Context<'a> {
        actions::Context {
            now_ms,
            event,
            flavor: self.lists_flavor,
            user_id_project: self.user_id_project,
            push: &self.push,
        }
    }

    /// Whether a planned request is one to send at most once per window, and its key: a token
    /// registration for the same (user, token) is not sent again within `pushTokenWindowHours`.
    /// The dispatcher keeps the keys (mapping does no I/O): it skips a request whose key was
    /// sent for this connection within `window_secs`, and records the key once it was.
    pub fn once_key(&self, request: &PlannedRequest) -> Option<OnceKey> {
        if self.push.window_secs == 0 {
            return None;
        }
        actions::register_token::once_key(request).map(|key| OnceKey {
            key,
            window_secs: self.push.window_secs,
        })
    }

    /// `perform` for one validated payload.
    pub fn perform(
        &self,
        action: Action,
        payload: Map<String, Value>,
        event: &Value,
        now_ms: i64,
    ) -> Result<Vec<PlannedRequest>, ActionError> {
        use actions::*;
        match action {
            Action::UpdateUser => update_user::perform(payload),
            Action::TrackEvent => track_event::perform(payload, now_ms),
            Action::UpdateCart => update_cart::perform(payload),
            Action::TrackPurchase => track_purchase::perform(payload, now_ms),
            Action::UpdateEmail => update_email::perform(payload),
            Action::SyncAudience => sync_audience::perform(payload, &self.context(event, now_ms)),
            Action::RegisterDeviceToken => {
                register_token::perform_device(payload, &self.context(event, now_ms))
            }
            Action::RegisterBrowserToken => register_token::perform_browser(payload),
            Action::UpdateSubscriptions => update_subscriptions::perform(payload),
            Action::DeleteUser => {
                delete_user::perform(payload, self.deletion, self.user_id_project)
            }
        }
    }

    /// `performBatch` for payloads validated in batch mode; one bulk request (or, for lists,
    /// one per list and direction) plus the payloads refused.
    pub fn perform_batch(
        &self,
        action: Action,
        payloads: &[&Map<String, Value>],
        events: &[&Value],
        now_ms: i64,
    ) -> (Vec<PlannedRequest>, Vec<(usize, ActionError)>) {
        use actions::*;
        match action {
            Action::UpdateUser => (vec![update_user::perform_batch(payloads)], vec![]),
            Action::TrackEvent => (vec![track_event::perform_batch(payloads, now_ms)], vec![]),
            Action::SyncAudience => {
                let ctx = self.context(events.first().copied().unwrap_or(&Value::Null), now_ms);
                let plan = sync_audience::plan(payloads, &ctx, events);
                (plan.requests, plan.errors)
            }
            other => {
                let errors = (0..payloads.len())
                    .map(|i| {
                        (
                            i,
                            ActionError {
                                code: "NOT_IMPLEMENTED",
                                message: format!(
                                    "{} does not support batched requests.",
                                    other.name()
                                ),
                            },
                        )
                    })
                    .collect();
                (vec![], errors)
            }
        }
    }
}

fn no_match_reason(event: &SegmentEvent) -> String {
    match event.call_type() {
        CallType::Track => format!(
            "no subscription matches this track event ({:?})",
            event.event_name().unwrap_or("")
        ),
        t => format!("no subscription matches {t} calls"),
    }
}
