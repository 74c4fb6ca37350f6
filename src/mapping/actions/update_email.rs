//! `updateEmail`: an `alias` call changes a user's email with `/api/users/updateEmail`.
//!
//! Not part of Segment's destination (its docs say email changes are impossible there); the
//! body follows the `newEmail` request Segment's HEAD sends from `updateUser`.

use super::{ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use crate::mapping::schema::{root, Schema};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("currentEmail", Schema::email("Current Email Address")),
            ("currentUserId", Schema::string("Current User ID")),
            ("newEmail", Schema::email("New Email Address")),
        ],
        vec!["newEmail"],
    )
});

pub fn perform(payload: Map<String, Value>) -> Result<Vec<PlannedRequest>, ActionError> {
    let truthy = |k: &str| payload.get(k).is_some_and(js::truthy);
    if !truthy("currentEmail") && !truthy("currentUserId") {
        return Err(ActionError::validation(
            "Must include currentEmail or currentUserId.",
        ));
    }
    let body: Map<String, Value> = payload.into_iter().filter(|(_, v)| js::truthy(v)).collect();
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::UsersUpdateEmail,
        body: Value::Object(body),
    }])
}
