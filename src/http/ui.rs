//! The delivery page, `/ui`: per connection, events in and out over the last hour and day,
//! the backlog, failures by reason, paused connections, and a search by messageId or user that
//! shows each event, its mapped requests and every attempt.
//!
//! Off unless `ui.token` is set (then `/ui` is a 404 like any unknown route). The operator
//! presents the token as `Authorization: Bearer <token>` or as the password of HTTP Basic (the
//! browser asks); it is compared in constant time and never logged or stored. Server-rendered
//! ([`render`]), no script; the Content-Security-Policy forbids scripts and inline styles, so
//! even a value that escaped escaping could not run.

use crate::audit::queries;
use crate::configuration::secret;
use crate::configuration::Settings;
use crate::ui::render::{self, Dashboard, Paused, Search};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::{DurationRound, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use sqlx::PgPool;

/// The page's security headers: no script at all, styles only from /ui/style.css.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Most events a search shows.
const SEARCH_LIMIT: usize = 50;

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    q: Option<String>,
}

/// What the page reads of the configuration: the token, the mode, the connections' names.
pub struct UiState {
    token: Option<SecretString>,
    mode: &'static str,
    connections: Vec<String>,
}

impl UiState {
    pub fn from_settings(settings: &Settings) -> UiState {
        UiState {
            token: settings.ui.token.clone(),
            mode: settings.delivery.mode.as_str(),
            connections: settings
                .connections
                .iter()
                .map(|c| c.name.clone())
                .collect(),
        }
    }
}

/// Registers `/ui` and `/ui/style.css`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(page))
        .route("/ui/style.css", web::get().to(style));
}

/// The token from `Authorization: Bearer <token>` or `Basic base64(any:<token>)`.
fn presented(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            Some(
                text.split_once(':')
                    .map_or(text.clone(), |(_, p)| p.to_string()),
            )
        }
        _ => None,
    }
}

/// `None`: go on; `Some(response)`: answer that (404 when the page is off, 401 without the token).
fn gate(state: &UiState, req: &HttpRequest) -> Option<HttpResponse> {
    let Some(token) = secret(&state.token) else {
        return Some(HttpResponse::NotFound().json(serde_json::json!({
            "success": false, "code": "not_found", "message": "no such route"
        })));
    };
    match presented(req) {
        Some(p) if crate::segment::auth::secrets_equal(&p, token) => None,
        _ => Some(
            HttpResponse::Unauthorized()
                .insert_header((
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"gateway delivery page (password: the operator token)\", charset=\"UTF-8\"",
                ))
                .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                .content_type("text/plain; charset=utf-8")
                .body("The delivery page needs the operator token (ui.token).\n"),
        ),
    }
}

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(body)
}

pub async fn style(state: web::Data<UiState>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = gate(&state, &req) {
        return refused;
    }
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(render::STYLE)
}

pub async fn page(
    state: web::Data<UiState>,
    pool: web::Data<PgPool>,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> HttpResponse {
    if let Some(refused) = gate(&state, &req) {
        return refused;
    }
    match dashboard(&state, &pool, query.q.as_deref()).await {
        Ok(d) => html(render::page(&d)),
        Err(e) => {
            tracing::warn!(error = %e, "The delivery page could not read the audit log.");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("The audit log cannot be read right now.\n")
        }
    }
}

async fn dashboard(
    state: &UiState,
    pool: &PgPool,
    q: Option<&str>,
) -> Result<Dashboard, sqlx::Error> {
    let now = Utc::now();
    let minute = now
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(now);
    let hour = now
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap_or(now);
    let hour_since = minute - chrono::Duration::minutes(59);
    let day_since = hour - chrono::Duration::hours(23);
    let search = match q.map(str::trim).filter(|q| !q.is_empty()) {
        None => None,
        Some(q) => Some(search(pool, q).await?),
    };
    Ok(Dashboard {
        now,
        mode: state.mode,
        connections: state.connections.clone(),
        hour: queries::flow(pool, hour_since, 60).await?,
        hour_since,
        day: queries::flow(pool, day_since, 3600).await?,
        day_since,
        backlog: queries::backlog(pool).await?,
        failures: queries::failures(pool, now - chrono::Duration::hours(24), None).await?,
        paused: paused_connections(pool).await?,
        search,
    })
}

/// Events with this messageId, then the user's (userId, anonymousId or email), newest first.
async fn search(pool: &PgPool, q: &str) -> Result<Search, sqlx::Error> {
    let mut events = queries::events_by_message_id(pool, q).await?;
    let mut by_user = queries::events_by_user(pool, q).await?;
    by_user.retain(|e| !events.iter().any(|m| m.event_id == e.event_id));
    events.append(&mut by_user);
    let truncated = events.len() > SEARCH_LIMIT;
    events.truncate(SEARCH_LIMIT);
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let attempts = queries::attempts(pool, e.event_id).await?;
        out.push((e, attempts));
    }
    Ok(Search {
        query: q.to_string(),
        events: out,
        truncated,
    })
}

/// The paused connections of every gateway process on the database (`connection_pause`),
/// with the partner's answer after the reason.
async fn paused_connections(pool: &PgPool) -> Result<Vec<Paused>, sqlx::Error> {
    Ok(queries::paused(pool)
        .await?
        .into_iter()
        .map(|p| Paused {
            connection: p.connection,
            direction: p.direction,
            reason: match p.detail {
                Some(detail) if !detail.is_empty() => format!("{}: {detail}", p.reason),
                _ => p.reason,
            },
        })
        .collect())
}
