//! `registerDeviceToken` and `registerBrowserToken`: the push token of Segment's mobile SDKs
//! (`context.device.token`) → `/api/users/registerDeviceToken`, and a web push token →
//! `/api/users/registerBrowserToken` (Iterable/api-client `api-docs.json`,
//! `RegisterDeviceTokenRequest`, `Device`, `RegisterBrowserTokenRequest`).
//!
//! Not part of Segment's destination (it has no token endpoint). The platform rule:
//! 1. `platform` when the mapping gives one (APNS, APNS_SANDBOX or GCM; FCM is read as GCM);
//! 2. otherwise `deviceType` (`context.device.type`), then `osName` (`context.os.name`):
//!    an Apple system (ios, ipados, tvos, watchos, visionos, macos) is APNS, or APNS_SANDBOX
//!    when `sandbox` is true / "development" / "sandbox" / "debug" (or, when the mapping gives
//!    no `sandbox`, when the `apnsSandbox` setting is true); android is GCM;
//! 3. otherwise the event is refused with a message saying what to send.
//!
//! `applicationName` is the mapped value (`context.app.namespace`), else the
//! `pushApplicationName` setting. The user is identified by one identifier (Iterable: "an email
//! or a userId, but not both"): the userId when the event has one, else the email
//! ([`super::one_identity`]).

use super::{one_identity, ActionError, Context, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use crate::mapping::schema::{root, Schema, Ty};
use serde_json::{Map, Value};
use std::sync::LazyLock;

pub static DEVICE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("email", Schema::email("Email Address")),
            ("userId", Schema::string("User ID")),
            ("token", Schema::string("Device Token")),
            ("platform", Schema::string("Platform")),
            ("deviceType", Schema::string("Device Type")),
            ("osName", Schema::string("Operating System Name")),
            (
                "sandbox",
                Schema {
                    types: vec![Ty::Boolean, Ty::String],
                    ..Schema::string("APNs Sandbox")
                },
            ),
            ("applicationName", Schema::string("Application Name")),
            ("dataFields", Schema::object("Device Data Fields", None)),
            ("preferUserId", Schema::of("Prefer User ID", Ty::Boolean)),
        ],
        vec!["token"],
    )
});

pub static BROWSER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("email", Schema::email("Email Address")),
            ("userId", Schema::string("User ID")),
            ("browserToken", Schema::string("Browser Token")),
        ],
        vec!["browserToken"],
    )
});

/// The platforms Iterable's `Device.platform` enum allows.
const PLATFORMS: [&str; 3] = ["APNS", "APNS_SANDBOX", "GCM"];

/// Operating systems whose push service is Apple's.
const APPLE: [&str; 8] = [
    "ios",
    "ipados",
    "iphone os",
    "tvos",
    "watchos",
    "visionos",
    "macos",
    "mac os x",
];

fn text<'a>(payload: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The platform of the rule in the module documentation.
pub fn platform(payload: &Map<String, Value>, apns_sandbox: bool) -> Result<String, ActionError> {
    if let Some(p) = text(payload, "platform") {
        let upper = p.to_ascii_uppercase();
        let upper = if upper == "FCM" { "GCM".into() } else { upper };
        return if PLATFORMS.contains(&upper.as_str()) {
            Ok(upper)
        } else {
            Err(ActionError::validation(format!(
                "Platform must be APNS, APNS_SANDBOX or GCM but it was {p:?}."
            )))
        };
    }
    let system = text(payload, "deviceType")
        .or_else(|| text(payload, "osName"))
        .map(str::to_ascii_lowercase);
    match system.as_deref() {
        Some(s) if APPLE.contains(&s) => {
            let sandbox = match payload.get("sandbox") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => matches!(
                    s.trim().to_ascii_lowercase().as_str(),
                    "true" | "development" | "sandbox" | "debug"
                ),
                _ => apns_sandbox,
            };
            Ok(if sandbox { "APNS_SANDBOX" } else { "APNS" }.into())
        }
        Some("android") => Ok("GCM".into()),
        other => Err(ActionError::validation(format!(
            "Cannot tell the push platform{}: map platform (APNS, APNS_SANDBOX or GCM), or send context.device.type or context.os.name as ios or android.",
            other.map(|o| format!(" of {o:?}")).unwrap_or_default()
        ))),
    }
}

pub fn perform_device(
    payload: Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<Vec<PlannedRequest>, ActionError> {
    let (id_key, id) = one_identity(&payload)?;
    let platform = platform(&payload, ctx.push.apns_sandbox)?;
    let application_name = text(&payload, "applicationName")
        .map(str::to_string)
        .or_else(|| ctx.push.application_name.clone())
        .ok_or_else(|| {
            ActionError::validation(
                "Application Name is missing: send context.app.namespace, or set pushApplicationName (the name of the push integration in Iterable's Mobile Apps settings).",
            )
        })?;
    let mut device = Map::new();
    device.insert("token".into(), payload["token"].clone());
    device.insert("platform".into(), Value::String(platform));
    device.insert("applicationName".into(), Value::String(application_name));
    if let Some(Value::Object(df)) = payload.get("dataFields") {
        if !df.is_empty() {
            device.insert("dataFields".into(), Value::Object(df.clone()));
        }
    }
    let mut body = Map::new();
    body.insert(id_key.into(), id);
    body.insert("device".into(), Value::Object(device));
    if let Some(p) = payload.get("preferUserId").filter(|v| js::truthy(v)) {
        body.insert("preferUserId".into(), p.clone());
    }
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::UsersRegisterDeviceToken,
        body: Value::Object(body),
    }])
}

