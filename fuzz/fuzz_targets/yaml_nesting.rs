//! Fuzz target: the check-manifest parse path. Measuring the event stream never panics; a text
//! within the limits loads and drops without overflowing the stack (libFuzzer reports a stack
//! overflow as a crash), and what it loads is no deeper and no larger than was measured.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/cmd/yaml_limits.rs"]
mod yaml_limits;

use yaml_rust2::{Yaml, YamlLoader};

/// Nodes on the deepest path, and all nodes (aliases are clones once loaded).
fn shape(y: &Yaml) -> (u64, u64) {
    match y {
        Yaml::Array(v) => v.iter().map(shape).fold((1, 1), |(d, n), (cd, cn)| {
            (d.max(cd + 1), n + cn)
        }),
        Yaml::Hash(h) => h.iter().fold((1, 1), |(d, n), (k, v)| {
            let (kd, kn) = shape(k);
            let (vd, vn) = shape(v);
            (d.max(kd + 1).max(vd + 1), n + kn + vn)
        }),
        _ => (1, 1),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let measured = yaml_limits::measure(text);
    if measured.over().is_some() {
        return;
    }
    let Ok(docs) = YamlLoader::load_from_str(text) else {
        return;
    };
    assert!(docs.len() as u64 <= measured.documents.max(1), "{measured:?}");
    for d in &docs {
        let (depth, nodes) = shape(d);
        assert!(depth <= measured.depth.max(1), "depth {depth} > {measured:?}");
        assert!(nodes <= measured.nodes.max(1), "nodes {nodes} > {measured:?}");
    }
});
