//! `syncAudience`: Engage audience membership → Iterable list subscribe / unsubscribe, as the
//! "Iterable Lists (Actions)" (`iterable-audiences`) and "Iterable Lists" (`iterable-lists`)
//! destinations do it (reference/iterable-actions.md §10). Audience settings
//! (`updateExistingUsersOnly`, `globalUnsubscribe`, `campaignId`) come from
//! `context.personas.audience_settings`.

use super::{ActionError, Context, ListsFlavor, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("email", Schema::string("Email")),
            ("userId", Schema::string("User ID")),
            (
                "dataFields",
                Schema::object("Additional traits or identifiers", None),
            ),
            (
                "traitsOrProperties",
                Schema::of("Traits or Properties", Ty::Object),
            ),
            ("segmentAudienceKey", Schema::string("Segment Audience Key")),
            (
                "segmentAudienceId",
                Schema::string("Segment External Audience ID"),
            ),
        ],
        vec![
            "traitsOrProperties",
            "segmentAudienceKey",
            "segmentAudienceId",
        ],
    )
});

pub fn schema(_flavor: ListsFlavor) -> &'static Schema {
    &SCHEMA
}

/// The requests for a set of payloads (one for `perform`, several for `performBatch`), and the
/// payloads refused, by their index in `payloads`.
pub struct ListPlan {
    pub requests: Vec<PlannedRequest>,
    pub errors: Vec<(usize, ActionError)>,
}

fn audience_setting<'a>(event: &'a Value, key: &str) -> Option<&'a Value> {
    event
        .pointer("/context/personas/audience_settings")
        .and_then(|s| s.get(key))
}

pub fn plan(payloads: &[&Map<String, Value>], ctx: &Context<'_>, events: &[&Value]) -> ListPlan {
    match ctx.flavor {
        ListsFlavor::Audiences => plan_audiences(payloads, ctx, events),
        ListsFlavor::Lists => plan_lists(payloads, events),
    }
}

pub fn perform(
    payload: Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<Vec<PlannedRequest>, ActionError> {
    if ctx.flavor == ListsFlavor::Lists {
        let truthy = |k: &str| payload.get(k).is_some_and(js::truthy);
        if !truthy("email") && !truthy("userId") {
            return Err(ActionError::validation(
                "Either Email or User ID fields must be populated.",
            ));
        }
    }
    let plan = plan(&[&payload], ctx, &[ctx.event]);
    match plan.errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(plan.requests),
    }
}

fn str_field<'a>(p: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    p.get(k).filter(|v| js::truthy(v))
}

fn plan_audiences(
    payloads: &[&Map<String, Value>],
    ctx: &Context<'_>,
    events: &[&Value],
) -> ListPlan {
    let mut errors = Vec::new();
    let list_id = payloads
        .first()
        .and_then(|p| p.get("segmentAudienceId"))
        .map(|v| match v {
            Value::String(s) => js::string_to_number(s),
            other => other.as_f64().unwrap_or(f64::NAN),
        })
        .unwrap_or(f64::NAN);
    if list_id.is_nan() {
        for i in 0..payloads.len() {
            errors.push((
                i,
                ActionError::validation("Invalid or missing Segment Audience ID"),
            ));
        }
        return ListPlan {
            requests: vec![],
            errors,
        };
    }
    let settings_event = events.first().copied().unwrap_or(ctx.event);
    let (mut subs, mut unsubs) = (Vec::new(), Vec::new());
    for (i, p) in payloads.iter().enumerate() {
        let email = str_field(p, "email");
        let user_id = str_field(p, "userId");
        if ctx.user_id_project && user_id.is_none() {
            errors.push((
                i,
                ActionError::validation("User ID is required when Iterable Project Type = User ID"),
            ));
            continue;
        }
        if email.is_none() && user_id.is_none() {
            errors.push((
                i,
                ActionError::validation(
                    "Either User ID or Email is required when Iterable Project Type = Hybrid",
                ),
            ));
            continue;
        }
        let key = p
            .get("segmentAudienceKey")
            .and_then(Value::as_str)
            .unwrap_or("");
        let member = p
            .get("traitsOrProperties")
            .and_then(|t| t.get(key))
            .is_some_and(js::truthy);
        let mut s = Map::new();
        if let Some(e) = email {
            s.insert("email".into(), e.clone());
        }
        if let Some(u) = user_id {
            s.insert("userId".into(), u.clone());
        }
        if member {
            if ctx.user_id_project {
                s.insert("preferUserId".into(), Value::Bool(true));
            }
            if let Some(Value::Object(df)) = p.get("dataFields") {
                if !df.is_empty() {
                    s.insert("dataFields".into(), Value::Object(df.clone()));
                }
            }
            subs.push(Value::Object(s));
        } else {
            unsubs.push(Value::Object(s));
        }
    }
    let list_id = js::number_value(list_id);
    let mut requests = Vec::new();
    if !subs.is_empty() {
        requests.push(subscribe(list_id.clone(), subs, settings_event));
    }
    if !unsubs.is_empty() {
        requests.push(unsubscribe(list_id, unsubs, settings_event));
    }
    ListPlan { requests, errors }
}

