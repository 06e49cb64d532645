//! Every counter of the agent, in one home: the pipeline's per-type tallies ([`Stats`], its
//! `{"type":"stats"}` [`Snapshot`] and stderr line), the stage counters ([`Counters`]: one
//! snapshot that feeds the heartbeat's [`HeartbeatStats`], the `status` answer and the Prometheus
//! text), what the loop publishes across threads ([`Published`]), loop timings and the
//! attestor's tallies, and each output's ([`OutputCounts`], [`OutputStats`]). Every event the
//! kernel produced is in exactly one of, for each output: sent, or dropped at one stage.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Serialize;

use crate::sensor::decode::EVENT_TYPES;

/// The event types counted in `seen`, in output order: every kernel type, then `alert`.
pub const TYPES: [&str; EVENT_TYPES.len() + 1] = counted_types();

const fn counted_types() -> [&'static str; EVENT_TYPES.len() + 1] {
    let mut out = ["alert"; EVENT_TYPES.len() + 1];
    let mut i = 0;
    while i < EVENT_TYPES.len() {
        out[i] = EVENT_TYPES[i];
        i += 1;
    }
    out
}

/// The in-kernel exclusion kinds, in `filtered` order.
pub const FILTERS: usize = crate::sensor::exclude::KINDS;
use crate::sensor::exclude::KIND_NAMES as FILTER_NAMES;

/// The rules' tallies (src/rules/): rules in use, reloads that took and that were refused.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RuleCounts {
    pub loaded: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Events delivered to the sink, per `TYPES` index.
    pub seen: [u64; TYPES.len()],
    /// Failed reservations in the kernel, per kernel record type (`decode::TYPE_NAMES`).
    pub kernel_drops: [u64; crate::sensor::decode::LG_TYPE_MAX],
    /// Records the kernel kept out of the ring on purpose (`--exclude`, rule files'
    /// `exclude:`), per kind (`exclude::KIND_NAMES`): filtered, not dropped.
    pub kernel_filtered: [u64; FILTERS],
    /// Records lost in user space (undecodable records).
    pub user_drops: u64,
    /// `dns` events whose payload was not a well-formed query (delivered without a question).
    pub dns_malformed: u64,
    pub ring_size: u64,
    pub ring_fill: u64,
    pub ring_fill_max: u64,
    pub rules: RuleCounts,
}

/// The stats object as serialized (both in `{"type":"stats"}` events and in the stderr line).
#[derive(Serialize, Debug)]
pub struct Snapshot {
    pub seen: serde_json::Map<String, serde_json::Value>,
    pub seen_total: u64,
    pub dropped_kernel: u64,
    pub dropped_kernel_by_type: serde_json::Map<String, serde_json::Value>,
    pub dropped_user: u64,
    /// Events excluded in the kernel on purpose (not drops): total and per kind.
    pub filtered_kernel: u64,
    pub filtered_kernel_by_filter: serde_json::Map<String, serde_json::Value>,
    pub dns_malformed: u64,
    pub ring_buffer: Ring,
    pub rules: RuleCounts,
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
            filtered_kernel: self.kernel_filtered.iter().sum(),
            filtered_kernel_by_filter: FILTER_NAMES
                .iter()
                .zip(self.kernel_filtered)
                .map(|(t, n)| (t.to_string(), n.into()))
                .collect(),
            dns_malformed: self.dns_malformed,
            ring_buffer: Ring {
                size_bytes: self.ring_size,
                fill_bytes: self.ring_fill,
                max_fill_bytes: self.ring_fill_max,
            },
            rules: self.rules,
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
            "stats: seen {} [{}] dropped_kernel={} dropped_user={} filtered_kernel={} ring_fill={}/{} (max {})",
            self.seen.iter().sum::<u64>(),
            seen.join(" "),
            self.kernel_drops_total(),
            self.user_drops,
            self.kernel_filtered.iter().sum::<u64>(),
            self.ring_fill,
            self.ring_size,
            self.ring_fill_max
        )
    }
}

