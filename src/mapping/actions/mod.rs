//! The actions of Segment's Iterable destinations: each validates its payload the way
//! actions-core does and builds the exact request(s) the published code sends.
//!
//! An action is three things: a schema (`schema.rs` types), a default mapping (in
//! `presets.json`, in the mapping language), and a `perform` that turns a validated payload into
//! requests. Bodies keep JavaScript's key order: keys that the code assigns over an existing key
//! keep its place, new keys are appended.

pub mod delete_user;
mod items;
pub mod register_token;
pub mod sync_audience;
pub mod track_event;
pub mod track_purchase;
pub mod update_cart;
pub mod update_email;
pub mod update_subscriptions;
pub mod update_user;

use super::js;
use super::schema::Schema;
use crate::iterable::api::Endpoint;
use serde::Serialize;
use serde_json::{Map, Value};

/// What an action is called in configuration and in `gateway map` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    UpdateUser,
    TrackEvent,
    UpdateCart,
    TrackPurchase,
    /// `alias` → `/api/users/updateEmail` (a gateway option; not in Segment's destination).
    UpdateEmail,
    /// Iterable Lists sync from Engage audiences (reference §10).
    SyncAudience,
    /// `context.device.token` → `/api/users/registerDeviceToken` (a gateway option).
    RegisterDeviceToken,
    /// A web push token → `/api/users/registerBrowserToken` (a gateway option).
    RegisterBrowserToken,
    /// `/api/users/updateSubscriptions` (a gateway option; Segment's exists only on staging).
    UpdateSubscriptions,
    /// A `delete` message → Iterable's user deletion or GDPR forget (issue 11; not a
    /// subscription: every connection has it).
    DeleteUser,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::UpdateUser => "updateUser",
            Action::TrackEvent => "trackEvent",
            Action::UpdateCart => "updateCart",
            Action::TrackPurchase => "trackPurchase",
            Action::UpdateEmail => "updateEmail",
            Action::SyncAudience => "syncAudience",
            Action::RegisterDeviceToken => "registerDeviceToken",
            Action::RegisterBrowserToken => "registerBrowserToken",
            Action::UpdateSubscriptions => "updateSubscriptions",
            Action::DeleteUser => "deleteUser",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        [
            Action::UpdateUser,
            Action::TrackEvent,
            Action::UpdateCart,
            Action::TrackPurchase,
            Action::UpdateEmail,
            Action::SyncAudience,
            Action::RegisterDeviceToken,
            Action::RegisterBrowserToken,
            Action::UpdateSubscriptions,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// The schema actions-core validates the payload against.
    pub fn schema(self, flavor: ListsFlavor) -> &'static Schema {
        match self {
            Action::UpdateUser => &update_user::SCHEMA,
            Action::TrackEvent => &track_event::SCHEMA,
            Action::UpdateCart => &update_cart::SCHEMA,
            Action::TrackPurchase => &track_purchase::SCHEMA,
            Action::UpdateEmail => &update_email::SCHEMA,
            Action::SyncAudience => sync_audience::schema(flavor),
            Action::RegisterDeviceToken => &register_token::DEVICE_SCHEMA,
            Action::RegisterBrowserToken => &register_token::BROWSER_SCHEMA,
            Action::UpdateSubscriptions => &update_subscriptions::SCHEMA,
            Action::DeleteUser => &delete_user::SCHEMA,
        }
    }

    /// Whether Segment sends this action in bulk (`performBatch`).
    pub fn batches(self) -> bool {
        matches!(
            self,
            Action::UpdateUser | Action::TrackEvent | Action::SyncAudience
        )
    }
}

/// Which of Segment's two list destinations `syncAudience` behaves as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub enum ListsFlavor {
    /// "Iterable Lists (Actions)", `iterable-audiences`.
    #[default]
    #[serde(rename = "iterable-audiences")]
    Audiences,
    /// "Iterable Lists", `iterable-lists`.
    #[serde(rename = "iterable-lists")]
    Lists,
}

