//! `updateCart` ("Cart Updates"): `/api/commerce/updateCart`. No batch form.

use super::items::{items_schema, transform_items, user_body, user_schema};
use super::{require_identity, ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::schema::{root, Schema};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![("user", user_schema()), ("items", items_schema())],
        vec!["user", "items"],
    )
});

pub fn perform(mut payload: Map<String, Value>) -> Result<Vec<PlannedRequest>, ActionError> {
    let user = match payload.shift_remove("user") {
        Some(Value::Object(u)) => u,
        _ => Map::new(),
    };
    require_identity(&user)?;
    let mut body = Map::new();
    body.insert("user".into(), user_body(user));
    body.insert(
        "items".into(),
        transform_items(payload.shift_remove("items").unwrap_or(Value::Null)),
    );
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::CommerceUpdateCart,
        body: Value::Object(body),
    }])
}
