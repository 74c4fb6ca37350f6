//! A subset of Segment's mapping-kit: the language field mappings are written in.
//!
//! A mapping is JSON. Objects whose keys all start with `@` are directives; anything else is a
//! literal, with objects and arrays resolved member by member. Mappings are compiled once, when
//! the configuration loads, so a mistake is a start-up error that names where it is, and the
//! per-event work is a walk over a small tree.
//!
//! Semantics follow `@segment/actions-core` `mapping-kit/index.js`: a missing path is
//! `undefined` (here `None`) and its key disappears; `@if.exists` is false for `null`; `@else`
//! only applies when given; `@arrayPath` maps every element of an array (or a lone object).

use super::js;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A compiled mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// A scalar, or `null`, used as it is.
    Literal(Value),
    /// `{"@path": "$.a.b"}`: a value of the event.
    Path(Vec<String>),
    /// `{"@if": {"exists"|"blank": m, "then": m, "else": m}}`.
    If {
        test: IfTest,
        cond: Box<Mapping>,
        then: Option<Box<Mapping>>,
        otherwise: Option<Box<Mapping>>,
    },
    /// `{"@arrayPath": ["$.properties.products", {shape}]}`.
    ArrayPath {
        root: Box<Mapping>,
        shape: Option<Box<Mapping>>,
    },
    /// `{"@template": "Hello {{traits.name}}"}`.
    Template(String),
    /// An object whose members are mappings; members that resolve to nothing are left out.
    Object(Vec<(String, Mapping)>),
    /// An array whose elements are mappings.
    Array(Vec<Mapping>),
}

/// The two tests `@if` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTest {
    /// Not undefined and not null.
    Exists,
    /// Not undefined, not null and not `== ''`.
    Blank,
}

/// A mapping that cannot be compiled: the JSON pointer of the offending node and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mapping at {at}: {why}")]
pub struct MappingSyntaxError {
    pub at: String,
    pub why: String,
}

impl Mapping {
    /// Compiles a mapping written as JSON.
    pub fn compile(json: &Value) -> Result<Mapping, MappingSyntaxError> {
        compile_at(json, "")
    }

    /// Resolves the mapping against `data` (an event, or an element inside `@arrayPath`).
    /// `None` is JavaScript's `undefined`.
    pub fn resolve(&self, data: &Value) -> Option<Value> {
        match self {
            Mapping::Literal(v) => Some(v.clone()),
            Mapping::Path(path) => js::get(data, path).map(Cow::into_owned),
            Mapping::If {
                test,
                cond,
                then,
                otherwise,
            } => {
                // Tested by reference: `@if exists $.x then $.x` clones the value once.
                let v = cond.probe(data);
                let holds = match (test, v.as_deref()) {
                    (_, None | Some(Value::Null)) => false,
                    (IfTest::Exists, Some(_)) => true,
                    (IfTest::Blank, Some(v)) => !loosely_equals_empty_string(v),
                };
                if holds {
                    then.as_ref().and_then(|m| m.resolve(data))
                } else {
                    otherwise.as_ref().and_then(|m| m.resolve(data))
                }
            }
            Mapping::ArrayPath { root, shape } => {
                let root = root.resolve(data)?;
                match (shape, root) {
                    (Some(shape), Value::Array(items)) => Some(Value::Array(
                        items
                            .iter()
                            .map(|item| shape.resolve(item).unwrap_or(Value::Null))
                            .collect(),
                    )),
                    (Some(shape), obj @ Value::Object(_)) => Some(Value::Array(vec![shape
                        .resolve(&obj)
                        .unwrap_or(Value::Null)])),
                    (_, other) => Some(other),
                }
            }
            Mapping::Template(t) => Some(Value::String(render_template(t, data))),
            Mapping::Object(members) => {
                let mut out = Map::with_capacity(members.len());
                for (k, m) in members {
                    if let Some(v) = m.resolve(data) {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Value::Object(out))
            }
            Mapping::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|m| m.resolve(data).unwrap_or(Value::Null))
                    .collect(),
            )),
        }
    }

    /// Like `resolve`, without cloning when the value is a part of `data`.
    fn probe<'a>(&self, data: &'a Value) -> Option<Cow<'a, Value>> {
        match self {
            Mapping::Path(path) => js::get(data, path),
            other => other.resolve(data).map(Cow::Owned),
        }
    }
}

