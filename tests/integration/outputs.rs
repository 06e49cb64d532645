//! `start`'s outputs end to end (all `root_*`: the real agent with real BPF): the metrics
//! endpoint parsed by Prometheus's own parser and `/healthz` while enrolling; several outputs at
//! once without a backend; the rotating file under an exec storm; syslog into a real rsyslog on
//! loopback; OTLP/HTTP into a receiver that decodes with the official OpenTelemetry protos.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{self, Agent, TempDir, http_get, prometheus_parse, wait_for};
use crate::e2e::{exec_marked, free_port, serial};

/// One agent run's directory (socket, log, stdout).
struct Run {
    dir: TempDir,
}

impl Run {
    fn new(tag: &str) -> Run {
        Run {
            dir: TempDir::new(tag),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `start` with a socket in this run's directory and `args`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::agent();
        c.current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("LINUXGUARD_SOCKET", self.path("agent.sock"))
            .arg("start")
            .args(args);
        c
    }
    fn spawn(&self, mut c: Command) -> Agent {
        Agent::spawn(
            &mut c,
            self.path("agent.log"),
            Some(self.path("agent.out")),
            None,
        )
    }
}

/// The value of the one sample `name{labels}` in parsed families.
fn sample(fams: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = fams[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {fams}"));
    samples
        .iter()
        .find(|s| {
            s[0] == name
                && labels.len() == s[1].as_object().map_or(0, |o| o.len())
                && labels.iter().all(|(k, v)| s[1][*k] == *v)
        })
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {family}: {fams}"))
}

/// `--metrics-addr 0.0.0.0:PORT` while the backend is unreachable: the agent warns that the
/// endpoint is reachable from other hosts, `/healthz` answers 200 with `enrolling`, and
/// `/metrics` parses with prometheus_client's parser, every family typed, the counters there.
#[test]
fn root_metrics_on_a_wildcard_address_answer_while_enrolling_and_parse_with_prometheus() {
    let Some(_serial) = serial() else { return };
    let run = Run::new("metrics");
    let dead = format!("https://127.0.0.1:{}", free_port());
    let port = free_port();
    let mut c = run.cmd(&[
        "--server",
        &dead,
        "--tenant-id",
        "demo",
        "--workload-id",
        "0000000000000abc",
        "--metrics-addr",
        &format!("0.0.0.0:{port}"),
    ]);
    c.env("LINUXGUARD_ENROLL_TOKEN", "ABCDEFGHIJKLMNOPQRSTUVWX");
    let mut a = run.spawn(c);
    let local = format!("127.0.0.1:{port}");
    a.wait_log("startup: watching before the identity is ready", 60);
    assert!(
        a.log().contains("reachable from other hosts"),
        "{}",
        a.log()
    );
    let (status, body) = http_get(&local, "/healthz");
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["enrolment"], "enrolling", "{h}");
    assert_eq!(h["sensor"], "attached", "{h}");
    exec_marked(&crate::e2e::marker("metrics"), 5);
    let mut fams = Value::Null;
    wait_for("observed events in /metrics", 10, || {
        let (status, text) = http_get(&local, "/metrics");
        assert_eq!(status, 200, "{text}");
        fams = prometheus_parse(&text);
        sample(
            &fams,
            "linuxguard_events_observed",
            "linuxguard_events_observed_total",
            &[],
        ) >= 5.0
    });
    for (fam, kind) in [
        ("linuxguard_events_observed", "counter"),
        ("linuxguard_events_sent", "counter"),
        ("linuxguard_events_dropped", "counter"),
        ("linuxguard_kubelet_misses", "counter"),
        ("linuxguard_queue_events", "gauge"),
        ("linuxguard_uptime_seconds", "gauge"),
        ("linuxguard_loop_body_max_seconds", "gauge"),
    ] {
        assert_eq!(fams[fam]["type"], kind, "{fam}: {fams}");
        assert!(
            !fams[fam]["help"].as_str().unwrap_or("").is_empty(),
            "{fam}"
        );
    }
    for stage in ["kernel", "decode", "queue", "upload"] {
        sample(
            &fams,
            "linuxguard_events_dropped",
            "linuxguard_events_dropped_total",
            &[("stage", stage)],
        );
    }
    // Nothing is sent while enrolling: the events wait in the queue.
    assert_eq!(
        sample(
            &fams,
            "linuxguard_events_sent",
            "linuxguard_events_sent_total",
            &[]
        ),
        0.0
    );
    assert!(
        sample(
            &fams,
            "linuxguard_queue_events",
            "linuxguard_queue_events",
            &[]
        ) >= 5.0
    );
    let (status, _) = http_get(&local, "/nothing-here");
    assert_eq!(status, 404);
    assert_eq!(a.term(20).code(), Some(0), "{}", a.log());
}
