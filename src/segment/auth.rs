//! Who is calling: the write key of Segment's tracking API, and the `X-Signature` of Segment's
//! Webhooks destination. Every secret comparison is constant-time.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

/// Secrets compared in constant time (length differences still show, as they must).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The write key from the headers: HTTP Basic user (with or without the `:`) in
/// `authorization`, or `x_write_key`.
pub fn write_key_from_headers(
    authorization: Option<&str>,
    x_write_key: Option<&str>,
) -> Option<String> {
    if let Some(value) = authorization {
        let value = value.trim();
        if let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
            return (!user.is_empty()).then(|| user.to_string());
        }
    }
    x_write_key
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// Every write key a body carries: top-level `writeKey`, and each batch item's (analytics.js
/// puts one in every item of `/v1/b`). Non-string values count too (as their JSON), so that
/// they cannot hide a disagreement.
pub fn write_keys_in_body(body: &serde_json::Value) -> Vec<String> {
    let as_key = |k: &serde_json::Value| match k {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut keys: Vec<String> = body.get("writeKey").map(as_key).into_iter().collect();
    let items = match body {
        serde_json::Value::Array(items) => Some(items),
        _ => body.get("batch").and_then(|b| b.as_array()),
    };
    for item in items.into_iter().flatten() {
        keys.extend(item.get("writeKey").map(as_key));
    }
    keys.retain(|k| !k.is_empty());
    keys
}

/// Why a Segment webhook signature does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Signature header is missing")]
    Missing,
    #[error("the X-Signature header does not match the body")]
    Mismatch,
    #[error("the body is an empty array: there is no first element to verify")]
    EmptyArray,
}

/// The bytes Segment signs: the raw body, or for an array body the raw bytes of element 0
/// (reference/segment-side.md §3.1). Never re-serialised: JavaScript and serde format numbers
/// differently.
pub fn signed_bytes(body: &[u8]) -> Result<&[u8], SignatureError> {
    let first_non_space = body.iter().position(|b| !b.is_ascii_whitespace());
    if first_non_space.map(|i| body[i]) != Some(b'[') {
        return Ok(body);
    }
    match serde_json::from_slice::<Vec<&RawValue>>(body) {
        Ok(items) => {
            let first = items.first().ok_or(SignatureError::EmptyArray)?;
            let raw = first.get().as_bytes();
            // `raw` borrows from `body`: find its span there.
            let start = raw.as_ptr() as usize - body.as_ptr() as usize;
            Ok(&body[start..start + raw.len()])
        }
        // Not JSON: verify the whole body; the JSON error comes after authentication.
        Err(_) => Ok(body),
    }
}

/// Verifies `X-Signature` = lowercase hex HMAC-SHA1(secret, signed bytes), in constant time.
pub fn verify_signature(
    secret: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let expected =
        hex::decode(header.to_ascii_lowercase()).map_err(|_| SignatureError::Mismatch)?;
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signed_bytes(body)?);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of reference/segment-side.md §3.1 (secret `abc123`).
    #[test]
    fn segment_signature_vectors_verify() {
        let body = br#"{"type":"track","event":"Order Completed","userId":"u1","messageId":"m-1","properties":{"total":10}}"#;
        assert_eq!(
            verify_signature(
                "abc123",
                body,
                Some("48ac6b212a2d03180f9bd2bee86a09d7fbb83c1f")
            ),
            Ok(())
        );
        let batch = br#"[{"cool":false},{"cool":true}]"#;
        assert_eq!(
            verify_signature(
                "abc123",
                batch,
                Some("c702b94a2569dd8d2f7185ce0ae951021bef4706")
            ),
            Ok(())
        );
        // An HMAC over the whole array is what a naive verifier computes: it must not pass.
        assert_eq!(
            verify_signature(
                "abc123",
                batch,
                Some("685cf04ec172d3adcac0b8f25c923bb4d56ed1eb")
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("abc123", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(
                "abc124",
                body,
                Some("48ac6b212a2d03180f9bd2bee86a09d7fbb83c1f")
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("abc123", b"[]", Some("00")),
            Err(SignatureError::EmptyArray)
        );
    }

    #[test]
    fn write_keys_come_from_basic_with_or_without_colon_or_the_header() {
        assert_eq!(
            write_key_from_headers(Some("Basic YWJjMTIzOg=="), None).as_deref(),
            Some("abc123")
        );
        assert_eq!(
            write_key_from_headers(Some("Basic YWJjMTIz"), Some("other")).as_deref(),
            Some("abc123")
        );
        assert_eq!(
            write_key_from_headers(None, Some(" k2 ")).as_deref(),
            Some("k2")
        );
        let body = serde_json::json!({"writeKey": "k1", "batch": [{"writeKey": "k3"}, {"writeKey": 4}, {}]});
        assert_eq!(write_keys_in_body(&body), vec!["k1", "k3", "4"]);
    }
}
