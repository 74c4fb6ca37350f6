//! A connection's Iterable settings compiled into a [`Destination`]: its subscriptions
//! (trigger, action, mapping) and the options the actions read.
//!
//! Settings use the names of Segment's Iterable (Actions) settings (`apiKey`,
//! `dataCenterLocation`), the classic page settings (`map_pages_to_single_event`, ...), and the
//! gateway's options. Unknown keys are errors, so that a typo does not silently change nothing.

use super::actions::delete_user::Deletion;
use super::actions::{Action, ListsFlavor, PushOptions};
use super::fql::Trigger;
use super::kit::Mapping;
use super::page::PageOptions;
use crate::iterable::api::DataCenter;
use serde_json::{Map, Value};
use std::sync::LazyLock;

static PRESETS: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("presets.json")).expect("presets.json is valid JSON")
});

/// A compiled subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    pub trigger: Trigger,
    pub action: Action,
    pub mapping: Mapping,
    /// Page/screen handling: the event is first expanded by the page settings.
    pub pages: bool,
}

/// Everything the mapping layer knows about one connection's Iterable side.
#[derive(Debug, Clone)]
pub struct Destination {
    pub subscriptions: Vec<Subscription>,
    pub data_center: DataCenter,
    pub page: PageOptions,
    pub lists_flavor: ListsFlavor,
    /// `iterableProjectType = "userId"` (list actions).
    pub user_id_project: bool,
    /// The token actions' settings.
    pub push: PushOptions,
    /// `deletion`: what a `delete` message asks Iterable (`delete` or `forget`).
    pub deletion: Deletion,
    /// The `deleteUser` mapping (presets.json), run on every `delete` message.
    pub deletion_mapping: Mapping,
}

/// A setting or subscription that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("settings must be a JSON object")]
    NotAnObject,
    #[error("unknown setting {0:?} (known: {KNOWN})")]
    UnknownSetting(String),
    #[error("setting {key:?} must be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("subscription {index} ({name}): {why}")]
    Subscription {
        index: usize,
        name: String,
        why: String,
    },
}

const KNOWN: &str = "apiKey, dataCenterLocation, map_pages_to_single_event, track_all_pages, \
track_categorized_pages, track_named_pages, pageCalls, cartEvents, aliasToUpdateEmail, syncLists, \
listsDestination, iterableProjectType, pushTokens, pushApplicationName, apnsSandbox, \
pushTokenWindowHours, updateSubscriptions, deletion, subscriptions";

impl Default for Destination {
    fn default() -> Self {
        Destination::from_settings(&Value::Object(Map::new())).expect("the presets compile")
    }
}