pub fn perform_browser(payload: Map<String, Value>) -> Result<Vec<PlannedRequest>, ActionError> {
    let (id_key, id) = one_identity(&payload)?;
    let mut body = Map::new();
    body.insert(id_key.into(), id);
    body.insert("browserToken".into(), payload["browserToken"].clone());
    Ok(vec![PlannedRequest {
        endpoint: Endpoint::UsersRegisterBrowserToken,
        body: Value::Object(body),
    }])
}

/// The key that makes a registration "the same one again": the endpoint, the user, the token
/// and (for devices) the platform and application. A UUID v5 of them, so the key says nothing
/// about the user to whoever reads the table it is kept in.
pub fn once_key(request: &PlannedRequest) -> Option<String> {
    let body = &request.body;
    let s = |p: &str| body.pointer(p).and_then(Value::as_str).unwrap_or("");
    let parts = match request.endpoint {
        Endpoint::UsersRegisterDeviceToken => [
            "device",
            s("/email"),
            s("/userId"),
            s("/device/token"),
            s("/device/platform"),
            s("/device/applicationName"),
        ],
        Endpoint::UsersRegisterBrowserToken => [
            "browser",
            s("/email"),
            s("/userId"),
            s("/browserToken"),
            "",
            "",
        ],
        _ => return None,
    };
    // Lengths first, so that no two different tuples join to the same text.
    let mut text = String::new();
    for p in parts {
        text.push_str(&p.len().to_string());
        text.push(':');
        text.push_str(p);
    }
    Some(format!(
        "token-{}",
        uuid::Uuid::new_v5(&ONCE_NAMESPACE, text.as_bytes())
    ))
}

/// The namespace of the registration keys (fixed, distinct from the messageId namespace).
const ONCE_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3c9a_17e2_5b4d_4f08_a6e1_90d2_7b3c_4e5f);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_platform_rule() {
        let cases = [
            (json!({"deviceType": "ios"}), false, "APNS"),
            (json!({"deviceType": "ios"}), true, "APNS_SANDBOX"),
            (json!({"osName": "iPadOS"}), false, "APNS"),
            (
                json!({"deviceType": "ios", "sandbox": "development"}),
                false,
                "APNS_SANDBOX",
            ),
            (json!({"deviceType": "ios", "sandbox": false}), true, "APNS"),
            (
                json!({"deviceType": "android", "sandbox": true}),
                false,
                "GCM",
            ),
            (json!({"osName": "Android"}), false, "GCM"),
            (
                json!({"platform": "fcm", "deviceType": "ios"}),
                false,
                "GCM",
            ),
            (json!({"platform": "APNS_SANDBOX"}), false, "APNS_SANDBOX"),
        ];
        for (payload, sandbox, want) in cases {
            assert_eq!(
                platform(&p(payload.clone()), sandbox).unwrap(),
                want,
                "{payload}"
            );
        }
        let e = platform(&p(json!({"deviceType": "web"})), false).unwrap_err();
        assert!(e.message.contains("of \"web\""), "{e}");
        let e = platform(&p(json!({"platform": "WNS"})), false).unwrap_err();
        assert!(e.message.contains("APNS, APNS_SANDBOX or GCM"), "{e}");
    }

    #[test]
    fn once_keys_differ_by_user_token_and_platform_only() {
        let req = |body: Value| PlannedRequest {
            endpoint: Endpoint::UsersRegisterDeviceToken,
            body,
        };
        let a = json!({"email": "a@b.co", "device": {"token": "t1", "platform": "APNS", "applicationName": "app", "dataFields": {"x": 1}}});
        let mut b = a.clone();
        b["device"]["dataFields"]["x"] = json!(2);
        let mut c = a.clone();
        c["device"]["token"] = json!("t2");
        let mut d = a.clone();
        d["device"]["platform"] = json!("APNS_SANDBOX");
        let k = |v: &Value| once_key(&req(v.clone())).unwrap();
        assert_eq!(k(&a), k(&b), "data fields do not make a new registration");
        assert_ne!(k(&a), k(&c));
        assert_ne!(k(&a), k(&d));
        assert!(k(&a).starts_with("token-") && !k(&a).contains("a@b.co"));
        let other = PlannedRequest {
            endpoint: Endpoint::UsersUpdate,
            body: a,
        };
        assert_eq!(once_key(&other), None);
    }
}
