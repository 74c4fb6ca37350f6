//! The HTTP layer: the server and its socket limits, the route table, and per-handler state.
//!
//! * [`segment`], [`iterable`]: the ingest routes (thin: read, authenticate, hand the parsed
//!   body to the partner models in `crate::segment` / `crate::iterable`, answer);
//! * [`body`]: reading a body (gzip, limits, read timeout); [`record`]: the request's audit
//!   record and the commit before the answer; [`error`]: errors to status codes;
//! * [`ops`]: `/healthz`, `/readyz`, `/metrics`; [`fallback`]: 404 and 405, audited.
//!
//! Handlers take only the state they use (`web::Data<Ingest>`, `web::Data<Connections>`,
//! `web::Data<PgPool>`, `web::Data<Arc<DatabaseHealth>>`), as zero2prod does.

pub mod body;
pub mod error;
pub mod fallback;
pub mod iterable;
pub mod ops;
pub mod record;
pub mod segment;
pub mod ui;

use crate::audit::health::{DatabaseHealth, ProbeSettings};
use crate::audit::redact::Scrubber;
use crate::audit::writer::{CommitterSettings, GroupCommitter};
use crate::configuration::Settings;
use crate::connection::Connections;
use actix_web::dev::Server;
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};
use record::{Ingest, Limits};
use sqlx::PgPool;
use std::net::TcpListener;
use std::time::Duration;

/// The running HTTP server and its port.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds `application.host:port`, starts the group commit and the database probe, and
    /// prepares the server (not yet polled).
    pub fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Application> {
        let app = &settings.application;
        let listener = TcpListener::bind((app.host.as_str(), app.port))
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", app.host, app.port))?;
        let port = listener.local_addr()?.port();
        let connections = Connections::from_settings(&settings)?;
        let health = DatabaseHealth::new();
        health.spawn_probe(
            pool.clone(),
            ProbeSettings {
                interval_up: Duration::from_millis(settings.database.probe_interval_ms),
                interval_down: Duration::from_millis(200),
                timeout: Duration::from_millis(settings.database.probe_timeout_ms),
            },
        );
        let committer = GroupCommitter::spawn(
            pool.clone(),
            CommitterSettings {
                writers: settings.ingest.writers,
                max_group_events: settings.ingest.max_group_events,
                queue_requests: settings.ingest.queue_requests,
                queue_bytes: settings.ingest.queue_bytes,
            },
            health.clone(),
        );
        let ingest = web::Data::new(Ingest {
            committer,
            scrubber: Scrubber::new(connections.secrets()),
            limits: Limits::from_settings(&settings),
            commit_timeout: Duration::from_millis(settings.database.commit_timeout_ms),
            retry_after_secs: app.retry_after_secs,
        });
        let connections = web::Data::new(connections);
        let pool = web::Data::new(pool);
        let health = web::Data::new(health);
        let ui = web::Data::new(ui::UiState::from_settings(&settings));
        crate::telemetry::metrics_handle();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(ingest.clone())
                .app_data(connections.clone())
                .app_data(pool.clone())
                .app_data(health.clone())
                .app_data(ui.clone())
                .service(post("/v1/{call}", segment::tracking_api))
                .service(post(
                    "/webhooks/segment/{connection}",
                    segment::segment_webhook,
                ))
                .service(post(
                    "/webhooks/iterable/{connection}",
                    iterable::iterable_webhook,
                ))
                .service(get("/healthz", ops::healthz))
                .service(get("/readyz", ops::readyz))
                .service(get("/metrics", ops::metrics))
                .configure(ui::routes)
                .default_service(web::to(fallback::not_found))
        })
        .workers(workers)
        .client_request_timeout(Duration::from_millis(app.request_head_timeout_ms))
        .client_disconnect_timeout(Duration::from_millis(1000))
        .keep_alive(match app.keep_alive_secs {
            0 => KeepAlive::Disabled,
            s => KeepAlive::Timeout(Duration::from_secs(s)),
        })
        .max_connections(app.max_connections.div_ceil(workers).max(1))
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

/// A POST-only resource: other methods get an audited 405.
fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(fallback::post_only))
}

/// A GET-only resource (operators'): other methods get an audited 405.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(fallback::get_only))
}
