//! Action field schemas and the validation Segment runs before an action sees its payload.
//!
//! Reproduces, in order, what `@segment/actions-core` does (reference/iterable-actions.md §2):
//! `removeEmptyValues` (top-level `""` and disallowed `null` removed), then AJV with
//! `coerceTypes: 'array'`, `removeAdditional: true` and `allErrors: true`, with messages worded
//! by `@segment/ajv-human-errors` (labels from the field titles). Errors are collected in
//! AJV's order: an object's `required` first, then its properties in declaration order.

use super::{dates, js};
use serde_json::{Map, Value};

/// A JSON Schema type keyword value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::String => "string",
            Ty::Number => "number",
            Ty::Integer => "integer",
            Ty::Boolean => "boolean",
            Ty::Object => "object",
            Ty::Array => "array",
            Ty::Null => "null",
        }
    }
}

/// The string formats the actions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ajv-formats' `email`.
    Email,
    /// actions-core's `date-like`: something dayjs parses, or a numeric string.
    DateLike,
}

/// A field's schema, as actions-core's `fieldsToJsonSchema` generates it.
#[derive(Debug, Clone)]
pub struct Schema {
    pub title: Option<&'static str>,
    pub types: Vec<Ty>,
    pub format: Option<Format>,
    /// For `multiple` fields: the schema of each element.
    pub items: Option<Box<Schema>>,
    /// For object fields with declared properties.
    pub object: Option<ObjectSchema>,
}

/// Declared properties of an object schema.
#[derive(Debug, Clone)]
pub struct ObjectSchema {
    pub properties: Vec<(&'static str, Schema)>,
    pub required: Vec<&'static str>,
    /// `additionalProperties`; when false, undeclared keys are removed silently.
    pub additional: bool,
}

impl ObjectSchema {
    fn get(&self, key: &str) -> Option<&Schema> {
        self.properties
            .iter()
            .find_map(|(k, s)| (*k == key).then_some(s))
    }
}

impl Schema {
    pub fn of(title: &'static str, ty: Ty) -> Schema {
        Schema {
            title: Some(title),
            types: vec![ty],
            format: None,
            items: None,
            object: None,
        }
    }
    pub fn string(title: &'static str) -> Schema {
        Schema::of(title, Ty::String)
    }
    pub fn email(title: &'static str) -> Schema {
        Schema {
            format: Some(Format::Email),
            ..Schema::string(title)
        }
    }
    /// A `datetime` field: `['string', 'number']` with the `date-like` format.
    pub fn datetime(title: &'static str) -> Schema {
        Schema {
            types: vec![Ty::String, Ty::Number],
            format: Some(Format::DateLike),
            ..Schema::string(title)
        }
    }
    /// `allowNull: true` adds `null` to the types.
    pub fn nullable(mut self) -> Schema {
        self.types.push(Ty::Null);
        self
    }
    pub fn object(title: &'static str, object: Option<ObjectSchema>) -> Schema {
        Schema {
            object,
            ..Schema::of(title, Ty::Object)
        }
    }
    /// `multiple: true`: an array whose items have the given (untitled) schema.
    pub fn array_of(title: &'static str, items: Schema) -> Schema {
        Schema {
            items: Some(Box::new(items)),
            ..Schema::of(title, Ty::Array)
        }
    }
}

/// The root schema of an action: an object of its fields, extra keys removed.
pub fn root(properties: Vec<(&'static str, Schema)>, required: Vec<&'static str>) -> Schema {
    Schema {
        title: None,
        types: vec![Ty::Object],
        format: None,
        items: None,
        object: Some(ObjectSchema {
            properties,
            required,
            additional: false,
        }),
    }
}

/// `removeEmptyValues(payload, schema, isRoot)`.
pub fn remove_empty_values(payload: &mut Map<String, Value>, schema: &Schema, is_root: bool) {
    let Some(obj) = &schema.object else { return };
    payload.retain(|key, value| {
        let keep = match obj.get(key) {
            Some(s) => keep_value(value, s),
            None => true,
        };
        keep && !(is_root && value.as_str() == Some(""))
    });
}

/// The non-root recursion: returns whether the value stays. Arrays drop elements that would be
/// removed but keep the others unchanged, as the JavaScript `filter` does.
fn keep_value(value: &mut Value, schema: &Schema) -> bool {
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = &schema.items {
                // The JavaScript `filter` keeps the original elements: only whether an element
                // would be removed matters, and only a null or "" one can be.
                items.retain(|item| match item {
                    Value::Null => item_schema.types.contains(&Ty::Null),
                    Value::String(s) if s.is_empty() => item_schema.types.contains(&Ty::String),
                    _ => true,
                });
            }
            true
        }
        Value::Object(map) => {
            if schema.object.is_some() {
                remove_empty_values(map, schema, false);
            }
            true
        }
        Value::Null => schema.types.contains(&Ty::Null),
        Value::String(s) if s.is_empty() => schema.types.contains(&Ty::String),
        _ => true,
    }
}

