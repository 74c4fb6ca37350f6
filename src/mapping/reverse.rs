//! Iterable system webhook → Segment `track` (DESIGN §3). Pure: the receipt time is passed in.
//!
//! One webhook body is one Iterable event `{email?, userId?, eventName, dataFields}`; the event
//! name comes from Iterable's own Segment table (case-insensitive, overridable per connection,
//! unknown names pass through); `properties` are `dataFields` exactly as received; the
//! `messageId` is a UUID v5 of the event's raw bytes, so Iterable's retries deduplicate.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Iterable's eventName → the Segment event name of Iterable's own Segment integration
/// (reference/iterable-inbound.md §6).
pub const EVENT_NAMES: [(&str, &str); 27] = [
    ("emailSend", "Email Delivered"),
    ("emailOpen", "Email Opened"),
    ("emailClick", "Email Link Clicked"),
    ("emailBounce", "Email Bounced"),
    ("emailComplaint", "Email Marked as Spam"),
    ("emailSendSkip", "Email Send Skip"),
    ("emailSubscribe", "Subscribed"),
    ("emailUnSubscribe", "Unsubscribed"),
    ("hostedUnsubscribeClick", "Hosted Unsubscribe Click"),
    ("pushSend", "Push Delivered"),
    ("pushOpen", "Push Opened"),
    ("pushBounce", "Push Bounced"),
    ("pushUninstall", "Mobile App Uninstalled"),
    ("pushSendSkip", "Push Send Skip"),
    ("smsSend", "SMS Delivered"),
    ("smsBounce", "SMS Bounced"),
    ("smsClick", "SMS Clicked"),
    ("smsReceived", "SMS Received"),
    ("smsSendSkip", "SMS Send Skip"),
    ("inAppSend", "In App Sent"),
    ("inAppDelivery", "In App Delivered"),
    ("inAppOpen", "In App Opened"),
    ("inAppClick", "In App Clicked"),
    ("inAppSendSkip", "In App Send Skip"),
    ("webPushSend", "Web Push Delivered"),
    ("webPushClick", "Web Push Clicked"),
    ("webPushSendSkip", "Web Push Send Skip"),
];

/// The system webhook types Iterable's own Segment integration does not forward
/// (users-and-peers.md §4), with names of the same pattern (channel, then Segment's verb:
/// Send → Delivered, Click → Clicked, Bounce → Bounced, Send Skip stays). The gateway's
/// names, not a published mapping; the README's table marks them.
pub const GATEWAY_EVENT_NAMES: [(&str, &str); 22] = [
    ("embeddedSend", "Embedded Delivered"),
    ("embeddedSendSkip", "Embedded Send Skip"),
    ("embeddedReceived", "Embedded Received"),
    ("embeddedClick", "Embedded Clicked"),
    ("embeddedImpression", "Embedded Impression"),
    ("embeddedSession", "Embedded Session"),
    ("whatsAppSend", "WhatsApp Delivered"),
    ("whatsAppReceived", "WhatsApp Received"),
    ("whatsAppSeen", "WhatsApp Seen"),
    ("whatsAppClick", "WhatsApp Clicked"),
    ("whatsAppBounce", "WhatsApp Bounced"),
    ("whatsAppSendSkip", "WhatsApp Send Skip"),
    ("journeyExit", "Journey Exited"),
    ("inAppClose", "In App Closed"),
    ("inAppDelete", "In App Deleted"),
    ("inAppRecall", "In App Recalled"),
    ("inboxSession", "Inbox Session"),
    ("inboxMessageImpression", "Inbox Message Impression"),
    ("rcsSend", "RCS Delivered"),
    ("rcsSendSkip", "RCS Send Skip"),
    ("smsUsageInfo", "SMS Usage Info"),
    ("whatsAppUsageInfo", "WhatsApp Usage Info"),
];

/// The event name of Journey webhooks (bodies without `eventName`) unless the connection
/// sets `journey_event_name`.
pub const DEFAULT_JOURNEY_EVENT_NAME: &str = "Journey Webhook";

/// The namespace of the `messageId` UUIDs (a fixed UUID v5 of this project's name).
const MESSAGE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1e_4c2a_8f3d_5e7a_9b0c_1d2e_3f4a_5b6c);

