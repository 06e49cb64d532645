//! Fuzz target: `/proc/<pid>/mountinfo` parsing never panics, and any answer is well formed.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/attest/cgroup.rs"]
mod cgroup;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = cgroup::parse_mountinfo(&text) {
        if let Some(id) = &p.container_id {
            assert!(cgroup::is_container_id(id));
        }
    }
});
