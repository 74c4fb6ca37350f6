//! Where the configuration comes from, strictly: the built-in defaults (config/default.toml,
//! compiled into the binary), an optional `default.toml` and the environment's file in the
//! configuration directory, then `GATEWAY__SECTION__KEY` variables. Every key is checked against
//! the settings' structs: an unknown key is an error naming it and the nearest known one, and
//! each value remembers where it came from (`gateway config` prints that).

use super::{ConfigError, Settings};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// config/default.toml as shipped: the defaults of every key.
pub const BUILT_IN_DEFAULTS: &str = include_str!("../../config/default.toml");

/// The environment used when `GATEWAY_ENVIRONMENT` is not set; it alone may lack its file.
pub const DEFAULT_ENVIRONMENT: &str = "local";

/// Variables the gateway reads under the `GATEWAY_` prefix that are not configuration keys.
const OWN_VARIABLES: &[&str] = &["GATEWAY_ENVIRONMENT", "GATEWAY_CONFIG_DIR"];

/// What to load.
#[derive(Debug, Clone)]
pub struct Sources {
    /// A directory (its `default.toml`, if any, then `<environment>.toml`) or one overlay file.
    /// `None`: the built-in defaults and the variables only.
    pub config: Option<PathBuf>,
    pub environment: String,
    /// The process environment (tests pass their own).
    pub vars: Vec<(String, String)>,
}

impl Sources {
    /// `config` with the process's environment.
    pub fn from_env(config: Option<PathBuf>) -> Sources {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let environment = vars
            .iter()
            .find(|(k, _)| k == "GATEWAY_ENVIRONMENT")
            .map_or_else(|| DEFAULT_ENVIRONMENT.to_string(), |(_, v)| v.clone());
        Sources {
            config,
            environment,
            vars,
        }
    }

    pub(crate) fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The merged configuration tree with the origin of every leaf (`application.port` →
/// `config/local.toml`).
#[derive(Debug, Clone, Default)]
pub struct Layered {
    pub tree: Value,
    pub origins: BTreeMap<String, String>,
}

impl Layered {
    pub fn origin(&self, path: &str) -> &str {
        // A leaf set as part of a larger value (an array of connections) has its parent's.
        let mut p = path;
        loop {
            if let Some(o) = self.origins.get(p) {
                return o;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return "default",
            }
        }
    }
}

/// Reads and merges every source; checks the keys; deserializes.
pub fn load(sources: &Sources) -> Result<(Settings, Layered), ConfigError> {
    let layered = merge_sources(sources)?;
    let mut errors = unknown_keys(&layered);
    errors.extend(misspelled_variables(sources, &layered.tree));
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors.join("\n")));
    }
    let settings: Settings =
        serde_path_to_error::deserialize(layered.tree.clone()).map_err(|e| {
            let path = dotted(e.path());
            let at = layered.tree_value(&path);
            let value = at.map(|v| format!(" = {v}")).unwrap_or_default();
            ConfigError::Invalid(format!(
                "{path}{value} ({}): {}",
                layered.origin(&path),
                e.into_inner()
                    .to_string()
                    .replace("unknown variant", "unknown value")
            ))
        })?;
    Ok((settings, layered))
}

impl Layered {
    /// The value at a dotted path of the merged tree (`None`: no source set it).
    pub fn tree_value(&self, path: &str) -> Option<&Value> {
        let mut v = &self.tree;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            v = match v {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }
}

fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_toml(text: &str, label: &str) -> Result<Value, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        // toml's message starts with "TOML parse error at line N, column M" and shows the line.
        ConfigError::Invalid(format!("{label}: {}", e.to_string().trim_end()))
    })?;
    serde_json::to_value(table).map_err(|e| ConfigError::Invalid(format!("{label}: {e}")))
}