/// `value != ''` in JavaScript's loose equality, negated: `0`, `false`, `""`, `[]` equal `''`.
fn loosely_equals_empty_string(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => js::to_display_string(&Value::Array(a.clone())).is_empty(),
        _ => false,
    }
}

fn compile_at(json: &Value, at: &str) -> Result<Mapping, MappingSyntaxError> {
    let err = |why: String| MappingSyntaxError {
        at: if at.is_empty() { "/".into() } else { at.into() },
        why,
    };
    match json {
        Value::Array(items) => Ok(Mapping::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_at(v, &format!("{at}/{i}")))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(obj) if obj.keys().any(|k| k.starts_with('@')) => {
            let directives: Vec<&String> = obj.keys().filter(|k| k.starts_with('@')).collect();
            if let Some(other) = obj
                .keys()
                .find(|k| !k.starts_with('@') && *k != "_metadata")
            {
                return Err(err(format!(
                    "a directive object cannot have other keys (found \"{other}\" next to {})",
                    directives[0]
                )));
            }
            let name = directives[0].as_str();
            let arg = &obj[name];
            let here = format!("{at}/{name}");
            compile_directive(name, arg, &here).map_err(|e| MappingSyntaxError {
                at: e.at,
                why: e.why,
            })
        }
        Value::Object(obj) => Ok(Mapping::Object(
            obj.iter()
                .map(|(k, v)| Ok((k.clone(), compile_at(v, &format!("{at}/{k}"))?)))
                .collect::<Result<_, MappingSyntaxError>>()?,
        )),
        scalar => Ok(Mapping::Literal(scalar.clone())),
    }
}

fn compile_directive(name: &str, arg: &Value, at: &str) -> Result<Mapping, MappingSyntaxError> {
    let err = |why: &str| MappingSyntaxError {
        at: at.to_string(),
        why: why.to_string(),
    };
    match name {
        "@path" => match arg {
            Value::String(p) => Ok(Mapping::Path(js::split_path(&strip_root(p)))),
            _ => Err(err("@path expects a string such as \"$.properties.email\"")),
        },
        "@template" => match arg {
            Value::String(t) => Ok(Mapping::Template(t.clone())),
            _ => Err(err("@template expects a string such as \"{{traits.name}}\"")),
        },
        "@literal" => compile_at(arg, at),
        "@if" => {
            let Value::Object(opts) = arg else {
                return Err(err("@if requires an object with an \"exists\" key"));
            };
            let (test, cond) = match (opts.get("exists"), opts.get("blank")) {
                (Some(c), _) if js::truthy(c) => (IfTest::Exists, c),
                (_, Some(c)) if js::truthy(c) => (IfTest::Blank, c),
                _ => return Err(err("@if requires an \"exists\" key or a \"blank\" key")),
            };
            for key in opts.keys() {
                if !matches!(key.as_str(), "exists" | "blank" | "then" | "else") {
                    return Err(err(&format!(
                        "@if accepts exists, blank, then and else, not \"{key}\""
                    )));
                }
            }
            let sub = |k: &str| -> Result<Option<Box<Mapping>>, MappingSyntaxError> {
                match opts.get(k) {
                    // `else` is only taken when truthy, as in mapping-kit.
                    Some(v) if k == "else" && !js::truthy(v) => Ok(None),
                    Some(v) => Ok(Some(Box::new(compile_at(v, &format!("{at}/{k}"))?))),
                    None => Ok(None),
                }
            };
            Ok(Mapping::If {
                test,
                cond: Box::new(compile_at(cond, &format!("{at}/{}", key_of(test)))?),
                then: sub("then")?,
                otherwise: sub("else")?,
            })
        }
        "@arrayPath" => {
            let Value::Array(parts) = arg else {
                return Err(err("@arrayPath expects [path, shape]"));
            };
            let root = match parts.first() {
                Some(Value::String(p)) => Mapping::Path(js::split_path(&strip_root(p))),
                Some(other) => compile_at(other, &format!("{at}/0"))?,
                None => return Err(err("@arrayPath expects [path, shape]")),
            };
            let shape = match parts.get(1) {
                Some(Value::Object(o)) if !o.is_empty() => {
                    Some(Box::new(compile_at(&parts[1], &format!("{at}/1"))?))
                }
                Some(Value::Object(_)) | None => None,
                Some(_) => return Err(err("@arrayPath's shape must be an object")),
            };
            Ok(Mapping::ArrayPath {
                root: Box::new(root),
                shape,
            })
        }
        other => Err(err(&format!(
            "{other} is not a supported directive (use @path, @if, @arrayPath, @template or @literal)"
        ))),
    }
}

