//! `gateway check` and `gateway ensure-list`: destination-level calls to Iterable.

use super::read_json_file;
use crate::iterable::api::{DataCenter, Hosts};
use crate::iterable::client::IterableClient;
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where to find the connections and Iterable.
#[derive(Debug, Args)]
pub struct IterableTarget {
    /// A JSON file: one connection's settings ({"name", "apiKey", "dataCenterLocation"}) or an
    /// array of them.
    #[arg(long)]
    pub settings: PathBuf,
    /// Base URL for US projects.
    #[arg(long, default_value = "https://api.iterable.com")]
    pub us_host: String,
    /// Base URL for EU projects.
    #[arg(long, default_value = "https://api.eu.iterable.com")]
    pub eu_host: String,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: IterableTarget,
}

#[derive(Debug, Args)]
pub struct EnsureListArgs {
    #[command(flatten)]
    pub target: IterableTarget,
    /// The audience key (`context.personas.computation_key`); the list is named after it.
    #[arg(long)]
    pub audience_key: String,
}

struct Connection {
    name: String,
    api_key: String,
    data_center: DataCenter,
}

fn connections(target: &IterableTarget) -> anyhow::Result<(IterableClient, Vec<Connection>)> {
    let json = read_json_file(&target.settings)?;
    let items = match json {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("connection {i}"), str::to_string);
        let api_key = item
            .get("apiKey")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| anyhow::anyhow!("{name}: \"apiKey\" is missing"))?
            .to_string();
        let data_center =
            DataCenter::from_setting(item.get("dataCenterLocation").and_then(Value::as_str));
        out.push(Connection {
            name,
            api_key,
            data_center,
        });
    }
    let hosts = Hosts {
        us: target.us_host.trim_end_matches('/').to_string(),
        eu: target.eu_host.trim_end_matches('/').to_string(),
    };
    let client = IterableClient::new(hosts, Duration::from_secs(target.timeout_secs))?;
    Ok((client, out))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Prints `ok` or the failure per connection; exits 1 when any key is refused.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (client, conns) = connections(&args.target)?;
    let failures = runtime()?.block_on(async {
        let mut failures = 0;
        for c in &conns {
            match client.check_key(&c.api_key, c.data_center).await {
                Ok(()) => println!("ok      {} ({:?})", c.name, c.data_center),
                Err(e) => {
                    failures += 1;
                    println!("FAILED  {}: {e}", c.name);
                }
            }
        }
        failures
    });
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the list id for the audience key of each connection.
pub fn run_ensure_list(args: EnsureListArgs) -> anyhow::Result<ExitCode> {
    let (client, conns) = connections(&args.target)?;
    runtime()?.block_on(async {
        for c in &conns {
            let id = client
                .find_or_create_list(&c.api_key, c.data_center, &args.audience_key)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;
            println!("{}\t{}", c.name, id);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
