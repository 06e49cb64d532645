//! `status`: asks the running agent over its Unix socket for health and counters; exit 0 when
//! healthy, non-zero with a clear message otherwise (usable as a Kubernetes exec probe).

use std::time::Duration;

use serde_json::Value;

use crate::cli::{Args, printable, printable_json};
use crate::config::{Config, Key};
use crate::error::{Error, Result};
use crate::serve::socket;

pub fn run(cfg: Config, args: &Args) -> Result<()> {
    let path = cfg
        .path(Key::Socket)
        .expect("invariant: --socket has a default");
    // One deadline for the whole answer (the client's), after a trusted server accepted us.
    let v = socket::request(
        &path,
        socket::Request::Status,
        Duration::from_secs(5),
        agent_uid(&cfg),
    )?;
    // The answer is text from another process: nothing in it may act on the terminal.
    if args.json {
        println!("{}", printable_json(&v.to_string()));
    } else {
        print!("{}", printable(&human(&v)));
    }
    if v.get("healthy") == Some(&Value::Bool(true)) {
        Ok(())
    } else {
        let why = v
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("the agent reports it is not healthy");
        Err(Error::runtime(format!("unhealthy: {why}")))
    }
}

/// `--agent-uid`: a server uid the clients believe besides root and their own.
pub fn agent_uid(cfg: &Config) -> Option<u32> {
    cfg.get(Key::AgentUid).and_then(|v| v.parse().ok())
}

/// `key: value` lines, nested objects flattened with dots.
fn human(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            other => out.push_str(&format!("{prefix}: {other}\n")),
        }
    }
    let mut s = String::new();
    walk("", v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_flattens() {
        let v = serde_json::json!({"healthy": true, "attestor": {"kubeletMisses": 3}});
        let h = human(&v);
        assert!(
            h.contains("healthy: true\n") && h.contains("attestor.kubeletMisses: 3\n"),
            "{h}"
        );
    }
}
