//! Fuzz target: the kubelet's pod list parser and container lookup never panic.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/attest/pods.rs"]
mod pods;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(list) = pods::parse(data) {
        for p in &list.items {
            let _ = list.by_uid(&p.metadata.uid);
            for s in &p.status.container_statuses {
                if let Some((_, id)) = s.split_id() {
                    assert!(p.container(id).is_some());
                }
            }
            let _ = p.owner();
        }
    }
});
