//! `gateway serve` and `gateway migrate`.

use crate::configuration::{Settings, Sources};
use crate::database::connect::{self, Target};
use crate::database::{migrate, ClusterOptions, LocalCluster};
use crate::startup::Application;
use clap::Args;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// A directory of overlays (`<GATEWAY_ENVIRONMENT>.toml`, default `local`) or one .toml file.
    /// The defaults are built in, so it holds only the keys you change. Default: ./config when it
    /// exists.
    #[arg(long, env = "GATEWAY_CONFIG_DIR", global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Where the configuration comes from: `--config`, else ./config if it is there, else only the
    /// built-in defaults and the variables.
    pub fn sources(&self) -> Sources {
        let config = self.config.clone().or_else(|| {
            let here = PathBuf::from("config");
            here.is_dir().then_some(here)
        });
        Sources::from_env(config)
    }

    pub fn load(&self) -> anyhow::Result<Settings> {
        Ok(Settings::load_from(&self.sources())?)
    }
}

/// Connects (starting the own cluster if needed), applies the migrations, runs `f`, and stops
/// the own cluster again if this call started it: for the commands that read the audit log.
pub fn with_database<F, Fut, T>(settings: &Settings, f: F) -> anyhow::Result<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    runtime()?.block_on(async {
        let (pool, own) = connect(settings).await?;
        migrate(&pool).await?;
        let result = f(pool.clone()).await;
        pool.close().await;
        release(own, settings)?;
        result
    })
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
            let existed = dir.join("PG_VERSION").is_file();
            let cluster =
                tokio::task::spawn_blocking(move || LocalCluster::ensure_with(&dir, &options))
                    .await??;
            let (dir, port) = (cluster.dir().display(), cluster.port());
            let psql = format!(
                "PGPASSFILE={} psql -h 127.0.0.1 -p {port} -U postgres gateway",
                cluster.password_file().display()
            );
            match (existed, cluster.started_here()) {
                (false, _) => {
                    tracing::info!(%dir, port, %psql, "Created and started the gateway's own PostgreSQL.")
                }
                (true, true) => {
                    tracing::info!(%dir, port, %psql, "Started the gateway's own PostgreSQL.")
                }
                (true, false) => {
                    tracing::info!(%dir, port, %psql, "Reusing the gateway's own PostgreSQL, already running (it stays running when the gateway stops).")
                }
            }
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

/// Stops the own cluster if this process started it, and says so; says so too when it stays
/// running because it was running before (e.g. after the gateway was killed with kill -9).
fn release(own: Option<LocalCluster>, settings: &Settings) -> anyhow::Result<()> {
    match own {
        Some(cluster) => {
            cluster.stop()?;
            tracing::info!(dir = %cluster.dir().display(), "Stopped the gateway's own PostgreSQL.");
        }
        None if settings.database.url.is_none() => tracing::info!(
            dir = %settings.database.dir.display(),
            "Left the gateway's own PostgreSQL running: it was running before this gateway started (stop it with pg_ctl -D <dir> stop)."
        ),
        None => {}
    }
    Ok(())
}

pub fn run_migrate(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let settings = args.load()?;
    crate::telemetry::init_logs(settings.application.log_format);
    runtime()?.block_on(async {
        let (pool, own) = connect(&settings).await?;
        migrate(&pool).await?;
        println!("migrations applied");
        pool.close().await;
        release(own, &settings)?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_serve(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let settings = args.load()?;
    crate::telemetry::init_logs(settings.application.log_format);
    runtime()?.block_on(async move {
        let (pool, own) = connect(&settings).await?;
        migrate(&pool).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let maintenance = tokio::spawn(maintain(
            pool.clone(),
            settings.database.retention_days,
            cancel.clone(),
        ));
        let sampler = (settings.metrics.sample_secs > 0).then(|| {
            let sampler = crate::telemetry::BacklogSampler::new(
                settings.connections.iter().map(|c| c.name.clone()),
            );
            tokio::spawn(sampler.run(
                pool.clone(),
                Duration::from_secs(settings.metrics.sample_secs),
                cancel.clone(),
            ))
        });
        let app = Application::build(settings.clone(), pool.clone())?;
        let dispatch = tokio::spawn(crate::delivery::worker::run(
            pool.clone(),
            std::sync::Arc::new(settings.clone()),
            crate::delivery::Clients::new(&settings.delivery)?,
            cancel.clone(),
        ));
        tracing::info!(
            address = %format!("http://{}:{}", settings.application.host, app.port()),
            mode = %settings.delivery.mode.as_str(),
            ui = %if settings.ui.token.is_some() { "/ui" } else { "off" },
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
        if let Some(sampler) = sampler {
            let _ = sampler.await;
        }
        pool.close().await;
        release(own, &settings)?;
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
