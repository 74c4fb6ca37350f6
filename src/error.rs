//! Why an inbound request is refused: one typed error for every route. It says nothing about
//! HTTP; `http::error` is the one place where each kind becomes a status code and a JSON body.

/// Why an inbound request is refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No credentials, or credentials that match no connection (`/v1/*`).
    #[error("{0}")]
    Unauthorized(String),
    /// A webhook route refused for any reason of authentication: unknown connection, no secret
    /// configured, missing or wrong credentials. The caller always reads the same message (so
    /// connection names cannot be probed); the audit log keeps `detail`.
    #[error("missing or invalid credentials for this webhook")]
    WebhookUnauthorized { detail: String },
    /// The header and the body present different write keys.
    #[error("{0}")]
    AmbiguousCredentials(String),
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the body is not valid gzip: {0}")]
    BadEncoding(String),
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// The body did not arrive within the body read timeout.
    #[error("the body was not received within {0} ms")]
    BodyTimeout(u64),
    /// A value the audit log cannot hold (`\u0000`, an id over the limit), or data the database
    /// refused for this request alone; the message names the field or the reason.
    #[error("{0}")]
    Unstorable(String),
    #[error("no route {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// The audit log could not commit: nothing was acknowledged, the sender retries.
    #[error("the gateway cannot store the request right now ({reason}); retry later")]
    Unavailable {
        retry_after_secs: u64,
        reason: &'static str,
    },
}

impl IngestError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Unauthorized(_) | IngestError::WebhookUnauthorized { .. } => {
                "unauthorized"
            }
            IngestError::AmbiguousCredentials(_) => "ambiguous_credentials",
            IngestError::InvalidJson(_) => "invalid_json",
            IngestError::InvalidBody(_) => "invalid_body",
            IngestError::TooLarge(_) => "too_large",
            IngestError::BadEncoding(_) | IngestError::UnsupportedEncoding(_) => "bad_encoding",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::Unstorable(_) => "unstorable",
            IngestError::NotFound(_) => "not_found",
            IngestError::MethodNotAllowed { .. } => "method_not_allowed",
            IngestError::Unavailable { .. } => "unavailable",
        }
    }

    /// What the audit log records as the reason: the message the caller read, or for webhook
    /// authentication the precise cause the caller is not told.
    pub fn audit_message(&self) -> String {
        match self {
            IngestError::WebhookUnauthorized { detail } => format!("{self}: {detail}"),
            _ => self.to_string(),
        }
    }

    /// Whether the body was refused before (or without) any authentication, so that only a
    /// bounded prefix of it is kept.
    pub fn is_body_problem(&self) -> bool {
        matches!(
            self,
            IngestError::TooLarge(_)
                | IngestError::BadEncoding(_)
                | IngestError::UnsupportedEncoding(_)
                | IngestError::BodyTimeout(_)
        )
    }
}