impl Destination {
    /// Compiles settings (see the module documentation for the keys).
    pub fn from_settings(settings: &Value) -> Result<Destination, ConfigError> {
        let s = settings.as_object().ok_or(ConfigError::NotAnObject)?;
        for key in s.keys() {
            if !KNOWN.split(", ").any(|k| k.trim() == key) {
                return Err(ConfigError::UnknownSetting(key.clone()));
            }
        }
        let boolean = |key: &str, default: bool| -> Result<bool, ConfigError> {
            match s.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(ConfigError::WrongType {
                    key: key.into(),
                    expected: "true or false",
                }),
            }
        };
        let string = |key: &str| -> Result<Option<&str>, ConfigError> {
            match s.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.as_str())),
                Some(_) => Err(ConfigError::WrongType {
                    key: key.into(),
                    expected: "a string",
                }),
            }
        };
        let page = PageOptions {
            map_pages_to_single_event: boolean("map_pages_to_single_event", true)?,
            track_all_pages: boolean("track_all_pages", false)?,
            track_categorized_pages: boolean("track_categorized_pages", true)?,
            track_named_pages: boolean("track_named_pages", true)?,
        };
        let lists_flavor = match string("listsDestination")? {
            None | Some("iterable-audiences") => ListsFlavor::Audiences,
            Some("iterable-lists") => ListsFlavor::Lists,
            Some(_) => {
                return Err(ConfigError::WrongType {
                    key: "listsDestination".into(),
                    expected: "\"iterable-audiences\" or \"iterable-lists\"",
                })
            }
        };
        let subscriptions = match s.get("subscriptions") {
            Some(Value::Array(subs)) => subs
                .iter()
                .enumerate()
                .map(|(i, v)| compile_subscription(i, v, lists_flavor))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(ConfigError::WrongType {
                    key: "subscriptions".into(),
                    expected: "an array of {trigger, action, mapping}",
                })
            }
            None => {
                let mut sets = vec![match string("cartEvents")? {
                    None | Some("segment") => "segment",
                    Some("classic") => "classic_cart",
                    Some(_) => {
                        return Err(ConfigError::WrongType {
                            key: "cartEvents".into(),
                            expected: "\"segment\" or \"classic\"",
                        })
                    }
                }];
                if boolean("pageCalls", true)? {
                    sets.push("pages");
                }
                if boolean("aliasToUpdateEmail", false)? {
                    sets.push("alias");
                }
                if boolean("syncLists", false)? {
                    sets.push("lists");
                }
                if boolean("pushTokens", false)? {
                    sets.push("push_tokens");
                }
                if boolean("updateSubscriptions", false)? {
                    sets.push("subscription_preferences");
                }
                let mut out = Vec::new();
                for set in sets {
                    for v in PRESETS["subscriptions"][set]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        out.push(compile_subscription(out.len(), v, lists_flavor)?);
                    }
                }
                out
            }
        };
        let window_hours = match s.get("pushTokenWindowHours") {
            None | Some(Value::Null) => 24.0,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|h| h >= 0.0) => {
                n.as_f64().unwrap_or(24.0)
            }
            Some(_) => {
                return Err(ConfigError::WrongType {
                    key: "pushTokenWindowHours".into(),
                    expected: "a number of hours, 0 or more",
                })
            }
        };
        let push = PushOptions {
            application_name: string("pushApplicationName")?.map(str::to_string),
            apns_sandbox: boolean("apnsSandbox", false)?,
            window_secs: (window_hours * 3600.0).round() as u64,
        };
        let deletion = match string("deletion")? {
            None | Some("delete") => Deletion::Delete,
            Some("forget") => Deletion::Forget,
            Some(_) => {
                return Err(ConfigError::WrongType {
                    key: "deletion".into(),
                    expected: "\"delete\" or \"forget\"",
                })
            }
        };
        let deletion_mapping = Mapping::compile(default_mapping(Action::DeleteUser, lists_flavor))
            .expect("the deleteUser preset compiles");
        Ok(Destination {
            push,
            deletion,
            deletion_mapping,
            subscriptions,
            data_center: DataCenter::from_setting(string("dataCenterLocation")?),
            page,
            lists_flavor,
            user_id_project: string("iterableProjectType")? == Some("userId"),
        })
    }
}

/// The default mapping of an action, as JSON.
pub fn default_mapping(action: Action, flavor: ListsFlavor) -> &'static Value {
    let key = match (action, flavor) {
        (Action::SyncAudience, ListsFlavor::Lists) => "syncAudience:iterable-lists",
        (a, _) => a.name(),
    };
    &PRESETS["defaults"][key]
}

