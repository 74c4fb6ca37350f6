//! The `gateway` command line.

pub mod audit;
pub mod check;
pub mod config;
pub mod forget;
pub mod map;
pub mod replay;
pub mod serve;
pub mod table;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "Segment ⇄ Iterable gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP ingest, audit log, dispatchers (its own PostgreSQL without database.url).
    Serve(serve::ConfigArgs),
    /// Apply the database migrations and exit.
    Migrate(serve::ConfigArgs),
    /// Map events without sending them: JSON lines in, one JSON line out per line.
    Map(map::MapArgs),
    /// Verify each connection's Iterable API key (GET /api/webhooks).
    Check(check::CheckArgs),
    /// Find or create the Iterable list for an Engage audience key.
    EnsureList(check::EnsureListArgs),
    /// Answer from the audit log: an event, a user, failures, states, the backlog.
    Audit(audit::AuditArgs),
    /// Send chosen events again (same Iterable ids), audited as one replay.
    Replay(ReplayCmd),
    /// Print the effective configuration (secrets redacted) and where each value came from.
    Config(config::ConfigCmdArgs),
    /// Delete a user (GDPR/CCPA) at Iterable and from the audit log; suppress their later events.
    Forget(forget::ForgetArgs),
    /// Lift a user's suppression (and, after a GDPR forget, ask Iterable to unforget them).
    Unforget(forget::WhoArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReplayCmd {
    #[command(flatten)]
    pub args: replay::ReplayArgs,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Reads a JSON file given on the command line, saying which file is wrong.
pub(crate) fn read_json_file(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))
}
