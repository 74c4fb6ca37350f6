//! `trackPurchase` ("Track Purchase"): `/api/commerce/trackPurchase`. No batch form.

use super::items::{items_schema, transform_items, user_body, user_schema};
use super::{converted, require_identity, set, take, ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::dates;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("id", Schema::string("Order ID")),
            ("user", user_schema()),
            ("dataFields", Schema::object("Event Data Fields", None)),
            ("items", items_schema()),
            ("total", Schema::of("Total", Ty::Number)),
            ("createdAt", Schema::datetime("Timestamp")),
            ("campaignId", Schema::of("Campaign ID", Ty::Integer)),
            ("templateId", Schema::of("Template ID", Ty::Integer)),
        ],
        vec!["user", "items", "total"],
    )
});

pub fn perform(
    mut body: Map<String, Value>,
    now_ms: i64,
) -> Result<Vec<PlannedRequest>, ActionError> {
    let user = match take(&mut body, "user") {
        Some(Value::Object(u)) => u,
        _ => Map::new(),
    };
    require_identity(&user)?;
    let mut data_fields = take(&mut body, "dataFields");
    if let Some(Value::Object(df)) = &mut data_fields {
        // Products are already sent as items.
        df.shift_remove("products");
    }
    set(&mut body, "user", user_body(user));
    let items = take(&mut body, "items").unwrap_or(Value::Null);
    set(&mut body, "items", transform_items(items));
    let created_at = dates::dayjs_unix(body.get("createdAt"), now_ms);
    set(&mut body, "createdAt", created_at);
    set(&mut body, "dataFields", converted(data_fields));
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::CommerceTrackPurchase,
        body: Value::Object(body),
    }])
}
