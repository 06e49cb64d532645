//! Stage counters of the whole pipeline (kernel → decode → enrich → queue → upload), in one
//! snapshot shared by heartbeats, the `status` answer and the Prometheus endpoint.

use serde_json::{Value, json};

/// Every event the kernel produced is in exactly one of: sent, or dropped at one stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events read from the ring buffer.
    pub events_observed: u64,
    /// Events accepted by the backend (or written to stdout).
    pub events_sent: u64,
    /// Failed ring-buffer reservations in the kernel (per-CPU counter, summed).
    pub dropped_kernel: u64,
    /// Events dropped in user space before the queue (undecodable records).
    pub dropped_decode: u64,
    /// Events dropped because the upload queue was full (oldest first).
    pub dropped_queue: u64,
    /// Events given up on by the uploader (a single event larger than a batch).
    pub dropped_upload: u64,
    /// Events that left without pod fields because the kubelet could not answer in time.
    pub kubelet_misses: u64,
    /// Events waiting in the upload queue now.
    pub queued: u64,
}

impl Counters {
    /// The heartbeat's `stats` object, exactly as the backend contract names it.
    pub fn heartbeat_stats(&self) -> Value {
        json!({
            "eventsObserved": self.events_observed,
            "eventsSent": self.events_sent,
            "eventsDropped": {
                "kernel": self.dropped_kernel,
                "queue": self.dropped_queue + self.dropped_decode,
                "upload": self.dropped_upload,
            },
            "kubeletMisses": self.kubelet_misses,
        })
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self, uptime_seconds: u64) -> String {
        let mut s = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            s.push_str(&format!(
                "# HELP linuxguard_{name} {help}\n# TYPE linuxguard_{name} {kind}\n"
            ));
            for (labels, v) in samples {
                s.push_str(&format!("linuxguard_{name}{labels} {v}\n"));
            }
        };
        metric(
            "events_observed_total",
            "counter",
            "Events read from the kernel ring buffer.",
            &[("", self.events_observed)],
        );
        metric(
            "events_sent_total",
            "counter",
            "Events delivered to the backend or stdout.",
            &[("", self.events_sent)],
        );
        metric(
            "events_dropped_total",
            "counter",
            "Events dropped, by the stage that dropped them.",
            &[
                ("{stage=\"kernel\"}", self.dropped_kernel),
                ("{stage=\"decode\"}", self.dropped_decode),
                ("{stage=\"queue\"}", self.dropped_queue),
                ("{stage=\"upload\"}", self.dropped_upload),
            ],
        );
        metric(
            "kubelet_misses_total",
            "counter",
            "Events sent without pod fields because the kubelet did not answer.",
            &[("", self.kubelet_misses)],
        );
        metric(
            "queue_events",
            "gauge",
            "Events waiting in the upload queue.",
            &[("", self.queued)],
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            &[("", uptime_seconds)],
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_stats_use_contract_names() {
        let c = Counters {
            events_observed: 10,
            events_sent: 7,
            dropped_kernel: 1,
            dropped_queue: 2,
            kubelet_misses: 3,
            ..Default::default()
        };
        let v = c.heartbeat_stats();
        assert_eq!(v["eventsObserved"], 10);
        assert_eq!(v["eventsSent"], 7);
        assert_eq!(v["eventsDropped"]["kernel"], 1);
        assert_eq!(v["eventsDropped"]["queue"], 2);
        assert_eq!(v["eventsDropped"]["upload"], 0);
        assert_eq!(v["kubeletMisses"], 3);
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let c = Counters {
            dropped_queue: 5,
            ..Default::default()
        };
        let t = c.prometheus(12);
        assert!(t.contains("# TYPE linuxguard_events_dropped_total counter\n"));
        assert!(t.contains("linuxguard_events_dropped_total{stage=\"queue\"} 5\n"));
        assert!(t.contains("linuxguard_uptime_seconds 12\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "sample line {line:?}");
        }
    }
}