/// Every event the kernel produced is in exactly one of: sent, or dropped at one stage. The
/// top-level `sent`, `queue`/`upload` drops and `queued` are the primary output's (the backend
/// when it is among the outputs, else the first one named); `outputs` has every output's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events read from the ring buffer.
    pub events_observed: u64,
    /// Events delivered by the primary output (accepted by the backend, written to stdout...).
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
    /// Records excluded in the kernel on purpose (`--exclude`), per kind: not drops.
    pub filtered_kernel: [u64; FILTERS],
    /// Events waiting in the upload queue now.
    pub queued: u64,
    /// Event batches accepted by the backend.
    pub batches_accepted: u64,
    /// Upload attempts that failed and were retried.
    pub upload_failures: u64,
    /// The longest pass of the poll loop body.
    pub loop_body_max: Duration,
    /// How well each event type is watched (fixed when the sensor started).
    pub event_types: crate::sensor::EventTypes,
    /// Every output's counters, in `--output` order.
    pub outputs: Vec<OutputStats>,
}

impl Counters {
    /// The loop's stage counters with `primary`'s delivery counters; `outputs` for the
    /// per-output view.
    pub fn new(
        published: &Published,
        primary: &OutputStats,
        outputs: Vec<OutputStats>,
    ) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        Counters {
            events_observed: published.observed.load(Relaxed),
            events_sent: primary.events_sent,
            dropped_kernel: published.dropped_kernel.load(Relaxed),
            dropped_decode: published.dropped_decode.load(Relaxed),
            dropped_queue: primary.dropped_queue,
            dropped_upload: primary.dropped_output,
            kubelet_misses: published.kubelet_misses.load(Relaxed),
            filtered_kernel: std::array::from_fn(|i| published.filtered_kernel[i].load(Relaxed)),
            queued: primary.queued,
            batches_accepted: primary.batches,
            upload_failures: primary.failures,
            loop_body_max: Duration::ZERO,
            event_types: published.event_types.get().copied().unwrap_or_default(),
            outputs,
        }
    }

    /// Each output's counters as `status` and the final counters line show them: `{"file":
    /// {"eventsSent", "eventsDropped": {"decode", "queue", "output"}, "queued", "batches",
    /// "failures"}}`. For each output, `eventsObserved` = sent + every drop once delivered.
    pub fn outputs_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for o in &self.outputs {
            m.insert(
                o.name.to_string(),
                serde_json::json!({
                    "eventsSent": o.events_sent,
                    "eventsDropped": {
                        "decode": self.dropped_decode,
                        "queue": o.dropped_queue,
                        "output": o.dropped_output,
                    },
                    "queued": o.queued,
                    "batches": o.batches,
                    "failures": o.failures,
                }),
            );
        }
        serde_json::Value::Object(m)
    }

    /// The heartbeat's `stats` object, exactly as the backend contract names it (decode drops
    /// count on the queue side). The `status` answer carries the same object.
    pub fn heartbeat_stats(&self) -> HeartbeatStats {
        HeartbeatStats {
            events_observed: self.events_observed,
            events_sent: self.events_sent,
            events_dropped: Dropped {
                kernel: self.dropped_kernel,
                queue: self.dropped_queue + self.dropped_decode,
                upload: self.dropped_upload,
            },
            kubelet_misses: self.kubelet_misses,
            event_types: self.event_types,
        }
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
            "Events delivered by the primary output (the backend when it is one of the outputs).",
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
        let filtered: Vec<(String, u64)> = FILTER_NAMES
            .iter()
            .zip(self.filtered_kernel)
            .map(|(f, n)| (format!("{{filter=\"{f}\"}}"), n))
            .collect();
        let filtered: Vec<(&str, u64)> = filtered.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "events_filtered_total",
            "counter",
            "Events excluded in the kernel on purpose (--exclude, rule files' exclude:), by kind: not drops.",
            &filtered,
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
            "Events waiting in the primary output's queue.",
            &[("", self.queued)],
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            &[("", uptime_seconds)],
        );
        metric(
            "upload_batches_total",
            "counter",
            "Event batches accepted by the backend.",
            &[("", self.batches_accepted)],
        );
        metric(
            "upload_failures_total",
            "counter",
            "Upload attempts that failed and were retried.",
            &[("", self.upload_failures)],
        );
        let states = [
            crate::sensor::HookState::Active,
            crate::sensor::HookState::Reduced,
            crate::sensor::HookState::Absent,
        ];
        let labels: Vec<(String, u64)> = self
            .event_types
            .iter()
            .flat_map(|(t, now)| {
                states.iter().map(move |s| {
                    (
                        format!("{{type=\"{t}\",state=\"{}\"}}", s.as_str()),
                        u64::from(*s == now),
                    )
                })
            })
            .collect();
        let samples: Vec<(&str, u64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "event_type_state",
            "gauge",
            "How each event type is watched on this kernel: 1 for its state (active: fully; \
             reduced: with a documented loss; absent: not at all).",
            &samples,
        );
        let per = |f: fn(&OutputStats) -> u64| -> Vec<(String, u64)> {
            self.outputs
                .iter()
                .map(|o| (format!("{{output=\"{}\"}}", o.name), f(o)))
                .collect()
        };
        let mut labelled = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let refs: Vec<(&str, u64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            metric(name, kind, help, &refs);
        };
        labelled(
            "output_events_sent_total",
            "counter",
            "Events each output delivered.",
            per(|o| o.events_sent),
        );
        let mut dropped = Vec::new();
        for o in &self.outputs {
            dropped.push((
                format!("{{output=\"{}\",stage=\"queue\"}}", o.name),
                o.dropped_queue,
            ));
            dropped.push((
                format!("{{output=\"{}\",stage=\"output\"}}", o.name),
                o.dropped_output,
            ));
        }
        labelled(
            "output_events_dropped_total",
            "counter",
            "Events each output dropped: oldest first from its full queue, or refused or lost by the output.",
            dropped,
        );
        labelled(
            "output_queue_events",
            "gauge",
            "Events waiting in each output's queue.",
            per(|o| o.queued),
        );
        labelled(
            "output_failures_total",
            "counter",
            "Delivery attempts of each output that failed and were retried.",
            per(|o| o.failures),
        );
        s.push_str(&format!(
            "# HELP linuxguard_loop_body_max_seconds Longest pass of the poll loop body.\n\
             # TYPE linuxguard_loop_body_max_seconds gauge\n\
             linuxguard_loop_body_max_seconds {:.6}\n",
            self.loop_body_max.as_secs_f64()
        ));
        s
    }
}

