//! Building the HTTP application: shared state, routes, and the server on a listener (port 0 in
//! tests).

use crate::audit::writer::GroupCommitter;
use crate::configuration::Settings;
use crate::connection::Connections;
use crate::{ops, segment};
use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use sqlx::PgPool;
use std::net::TcpListener;

/// What every handler can reach.
pub struct AppState {
    pub settings: Settings,
    pub connections: Connections,
    pub committer: GroupCommitter,
    pub pool: PgPool,
}

/// The running HTTP server and its port.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds `application.host:port` and prepares the server (not yet polled).
    pub fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Application> {
        let listener = TcpListener::bind((
            settings.application.host.as_str(),
            settings.application.port,
        ))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}:{}: {e}",
                settings.application.host,
                settings.application.port
            )
        })?;
        let port = listener.local_addr()?.port();
        let connections = Connections::from_settings(&settings)?;
        let committer = GroupCommitter::spawn(
            pool.clone(),
            settings.ingest.writers,
            settings.ingest.max_group_events,
        );
        let state = web::Data::new(AppState {
            settings,
            connections,
            committer,
            pool,
        });
        crate::telemetry::metrics_handle();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/v1/{call}", web::post().to(segment::ingest::tracking_api))
                .route(
                    "/webhooks/segment/{connection}",
                    web::post().to(segment::ingest::segment_webhook),
                )
                .route(
                    "/webhooks/iterable/{connection}",
                    web::post().to(crate::iterable::webhook::iterable_webhook),
                )
                .route("/healthz", web::get().to(ops::healthz))
                .route("/readyz", web::get().to(ops::readyz))
                .route("/metrics", web::get().to(ops::metrics))
                .configure(crate::ui::routes)
                .default_service(web::to(|| async {
                    HttpResponse::NotFound().json(serde_json::json!({
                        "success": false, "code": "not_found", "message": "no such route"
                    }))
                }))
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(30)
        .run();
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
