//! Fuzz target: `/proc/<pid>/cgroup` parsing never panics, and any answer is well formed.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/attest/cgroup.rs"]
mod cgroup;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = cgroup::parse_cgroup(&text) {
        if let Some(id) = &p.container_id {
            assert!(cgroup::is_container_id(id));
        }
        if let Some(uid) = &p.pod_uid {
            assert_eq!(cgroup::pod_uid(uid).as_deref(), Some(uid.as_str()));
        }
    }
});
