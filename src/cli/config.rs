//! `gateway config`: the effective configuration, secrets redacted, each value with where it came
//! from (`default`, a file, or a variable).

use crate::configuration::{Layered, Settings};
use clap::Args;
use serde_json::{json, Map, Value};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ConfigCmdArgs {
    #[command(flatten)]
    pub config: super::serve::ConfigArgs,
    /// JSON: {"key": {"value": ..., "source": ...}}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ConfigCmdArgs) -> anyhow::Result<ExitCode> {
    let sources = args.config.sources();
    let (settings, layered) = Settings::load_layered(&sources)?;
    let lines = effective(&settings, &layered);
    if args.json {
        let mut m = Map::new();
        for (k, v, source) in lines {
            m.insert(k, json!({"value": v, "source": source}));
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(m))?);
    } else {
        println!(
            "# environment {:?}, configuration {}; secrets redacted",
            sources.environment,
            sources.config.as_ref().map_or_else(
                || "built-in defaults only".into(),
                |p| p.display().to_string()
            )
        );
        print!("{}", render(&lines));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every leaf of the effective configuration as (dotted key, value, source), in file order.
pub fn effective(settings: &Settings, layered: &Layered) -> Vec<(String, Value, String)> {
    let tree = serde_json::to_value(settings).expect("the settings serialize");
    let mut out = Vec::new();
    leaves(&tree, "", layered, &mut out);
    out
}

fn leaves(v: &Value, path: &str, layered: &Layered, out: &mut Vec<(String, Value, String)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                leaves(v, &join(k), layered, out)
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, &join(&i.to_string()), layered, out)
            }
        }
        Value::Null => {}
        other => {
            // A key no source wrote (a connection's serde default) is a default.
            let source = if layered.origins.contains_key(path) || layered.tree_value(path).is_some()
            {
                layered.origin(path).to_string()
            } else {
                "default".to_string()
            };
            out.push((path.to_string(), other.clone(), source))
        }
    }
}

pub fn render(lines: &[(String, Value, String)]) -> String {
    let width = lines
        .iter()
        .map(|(k, v, _)| k.len() + v.to_string().len() + 3)
        .max()
        .unwrap_or(0)
        .min(70);
    lines
        .iter()
        .map(|(k, v, source)| {
            let kv = format!("{k} = {v}");
            format!("{kv:<width$}  # {source}\n")
        })
        .collect()
}