fn plan_lists(payloads: &[&Map<String, Value>], events: &[&Value]) -> ListPlan {
    // Grouped per list id, in first-seen order; subscribes first, then unsubscribes.
    let mut subs: Vec<(String, Vec<Value>)> = Vec::new();
    let mut unsubs: Vec<(String, Vec<Value>)> = Vec::new();
    for p in payloads {
        let list = p
            .get("segmentAudienceId")
            .map(js::to_display_string)
            .unwrap_or_default();
        let key = p
            .get("segmentAudienceKey")
            .and_then(Value::as_str)
            .unwrap_or("");
        let member =
            p.get("traitsOrProperties").and_then(|t| t.get(key)) == Some(&Value::Bool(true));
        let mut s = Map::new();
        for k in ["email", "userId"] {
            if let Some(v) = p.get(k).filter(|v| !v.is_null()) {
                s.insert(k.into(), v.clone());
            }
        }
        let groups = if member {
            s.insert("preferUserId".into(), Value::Bool(true));
            if let Some(df) = p.get("dataFields").filter(|v| js::truthy(v)) {
                s.insert("dataFields".into(), df.clone());
            }
            &mut subs
        } else {
            &mut unsubs
        };
        match groups.iter_mut().find(|(id, _)| *id == list) {
            Some((_, members)) => members.push(Value::Object(s)),
            None => groups.push((list, vec![Value::Object(s)])),
        }
    }
    let settings_event = events.first().copied().unwrap_or(&Value::Null);
    let list_id = |list: &str| js::number_value(js::string_to_number(list));
    let mut requests: Vec<PlannedRequest> = subs
        .into_iter()
        .map(|(list, members)| subscribe(list_id(&list), members, settings_event))
        .collect();
    requests.extend(
        unsubs
            .into_iter()
            .map(|(list, members)| unsubscribe(list_id(&list), members, settings_event)),
    );
    ListPlan {
        requests,
        errors: vec![],
    }
}

/// `lists/subscribe`: `updateExistingUsersOnly` only when the audience setting is a boolean.
fn subscribe(list_id: Value, members: Vec<Value>, settings_event: &Value) -> PlannedRequest {
    let mut body = Map::new();
    body.insert("listId".into(), list_id);
    body.insert("subscribers".into(), Value::Array(members));
    if let Some(b @ Value::Bool(_)) = audience_setting(settings_event, "updateExistingUsersOnly") {
        body.insert("updateExistingUsersOnly".into(), b.clone());
    }
    PlannedRequest {
        endpoint: Endpoint::ListsSubscribe,
        body: Value::Object(body),
    }
}

/// `lists/unsubscribe`: `campaignId` when a number, `channelUnsubscribe` (the audience's
/// `globalUnsubscribe`) when a boolean.
fn unsubscribe(list_id: Value, members: Vec<Value>, settings_event: &Value) -> PlannedRequest {
    let mut body = Map::new();
    body.insert("listId".into(), list_id);
    body.insert("subscribers".into(), Value::Array(members));
    if let Some(n @ Value::Number(_)) = audience_setting(settings_event, "campaignId") {
        body.insert("campaignId".into(), n.clone());
    }
    if let Some(b @ Value::Bool(_)) = audience_setting(settings_event, "globalUnsubscribe") {
        body.insert("channelUnsubscribe".into(), b.clone());
    }
    PlannedRequest {
        endpoint: Endpoint::ListsUnsubscribe,
        body: Value::Object(body),
    }
}
