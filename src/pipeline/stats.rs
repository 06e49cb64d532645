//! Counters: events seen per type, kernel-side drops (failed ring-buffer reservations, from the
//! per-CPU map), user-space drops, ring-buffer fill; printed on stderr or as a stats event.

use serde::Serialize;

/// The `"type"` names that are counted, in output order.
pub const TYPES: [&str; 10] = [
    "exec", "exit", "fork", "connect", "accept", "setuid", "capset", "ptrace", "bpf_load", "memfd",
];

#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Events delivered to the sink, per `TYPES` index.
    pub seen: [u64; TYPES.len()],
    /// Failed reservations in the kernel, per kernel record type (`decode::TYPE_NAMES`).
    pub kernel_drops: [u64; crate::sensor::decode::LG_TYPE_MAX],
    /// Records lost in user space (undecodable records).
    pub user_drops: u64,
    pub ring_size: u64,
    pub ring_fill: u64,
    pub ring_fill_max: u64,
}

/// The stats object as serialized (both in `{"type":"stats"}` events and in the stderr line).
#[derive(Serialize, Debug)]
pub struct Snapshot {
    pub seen: serde_json::Map<String, serde_json::Value>,
    pub seen_total: u64,
    pub dropped_kernel: u64,
    pub dropped_kernel_by_type: serde_json::Map<String, serde_json::Value>,
    pub dropped_user: u64,
    pub ring_buffer: Ring,
}

#[derive(Serialize, Debug)]
pub struct Ring {
    pub size_bytes: u64,
    pub fill_bytes: u64,
    pub max_fill_bytes: u64,
}

impl Stats {
    pub fn count(&mut self, type_name: &str) {
        if let Some(i) = TYPES.iter().position(|t| *t == type_name) {
            self.seen[i] += 1;
        }
    }

    pub fn observe_fill(&mut self, fill: u64) {
        self.ring_fill = fill;
        self.ring_fill_max = self.ring_fill_max.max(fill);
    }

    pub fn kernel_drops_total(&self) -> u64 {
        self.kernel_drops.iter().sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let seen = TYPES
            .iter()
            .zip(self.seen)
            .map(|(t, n)| (t.to_string(), n.into()))
            .collect();
        let dropped_kernel_by_type = crate::sensor::decode::TYPE_NAMES
            .iter()
            .zip(self.kernel_drops)
            .skip(1)
            .map(|(t, n)| (t.to_string(), n.into()))
            .collect();
        Snapshot {
            seen,
            seen_total: self.seen.iter().sum(),
            dropped_kernel: self.kernel_drops_total(),
            dropped_kernel_by_type,
            dropped_user: self.user_drops,
            ring_buffer: Ring {
                size_bytes: self.ring_size,
                fill_bytes: self.ring_fill,
                max_fill_bytes: self.ring_fill_max,
            },
        }
    }

    /// One human-readable line for stderr.
    pub fn line(&self) -> String {
        let seen: Vec<String> = TYPES
            .iter()
            .zip(self.seen)
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t}={n}"))
            .collect();
        format!(
            "stats: seen {} [{}] dropped_kernel={} dropped_user={} ring_fill={}/{} (max {})",
            self.seen.iter().sum::<u64>(),
            seen.join(" "),
            self.kernel_drops_total(),
            self.user_drops,
            self.ring_fill,
            self.ring_size,
            self.ring_fill_max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshot() {
        let mut s = Stats::default();
        s.count("exec");
        s.count("exec");
        s.count("nonsense");
        s.kernel_drops[1] = 3;
        s.kernel_drops[4] = 2;
        s.observe_fill(10);
        s.observe_fill(5);
        let v = serde_json::to_value(s.snapshot()).expect("serialize");
        assert_eq!(v["seen"]["exec"], 2);
        assert_eq!(v["seen_total"], 2);
        assert_eq!(v["dropped_kernel"], 5);
        assert_eq!(v["dropped_kernel_by_type"]["connect"], 2);
        assert_eq!(v["ring_buffer"]["max_fill_bytes"], 10);
        assert!(s.line().contains("exec=2"));
    }
}
