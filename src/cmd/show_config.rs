//! `show-config`: every setting with its value and source, and the derived workload identity.

use serde_json::{Map, Value, json};

use crate::cli::{Args, printable, printable_json};
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
        println!("{}", printable_json(&out.to_string()));
        return Ok(());
    }
    println!("{:<32} {:<48} SOURCE", "SETTING", "VALUE");
    for (s, value, source, var) in &rows {
        // Values come from flags and the environment: nothing in them may act on the terminal.
        println!(
            "{:<32} {:<48} {source} ({var})",
            format!("--{}", s.flag),
            printable(value)
        );
    }
    println!();
    println!("workload id: {} ({})", id.hex, printable(&id.describe()));
    match (cfg.get(Key::NodeName), node_from) {
        (Some(node), Some(from)) => println!(
            "node name:   {} (from {})",
            printable(node),
            printable(&from.to_string())
        ),
        _ => println!(
            "node name:   <unset> (read from {})",
            printable(&cfg.var(Key::NodeName).to_string())
        ),
    }
    println!(
        "pod uid:     {}",
        printable(cfg.get(Key::PodUid).unwrap_or("<unset>"))
    );
    Ok(())
}