fn merge_sources(sources: &Sources) -> Result<Layered, ConfigError> {
    let mut layered = Layered {
        tree: parse_toml(BUILT_IN_DEFAULTS, "built-in config/default.toml")?,
        origins: BTreeMap::new(),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    match &sources.config {
        None if sources.environment != DEFAULT_ENVIRONMENT => {
            return Err(ConfigError::Invalid(format!(
                "GATEWAY_ENVIRONMENT is {:?} but no configuration directory was found \
                 (looked for ./config; give --config DIR or GATEWAY_CONFIG_DIR)",
                sources.environment
            )))
        }
        None => {}
        Some(path) if path.is_file() => files.push(path.clone()),
        Some(dir) if dir.is_dir() => {
            let default = dir.join("default.toml");
            // The repository's own default.toml is the built-in one: no need to read it twice,
            // and its values stay labelled "default".
            if default.is_file() && read(&default)? != BUILT_IN_DEFAULTS {
                files.push(default);
            }
            let env_file = dir.join(format!("{}.toml", sources.environment));
            if env_file.is_file() {
                files.push(env_file);
            } else if sources.environment != DEFAULT_ENVIRONMENT {
                let known: Vec<String> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".toml")
                            .filter(|n| *n != "default")
                            .map(str::to_string)
                    })
                    .collect();
                return Err(ConfigError::Invalid(format!(
                    "GATEWAY_ENVIRONMENT is {:?} but {} does not exist (environments with a file: {})",
                    sources.environment,
                    env_file.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Some(path) => {
            return Err(ConfigError::Invalid(format!(
                "configuration {} not found (--config takes a directory or a .toml file; the \
                 defaults are built in, so it needs only the keys you change)",
                path.display()
            )))
        }
    }
    for file in files {
        let label = file.display().to_string();
        let over = parse_toml(&read(&file)?, &label)?;
        merge(&mut layered, over, "", &label);
    }
    apply_variables(&mut layered, sources)?;
    Ok(layered)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot read {}: {e}", path.display())))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Tables merge key by key; any other value (arrays included) replaces what was there.
fn merge(layered: &mut Layered, over: Value, path: &str, origin: &str) {
    let Value::Object(over) = over else {
        unreachable!("merge is called on tables")
    };
    for (key, value) in over {
        let p = join(path, &key);
        let base = tree_at(&mut layered.tree, path);
        match base.get_mut(&key) {
            Some(existing) if existing.is_object() && value.is_object() => {
                merge(layered, value, &p, origin);
            }
            _ => {
                base.insert(key, value.clone());
                set_origin(&mut layered.origins, &p, origin);
            }
        }
    }
}

fn tree_at<'a>(tree: &'a mut Value, path: &str) -> &'a mut Map<String, Value> {
    let mut v = tree;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Object(m) => m.get_mut(seg).expect("merge walks existing tables"),
            Value::Array(a) => &mut a[seg.parse::<usize>().expect("an index")],
            _ => unreachable!("merge walks tables"),
        };
    }
    v.as_object_mut().expect("merge walks tables")
}

/// A value set whole (a table or a list) takes one origin, replacing those of what it replaced.
fn set_origin(origins: &mut BTreeMap<String, String>, path: &str, origin: &str) {
    let prefix = format!("{path}.");
    origins.retain(|k, _| k != path && !k.starts_with(&prefix));
    origins.insert(path.to_string(), origin.to_string());
}

/// `GATEWAY__APPLICATION__PORT=9000`, `GATEWAY__CONNECTIONS__0__ITERABLE_API_KEY=...`: the path
/// in lower case, a number indexes an array (one past its end appends). The value takes the type
/// of the value it replaces (so a numeric write key stays a string); a new key is a string unless
/// it reads as `true`, `false` or JSON array/object.
fn apply_variables(layered: &mut Layered, sources: &Sources) -> Result<(), ConfigError> {
    let mut vars: Vec<&(String, String)> = sources
        .vars
        .iter()
        .filter(|(k, _)| k.starts_with("GATEWAY__"))
        .collect();
    // Indexes in order, so that `__1__` after `__0__` appends in turn.
    vars.sort();
    for (name, raw) in vars {
        let segments: Vec<String> = name["GATEWAY__".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "{name}: empty key segment (the form is GATEWAY__SECTION__KEY, segments joined by two underscores)"
            )));
        }
        let origin = format!("env {name}");
        let mut node = &mut layered.tree;
        let mut path = String::new();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let next_path = join(&path, seg);
            node = match node {
                Value::Object(m) => {
                    // Keys of free maps keep their spelling (cartEvents): match case-insensitively.
                    let key = m
                        .keys()
                        .find(|k| k.eq_ignore_ascii_case(seg))
                        .cloned()
                        .unwrap_or_else(|| seg.clone());
                    if last {
                        let typed = typed(raw, m.get(&key));
                        m.insert(key.clone(), typed);
                        layered.origins.insert(join(&path, &key), origin.clone());
                        break;
                    }
                    path = join(&path, &key);
                    m.entry(key).or_insert_with(|| Value::Object(Map::new()))
                }
                Value::Array(a) => {
                    let Ok(index) = seg.parse::<usize>() else {
                        return Err(ConfigError::Invalid(format!(
                            "{name}: {path} is a list; the segment after it must be an index (GATEWAY__{}__0__...)",
                            path.to_ascii_uppercase().replace('.', "__")
                        )));
                    };
                    if index > a.len() {
                        return Err(ConfigError::Invalid(format!(
                            "{name}: {path} has {} entries; index {index} would leave a gap (use {})",
                            a.len(),
                            a.len()
                        )));
                    }
                    if index == a.len() {
                        a.push(Value::Object(Map::new()));
                    }
                    if last {
                        a[index] = typed(raw, Some(&a[index]));
                        layered.origins.insert(next_path, origin.clone());
                        break;
                    }
                    path = next_path;
                    &mut a[index]
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{name}: {path} is a single value, it has no key {seg:?}"
                    )))
                }
            };
        }
    }
    Ok(())
}

