//! Reading a request body: the bytes as sent, `Content-Encoding: gzip` undone, and the size
//! limits applied to the decompressed size (Segment's rule), without ever holding more than a
//! bounded amount in memory.

use crate::error::IngestError;
use actix_web::web;
use futures_util::StreamExt;
use std::io::Read;

/// Bytes kept of a body that is over its limit, for the audit log.
pub const KEEP_OF_OVERSIZE: usize = 1 << 20;

/// A body as the audit log keeps it, and what its parsing may use.
pub struct Body {
    /// The decompressed bytes (or the raw bytes when they could not be decompressed).
    pub bytes: Vec<u8>,
    pub content_encoding: Option<String>,
    /// Set when the body cannot be used: the request is refused with it, after the audit.
    pub problem: Option<IngestError>,
}

/// Reads at most `limit` decompressed bytes.
pub async fn read(mut payload: web::Payload, encoding: Option<&str>, limit: usize) -> Body {
    let encoding = encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity");
    let mut raw = Vec::new();
    let mut over = false;
    let mut read_error = None;
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => {
                if raw.len() + chunk.len() > limit.max(KEEP_OF_OVERSIZE) {
                    // Keep a bounded prefix for the audit log and stop reading.
                    let room = limit.max(KEEP_OF_OVERSIZE).saturating_sub(raw.len());
                    raw.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    over = true;
                    break;
                }
                raw.extend_from_slice(&chunk);
            }
            Err(e) => {
                read_error = Some(e.to_string());
                break;
            }
        }
    }
    let too_large = |what: &str| {
        Some(IngestError::TooLarge(format!(
            "the {what}body is larger than {limit} bytes"
        )))
    };
    if let Some(e) = read_error {
        return Body {
            bytes: raw,
            content_encoding: encoding,
            problem: Some(IngestError::InvalidBody(format!(
                "the body could not be read: {e}"
            ))),
        };
    }
    match encoding.as_deref() {
        None => {
            let problem = if over || raw.len() > limit {
                too_large("")
            } else {
                None
            };
            Body {
                bytes: raw,
                content_encoding: None,
                problem,
            }
        }
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            let decoder = flate2::read::MultiGzDecoder::new(raw.as_slice());
            match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
                Ok(_) if out.len() > limit || over => Body {
                    bytes: out,
                    content_encoding: encoding,
                    problem: too_large("decompressed "),
                },
                Ok(_) => Body {
                    bytes: out,
                    content_encoding: encoding,
                    problem: None,
                },
                Err(e) => Body {
                    bytes: raw,
                    content_encoding: encoding,
                    problem: Some(IngestError::BadEncoding(e.to_string())),
                },
            }
        }
        Some(other) => Body {
            problem: Some(IngestError::BadEncoding(format!(
                "Content-Encoding {other:?} is not supported (use gzip or none)"
            ))),
            bytes: raw,
            content_encoding: encoding,
        },
    }
}
