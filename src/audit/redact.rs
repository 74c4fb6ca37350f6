//! Secrets never reach the database or the logs: headers are recorded with their values
//! replaced when they carry credentials.

use serde_json::{Map, Value};

/// Header names whose values are secrets.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-write-key",
    "x-signature",
    "cookie",
    "proxy-authorization",
];

/// What a redacted value reads.
pub const REDACTED: &str = "<redacted>";

/// Headers as a JSON object, secret values replaced.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Value {
    let mut out = Map::new();
    for (name, value) in pairs {
        let name = name.to_ascii_lowercase();
        let v = if SECRET_HEADERS.contains(&name.as_str()) {
            REDACTED.to_string()
        } else {
            String::from_utf8_lossy(value).into_owned()
        };
        match out.get_mut(&name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&v);
            }
            _ => {
                out.insert(name, Value::String(v));
            }
        }
    }
    Value::Object(out)
}

/// A JSON body with the `writeKey` members (top level, or of batch items) redacted.
pub fn body_write_keys(body: &mut Value) {
    if let Value::Object(m) = body {
        if m.contains_key("writeKey") {
            m.insert("writeKey".into(), Value::String(REDACTED.into()));
        }
        if let Some(Value::Array(items)) = m.get_mut("batch") {
            items.iter_mut().for_each(body_write_keys);
        }
    }
}

/// Replaces every occurrence of each secret in a raw body with `<redacted>`, leaving every other
/// byte as received (a body may carry its write key: `{"writeKey": "..."}`).
pub fn scrub(body: &mut Vec<u8>, secrets: &[&str]) {
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let needle = secret.as_bytes();
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        let mut changed = false;
        while i < body.len() {
            if body[i..].starts_with(needle) {
                out.extend_from_slice(REDACTED.as_bytes());
                i += needle.len();
                changed = true;
            } else {
                out.push(body[i]);
                i += 1;
            }
        }
        if changed {
            *body = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_replaced_and_the_rest_kept() {
        let h = headers([
            ("Authorization", b"Basic abc".as_slice()),
            ("X-Write-Key", b"k".as_slice()),
            ("Content-Type", b"text/plain".as_slice()),
        ]);
        assert_eq!(
            h,
            json!({"authorization": "<redacted>", "x-write-key": "<redacted>", "content-type": "text/plain"})
        );
        let mut b = json!({"writeKey": "k", "batch": [{"writeKey": "k2", "type": "track"}]});
        body_write_keys(&mut b);
        assert_eq!(
            b,
            json!({"writeKey": "<redacted>", "batch": [{"writeKey": "<redacted>", "type": "track"}]})
        );
    }

    #[test]
    fn scrubbing_keeps_every_other_byte() {
        let mut body = br#"{"writeKey":"wk-123","batch":[{"type":"track","x":1.0}]}"#.to_vec();
        scrub(&mut body, &["wk-123", ""]);
        assert_eq!(
            body,
            br#"{"writeKey":"<redacted>","batch":[{"type":"track","x":1.0}]}"#.to_vec()
        );
    }
}