fn key_of(t: IfTest) -> &'static str {
    match t {
        IfTest::Exists => "exists",
        IfTest::Blank => "blank",
    }
}

/// `path.replace('$.', '')`: only the first occurrence, wherever it is.
fn strip_root(p: &str) -> String {
    p.replacen("$.", "", 1)
}

/// mapping-kit's `render`: `{{{path}}}` first, then `{{path}}`, each replaced by the value at
/// the path (`undefined`/`null` become empty), converted to a string as `String()` does.
pub fn render_template(template: &str, data: &Value) -> String {
    let pass = |input: &str, braces: usize| -> String {
        let open = "{".repeat(braces);
        let close = "}".repeat(braces);
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(start) = rest.find(&open) {
            let inner_start = start + braces;
            // `[^}]+` then the closing braces.
            let inner_len = rest[inner_start..]
                .find('}')
                .unwrap_or(rest.len() - inner_start);
            let inner = &rest[inner_start..inner_start + inner_len];
            let after = inner_start + inner_len;
            if inner_len > 0 && rest[after..].starts_with(&close) {
                out.push_str(&rest[..start]);
                let path = js::split_path(inner.trim());
                let value = if inner.trim().is_empty() || inner.trim() == "." {
                    Some(Cow::Borrowed(data))
                } else {
                    js::get(data, &path)
                };
                if let Some(v) = value {
                    if !v.is_null() {
                        out.push_str(&js::to_display_string(&v));
                    }
                }
                rest = &rest[after + braces..];
            } else {
                out.push_str(&rest[..start + 1]);
                rest = &rest[start + 1..];
            }
        }
        out.push_str(rest);
        out
    };
    let first = pass(template, 3);
    pass(&first, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mapping: Value, data: Value) -> Option<Value> {
        Mapping::compile(&mapping).expect("compiles").resolve(&data)
    }

    #[test]
    fn if_exists_falls_through_on_null() {
        let m = json!({"@if": {"exists": {"@path": "$.properties.email"},
            "then": {"@path": "$.properties.email"}, "else": {"@path": "$.context.traits.email"}}});
        let ev = json!({"properties": {"email": null}, "context": {"traits": {"email": "a@b.co"}}});
        assert_eq!(run(m, ev), Some(json!("a@b.co")));
    }

    #[test]
    fn missing_paths_drop_their_keys() {
        let m = json!({"a": {"@path": "$.x"}, "b": {"@path": "$.y"}, "c": 1});
        assert_eq!(run(m, json!({"y": null})), Some(json!({"b": null, "c": 1})));
    }

    #[test]
    fn array_path_maps_each_element_and_wraps_an_object() {
        let m =
            json!({"@arrayPath": ["$.p", {"id": {"@path": "product_id"}, "n": {"@path": "name"}}]});
        assert_eq!(
            run(
                m.clone(),
                json!({"p": [{"product_id": 1, "name": "x"}, {"name": "y"}]})
            ),
            Some(json!([{"id": 1, "n": "x"}, {"n": "y"}]))
        );
        assert_eq!(
            run(m.clone(), json!({"p": {"name": "z"}})),
            Some(json!([{"n": "z"}]))
        );
        assert_eq!(run(m, json!({"p": "str"})), Some(json!("str")));
    }

    #[test]
    fn templates_render_paths_as_strings() {
        let m =
            json!({"@template": "{{traits.first}} {{{traits.last}}} ({{traits.n}}){{missing}}"});
        let ev = json!({"traits": {"first": "Ann", "last": "Lee", "n": 1.0}});
        assert_eq!(run(m, ev), Some(json!("Ann Lee (1)")));
    }

    #[test]
    fn bad_mappings_name_the_place_and_the_problem() {
        let e = Mapping::compile(&json!({"user": {"email": {"@path": 3}}})).unwrap_err();
        assert_eq!(e.at, "/user/email/@path");
        assert!(e.why.contains("expects a string"));
        let e = Mapping::compile(&json!({"x": {"@pathh": "$.a"}})).unwrap_err();
        assert!(e.why.contains("@pathh is not a supported directive"), "{e}");
        let e = Mapping::compile(&json!({"@if": {"then": 1}})).unwrap_err();
        assert!(e.why.contains("exists"));
        let e = Mapping::compile(&json!({"@path": "$.a", "b": 1})).unwrap_err();
        assert!(e.why.contains("other keys"));
    }
}
