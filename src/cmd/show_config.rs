//! `show-config`: every setting with its value and source, and the derived workload identity.

use serde_json::{Map, Value, json};

use crate::cli::Args;
use crate::config::{Config, Key};
use crate::error::Result;
use crate::identity::workload;

pub fn run(cfg: &Config, args: &Args) -> Result<()> {
    let rows = cfg.describe();
    // The identity is derived last, so a missing input fails exactly as `start` will.
    let id = workload::derive(
        cfg.get(Key::WorkloadId),
        cfg.get(Key::NodeName),
        cfg.get(Key::PodUid),
        &cfg.var(Key::NodeName),
    )?;
    // Where the node name came from: `--node-name` or the variable read (--node-name-env).
    let node_from = cfg.get(Key::NodeName).map(|_| cfg.origin_of(Key::NodeName));
    if args.json {
        let mut settings = Map::new();
        for (s, value, source, var) in &rows {
            settings.insert(
                s.flag.to_string(),
                json!({"value": value, "source": source.to_string(), "env": var}),
            );
        }
        let out = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "settings": Value::Object(settings),
            "workloadId": id.hex,
            "workloadIdDerivation": id.describe(),
            "nodeName": cfg.get(Key::NodeName),
            "nodeNameFrom": node_from,
            "podUid": cfg.get(Key::PodUid),
        });
        println!("{out}");
        return Ok(());
    }
    println!("{:<32} {:<48} SOURCE", "SETTING", "VALUE");
    for (s, value, source, var) in &rows {
        println!(
            "{:<32} {:<48} {source} ({var})",
            format!("--{}", s.flag),
            value
        );
    }
    println!();
    println!("workload id: {} ({})", id.hex, id.describe());
    match (cfg.get(Key::NodeName), node_from) {
        (Some(node), Some(from)) => println!("node name:   {node} (from {from})"),
        _ => println!(
            "node name:   <unset> (read from {})",
            cfg.var(Key::NodeName)
        ),
    }
    println!("pod uid:     {}", cfg.get(Key::PodUid).unwrap_or("<unset>"));
    Ok(())
}
