//! Errors of the HTTP layer, and the one place where they become status codes and JSON bodies
//! (`{"success": false, "code": ..., "message": ...}`, the shape Segment's clients read).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Why an inbound request is refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No credentials, or credentials that match no connection.
    #[error("{0}")]
    Unauthorized(String),
    /// A route for a connection that does not exist.
    #[error("no connection is named {0:?}")]
    UnknownConnection(String),
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the body is not valid gzip: {0}")]
    BadEncoding(String),
    /// The audit log could not commit: nothing was acknowledged, the sender retries.
    #[error("the gateway cannot store the request right now; retry later")]
    Unavailable { retry_after_secs: u64 },
}

impl IngestError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Unauthorized(_) => "unauthorized",
            IngestError::UnknownConnection(_) => "unknown_connection",
            IngestError::InvalidJson(_) => "invalid_json",
            IngestError::InvalidBody(_) => "invalid_body",
            IngestError::TooLarge(_) => "too_large",
            IngestError::BadEncoding(_) => "bad_encoding",
            IngestError::Unavailable { .. } => "unavailable",
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::UnknownConnection(_) => StatusCode::NOT_FOUND,
            IngestError::InvalidJson(_)
            | IngestError::InvalidBody(_)
            | IngestError::TooLarge(_)
            | IngestError::BadEncoding(_) => StatusCode::BAD_REQUEST,
            IngestError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let IngestError::Unavailable { retry_after_secs } = self {
            res.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        res.json(
            serde_json::json!({"success": false, "code": self.code(), "message": self.to_string()}),
        )
    }
}
