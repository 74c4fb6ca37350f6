//! Events the gateway must not send to Iterable (DESIGN §2, "Loops and filters").

use serde_json::Value;

/// Why an event is skipped, or `None` to send it.
pub fn skip_reason(event: &Value) -> Option<String> {
    // A deletion request is not routing: it reaches Iterable whatever `integrations` says.
    if event.get("type").and_then(Value::as_str) == Some("delete") {
        return None;
    }
    let integration = event.get("context").and_then(|c| c.get("integration"));
    if integration
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
        == Some("Iterable")
    {
        return Some(
            "the event came from Iterable (context.integration.name is \"Iterable\")".into(),
        );
    }
    let integrations = event.get("integrations")?.as_object()?;
    // `true` or an object of options enables a destination; `false` disables it.
    let flag = |k: &str| {
        integrations
            .get(k)
            .map(|v| !matches!(v, Value::Bool(false)))
    };
    for key in ["Iterable", "Iterable (Actions)"] {
        if flag(key) == Some(false) {
            return Some(format!("integrations[\"{key}\"] is false"));
        }
    }
    if flag("All") == Some(false)
        && flag("Iterable") != Some(true)
        && flag("Iterable (Actions)") != Some(true)
    {
        return Some("integrations.All is false and Iterable is not enabled".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integrations_follow_segment_semantics() {
        assert!(skip_reason(&json!({"integrations": {"Iterable": false}})).is_some());
        assert!(skip_reason(&json!({"integrations": {"Iterable (Actions)": false}})).is_some());
        assert!(skip_reason(&json!({"integrations": {"All": false}})).is_some());
        assert!(skip_reason(&json!({"integrations": {"All": false, "Iterable": true}})).is_none());
        assert!(skip_reason(
            &json!({"integrations": {"All": false, "Iterable (Actions)": {"x": 1}}})
        )
        .is_none());
        assert!(skip_reason(&json!({"integrations": {"All": true, "Mixpanel": false}})).is_none());
        assert!(skip_reason(&json!({})).is_none());
    }

    #[test]
    fn events_made_from_iterable_webhooks_are_skipped() {
        let ev = json!({"context": {"integration": {"name": "Iterable", "version": "1.0.0"}}});
        assert!(skip_reason(&ev).unwrap().contains("came from Iterable"));
    }
}
