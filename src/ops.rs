//! Operator routes: `/healthz` (the process answers), `/readyz` (the database answers and the
//! schema is current), `/metrics` (Prometheus text).

use crate::startup::AppState;
use actix_web::{web, HttpResponse};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let expected = crate::database::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    let applied: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&state.pool)
            .await;
    match applied {
        Ok(n) if n >= expected => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Ok(n) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not ready", "reason": format!("{n} of {expected} migrations applied")
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not ready", "reason": format!("database: {e}")
        })),
    }
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics_handle().render())
}
