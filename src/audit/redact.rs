//! Secrets never reach the database or the logs.
//!
//! A [`Scrubber`] knows every configured secret of every connection and removes each one from
//! any bytes by a byte-level search (Aho-Corasick over all secrets at once) that does not depend
//! on the bytes being JSON, complete or of the connection that sent them: a body with a trailing
//! comma, a truncated body, the bounded prefix of a gzip bomb, a write key of one connection in
//! a request authenticated as another. Bodies are scrubbed before anything is written.
//!
//! Two cases need more than the raw bytes: a body cut at a limit may end with the first bytes of
//! a secret (that tail is redacted too), and JSON may spell a secret with escapes
//! (`"\u0064emo-key"`), which only shows once the escapes are undone (see
//! [`Scrubber::has_escapes`], [`unescape_json_lossy`]).

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::{Map, Value};

/// Header names whose values are secrets, whatever they hold.
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

/// Every configured secret, ready to be searched for in any bytes.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    matcher: Option<AhoCorasick>,
    /// The same, ignoring ASCII case: for header names, which HTTP lowercases.
    matcher_nocase: Option<AhoCorasick>,
    /// The patterns, for the truncated-tail check.
    patterns: Vec<Vec<u8>>,
}

impl Scrubber {
    /// A scrubber for these secrets (empty ones are ignored). Each secret is searched for as
    /// it is and as JSON writes it (`"` and `\` escaped), so a body quoting it is covered too.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for s in secrets.into_iter().filter(|s| !s.is_empty()) {
            let escaped = serde_json::to_string(s).unwrap_or_default();
            let escaped = escaped[1..escaped.len() - 1].to_string();
            for p in [s.as_bytes().to_vec(), escaped.into_bytes()] {
                if !p.is_empty() && !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        }
        let build = |nocase: bool| {
            (!patterns.is_empty()).then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .ascii_case_insensitive(nocase)
                    .build(&patterns)
                    .expect("literal patterns always build")
            })
        };
        Scrubber {
            matcher: build(false),
            matcher_nocase: build(true),
            patterns,
        }
    }

    /// Whether `bytes` contain any secret.
    pub fn finds(&self, bytes: &[u8]) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(bytes))
    }

    /// Replaces every secret in `bytes` with `<redacted>`; returns how many were found.
    pub fn scrub(&self, bytes: &mut Vec<u8>) -> usize {
        let Some(m) = &self.matcher else {
            return 0;
        };
        if !m.is_match(bytes.as_slice()) {
            return 0;
        }
        let mut found = 0;
        let mut out = Vec::with_capacity(bytes.len());
        m.replace_all_with_bytes(bytes, &mut out, |_, _, dst| {
            found += 1;
            dst.extend_from_slice(REDACTED.as_bytes());
            true
        });
        *bytes = out;
        found
    }

    /// A header name with every secret removed, whatever its case (HTTP lowercases names).
    pub fn scrub_name(&self, name: &str) -> String {
        match &self.matcher_nocase {
            Some(m) if m.is_match(name) => {
                m.replace_all(name, &vec![REDACTED; self.patterns.len()])
            }
            _ => name.to_string(),
        }
    }

    /// [`scrub`](Self::scrub) for bytes cut at a limit: also redacts a tail that is the start
    /// of a secret (at least 3 bytes of it, or all of a shorter secret's first bytes).
    pub fn scrub_truncated(&self, bytes: &mut Vec<u8>) -> usize {
        let mut found = self.scrub(bytes);
        let longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        for k in (1..longest.min(bytes.len() + 1)).rev() {
            let tail = &bytes[bytes.len() - k..];
            if self
                .patterns
                .iter()
                .any(|p| p.len() > k && p.starts_with(tail) && k >= 3.min(p.len() - 1))
            {
                bytes.truncate(bytes.len() - k);
                bytes.extend_from_slice(REDACTED.as_bytes());
                found += 1;
                break;
            }
        }
        found
    }

    /// Redacts every string (and key) of a JSON value that contains a secret, in place: the
    /// secret's occurrences become `<redacted>`. Returns whether anything changed.
    pub fn scrub_value(&self, v: &mut Value) -> bool {
        let Some(m) = &self.matcher else {
            return false;
        };
        match v {
            Value::String(s) => {
                if m.is_match(s.as_str()) {
                    *s = m.replace_all(s, &vec![REDACTED; self.patterns.len()]);
                    return true;
                }
                false
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, i| self.scrub_value(i) | changed),
            Value::Object(map) => {
                let mut changed = false;
                if map.keys().any(|k| m.is_match(k.as_str())) {
                    let old = std::mem::take(map);
                    let mut new = Map::with_capacity(old.len());
                    for (k, v) in old {
                        let k = if m.is_match(k.as_str()) {
                            m.replace_all(&k, &vec![REDACTED; self.patterns.len()])
                        } else {
                            k
                        };
                        new.insert(k, v);
                    }
                    *map = new;
                    changed = true;
                }
                for v in map.values_mut() {
                    changed |= self.scrub_value(v);
                }
                changed
            }
            _ => false,
        }
    }

    /// Whether JSON text uses the escapes that can spell any character (`\u`, `\/`), so that
    /// a secret may hide from the byte search behind them.
    pub fn has_escapes(&self, raw: &[u8]) -> bool {
        self.matcher.is_some()
            && (memchr::memmem::find(raw, br"\u").is_some()
                || memchr::memmem::find(raw, br"\/").is_some())
    }
}

/// Headers as a JSON object, credential headers' values replaced (outbound requests, whose
/// other headers the gateway writes itself).
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Value {
    scrubbed_headers(pairs, &Scrubber::default())
}