/// Why a webhook body cannot become a Segment call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("an Iterable webhook event must be a JSON object")]
    NotAnObject,
    #[error("the event has no eventName (Iterable system webhooks always carry one)")]
    NoEventName,
    #[error("the event has no eventName, and this connection takes no Journey webhooks (journey_event_name is \"\")")]
    JourneyRefused,
    #[error("the event has no identity: neither userId nor email (top level or dataFields.email)")]
    NoIdentity,
    #[error("the Journey webhook (a body without eventName) has no identity: put \"email\" or \"userId\" in its body")]
    JourneyNoIdentity,
}

/// Per-connection event names: lowercased Iterable name → Segment name, and the name Journey
/// webhooks get.
#[derive(Debug, Clone)]
pub struct EventNames {
    names: BTreeMap<String, String>,
    /// `None`: bodies without an `eventName` are refused.
    journey: Option<String>,
}

impl Default for EventNames {
    fn default() -> Self {
        EventNames::with_overrides(&Map::new())
    }
}

impl EventNames {
    /// The default table with the connection's overrides (`{"emailOpen": "Opened Email"}`).
    pub fn with_overrides(overrides: &Map<String, Value>) -> EventNames {
        let mut map: BTreeMap<String, String> = EVENT_NAMES
            .iter()
            .chain(GATEWAY_EVENT_NAMES.iter())
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        for (k, v) in overrides {
            if let Some(name) = v.as_str() {
                map.insert(k.to_ascii_lowercase(), name.to_string());
            }
        }
        EventNames {
            names: map,
            journey: Some(DEFAULT_JOURNEY_EVENT_NAME.to_string()),
        }
    }

    /// The Segment event name of Journey webhooks; `""` refuses them (as before they were
    /// passed through). `None` keeps the default.
    pub fn with_journey_name(mut self, name: Option<&str>) -> EventNames {
        if let Some(n) = name {
            self.journey = (!n.trim().is_empty()).then(|| n.to_string());
        }
        self
    }

    /// Case-insensitive (`emailUnsubscribe` occurs too); unknown names pass through.
    pub fn segment_name(&self, iterable: &str) -> String {
        self.names
            .get(&iterable.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| iterable.to_string())
    }
}

/// Everything but the event itself that goes into the Segment call.
pub struct Context<'a> {
    pub names: &'a EventNames,
    /// RFC 3339 receipt time, the fallback timestamp.
    pub received_at: &'a str,
}

/// The Segment `track` call for one Iterable event, given its raw JSON bytes.
pub fn to_segment_track(
    raw: &[u8],
    event: &Value,
    ctx: &Context<'_>,
) -> Result<Value, WebhookError> {
    let obj = event.as_object().ok_or(WebhookError::NotAnObject)?;
    // A body without eventName is a Journey webhook: its body is the user's own template, so
    // all of it becomes the properties, under the connection's Journey event name.
    let journey = !obj.contains_key("eventName");
    let segment_name = if journey {
        ctx.names
            .journey
            .clone()
            .ok_or(WebhookError::JourneyRefused)?
    } else {
        let event_name = obj
            .get("eventName")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or(WebhookError::NoEventName)?;
        ctx.names.segment_name(event_name)
    };
    let data_fields = match obj.get("dataFields") {
        _ if journey => Value::Object(obj.clone()),
        Some(Value::Object(d)) => Value::Object(d.clone()),
        _ => Value::Object(Map::new()),
    };
    let non_empty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let user_id = non_empty(obj.get("userId")).or_else(|| {
        obj.get("userId")
            .and_then(Value::as_i64)
            .map(|n| n.to_string())
    });
    let email = non_empty(obj.get("email"))
        .or_else(|| non_empty(obj.get("dataFields").and_then(|d| d.get("email"))));
    if user_id.is_none() && email.is_none() {
        return Err(if journey {
            WebhookError::JourneyNoIdentity
        } else {
            WebhookError::NoIdentity
        });
    }
    let mut context = Map::new();
    context.insert(
        "integration".into(),
        json!({"name": "Iterable", "version": "1.0.0"}),
    );
    context.insert(
        "library".into(),
        json!({"name": "segment-iterable-gateway", "version": env!("CARGO_PKG_VERSION")}),
    );
    if let Some(e) = &email {
        context.insert("traits".into(), json!({"email": e}));
    }
    for (from, to) in [("ip", "ip"), ("userAgent", "userAgent")] {
        if let Some(v) = data_fields.get(from).filter(|v| v.is_string()) {
            context.insert(to.into(), v.clone());
        }
    }
    let created_at = if journey {
        obj.get("createdAt")
            .or_else(|| obj.get("dataFields").and_then(|d| d.get("createdAt")))
    } else {
        data_fields.get("createdAt")
    };
    let timestamp = created_at
        .and_then(Value::as_str)
        .and_then(parse_iterable_time)
        .unwrap_or_else(|| ctx.received_at.to_string());
    let mut track = Map::new();
    track.insert("type".into(), json!("track"));
    track.insert("event".into(), json!(segment_name));
    match user_id {
        Some(u) => track.insert("userId".into(), json!(u)),
        None => track.insert(
            "anonymousId".into(),
            json!(email.clone().unwrap_or_default()),
        ),
    };
    track.insert("properties".into(), data_fields);
    track.insert("timestamp".into(), json!(timestamp));
    track.insert("messageId".into(), json!(message_id(raw)));
    track.insert("context".into(), Value::Object(context));
    track.insert(
        "integrations".into(),
        json!({"Iterable": false, "Iterable (Actions)": false}),
    );
    Ok(Value::Object(track))
}

