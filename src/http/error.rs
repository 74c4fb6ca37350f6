//! The one place where an [`IngestError`] becomes a status code and a JSON body
//! (`{"success": false, "code": ..., "message": ...}`, the shape Segment's clients read).

use crate::error::IngestError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// The status every kind of refusal is answered with (the README's table of refusals).
pub fn status_of(e: &IngestError) -> StatusCode {
    match e {
        IngestError::Unauthorized(_)
        | IngestError::WebhookUnauthorized { .. }
        | IngestError::AmbiguousCredentials(_) => StatusCode::UNAUTHORIZED,
        IngestError::InvalidJson(_)
        | IngestError::InvalidBody(_)
        | IngestError::TooLarge(_)
        | IngestError::BadEncoding(_)
        | IngestError::UnsupportedEncoding(_)
        | IngestError::Unstorable(_) => StatusCode::BAD_REQUEST,
        IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        IngestError::NotFound(_) => StatusCode::NOT_FOUND,
        IngestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        IngestError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        status_of(self)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            IngestError::Unavailable {
                retry_after_secs, ..
            } => {
                res.insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            IngestError::MethodNotAllowed { allowed, .. } => {
                res.insert_header(("Allow", *allowed));
            }
            IngestError::BodyTimeout(_) => {
                res.insert_header(("Connection", "close"));
            }
            _ => {}
        }
        res.json(
            serde_json::json!({"success": false, "code": self.code(), "message": self.to_string()}),
        )
    }
}