fn typed(raw: &str, replaces: Option<&Value>) -> Value {
    match replaces {
        Some(Value::Number(_)) => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(raw.into())),
        Some(Value::Bool(_)) => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.into()),
        },
        Some(Value::String(_)) => Value::String(raw.into()),
        _ => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ if raw.starts_with('[') || raw.starts_with('{') => {
                serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()))
            }
            _ => Value::String(raw.into()),
        },
    }
}

/// What is known at each place of the tree.
enum Node {
    /// A struct: its field names (read from its `Deserialize`).
    Struct(fn() -> &'static [&'static str]),
    /// A map whose keys are free (rate limits by path, mapping settings checked by the mapping).
    Free,
}

/// Every table of the configuration. `*` stands for an index in a list. A new field of one of
/// these structs is known without an edit here; a new table needs its line.
fn schema() -> &'static [(&'static str, Node)] {
    use super::*;
    &[
        ("", Node::Struct(fields::<Settings>)),
        ("application", Node::Struct(fields::<ApplicationSettings>)),
        ("database", Node::Struct(fields::<DatabaseSettings>)),
        ("ingest", Node::Struct(fields::<IngestSettings>)),
        ("delivery", Node::Struct(fields::<DeliverySettings>)),
        ("delivery.rate_limits", Node::Free),
        ("iterable", Node::Struct(fields::<UpstreamSettings>)),
        ("segment", Node::Struct(fields::<UpstreamSettings>)),
        ("ui", Node::Struct(fields::<UiSettings>)),
        ("metrics", Node::Struct(fields::<MetricsSettings>)),
        ("connections.*", Node::Struct(fields::<ConnectionSettings>)),
        ("connections.*.settings", Node::Free),
        ("connections.*.event_names", Node::Free),
    ]
}

/// The field names a struct's `Deserialize` asks for (serde hands them to `deserialize_struct`).
pub(crate) fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Spy<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Spy<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut out: &'static [&'static str] = &[];
    let _ = T::deserialize(Spy(&mut out));
    out
}

fn unknown_keys(layered: &Layered) -> Vec<String> {
    let mut errors = Vec::new();
    walk(layered, &layered.tree, "", "", &mut errors);
    errors
}

fn walk(layered: &Layered, v: &Value, pattern: &str, path: &str, errors: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let node = schema().iter().find(|(p, _)| *p == pattern).map(|(_, n)| n);
            let Some(Node::Struct(fields)) = node else {
                return;
            };
            let known = fields();
            for (key, value) in m {
                let p = join(path, key);
                if !known.contains(&key.as_str()) {
                    errors.push(unknown_key_message(layered, &p, key, known));
                    continue;
                }
                walk(layered, value, &join(pattern, key), &p, errors);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(
                    layered,
                    item,
                    &join(pattern, "*"),
                    &join(path, &i.to_string()),
                    errors,
                );
            }
        }
        _ => {}
    }
}

fn unknown_key_message(layered: &Layered, path: &str, key: &str, known: &[&str]) -> String {
    let origin = layered.origin(path);
    let parent = &path[..path.len() - key.len()];
    let hint = match nearest(key, known) {
        Some(n) if origin.starts_with("env ") => format!(
            "; did you mean `{parent}{n}` (GATEWAY__{})?",
            format!("{parent}{n}")
                .to_ascii_uppercase()
                .replace('.', "__")
        ),
        Some(n) => format!("; did you mean `{parent}{n}`?"),
        None => format!("; known keys here: {}", known.join(", ")),
    };
    format!("unknown configuration key `{path}` ({origin}){hint}")
}

/// The closest known key, if it is close enough to be a typo.
pub(crate) fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// The variables `*_env` keys name (`token_env = "GATEWAY_UI_TOKEN"`).
fn named_by_env_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(name) if k.ends_with("_env") => out.push(name.clone()),
                    other => named_by_env_keys(other, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| named_by_env_keys(v, out)),
        _ => {}
    }
}

/// `GATEWAY_APPLICATION_PORT` (one underscore) looks like a key but is not read: refused, with
/// the spelling that works. Other `GATEWAY_*` variables pass, and so does any variable a `*_env`
/// key names, whatever it looks like.
fn misspelled_variables(sources: &Sources, tree: &Value) -> Vec<String> {
    let mut named = Vec::new();
    named_by_env_keys(tree, &mut named);
    let mut errors = Vec::new();
    for (name, _) in &sources.vars {
        let Some(rest) = name.strip_prefix("GATEWAY_") else {
            continue;
        };
        if rest.starts_with('_') || OWN_VARIABLES.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        for (section, node) in schema() {
            if section.is_empty() || section.contains('*') {
                continue;
            }
            let Node::Struct(fields) = node else { continue };
            let Some(key) = lower.strip_prefix(&format!("{section}_")) else {
                continue;
            };
            if fields().contains(&key) {
                errors.push(format!(
                    "{name} is not read (one underscore); did you mean GATEWAY__{}__{}?",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                ));
            }
        }
    }
    errors
}