/// One HTTP request an action plans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedRequest {
    pub endpoint: Endpoint,
    pub body: Value,
}

/// Why an action refused a payload. The message is Segment's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    pub code: &'static str,
    pub message: String,
}

impl ActionError {
    pub fn validation(message: impl Into<String>) -> ActionError {
        ActionError {
            code: "PAYLOAD_VALIDATION_FAILED",
            message: message.into(),
        }
    }
}

/// What an action needs besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// "Now" in Unix milliseconds: `createdAt` defaults to it.
    pub now_ms: i64,
    /// The Segment event, for the list actions' audience settings.
    pub event: &'a Value,
    pub flavor: ListsFlavor,
    /// `iterableProjectType` of the lists destination: true for `userId`.
    pub user_id_project: bool,
    /// The push token settings.
    pub push: &'a PushOptions,
}

/// Settings of the token actions (README, settings table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// `pushApplicationName`: used when the event has no `context.app.namespace`.
    pub application_name: Option<String>,
    /// `apnsSandbox`: Apple tokens are APNS_SANDBOX unless the event says otherwise.
    pub apns_sandbox: bool,
    /// `pushTokenWindowHours` in seconds: a (user, token) registration is sent at most once
    /// per window (0: every time).
    pub window_secs: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            application_name: None,
            apns_sandbox: false,
            window_secs: 24 * 3600,
        }
    }
}

/// The one identifier the user endpoints that want "an email or a userId (but not both)" get:
/// the userId when the event has one, else the email. userId first, because it is the one
/// every event of a known user carries (an identify has the email in traits, a later track
/// often has none), so a user's token registrations always name the user the same way and
/// their once-per-window key (`register_token::once_key`) is the same.
pub(crate) fn one_identity(
    payload: &Map<String, Value>,
) -> Result<(&'static str, Value), ActionError> {
    let get = |k: &str| payload.get(k).filter(|v| js::truthy(v)).cloned();
    let choice = get("userId")
        .map(|u| ("userId", u))
        .or_else(|| get("email").map(|e| ("email", e)));
    choice.ok_or_else(|| ActionError::validation("Must include email or userId."))
}

/// Segment's `Must include email or userId.` check, on JavaScript truthiness.
pub(crate) fn require_identity(payload: &Map<String, Value>) -> Result<(), ActionError> {
    let present = |k: &str| payload.get(k).is_some_and(js::truthy);
    if present("email") || present("userId") {
        Ok(())
    } else {
        Err(ActionError::validation("Must include email or userId."))
    }
}

/// `{...obj, key: value}`: replaces in place or appends, as a JavaScript spread does.
pub(crate) fn set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    // IndexMap keeps an existing key's position on insert.
    obj.insert(key.to_string(), value);
}

/// `{...dataFields, phoneNumber}` where `phoneNumber` may be undefined (then the key is gone,
/// even if dataFields had one).
pub(crate) fn with_phone(mut data_fields: Value, phone: Option<Value>) -> Value {
    if let Value::Object(map) = &mut data_fields {
        match phone {
            Some(p) => set(map, "phoneNumber", p),
            None => {
                map.shift_remove("phoneNumber");
            }
        }
        data_fields
    } else {
        // convertDatesInObject returned a non-object (only possible for scalars): spread of a
        // string gives its characters, of anything else nothing.
        let mut map = Map::new();
        if let Value::String(s) = &data_fields {
            for (i, ch) in s.encode_utf16().enumerate() {
                map.insert(
                    i.to_string(),
                    Value::String(String::from_utf16_lossy(&[ch])),
                );
            }
        }
        if let Some(p) = phone {
            map.insert("phoneNumber".into(), p);
        }
        Value::Object(map)
    }
}

/// Takes `dataFields` out of a body (keeping its slot), for in-place conversion.
pub(crate) fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.get_mut(key).map(Value::take)
}

/// `convertDatesInObject(value ?? {})`.
pub(crate) fn converted(value: Option<Value>) -> Value {
    let mut v = match value {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    };
    super::dates::convert_dates_in_object(&mut v);
    v
}
