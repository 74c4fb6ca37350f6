//! Reading a request body: the bytes as sent, `Content-Encoding: gzip` undone, the size limits
//! applied to the decompressed size (Segment's rule), all within the body read timeout, and never
//! more than the limit (plus one byte) held in memory.

use crate::error::IngestError;
use actix_web::web;
use futures_util::StreamExt;
use std::io::Read;
use tokio::time::Instant;

/// Bytes of an over-limit body read (and thrown away) after the limit, so that a client that
/// sends its whole body before reading the answer reads the 400 instead of a reset connection.
const DRAIN_AFTER_LIMIT: usize = 1 << 20;

/// A body as its parsing and the audit log see it.
#[derive(Debug)]
pub struct Body {
    /// The decompressed bytes, at most `limit + 1` of them (the raw bytes when they are not
    /// gzip; nothing when their encoding is unsupported, since a compressed secret could not be
    /// found in them).
    pub bytes: Vec<u8>,
    pub content_encoding: Option<String>,
    /// Bytes received (decompressed when that worked), counted to the limit and past it.
    pub size: usize,
    /// Whether `bytes` is only the beginning of the body.
    pub truncated: bool,
    /// Set when the body cannot be used: the request is refused with it, after the audit.
    pub problem: Option<IngestError>,
}

/// Reads at most `limit` decompressed bytes by `deadline` (`timeout_ms` after the head).
pub async fn read(
    mut payload: web::Payload,
    encoding: Option<&str>,
    limit: usize,
    deadline: Instant,
    timeout_ms: u64,
) -> Body {
    let mut raw = Vec::new();
    let mut size = 0usize;
    let mut problem = None;
    loop {
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Err(_) => {
                problem = Some(IngestError::BodyTimeout(timeout_ms));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                problem = Some(IngestError::InvalidBody(format!(
                    "the body could not be read: {e}"
                )));
                break;
            }
            Ok(Some(Ok(chunk))) => {
                size += chunk.len();
                let room = (limit + 1).saturating_sub(raw.len());
                raw.extend_from_slice(&chunk[..room.min(chunk.len())]);
                if size > limit + DRAIN_AFTER_LIMIT {
                    break;
                }
            }
        }
    }
    let mut body = decode(raw, encoding, limit);
    body.size = body.size.max(size);
    if size > limit {
        // Compressed or not, a body whose bytes on the wire are over the limit is over it.
        body.problem = Some(too_large("", limit));
        body.truncated = true;
    }
    if problem.is_some() {
        body.truncated = true;
        body.problem = problem;
    }
    body
}

fn too_large(what: &str, limit: usize) -> IngestError {
    IngestError::TooLarge(format!("the {what}body is larger than {limit} bytes"))
}

/// Undoes the Content-Encoding of `raw` (at most `limit + 1` bytes kept of a body) and applies
/// the limit to the result. Pure, so that it can be tried with any bytes.
pub fn decode(raw: Vec<u8>, encoding: Option<&str>, limit: usize) -> Body {
    let encoding = encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity");
    let size = raw.len();
    match encoding.as_deref() {
        None => {
            let over = raw.len() > limit;
            let mut bytes = raw;
            bytes.truncate(limit);
            Body {
                truncated: over,
                problem: over.then(|| too_large("", limit)),
                bytes,
                content_encoding: None,
                size,
            }
        }
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            let decoder = flate2::read::MultiGzDecoder::new(raw.as_slice());
            let result = decoder.take(limit as u64 + 1).read_to_end(&mut out);
            match result {
                Ok(_) if out.len() > limit => {
                    out.truncate(limit);
                    Body {
                        size: out.len() + 1,
                        bytes: out,
                        content_encoding: encoding,
                        truncated: true,
                        problem: Some(too_large("decompressed ", limit)),
                    }
                }
                Ok(_) => Body {
                    size: out.len(),
                    bytes: out,
                    content_encoding: encoding,
                    truncated: false,
                    problem: None,
                },
                Err(e) => {
                    // Bytes that start as gzip are kept as far as they decompress: the raw
                    // compressed bytes could hide a secret from the byte search of the audit.
                    let looks_gzip = raw.starts_with(&[0x1f, 0x8b]);
                    let mut bytes = if looks_gzip { out } else { raw };
                    let over = bytes.len() > limit;
                    bytes.truncate(limit);
                    Body {
                        truncated: looks_gzip || over,
                        size: size.max(bytes.len()),
                        bytes,
                        content_encoding: encoding,
                        problem: Some(IngestError::BadEncoding(e.to_string())),
                    }
                }
            }
        }
        Some(other) => Body {
            problem: Some(IngestError::UnsupportedEncoding(format!(
                "Content-Encoding {:?} is not supported (use gzip or none)",
                other.chars().take(64).collect::<String>()
            ))),
            bytes: Vec::new(),
            size,
            truncated: size > 0,
            content_encoding: encoding,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn gzip_is_undone_and_limited_by_its_decompressed_size() {
        let ok = decode(gzip(b"{\"a\":1}"), Some("gzip"), 100);
        assert_eq!(
            (ok.bytes.as_slice(), ok.problem.is_none()),
            (&b"{\"a\":1}"[..], true)
        );
        let bomb = decode(gzip(&[b' '; 10_000]), Some(" GZIP "), 100);
        assert_eq!(bomb.bytes.len(), 100);
        assert!(bomb.truncated);
        assert_eq!(bomb.problem.unwrap().code(), "too_large");
    }

    #[test]
    fn broken_gzip_keeps_what_decompressed_and_other_encodings_keep_nothing() {
        let mut cut = gzip(b"{\"secret\":\"abcdefgh\"}");
        cut.truncate(cut.len() - 6);
        let b = decode(cut, Some("gzip"), 100);
        assert_eq!(b.problem.unwrap().code(), "bad_encoding");
        assert!(b.truncated);
        let not_gzip = decode(b"plain".to_vec(), Some("gzip"), 100);
        assert_eq!(not_gzip.bytes, b"plain");
        let br = decode(b"\x8b\x02compressed".to_vec(), Some("br"), 100);
        assert!(br.bytes.is_empty());
        assert!(br
            .problem
            .unwrap()
            .to_string()
            .contains("\"br\" is not supported"));
    }

    #[test]
    fn identity_bodies_over_the_limit_are_cut_at_it() {
        let b = decode(vec![b'x'; 11], None, 10);
        assert_eq!((b.bytes.len(), b.truncated, b.size), (10, true, 11));
        assert_eq!(b.problem.unwrap().code(), "too_large");
        let b = decode(vec![b'x'; 10], Some("identity"), 10);
        assert!(b.problem.is_none());
    }
}
