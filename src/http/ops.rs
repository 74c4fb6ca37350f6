//! Operator routes: `/healthz` (the process answers), `/readyz` (the database answers, the
//! schema is current, and the health state says commits can happen), `/metrics` (Prometheus
//! text). They are not written to the audit log (they carry no data, and must answer while the
//! database is down); wrong methods on them are, like every other refused request.

use crate::audit::health::DatabaseHealth;
use actix_web::{web, HttpResponse};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(
    pool: web::Data<PgPool>,
    health: web::Data<Arc<DatabaseHealth>>,
) -> HttpResponse {
    let not_ready = |reason: String| {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "not ready", "reason": reason}))
    };
    if let Err((why, since)) = health.status() {
        let since = chrono::DateTime::<chrono::Utc>::from(since)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        return not_ready(format!("database down since {since}: {why}"));
    }
    let expected = crate::database::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    let applied =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool.get_ref());
    match tokio::time::timeout(Duration::from_secs(2), applied).await {
        Ok(Ok(n)) if n >= expected => {
            HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
        }
        Ok(Ok(n)) => not_ready(format!("{n} of {expected} migrations applied")),
        Ok(Err(e)) => not_ready(format!("database: {e}")),
        Err(_) => not_ready("database: no answer within 2 s".into()),
    }
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics_handle().render())
}