/// `iterable-` + UUID v5 of the raw bytes: the same delivery, retried, is the same message.
pub fn message_id(raw: &[u8]) -> String {
    format!(
        "iterable-{}",
        uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, raw)
    )
}

/// `2016-12-02 20:21:04 +00:00` (Iterable's format), or RFC 3339, as RFC 3339 UTC.
pub fn parse_iterable_time(s: &str) -> Option<String> {
    let s = s.trim();
    let parsed = chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %:z")
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f %:z"))
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z"))
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()?;
    Some(
        parsed
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

/// The events of a webhook body (an object, or an array of them) with each one's raw bytes.
pub fn split_body(body: &[u8]) -> Result<Vec<(&[u8], Value)>, serde_json::Error> {
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| body[i]);
    if trimmed == Some(b'[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)?;
        items
            .into_iter()
            .map(|raw| Ok((raw.get().as_bytes(), serde_json::from_str(raw.get())?)))
            .collect()
    } else {
        let v: Value = serde_json::from_slice(body)?;
        Ok(vec![(body, v)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(body: &str) -> Result<Value, WebhookError> {
        let names = EventNames::with_overrides(&Map::new());
        let ctx = Context {
            names: &names,
            received_at: "2026-01-01T00:00:00Z",
        };
        let v: Value = serde_json::from_str(body).unwrap();
        to_segment_track(body.as_bytes(), &v, &ctx)
    }

    #[test]
    fn an_email_open_becomes_an_email_opened_track() {
        let body = r#"{"email":"docs@iterable.com","eventName":"emailOpen","dataFields":{"createdAt":"2016-12-02 18:51:45 -02:00","ip":"162.245.22.184","userAgent":"Mozilla/5.0","campaignId":59667,"messageId":"d0aa7801"}}"#;
        let t = convert(body).unwrap();
        assert_eq!(t["event"], "Email Opened");
        assert_eq!(t["anonymousId"], "docs@iterable.com");
        assert!(t.get("userId").is_none());
        assert_eq!(t["timestamp"], "2016-12-02T20:51:45Z");
        assert_eq!(t["context"]["traits"]["email"], "docs@iterable.com");
        assert_eq!(t["context"]["ip"], "162.245.22.184");
        assert_eq!(t["properties"]["messageId"], "d0aa7801");
        assert_eq!(
            t["integrations"],
            json!({"Iterable": false, "Iterable (Actions)": false})
        );
        assert!(t["messageId"].as_str().unwrap().starts_with("iterable-"));
    }

    #[test]
    fn names_match_case_insensitively_and_unknown_names_pass_through() {
        for spelling in ["emailUnSubscribe", "emailUnsubscribe"] {
            let t = convert(&format!(r#"{{"userId":"u1","eventName":"{spelling}"}}"#)).unwrap();
            assert_eq!(t["event"], "Unsubscribed");
            assert_eq!(t["userId"], "u1");
        }
        assert_eq!(
            convert(r#"{"userId":"u1","eventName":"whatsAppSeen"}"#).unwrap()["event"],
            "WhatsApp Seen"
        );
        assert_eq!(
            convert(r#"{"userId":"u1","eventName":"someFutureEvent"}"#).unwrap()["event"],
            "someFutureEvent"
        );
        let names = EventNames::with_overrides(
            &serde_json::from_str::<Map<String, Value>>(r#"{"EMAILOPEN": "Opened"}"#).unwrap(),
        );
        assert_eq!(names.segment_name("emailOpen"), "Opened");
    }

    #[test]
    fn a_body_without_event_name_is_a_journey_webhook() {
        let body = r#"{"email":"a@b.co","workflowId":123,"createdAt":"2024-03-01 10:00:00 +00:00","plan":{"tier":"gold"}}"#;
        let t = convert(body).unwrap();
        assert_eq!(t["event"], "Journey Webhook");
        assert_eq!(t["anonymousId"], "a@b.co");
        assert_eq!(t["timestamp"], "2024-03-01T10:00:00Z");
        assert_eq!(
            t["properties"],
            serde_json::from_str::<Value>(body).unwrap()
        );
        let names = EventNames::default().with_journey_name(Some("Journey Step"));
        let ctx = Context {
            names: &names,
            received_at: "2026-01-01T00:00:00Z",
        };
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            to_segment_track(body.as_bytes(), &v, &ctx).unwrap()["event"],
            "Journey Step"
        );
        let refuse = EventNames::default().with_journey_name(Some(""));
        let ctx = Context {
            names: &refuse,
            received_at: "2026-01-01T00:00:00Z",
        };
        assert_eq!(
            to_segment_track(body.as_bytes(), &v, &ctx),
            Err(WebhookError::JourneyRefused)
        );
        assert_eq!(
            convert(r#"{"workflowId":1,"dataFields":{"x":1}}"#),
            Err(WebhookError::JourneyNoIdentity)
        );
        assert_eq!(
            convert(r#"{"workflowId":1,"dataFields":{"email":"d@e.co"}}"#).unwrap()["anonymousId"],
            "d@e.co"
        );
    }

    #[test]
    fn missing_event_name_or_identity_is_an_error_that_says_so() {
        assert_eq!(
            convert(r#"{"email":"a@b.co","eventName":"","dataFields":{}}"#),
            Err(WebhookError::NoEventName)
        );
        assert_eq!(
            convert(r#"{"eventName":"emailOpen","dataFields":{"x":1}}"#),
            Err(WebhookError::NoIdentity)
        );
        assert_eq!(
            convert(r#"{"eventName":"emailOpen","dataFields":{"email":"a@b.co"}}"#).unwrap()
                ["anonymousId"],
            "a@b.co"
        );
    }

    #[test]
    fn bad_or_missing_created_at_falls_back_to_receipt() {
        assert_eq!(
            convert(
                r#"{"userId":"u","eventName":"pushSend","dataFields":{"createdAt":"yesterday"}}"#
            )
            .unwrap()["timestamp"],
            "2026-01-01T00:00:00Z"
        );
        let t = convert(r#"{"userId":"u","eventName":"pushSend"}"#).unwrap();
        assert_eq!(t["timestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(t["properties"], json!({}));
    }

    #[test]
    fn the_message_id_depends_only_on_the_bytes() {
        let a = convert(r#"{"userId":"u","eventName":"pushSend"}"#).unwrap();
        let b = convert(r#"{"userId":"u","eventName":"pushSend"}"#).unwrap();
        let c = convert(r#"{"userId":"u", "eventName":"pushSend"}"#).unwrap();
        assert_eq!(a["messageId"], b["messageId"]);
        assert_ne!(a["messageId"], c["messageId"]);
    }
}
