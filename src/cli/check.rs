//! `gateway check` and `gateway ensure-list`: destination-level calls to Iterable.

use super::read_json_file;
use crate::configuration::{secret, Settings};
use crate::iterable::api::{DataCenter, Hosts};
use crate::iterable::client::IterableClient;
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where to find the connections and Iterable: the gateway's configuration (every connection
/// with an Iterable key, or `--connection NAME`), or a JSON file of settings.
#[derive(Debug, Args)]
pub struct IterableTarget {
    #[command(flatten)]
    pub config: super::serve::ConfigArgs,
    /// Only this configured connection.
    #[arg(long, conflicts_with = "settings")]
    pub connection: Option<String>,
    /// Instead of the configuration, a JSON file: one connection's settings ({"name", "apiKey",
    /// "dataCenterLocation"}) or an array of them.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Base URL for US projects (default: iterable.us_url of the configuration).
    #[arg(long)]
    pub us_host: Option<String>,
    /// Base URL for EU projects (default: iterable.eu_url of the configuration).
    #[arg(long)]
    pub eu_host: Option<String>,
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
    let (out, configured) = match &target.settings {
        Some(file) => (from_json_file(file)?, None),
        None => {
            let settings = target.config.load()?;
            (
                from_configuration(&settings, target.connection.as_deref())?,
                Some(settings),
            )
        }
    };
    let base = |given: &Option<String>, configured: Option<&String>, default: &str| {
        given
            .as_deref()
            .or(configured.map(String::as_str))
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    };
    let hosts = Hosts {
        us: base(
            &target.us_host,
            configured.as_ref().map(|s| &s.iterable.us_url),
            "https://api.iterable.com",
        ),
        eu: base(
            &target.eu_host,
            configured.as_ref().map(|s| &s.iterable.eu_url),
            "https://api.eu.iterable.com",
        ),
    };
    let client = IterableClient::new(hosts, Duration::from_secs(target.timeout_secs))?;
    Ok((client, out))
}

/// The configured connections with an Iterable key (or the one named, which must have one).
fn from_configuration(settings: &Settings, only: Option<&str>) -> anyhow::Result<Vec<Connection>> {
    if let Some(name) = only {
        if settings.connection(name).is_none() {
            let names: Vec<&str> = settings
                .connections
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            anyhow::bail!(
                "no connection {name:?} in the configuration (connections: {})",
                names.join(", ")
            );
        }
    }
    let mut out = Vec::new();
    for c in &settings.connections {
        if only.is_some_and(|n| n != c.name) {
            continue;
        }
        match secret(&c.iterable_api_key) {
            Some(key) => out.push(Connection {
                name: c.name.clone(),
                api_key: key.to_string(),
                data_center: c.data_center,
            }),
            None if only.is_some() => anyhow::bail!(
                "connection {:?} has no iterable_api_key (set it, or iterable_api_key_env)",
                c.name
            ),
            None => {}
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "no configured connection has an iterable_api_key (set one, or pass --settings FILE)"
        );
    }
    Ok(out)
}

fn from_json_file(file: &PathBuf) -> anyhow::Result<Vec<Connection>> {
    let json = read_json_file(file)?;
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
    Ok(out)
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
                Ok(()) => println!("ok      {} ({})", c.name, c.data_center.as_str()),
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