fn compile_subscription(
    index: usize,
    v: &Value,
    flavor: ListsFlavor,
) -> Result<Subscription, ConfigError> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("unnamed")
        .to_string();
    let err = |why: String| ConfigError::Subscription {
        index,
        name: name.clone(),
        why,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| err("must be an object".into()))?;
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "name" | "trigger" | "action" | "mapping" | "mappingOverrides" | "pages"
        ) {
            return Err(err(format!(
                "unknown key {key:?} (known: name, trigger, action, mapping, mappingOverrides, pages)"
            )));
        }
    }
    let trigger = obj
        .get("trigger")
        .and_then(Value::as_str)
        .ok_or_else(|| err("\"trigger\" (an FQL string) is required".into()))?;
    let trigger = Trigger::parse(trigger).map_err(|e| err(e.to_string()))?;
    let action_name = obj
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| err("\"action\" is required".into()))?;
    let action = Action::parse(action_name).ok_or_else(|| {
        err(format!(
            "unknown action {action_name:?} (use updateUser, trackEvent, updateCart, trackPurchase, updateEmail, syncAudience, registerDeviceToken, registerBrowserToken or updateSubscriptions)"
        ))
    })?;
    // `mapping` replaces the defaults, as a mapping pasted from Segment's UI does;
    // `mappingOverrides` is merged over them, key by key.
    let mut mapping_json = match obj.get("mapping") {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(_) => return Err(err("\"mapping\" must be an object".into())),
        None => default_mapping(action, flavor).clone(),
    };
    match obj.get("mappingOverrides") {
        Some(Value::Object(over)) => {
            if let Value::Object(base) = &mut mapping_json {
                for (k, v) in over {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        Some(_) => return Err(err("\"mappingOverrides\" must be an object".into())),
        None => {}
    }
    let mapping = Mapping::compile(&mapping_json).map_err(|e| err(e.to_string()))?;
    let pages = match obj.get("pages") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err("\"pages\" must be true or false".into())),
    };
    Ok(Subscription {
        name,
        trigger,
        action,
        mapping,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_settings_compile_the_presets_and_page_handling() {
        let d = Destination::default();
        let names: Vec<&str> = d.subscriptions.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Track Calls",
                "Identify Calls",
                "Update Cart Calls",
                "Order Completed Calls",
                "Page and Screen Calls"
            ]
        );
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let e = Destination::from_settings(&json!({"apiKye": "x"})).unwrap_err();
        assert!(e.to_string().contains("unknown setting \"apiKye\""), "{e}");
        let e = Destination::from_settings(&json!({"subscriptions": [
            {"name": "Mine", "trigger": "type == \"track\"", "action": "trackEvent"}]}))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("subscription 0 (Mine): invalid trigger"),
            "{e}"
        );
        let e = Destination::from_settings(&json!({"subscriptions": [
            {"trigger": "type = \"track\"", "action": "trackEvent", "mapping": {"eventName": {"@path": 1}}}]}))
        .unwrap_err();
        assert!(e.to_string().contains("/eventName/@path"), "{e}");
        let e = Destination::from_settings(&json!({"subscriptions": [
            {"trigger": "type = \"track\"", "action": "sendSms"}]}))
        .unwrap_err();
        assert!(e.to_string().contains("unknown action \"sendSms\""), "{e}");
        let e = Destination::from_settings(&json!({"pushTokenWindowHours": -1})).unwrap_err();
        assert!(e.to_string().contains("pushTokenWindowHours"), "{e}");
        let e = Destination::from_settings(&json!({"pushTokens": "yes"})).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"pushTokens\" must be true or false"),
            "{e}"
        );
    }

    #[test]
    fn the_token_and_subscription_presets_are_off_until_turned_on() {
        let names = |s: Value| -> Vec<String> {
            let d = Destination::from_settings(&s).unwrap();
            d.subscriptions.into_iter().map(|s| s.name).collect()
        };
        assert_eq!(names(json!({})).len(), 5);
        let on = names(json!({"pushTokens": true, "updateSubscriptions": true}));
        assert_eq!(
            on[5..],
            [
                "Device Tokens",
                "Browser Tokens",
                "Subscription Preferences"
            ]
        );
        let d = Destination::from_settings(&json!({"pushTokenWindowHours": 1.5, "apnsSandbox": true, "pushApplicationName": "app"})).unwrap();
        assert_eq!(
            d.push,
            PushOptions {
                application_name: Some("app".into()),
                apns_sandbox: true,
                window_secs: 5400
            }
        );
    }
}
