//! Commerce items and the `user` object shared by `updateCart` and `trackPurchase`
//! (reference/iterable-actions.md §6–§8).

use super::{converted, with_phone};
use crate::mapping::dates;
use crate::mapping::schema::{ObjectSchema, Schema, Ty};
use serde_json::{Map, Value};

/// The `user` field: email, userId, dataFields, phoneNumber, mergeNestedObjects.
pub fn user_schema() -> Schema {
    Schema::object(
        "User Data",
        Some(ObjectSchema {
            properties: vec![
                ("email", Schema::email("Email Address")),
                ("userId", Schema::string("User ID")),
                (
                    "mergeNestedObjects",
                    Schema::of("Merge Nested Objects", Ty::Boolean),
                ),
                ("dataFields", Schema::object("User Data Fields", None)),
                (
                    "phoneNumber",
                    Schema::string("User Phone Number").nullable(),
                ),
            ],
            required: vec![],
            additional: false,
        }),
    )
}

/// The `items` field: an array of objects that may carry extra keys.
pub fn items_schema() -> Schema {
    let item = Schema {
        title: None,
        types: vec![Ty::Object],
        format: None,
        items: None,
        object: Some(ObjectSchema {
            properties: vec![
                ("id", Schema::string("Product Id")),
                ("name", Schema::string("Product Name")),
                ("sku", Schema::string("Product SKU")),
                ("quantity", Schema::of("Quantity", Ty::Integer)),
                ("price", Schema::of("Price", Ty::Number)),
                ("description", Schema::string("Product Description")),
                ("categories", Schema::string("Product Category")),
                ("url", Schema::string("Product URL")),
                ("imageUrl", Schema::string("Product Image URL")),
            ],
            required: vec!["id", "name", "quantity", "price"],
            additional: true,
        }),
    };
    Schema::array_of("Cart items", item)
}

/// The `user` object of the request: `phoneNumber` moved into converted `dataFields`.
pub fn user_body(mut user: Map<String, Value>) -> Value {
    let phone = user.shift_remove("phoneNumber");
    let data_fields = converted(super::take(&mut user, "dataFields"));
    super::set(&mut user, "dataFields", with_phone(data_fields, phone));
    Value::Object(user)
}

const RESERVED: [&str; 11] = [
    "product_id",
    "id",
    "sku",
    "name",
    "price",
    "quantity",
    "categories",
    "category",
    "url",
    "image_url",
    "imageUrl",
];

/// `transformItems`: non-reserved keys are copied into a date-converted `dataFields`, an
/// item-level `dataFields` is dropped, and `categories` becomes a one-element array.
pub fn transform_items(items: Value) -> Value {
    let Value::Array(items) = items else {
        return items;
    };
    Value::Array(
        items
            .into_iter()
            .map(|item| {
                let Value::Object(mut rest) = item else {
                    return item;
                };
                rest.shift_remove("dataFields");
                let categories = rest.shift_remove("categories");
                let mut data_fields = Map::new();
                for (k, v) in rest.iter_mut() {
                    if RESERVED.contains(&k.as_str()) {
                        continue;
                    }
                    // `omit` copies shallowly, so nested objects are converted in both places.
                    if v.is_object() || v.is_array() {
                        dates::convert_dates_in_object(v);
                    }
                    data_fields.insert(k.clone(), v.clone());
                }
                let mut out = rest;
                out.insert(
                    "dataFields".into(),
                    converted(Some(Value::Object(data_fields))),
                );
                if let Some(c) = categories.filter(crate::mapping::js::truthy) {
                    out.insert("categories".into(), Value::Array(vec![c]));
                }
                Value::Object(out)
            })
            .collect(),
    )
}
