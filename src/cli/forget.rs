//! `gateway forget` and `gateway unforget`: an operator's user deletion (issue 11 part 1).
//!
//! Both write their request into the outbox (`privacy::request`), as a Segment `delete`
//! message would arrive, so the running gateway's dispatcher sends it to Iterable, audited and
//! retried; the database suppresses the user and, once Iterable answered, redacts the audit
//! log. The command prints the deletion (`audit_deletions`) as one JSON line, after waiting up
//! to `--wait` seconds for Iterable's answer.

use super::serve::{connect, ConfigArgs};
use crate::database::migrate;
use crate::mapping::Deletion;
use crate::privacy::{self, Identity};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct WhoArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The connection (Segment source ⇄ Iterable project) the user belongs to.
    #[arg(long)]
    pub connection: String,
    /// The user's Segment userId.
    #[arg(long, required_unless_present = "email")]
    pub user_id: Option<String>,
    /// The user's email.
    #[arg(long)]
    pub email: Option<String>,
    /// Seconds to wait for Iterable's answer (the gateway's dispatcher must be running).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub who: WhoArgs,
    /// Iterable's delete or its GDPR forget; default: the connection's `deletion` setting.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    Delete,
    Forget,
}

pub fn run_forget(args: ForgetArgs) -> anyhow::Result<ExitCode> {
    let mode = args.mode.map(|m| match m {
        Mode::Delete => Deletion::Delete,
        Mode::Forget => Deletion::Forget,
    });
    run(args.who, move |pool, connection, who| async move {
        let id = privacy::request(&pool, &connection, &who, mode).await?;
        Ok(Some(id))
    })
}

pub fn run_unforget(args: WhoArgs) -> anyhow::Result<ExitCode> {
    run(args, |pool, connection, who| async move {
        let lifted = privacy::lift(&pool, &connection, &who).await?;
        let message = match (lifted.deletions.is_empty(), lifted.was_forget) {
            (true, _) => "no suppression of this user on this connection: nothing lifted",
            (false, false) => "suppression lifted: later events of this user are delivered again",
            (false, true) => "suppression lifted; Iterable is asked to unforget the user",
        };
        eprintln!("gateway unforget: {message}");
        println!(
            "{}",
            json!({"connection": connection, "lifted_deletions": lifted.deletions})
        );
        if !lifted.was_forget {
            return Ok(None);
        }
        let id = privacy::request(&pool, &connection, &who, Some(Deletion::Unforget)).await?;
        Ok(Some(id))
    })
}

/// Loads the settings, checks the connection, connects, runs `body`, and prints (after
/// waiting for its answer) the deletion it queued.
fn run<F, Fut>(args: WhoArgs, body: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(sqlx::PgPool, String, Identity) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<i64>>>,
{
    let settings = args.config.load()?;
    if settings.connection(&args.connection).is_none() {
        let known: Vec<&str> = settings
            .connections
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        anyhow::bail!(
            "no connection {:?} in the configuration (known: {})",
            args.connection,
            known.join(", ")
        );
    }
    let who = Identity {
        user_id: args.user_id.filter(|s| !s.is_empty()),
        email: args.email.filter(|s| !s.is_empty()),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let (pool, own) = connect(&settings).await?;
            migrate(&pool).await?;
            let queued = body(pool.clone(), args.connection, who).await?;
            if let Some(id) = queued {
                let deadline = Instant::now() + Duration::from_secs(args.wait);
                let mut row = privacy::status(&pool, id).await?;
                while row.as_ref().is_some_and(|r| r["completed_at"].is_null())
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    row = privacy::status(&pool, id).await?;
                }
                if row.as_ref().is_some_and(|r| r["completed_at"].is_null()) {
                    eprintln!(
                        "gateway: deletion {id} is queued; Iterable has not answered yet (is `gateway serve` running?). SELECT * FROM audit_deletions WHERE id = {id} shows it."
                    );
                }
                println!("{}", row.unwrap_or_default());
            }
            pool.close().await;
            if let Some(cluster) = own {
                cluster.stop()?;
            }
            Ok(ExitCode::SUCCESS)
        })
}