/// The heartbeat's `stats` object (backend contract: `eventsObserved`, `eventsSent`,
/// `eventsDropped {kernel, queue, upload}`, `kubeletMisses`), plus `eventTypes`
/// (`{"exec": "active", "exit": "reduced", ...}`): which event types this kernel lets the agent
/// watch, so a fleet view shows what each node cannot see.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatStats {
    pub events_observed: u64,
    pub events_sent: u64,
    pub events_dropped: Dropped,
    pub kubelet_misses: u64,
    #[serde(skip_serializing_if = "crate::sensor::EventTypes::is_empty")]
    pub event_types: crate::sensor::EventTypes,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Dropped {
    pub kernel: u64,
    pub queue: u64,
    pub upload: u64,
}

/// Stage counters the poll loop publishes for the uplink thread (which reads them for
/// heartbeats), as atomics: written by one thread, read by another.
#[derive(Debug, Default)]
pub struct Published {
    pub observed: AtomicU64,
    pub dropped_kernel: AtomicU64,
    pub dropped_decode: AtomicU64,
    pub kubelet_misses: AtomicU64,
    pub filtered_kernel: [AtomicU64; FILTERS],
    /// Events written to stdout, and events stdout could not take (closed, or a failed write).
    pub stdout_sent: AtomicU64,
    /// How well each event type is watched: set once, when the sensor has started.
    pub event_types: std::sync::OnceLock<crate::sensor::EventTypes>,
    pub stdout_lost: AtomicU64,
}

impl Published {
    /// Stdout's counters as an output's (it is written on the loop thread: no queue).
    pub fn stdout_stats(&self) -> OutputStats {
        use std::sync::atomic::Ordering::Relaxed;
        OutputStats {
            name: "stdout",
            events_sent: self.stdout_sent.load(Relaxed),
            dropped_output: self.stdout_lost.load(Relaxed),
            ..OutputStats::default()
        }
    }
}

/// One output's tallies, written by its thread (and the loop: `offered`), read by everyone.
#[derive(Debug, Default)]
pub struct OutputCounts {
    /// Events the loop handed to the output (pushed into its queue).
    pub offered: AtomicU64,
    /// Events delivered (accepted by the receiver, written to the file or socket).
    pub sent: AtomicU64,
    /// Events refused by the receiver for good, or lost by the output.
    pub dropped: AtomicU64,
    /// Batches delivered, and delivery attempts that failed and were retried.
    pub batches: AtomicU64,
    pub failures: AtomicU64,
}

