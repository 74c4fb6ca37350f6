//! `updateUser` ("Upsert User"): `/api/users/update`, `/api/users/bulkUpdate`, and, as at the
//! repository's HEAD, `/api/users/updateEmail` when `newEmail` is set (DESIGN §2, difference 4).

use super::{converted, require_identity, set, take, with_phone, ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("email", Schema::email("Email Address")),
            ("userId", Schema::string("User ID")),
            ("newEmail", Schema::email("New Email Address")),
            ("dataFields", Schema::object("User Data Fields", None)),
            (
                "phoneNumber",
                Schema::string("User Phone Number").nullable(),
            ),
            (
                "mergeNestedObjects",
                Schema::of("Merge Nested Objects", Ty::Boolean),
            ),
            (
                "enable_batching",
                Schema::of("Enable Batching", Ty::Boolean),
            ),
            ("updateOnly", Schema::of("Update Only", Ty::Boolean)),
            ("batch_size", Schema::of("Batch Size", Ty::Number)),
        ],
        vec![],
    )
});

/// `transformIterableUserPayload`: the per-user body shared by update and bulkUpdate.
pub(crate) fn user_body(mut body: Map<String, Value>) -> Map<String, Value> {
    let phone = body.shift_remove("phoneNumber");
    for k in ["newEmail", "updateOnly", "enable_batching", "batch_size"] {
        body.shift_remove(k);
    }
    let data_fields = converted(take(&mut body, "dataFields"));
    set(&mut body, "dataFields", with_phone(data_fields, phone));
    body
}

pub fn perform(payload: Map<String, Value>) -> Result<Vec<PlannedRequest>, ActionError> {
    require_identity(&payload)?;
    let update_email = payload
        .get("newEmail")
        .filter(|v| js::truthy(v))
        .map(|new_email| update_email_body(&payload, new_email));
    let mut requests = vec![PlannedRequest {
        endpoint: Endpoint::UsersUpdate,
        body: Value::Object(user_body(payload)),
    }];
    if let Some(body) = update_email {
        requests.push(PlannedRequest {
            endpoint: Endpoint::UsersUpdateEmail,
            body,
        });
    }
    Ok(requests)
}

/// `{currentEmail?, currentUserId?, newEmail}`, each key only when truthy.
fn update_email_body(payload: &Map<String, Value>, new_email: &Value) -> Value {
    {
        let mut body = Map::new();
        if let Some(e) = payload.get("email").filter(|v| js::truthy(v)) {
            body.insert("currentEmail".into(), e.clone());
        }
        if let Some(u) = payload.get("userId").filter(|v| js::truthy(v)) {
            body.insert("currentUserId".into(), u.clone());
        }
        body.insert("newEmail".into(), new_email.clone());
        Value::Object(body)
    }
}

/// `performBatch`: `updateOnly` comes from the first payload only.
pub fn perform_batch(payloads: &[&Map<String, Value>]) -> PlannedRequest {
    let mut body = Map::new();
    if let Some(u) = payloads
        .first()
        .and_then(|p| p.get("updateOnly"))
        .filter(|v| js::truthy(v))
    {
        body.insert("updateOnly".into(), u.clone());
    }
    let users = payloads
        .iter()
        .map(|p| {
            let mut user = user_body((*p).clone());
            if let Some(new_email) = p.get("newEmail").filter(|v| js::truthy(v)) {
                if let Some(Value::Object(df)) = user.get_mut("dataFields") {
                    set(df, "email", new_email.clone());
                }
            }
            Value::Object(user)
        })
        .collect();
    body.insert("users".into(), Value::Array(users));
    PlannedRequest {
        endpoint: Endpoint::UsersBulkUpdate,
        body: Value::Object(body),
    }
}
