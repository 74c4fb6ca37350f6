//! The HTTP client for Iterable's destination-level calls: checking an API key (Segment's
//! `testAuthentication`) and finding or creating the list of an audience (the list
//! destinations' `createAudience` / `getAudience`).

use super::api::{DataCenter, Endpoint, Hosts, API_KEY_HEADER};
use serde_json::{json, Value};
use std::time::Duration;

/// Why a destination-level call failed. Messages are Segment's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A non-2xx answer to the key check.
    #[error("Credentials are invalid: {0}")]
    InvalidCredentials(String),
    #[error("Missing computation parameters: Key")]
    MissingAudienceKey,
    #[error("Audience with ID {0} not found in Iterable")]
    AudienceNotFound(String),
    #[error("Iterable answered {status} to {what}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("Iterable's answer to {what} was not what the API documents: {why}")]
    UnexpectedBody { what: &'static str, why: String },
    #[error("could not reach Iterable: {0}")]
    Transport(#[from] reqwest::Error),
}

/// One `reqwest::Client` and the hosts to use (overridden in tests).
#[derive(Debug, Clone)]
pub struct IterableClient {
    http: reqwest::Client,
    hosts: Hosts,
}

impl IterableClient {
    pub fn new(hosts: Hosts, timeout: Duration) -> Result<IterableClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!(
                "segment-iterable-gateway/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(IterableClient { http, hosts })
    }

    fn url(&self, dc: DataCenter, endpoint: Endpoint) -> String {
        format!("{}{}", self.hosts.base(dc), endpoint.path())
    }

    /// `testAuthentication`: `GET /api/webhooks` with the key; any non-2xx is invalid.
    pub async fn check_key(&self, api_key: &str, dc: DataCenter) -> Result<(), ClientError> {
        let res = self
            .http
            .get(self.url(dc, Endpoint::Webhooks))
            .header(API_KEY_HEADER, api_key)
            .send()
            .await?;
        let status = res.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::InvalidCredentials(format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )))
        }
    }

    async fn lists(&self, api_key: &str, dc: DataCenter) -> Result<Vec<Value>, ClientError> {
        let res = self
            .http
            .get(self.url(dc, Endpoint::Lists))
            .header(API_KEY_HEADER, api_key)
            .send()
            .await?;
        let body = expect_success(res, "GET /api/lists").await?;
        body.get("lists")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ClientError::UnexpectedBody {
                what: "GET /api/lists",
                why: "no \"lists\" array".into(),
            })
    }

    /// `createAudience`: the id of the list named after the audience key, created if needed.
    pub async fn find_or_create_list(
        &self,
        api_key: &str,
        dc: DataCenter,
        audience_key: &str,
    ) -> Result<String, ClientError> {
        if audience_key.is_empty() {
            return Err(ClientError::MissingAudienceKey);
        }
        let lists = self.lists(api_key, dc).await?;
        if let Some(id) = lists
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(audience_key))
            .and_then(|l| l.get("id"))
        {
            return Ok(crate::mapping::js::to_display_string(id));
        }
        let res = self
            .http
            .post(self.url(dc, Endpoint::Lists))
            .header(API_KEY_HEADER, api_key)
            .json(&json!({ "name": audience_key }))
            .send()
            .await?;
        let body = expect_success(res, "POST /api/lists").await?;
        body.get("listId")
            .filter(|v| v.is_number() || v.is_string())
            .map(crate::mapping::js::to_display_string)
            .ok_or_else(|| ClientError::UnexpectedBody {
                what: "POST /api/lists",
                why: "no \"listId\"".into(),
            })
    }

    /// `getAudience`: confirms that a list id exists.
    pub async fn get_list(
        &self,
        api_key: &str,
        dc: DataCenter,
        id: &str,
    ) -> Result<String, ClientError> {
        let lists = self.lists(api_key, dc).await?;
        lists
            .iter()
            .filter_map(|l| l.get("id"))
            .map(crate::mapping::js::to_display_string)
            .find(|candidate| candidate == id)
            .ok_or_else(|| ClientError::AudienceNotFound(id.to_string()))
    }
}

async fn expect_success(res: reqwest::Response, what: &'static str) -> Result<Value, ClientError> {
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        return Err(ClientError::Status {
            what,
            status: status.as_u16(),
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::UnexpectedBody {
        what,
        why: e.to_string(),
    })
}