/// `bytes` with the JSON escapes that can spell any character (`\uXXXX` outside the surrogates,
/// `\/`) undone, whether or not the bytes are JSON: what a secret spelt with them reads as.
pub fn unescape_json_lossy(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'/' {
                out.push(b'/');
                i += 2;
                continue;
            }
            let ch = (bytes[i + 1] == b'u')
                .then(|| bytes.get(i + 2..i + 6))
                .flatten()
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .and_then(char::from_u32);
            if let Some(ch) = ch {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += 6;
                continue;
            }
            // Any other escape (`\\`, `\"`, `\n`): kept as it is, both bytes.
            out.extend_from_slice(&bytes[i..i + 2]);
            i += 2;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Bytes kept of one header value in the audit log (the HTTP parser admits heads of 128 KiB).
pub const HEADER_VALUE_KEEP: usize = 1024;
/// Bytes kept of all headers of one request; the headers after are counted, not stored.
pub const HEADERS_KEEP: usize = 8192;

/// Headers as a JSON object: credential headers' values replaced, every other value scrubbed of
/// secrets and of what PostgreSQL's jsonb cannot hold (`\u0000`), and bounded (a value to
/// [`HEADER_VALUE_KEEP`] bytes, all of them to [`HEADERS_KEEP`]).
pub fn scrubbed_headers<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    scrubber: &Scrubber,
) -> Value {
    let mut out = Map::new();
    let (mut kept, mut dropped) = (0usize, 0usize);
    for (name, value) in pairs {
        if kept + name.len() + value.len().min(HEADER_VALUE_KEEP) > HEADERS_KEEP {
            dropped += 1;
            continue;
        }
        let name = scrubber
            .scrub_name(&name.to_ascii_lowercase())
            .replace('\0', "\u{fffd}");
        let v = if SECRET_HEADERS.contains(&name.as_str()) {
            REDACTED.to_string()
        } else {
            let mut bytes = value.to_vec();
            scrubber.scrub(&mut bytes);
            let mut v = String::from_utf8_lossy(&bytes).replace('\0', "\u{fffd}");
            if v.len() > HEADER_VALUE_KEEP {
                let mut cut = HEADER_VALUE_KEEP;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
                v.push_str(&format!("… ({} bytes)", value.len()));
            }
            v
        };
        kept += name.len() + v.len();
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
    if dropped > 0 {
        out.insert(
            "…".into(),
            Value::String(format!("{dropped} more headers not stored")),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_replaced_and_the_rest_kept() {
        let s = Scrubber::new(["wk-123"]);
        let h = scrubbed_headers(
            [
                ("Authorization", b"Basic abc".as_slice()),
                ("X-Write-Key", b"k".as_slice()),
                ("Content-Type", b"text/plain".as_slice()),
                ("Referer", b"https://x/?key=wk-123".as_slice()),
            ],
            &s,
        );
        assert_eq!(
            h,
            json!({"authorization": "<redacted>", "x-write-key": "<redacted>", "content-type": "text/plain",
                   "referer": "https://x/?key=<redacted>"})
        );
    }

    #[test]
    fn scrubbing_keeps_every_other_byte_and_needs_no_json() {
        let s = Scrubber::new(["wk-123", "", "other-secret"]);
        let mut body = br#"{"writeKey":"wk-123","batch":[{"type":"track","x":1.0}],}"#.to_vec();
        assert_eq!(s.scrub(&mut body), 1);
        assert_eq!(
            body,
            br#"{"writeKey":"<redacted>","batch":[{"type":"track","x":1.0}],}"#.to_vec()
        );
        let mut two = b"other-secretwk-123 trailing".to_vec();
        s.scrub(&mut two);
        assert_eq!(two, b"<redacted><redacted> trailing".to_vec());
        let mut clean = b"nothing here".to_vec();
        assert_eq!(s.scrub(&mut clean), 0);
    }

    #[test]
    fn a_body_cut_inside_a_secret_loses_the_cut_secret() {
        let s = Scrubber::new(["wk-123456"]);
        let mut cut = br#"{"writeKey":"wk-12"#.to_vec();
        assert_eq!(s.scrub_truncated(&mut cut), 1);
        assert_eq!(cut, br#"{"writeKey":"<redacted>"#.to_vec());
        let mut fine = br#"{"a":"w"#.to_vec();
        assert_eq!(
            s.scrub_truncated(&mut fine),
            0,
            "one byte of a secret is not one"
        );
    }

    #[test]
    fn escaped_spellings_are_found_in_the_parsed_value() {
        let s = Scrubber::new(["demo-key", "q\"uote"]);
        let raw = br#"{"writeKey":"\u0064emo-key","n":"q\"uote"}"#.to_vec();
        let mut scrubbed = raw.clone();
        assert_eq!(
            s.scrub(&mut scrubbed),
            1,
            "the JSON-escaped quote form is a pattern"
        );
        assert!(s.has_escapes(&raw));
        let mut v: Value = serde_json::from_slice(&raw).unwrap();
        assert!(s.scrub_value(&mut v));
        assert_eq!(v, json!({"writeKey": "<redacted>", "n": "<redacted>"}));
        let broken = br#"{"writeKey":"\u0064emo\/key","#;
        let unescaped = unescape_json_lossy(broken);
        assert_eq!(unescaped, br#"{"writeKey":"demo/key","#.to_vec());
        assert_eq!(
            unescape_json_lossy(br#"\\u0064 \u12"#),
            br#"\\u0064 \u12"#.to_vec()
        );
        let mut keyed = json!({"demo-key": 1});
        assert!(s.scrub_value(&mut keyed));
        assert_eq!(keyed, json!({"<redacted>": 1}));
    }
}