/// Validates and coerces `value` in place; the messages are AJV's, humanised.
pub fn validate(value: &mut Value, schema: &Schema) -> Result<(), String> {
    arrify_fields(value, schema);
    let mut errors = Vec::new();
    let mut pointer = String::new();
    check(value, schema, &mut pointer, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join(" "))
    }
}

/// actions-core's `arrifyFields`: before validation, a root field declared as an array that
/// holds a single non-null value is wrapped in an array.
fn arrify_fields(value: &mut Value, schema: &Schema) {
    let (Value::Object(map), Some(obj)) = (value, &schema.object) else {
        return;
    };
    for (key, field) in &obj.properties {
        if field.types == [Ty::Array] {
            if let Some(v) = map.get_mut(*key) {
                if !v.is_array() && !v.is_null() {
                    *v = Value::Array(vec![v.take()]);
                }
            }
        }
    }
}

fn preamble(schema: &Schema, pointer: &str) -> String {
    match (schema.title, pointer) {
        (Some(t), _) => t.to_string(),
        (None, "") => "The root value".into(),
        (None, p) => format!("The value at {p}"),
    }
}

fn check(value: &mut Value, schema: &Schema, pointer: &mut String, errors: &mut Vec<String>) {
    if !has_type(value, &schema.types) {
        match coerce(value, &schema.types) {
            Some(coerced) => *value = coerced,
            None => {
                errors.push(type_error(schema, pointer, value));
                return;
            }
        }
    }
    if let (Value::String(s), Some(format)) = (&*value, schema.format) {
        let ok = match format {
            Format::Email => is_email(s),
            Format::DateLike => dates::is_date_like(s),
        };
        if !ok {
            let label = match format {
                Format::Email => "email address",
                Format::DateLike => "date-like",
            };
            errors.push(format!(
                "{} must be a valid {label} string but it was not.",
                preamble(schema, pointer)
            ));
        }
    }
    match value {
        Value::Object(map) => {
            if let Some(obj) = &schema.object {
                for req in &obj.required {
                    if !map.contains_key(*req) {
                        errors.push(format!(
                            "{} is missing the required field '{req}'.",
                            match pointer.as_str() {
                                "" => "The root value".to_string(),
                                p => format!("The value at {p}"),
                            }
                        ));
                    }
                }
                if !obj.additional {
                    map.retain(|k, _| obj.get(k).is_some());
                }
                // Walk the entries (no hashing) and put the messages back in declaration
                // order, which is AJV's.
                let mut tagged: Vec<(usize, Vec<String>)> = Vec::new();
                for (key, child) in map.iter_mut() {
                    let Some(index) = obj.properties.iter().position(|(k, _)| k == key) else {
                        continue;
                    };
                    let len = pointer.len();
                    push_pointer(pointer, key);
                    let mut child_errors = Vec::new();
                    check(child, &obj.properties[index].1, pointer, &mut child_errors);
                    pointer.truncate(len);
                    if !child_errors.is_empty() {
                        tagged.push((index, child_errors));
                    }
                }
                tagged.sort_by_key(|(i, _)| *i);
                errors.extend(tagged.into_iter().flat_map(|(_, e)| e));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &schema.items {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    check(item, item_schema, pointer, errors);
                    pointer.truncate(len);
                }
            }
        }
        _ => {}
    }
}

fn push_pointer(pointer: &mut String, key: &str) {
    pointer.push('/');
    if key.contains(['~', '/']) {
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        pointer.push_str(key);
    }
}

fn has_type(v: &Value, types: &[Ty]) -> bool {
    types.iter().any(|t| match t {
        Ty::String => v.is_string(),
        Ty::Number => v.is_number(),
        Ty::Integer => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Ty::Boolean => v.is_boolean(),
        Ty::Object => v.is_object(),
        Ty::Array => v.is_array(),
        Ty::Null => v.is_null(),
    })
}

