//! `updateSubscriptions`: a user's email lists, channel and message type subscriptions →
//! `/api/users/updateSubscriptions` (Iterable/api-client `api-docs.json`,
//! `UpdateSubscriptionsRequest`).
//!
//! Iterable "overwrites (does not merge) existing data for any non-null fields specified in
//! the request": a list sent as `[]` unsubscribes from everything of that kind, and a list
//! sent with one id drops the others. So the body carries only the fields the mapping
//! produced: a field the event does not carry (or carries as `null`) is left out, never sent
//! as an empty array.

use super::{one_identity, ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

/// The lists of ids, in the order of Iterable's request model.
pub const ID_LISTS: [&str; 4] = [
    "emailListIds",
    "unsubscribedChannelIds",
    "unsubscribedMessageTypeIds",
    "subscribedMessageTypeIds",
];

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let ids = |title| {
        let item = Schema {
            title: None,
            ..Schema::of("", Ty::Integer)
        };
        Schema::array_of(title, item)
    };
    root(
        vec![
            ("email", Schema::email("Email Address")),
            ("userId", Schema::string("User ID")),
            ("emailListIds", ids("Email List IDs")),
            ("unsubscribedChannelIds", ids("Unsubscribed Channel IDs")),
            (
                "unsubscribedMessageTypeIds",
                ids("Unsubscribed Message Type IDs"),
            ),
            (
                "subscribedMessageTypeIds",
                ids("Subscribed Message Type IDs"),
            ),
            ("campaignId", Schema::of("Campaign ID", Ty::Integer)),
            ("templateId", Schema::of("Template ID", Ty::Integer)),
            (
                "validateChannelAlignment",
                Schema::of("Validate Channel Alignment", Ty::Boolean),
            ),
        ],
        vec![],
    )
});

pub fn perform(payload: Map<String, Value>) -> Result<Vec<PlannedRequest>, ActionError> {
    let (id_key, id) = one_identity(&payload)?;
    if !ID_LISTS.iter().any(|k| payload.contains_key(*k)) {
        return Err(ActionError::validation(format!(
            "Nothing to update: the mapping produced none of {}.",
            ID_LISTS.join(", ")
        )));
    }
    let mut body = Map::new();
    body.insert(id_key.into(), id);
    for key in ID_LISTS
        .iter()
        .chain(&["campaignId", "templateId", "validateChannelAlignment"])
    {
        if let Some(v) = payload.get(*key) {
            body.insert((*key).into(), v.clone());
        }
    }
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::UsersUpdateSubscriptions,
        body: Value::Object(body),
    }])
}