/// A snapshot of one output's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub name: &'static str,
    pub events_sent: u64,
    /// Dropped oldest-first from the output's full queue (or larger than a batch).
    pub dropped_queue: u64,
    /// Refused by the receiver, or lost by the output (a closed stdout).
    pub dropped_output: u64,
    pub queued: u64,
    pub batches: u64,
    pub failures: u64,
}

/// How long the poll loop's body takes (wake-up to back in poll).
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopTimings {
    pub iterations: u64,
    pub max_body: Duration,
    pub total_body: Duration,
}

impl LoopTimings {
    pub fn record(&mut self, took: Duration) {
        self.iterations += 1;
        self.total_body += took;
        self.max_body = self.max_body.max(took);
    }

    pub fn mean_body(&self) -> Duration {
        if self.iterations == 0 {
            Duration::ZERO
        } else {
            self.total_body / u32::try_from(self.iterations).unwrap_or(u32::MAX)
        }
    }
}

/// The attestor's tallies.
#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestCounts {
    /// Events whose pod was not (yet) in the cached pod list: they went out without pod fields.
    pub kubelet_misses: u64,
    pub enriched: u64,
}

/// The socket server's tallies.
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketStats {
    pub accepted: u64,
    pub answered: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

/// The cgroup cache's tallies: how each answer was found.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub from_pid: u64,
    pub from_walk: u64,
    pub unresolved: u64,
    pub conflicts: u64,
}

/// The kubelet client's tallies (shared with its refresher thread), read by `status`.
#[derive(Debug, Default)]
pub struct KubeletCounts {
    pub fetches: AtomicU64,
    pub fetch_errors: AtomicU64,
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
        let v = serde_json::to_value(c.heartbeat_stats()).expect("serialize");
        assert_eq!(v["eventsObserved"], 10);
        assert_eq!(v["eventsSent"], 7);
        assert_eq!(v["eventsDropped"]["kernel"], 1);
        assert_eq!(v["eventsDropped"]["queue"], 2);
        assert_eq!(v["eventsDropped"]["upload"], 0);
        assert_eq!(v["kubeletMisses"], 3);
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        use crate::sensor::{EventTypes, HookState, HookStatus};
        let hook = |event, state| HookStatus {
            event,
            state,
            attached: None,
            why: None,
        };
        let c = Counters {
            dropped_queue: 5,
            event_types: EventTypes::from_hooks(&[
                hook("exec", HookState::Active),
                hook("exit", HookState::Reduced),
            ]),
            ..Default::default()
        };
        let c = Counters {
            outputs: vec![OutputStats {
                name: "file",
                events_sent: 7,
                dropped_queue: 2,
                ..Default::default()
            }],
            ..c
        };
        let t = c.prometheus(12);
        assert!(t.contains("linuxguard_output_events_sent_total{output=\"file\"} 7\n"));
        assert!(t.contains(
            "linuxguard_output_events_dropped_total{output=\"file\",stage=\"queue\"} 2\n"
        ));
        assert!(t.contains("# TYPE linuxguard_events_filtered_total counter\n"));
        assert!(t.contains("linuxguard_events_filtered_total{filter=\"uid\"} 0\n"));
        assert!(t.contains("# TYPE linuxguard_events_dropped_total counter\n"));
        assert!(t.contains("linuxguard_events_dropped_total{stage=\"queue\"} 5\n"));
        assert!(t.contains("linuxguard_uptime_seconds 12\n"));
        assert!(t.contains("# TYPE linuxguard_event_type_state gauge\n"));
        assert!(t.contains("linuxguard_event_type_state{type=\"exec\",state=\"active\"} 1\n"));
        assert!(t.contains("linuxguard_event_type_state{type=\"exit\",state=\"active\"} 0\n"));
        assert!(t.contains("linuxguard_event_type_state{type=\"exit\",state=\"reduced\"} 1\n"));
        assert!(
            !t.contains("type=\"fork\""),
            "no state for a hook the sensor did not report"
        );
        let hb = serde_json::to_value(c.heartbeat_stats()).expect("serialize");
        assert_eq!(
            hb["eventTypes"],
            serde_json::json!({"exec": "active", "exit": "reduced"})
        );
        let none = serde_json::to_value(Counters::default().heartbeat_stats()).expect("serialize");
        assert!(none.get("eventTypes").is_none(), "{none}");
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "sample line {line:?}");
        }
    }
}
