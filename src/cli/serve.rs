//! `gateway serve` and `gateway migrate`.

use crate::configuration::Settings;
use crate::database::connect::{self, Target};
use crate::database::{migrate, ClusterOptions, LocalCluster};
use crate::startup::Application;
use clap::Args;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Directory of default.toml and the environment overlays.
    #[arg(long, default_value = "config", env = "GATEWAY_CONFIG_DIR")]
    pub config: PathBuf,
}

/// Connects to `database.url`, or starts (creating if needed) the gateway's own cluster under
/// `database.dir` and uses its `gateway` database; the cluster is returned when this call
/// started it, so that shutdown stops it again. A database that cannot be reached is named in
/// the error (without its password), with the host, port and cause.
pub async fn connect(settings: &Settings) -> anyhow::Result<(PgPool, Option<LocalCluster>)> {
    let db = &settings.database;
    let timeout = Duration::from_millis(db.commit_timeout_ms);
    let mut own: Option<LocalCluster> = None;
    let target = match &db.url {
        Some(url) => Target::from_url(url.expose_secret())?,
        None => {
            let options = ClusterOptions {
                port: (db.port != 0).then_some(db.port),
                durable: true,
            };
            let dir = db.dir.clone();
            let cluster =
                tokio::task::spawn_blocking(move || LocalCluster::ensure_with(&dir, &options))
                    .await??;
            tracing::info!(
                dir = %cluster.dir().display(),
                port = cluster.port(),
                psql = %format!(
                    "PGPASSFILE={} psql -h 127.0.0.1 -p {} -U postgres gateway",
                    cluster.password_file().display(),
                    cluster.port()
                ),
                "Using the gateway's own PostgreSQL."
            );
            let configured = format!(
                "the gateway's own PostgreSQL in {} (database.dir)",
                cluster.dir().display()
            );
            let admin = Target {
                options: cluster.connect_options("postgres"),
                configured: configured.clone(),
            };
            let admin = connect::pool(&admin, 1, timeout).await?;
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'gateway')",
            )
            .fetch_one(&admin)
            .await?;
            if !exists {
                sqlx::query("CREATE DATABASE gateway")
                    .execute(&admin)
                    .await?;
            }
            admin.close().await;
            let target = Target {
                options: cluster.connect_options("gateway"),
                configured,
            };
            if cluster.started_here() {
                own = Some(cluster);
            }
            target
        }
    };
    let pool = connect::pool(&target, db.max_connections, timeout).await?;
    Ok((pool, own))
}

pub fn run_migrate(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&args.config)?;
    crate::telemetry::init_logs(&settings.application.log_format);
    runtime()?.block_on(async {
        let (pool, own) = connect(&settings).await?;
        migrate(&pool).await?;
        println!("migrations applied");
        pool.close().await;
        if let Some(cluster) = own {
            cluster.stop()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_serve(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&args.config)?;
    crate::telemetry::init_logs(&settings.application.log_format);
    runtime()?.block_on(async move {
        let (pool, own) = connect(&settings).await?;
        migrate(&pool).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let maintenance = tokio::spawn(maintain(
            pool.clone(),
            settings.database.retention_days,
            cancel.clone(),
        ));
        let app = Application::build(settings.clone(), pool.clone())?;
        let dispatch = tokio::spawn(crate::delivery::worker::run(
            pool.clone(),
            std::sync::Arc::new(settings.clone()),
            crate::delivery::Clients::new(&settings.delivery)?,
            cancel.clone(),
        ));
        tracing::info!(
            address = %format!("http://{}:{}", settings.application.host, app.port()),
            mode = ?settings.delivery.mode,
            connections = settings.connections.len(),
            "The gateway is listening."
        );
        let handle = app.handle();
        let server = tokio::spawn(app.run_until_stopped());
        shutdown_signal().await;
        tracing::info!("Shutting down: finishing in-flight requests.");
        cancel.cancel();
        handle.stop(true).await;
        let _ = server.await;
        let _ = dispatch.await;
        let _ = maintenance.await;
        pool.close().await;
        if let Some(cluster) = own {
            tracing::info!("Stopping the gateway's own PostgreSQL.");
            cluster.stop()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Every hour: partitions for the coming days, and retention.
async fn maintain(pool: PgPool, retention_days: u32, cancel: tokio_util::sync::CancellationToken) {
    loop {
        let result = async {
            sqlx::query("SELECT gateway_ensure_partitions(current_date - 1, 9)")
                .execute(&pool)
                .await?;
            sqlx::query_scalar::<_, i32>(
                "SELECT gateway_drop_partitions_before(current_date - $1::int)",
            )
            .bind(retention_days as i32)
            .fetch_one(&pool)
            .await
        }
        .await;
        match result {
            Ok(dropped) if dropped > 0 => {
                tracing::info!(dropped, "Dropped audit partitions past retention.")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Partition maintenance failed; will retry."),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