/// AJV's `coerceData` with `coerceTypes: 'array'`: a one-element array is unwrapped first, then
/// each coercible type is tried in schema order.
fn coerce(value: &Value, types: &[Ty]) -> Option<Value> {
    // Only string, number, integer, boolean, null and array are coercible; an object-only
    // schema is a plain type check (`[{...}]` for dataFields is an error, not unwrapped).
    if types == [Ty::Object] {
        return None;
    }
    let unwrapped;
    let data = match value {
        Value::Array(a) if a.len() == 1 && !types.contains(&Ty::Array) => {
            unwrapped = a[0].clone();
            // AJV keeps an unwrapped element that already has the type only when the schema
            // has one type; with a union (`string or null`) it goes on to coerce it, so
            // `["x"]` fails and `[123]` becomes "123" (checked with the oracle).
            if types.len() == 1 && has_type(&unwrapped, types) {
                return Some(unwrapped);
            }
            &unwrapped
        }
        other => other,
    };
    for t in types {
        let coerced = match (t, data) {
            (Ty::String, Value::Number(n)) => Some(Value::String(js::json_number_to_string(n))),
            (Ty::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
            (Ty::String, Value::Null) => Some(Value::String(String::new())),
            (Ty::Number | Ty::Integer, Value::Bool(b)) => Some(Value::from(u8::from(*b))),
            (Ty::Number | Ty::Integer, Value::Null) => Some(Value::from(0)),
            (Ty::Number, Value::String(s)) if !s.is_empty() => {
                let n = js::string_to_number(s);
                (!n.is_nan()).then(|| js::number_value(n))
            }
            (Ty::Integer, Value::String(s)) if !s.is_empty() => {
                let n = js::string_to_number(s);
                (!n.is_nan() && (n.is_infinite() || n.fract() == 0.0)).then(|| js::number_value(n))
            }
            (Ty::Boolean, Value::String(s)) if s == "false" => Some(Value::Bool(false)),
            (Ty::Boolean, Value::String(s)) if s == "true" => Some(Value::Bool(true)),
            (Ty::Boolean, Value::Number(n)) if n.as_f64() == Some(0.0) => Some(Value::Bool(false)),
            (Ty::Boolean, Value::Number(n)) if n.as_f64() == Some(1.0) => Some(Value::Bool(true)),
            (Ty::Boolean, Value::Null) => Some(Value::Bool(false)),
            (Ty::Null, Value::String(s)) if s.is_empty() => Some(Value::Null),
            (Ty::Null, Value::Number(n)) if n.as_f64() == Some(0.0) => Some(Value::Null),
            (Ty::Null, Value::Bool(false)) => Some(Value::Null),
            (
                Ty::Array,
                v @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null),
            ) => Some(Value::Array(vec![v.clone()])),
            _ => None,
        };
        if coerced.is_some() {
            return coerced;
        }
    }
    None
}

fn type_error(schema: &Schema, pointer: &str, data: &Value) -> String {
    // AJV reports the element it unwrapped from a one-element array.
    let data = match data {
        Value::Array(a)
            if a.len() == 1
                && !schema.types.contains(&Ty::Array)
                && schema.types != [Ty::Object] =>
        {
            &a[0]
        }
        d => d,
    };
    let names: Vec<&str> = schema.types.iter().map(|t| t.name()).collect();
    let expected = humanize_list(&names, "or");
    format!(
        "{} must be {} {expected} but it was {}.",
        preamble(schema, pointer),
        article(&expected),
        humanize_type_of(data)
    )
}

fn article(word: &str) -> &'static str {
    match word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

fn humanize_type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
    }
}

fn humanize_list(items: &[&str], conjunction: &str) -> String {
    match items {
        [] => "nothing".into(),
        [one] => (*one).into(),
        [a, b] => format!("{a} {conjunction} {b}"),
        [init @ .., last] => format!("{}, {conjunction} {last}", init.join(", ")),
    }
}

/// ajv-formats' `email`:
/// `^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$`, case-insensitive.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let atom_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    let local_ok = local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(atom_char));
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    local_ok && labels.len() >= 2 && labels.iter().all(|l| label_ok(l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn int_field() -> Schema {
        root(
            vec![("campaignId", Schema::of("Campaign ID", Ty::Integer))],
            vec![],
        )
    }

    #[test]
    fn integers_coerce_from_numeric_strings_and_reject_fractions() {
        let mut v = json!({"campaignId": "12"});
        validate(&mut v, &int_field()).unwrap();
        assert_eq!(v, json!({"campaignId": 12}));
        let mut v = json!({"campaignId": 12.7});
        assert_eq!(
            validate(&mut v, &int_field()).unwrap_err(),
            "Campaign ID must be an integer but it was a number."
        );
        let mut v = json!({"campaignId": ["abc"]});
        assert_eq!(
            validate(&mut v, &int_field()).unwrap_err(),
            "Campaign ID must be an integer but it was a string."
        );
    }

    #[test]
    fn one_element_arrays_become_scalars_and_scalars_become_strings() {
        let s = root(vec![("id", Schema::string("Event ID"))], vec!["id"]);
        let mut v = json!({"id": [123]});
        validate(&mut v, &s).unwrap();
        assert_eq!(v, json!({"id": "123"}));
        let mut v = json!({});
        assert_eq!(
            validate(&mut v, &s).unwrap_err(),
            "The root value is missing the required field 'id'."
        );
    }

    #[test]
    fn emails_follow_ajv_formats() {
        for ok in ["a@b.co", "A.B+c@x-y.example.COM", "1@2.3"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "a@b", "a@@b.co", "a.@b.co", "a@-b.co", "a b@c.de", "é@x.de", "", "a@b.co.",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn top_level_empty_strings_go_but_nested_ones_stay() {
        let s = root(
            vec![
                ("email", Schema::email("Email Address")),
                (
                    "phoneNumber",
                    Schema::string("User Phone Number").nullable(),
                ),
                ("dataFields", Schema::object("User Data Fields", None)),
            ],
            vec![],
        );
        let mut m = json!({"email": "", "phoneNumber": null, "dataFields": null, "x": ""});
        remove_empty_values(m.as_object_mut().unwrap(), &s, true);
        assert_eq!(m, json!({"phoneNumber": null}));
    }
}
