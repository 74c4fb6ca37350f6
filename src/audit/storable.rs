//! What the audit log can store, checked before a request is committed, so that one request's
//! data never makes a group commit fail (the group commit isolates what slips through anyway).
//!
//! * PostgreSQL's `jsonb` and `text` cannot hold U+0000 (`\u0000` in JSON): a request with one
//!   in any value or key of its events is refused (400 `unstorable`), naming where it is. Raw
//!   bodies are `bytea` and keep it.
//! * Ids and identities are indexed, and a btree entry holds at most 2,704 bytes; Iterable takes
//!   an event `id` of at most 512 bytes. A `messageId`, `userId`, `anonymousId` or email (the
//!   identity of an event) over [`MAX_ID_BYTES`] is refused, naming the field.

use super::NewEvent;
use serde_json::Value;

/// Longest id or identity accepted, in bytes (Iterable's limit for an event id).
pub const MAX_ID_BYTES: usize = 512;

/// Whether JSON text may parse into a U+0000: only through the escape `\u0000` (JSON has no raw
/// control characters in strings), so values parsed from bytes without it need no search.
pub fn may_hold_nul(json: &[u8]) -> bool {
    memchr::memmem::find(json, br"\u0000").is_some()
}

/// Why the events cannot be stored, naming the event (when there are several) and the field.
/// `look_for_nul`: whether their values may hold U+0000 (see [`may_hold_nul`]).
pub fn check_events(events: &[NewEvent], look_for_nul: bool) -> Result<(), String> {
    let several = events.len() > 1;
    for (i, e) in events.iter().enumerate() {
        check_event(e, look_for_nul).map_err(|why| {
            if several {
                format!("event {i}: {why}")
            } else {
                why
            }
        })?;
    }
    Ok(())
}

fn check_event(e: &NewEvent, look_for_nul: bool) -> Result<(), String> {
    if let Some(path) = look_for_nul.then(|| find_nul(&e.payload)).flatten() {
        return Err(format!(
            "{path} contains \\u0000 (U+0000), which the audit log cannot store; remove it"
        ));
    }
    let too_long = |field: &str, len: usize| {
        Err(format!(
            "{field} is {len} bytes; at most {MAX_ID_BYTES} bytes are accepted"
        ))
    };
    if e.message_id.len() > MAX_ID_BYTES {
        return too_long("messageId", e.message_id.len());
    }
    if let Some((kind, id)) = e.user_key.split_once(':') {
        if id.len() > MAX_ID_BYTES {
            let field = match kind {
                "u" => "userId",
                "a" => "anonymousId",
                "e" => "the email (identity)",
                _ => "the identity",
            };
            return too_long(field, id.len());
        }
    }
    if e.call_type.as_ref().is_some_and(|c| c.contains('\0')) {
        return Err(
            "the event name contains \\u0000 (U+0000), which the audit log cannot store".into(),
        );
    }
    Ok(())
}

/// Where the first U+0000 of a value is (`properties.note`, `traits["a\u0000"]` for a key).
pub fn find_nul(v: &Value) -> Option<String> {
    nul_path(v).map(|p| match p.strip_prefix('.') {
        Some(rest) => rest.to_string(),
        None if p.is_empty() => "the value".to_string(),
        None => p,
    })
}

fn nul_path(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.contains('\0').then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item).map(|rest| format!("[{i}]{rest}"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                return Some(format!("[{}] (a key)", Value::from(k.as_str())));
            }
            let key = if k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            {
                format!(".{k}")
            } else {
                format!("[{}]", Value::from(k.as_str()))
            };
            nul_path(item).map(|rest| format!("{key}{rest}"))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventState;
    use serde_json::json;

    fn event(payload: Value, message_id: &str, user_key: &str) -> NewEvent {
        NewEvent {
            message_id: message_id.into(),
            call_type: Some("track".into()),
            user_key: user_key.into(),
            payload,
            state: EventState::Pending,
            state_reason: None,
        }
    }

    #[test]
    fn nul_is_found_in_values_and_keys_with_its_path() {
        assert_eq!(
            find_nul(&json!({"properties": {"a b": [1, "x\u{0}"]}})).as_deref(),
            Some("properties[\"a b\"][1]")
        );
        assert_eq!(
            find_nul(&json!({"traits": {"k\u{0}": 1}})).as_deref(),
            Some("traits[\"k\\u0000\"] (a key)")
        );
        assert_eq!(find_nul(&json!({"fine": "yes"})), None);
        assert!(may_hold_nul(br#"{"a":"\u0000"}"#));
        assert!(!may_hold_nul(br#"{"a":"\u0001"}"#));
    }

    #[test]
    fn long_ids_and_identities_are_named() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let e = check_events(&[event(json!({}), &long, "u:1")], true).unwrap_err();
        assert!(e.starts_with("messageId is 513 bytes"), "{e}");
        let e = check_events(
            &[
                event(json!({}), "m", "u:1"),
                event(json!({}), "m", &format!("e:{long}")),
            ],
            true,
        )
        .unwrap_err();
        assert!(e.starts_with("event 1: the email (identity) is 513"), "{e}");
        let at_limit = "x".repeat(MAX_ID_BYTES);
        assert!(check_events(
            &[event(json!({}), &at_limit, &format!("a:{at_limit}"))],
            true
        )
        .is_ok());
    }
}
