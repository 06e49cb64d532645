//! `start` end to end: the real agent (real BPF) uploading to the real reference backend, with
//! faults injected through the backend's admin API — backend down at start, a 503 outage while
//! events flow (exactly once by batch key; drops past the queue bound counted and reported),
//! revocation, 413 splits, SIGTERM flush, garbage on the socket, a full disk for the cache, the
//! kubelet down. All need root and BPF (`root_*`).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Agent, Backend, TempDir, start_backend, start_backend_in, wait_for};

const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWX";

/// One agent run: its own dir (TLS cache, socket, log).
struct Run {
    dir: TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: TempDir::new("e2e"),
        }
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("tls")
    }
    /// `start` against `url` with fast batches; `extra` flags appended.
    fn cmd(&self, be: &Backend, url: &str, extra: &[&str]) -> Command {
        let mut c = common::agent();
        c.current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("LINUXGUARD_SERVER", url)
            .env("LINUXGUARD_SERVER_CA", be.ca_pem_path())
            .env("LINUXGUARD_TENANT_ID", "demo")
            .env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
            .env("LINUXGUARD_WORKLOAD_ID", "e2e0000000000001")
            .env("LINUXGUARD_TLS_CACHE", self.cache())
            .env("LINUXGUARD_SOCKET", self.socket())
            .args(["start", "--batch-max-age-ms", "200"])
            .args(extra);
        c
    }
    fn spawn(&self, mut c: Command) -> Agent {
        let out = self.dir.path().join("agent.out");
        Agent::spawn(&mut c, self.dir.path().join("agent.log"), Some(out), None)
    }
    /// Like `spawn`, with the agent's stdout given (a pipe, /dev/full...).
    fn spawn_with(&self, mut c: Command, stdout: Stdio) -> Agent {
        let out = self.dir.path().join("agent.out");
        Agent::spawn(
            &mut c,
            self.dir.path().join("agent.log"),
            Some(out),
            Some(stdout),
        )
    }
}

/// The e2e tests run one at a time: each agent sees every process on the host, and the
/// backend keeps only its newest 20,000 events, so parallel floods would push markers out.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn serial() -> Option<std::sync::MutexGuard<'static, ()>> {
    crate::common::require_root("root and BPF");
    Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A marker unique to this test run.
pub(crate) fn marker(tag: &str) -> String {
    crate::common::marker(&format!("e2e-{tag}"))
}

/// Runs `/bin/true <marker>-<i>` for i in 0..n (each a distinct exec the sensor reports).
pub(crate) fn exec_marked(marker: &str, n: usize) {
    for i in 0..n {
        let st = Command::new("/bin/true")
            .arg(format!("{marker}-{i}"))
            .status()
            .expect("run /bin/true");
        assert!(st.success());
    }
}

/// How many times each marked exec reached the backend (from `/admin/events`).
pub(crate) fn marked_execs(be: &Backend, marker: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    if let Value::Array(evs) = admin_events(be) {
        for ev in evs {
            if ev["type"] != "exec" {
                continue;
            }
            let Some(args) = ev["process"]["args"].as_array() else {
                continue;
            };
            for a in args {
                if let Some(s) = a.as_str().filter(|s| s.starts_with(marker)) {
                    *seen.entry(s.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    seen
}

/// `GET /admin/events` (up to 20,000 events: larger than the common helper's body limit).
pub(crate) fn admin_events(be: &Backend) -> Value {
    let mut resp = be
        .client(None)
        .get(format!("{}/admin/events", be.url))
        .call()
        .expect("GET /admin/events");
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .expect("/admin/events body");
    serde_json::from_slice(&body).expect("/admin/events JSON")
}

pub(crate) fn assert_exactly_once(be: &Backend, marker: &str, n: usize) {
    let seen = marked_execs(be, marker);
    assert_eq!(seen.len(), n, "distinct marked execs delivered");
    let dup: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
}

fn status(run: &Run) -> Value {
    let o = common::agent()
        .args(["status", "--json", "--socket"])
        .arg(run.socket())
        .output()
        .expect("run status");
    assert!(o.status.success(), "status failed: {}", common::stderr(&o));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// A free loopback port (bound then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Backend down at start: enrolment retries; once the backend is up the agent enrols, attaches
/// and delivers events.
#[test]
fn root_e2e_backend_down_at_start_then_enrols_and_runs() {
    let Some(_serial) = serial() else { return };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Start once to create the CA (so the agent can be given --server-ca), then stop.
    let be = start_backend(&["--token", TOKEN, "--listen", &addr]);
    let url = be.url.clone();
    let state = be.stop();
    let ca = TempDir::new("e2e-ca");
    fs::copy(state.path().join("ca.pem"), ca.path().join("ca.pem")).expect("copy ca");
    let run = Run::new();
    let mut c = common::agent();
    c.current_dir(run.dir.path())
        .env("RUST_LOG", "info")
        .env("LINUXGUARD_SERVER", &url)
        .env("LINUXGUARD_SERVER_CA", ca.path().join("ca.pem"))
        .env("LINUXGUARD_TENANT_ID", "demo")
        .env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_WORKLOAD_ID", "e2e0000000000002")
        .env("LINUXGUARD_SOCKET", run.socket())
        .args(["start", "--batch-max-age-ms", "200"]);
    let mut a = run.spawn(c);
    a.wait_log("retrying in", 15);
    assert!(a.alive());
    let be = start_backend_in(state, &["--token", TOKEN, "--listen", &addr]);
    a.wait_log("startup: sensors attached", 90);
    let m = marker("down");
    exec_marked(&m, 5);
    wait_for("the marked execs at the backend", 20, || {
        marked_execs(&be, &m).len() == 5
    });
    assert_exactly_once(&be, &m, 5);
    let log = a.log();
    for phase in [
        "startup: identity derived",
        "startup: identity ready",
        "startup: socket",
    ] {
        assert!(log.contains(phase), "missing {phase:?}:\n{log}");
    }
    a.signal_term();
    assert_eq!(a.wait_exit(15).code(), Some(0), "{}", a.log());
}

/// The backend's certificate stops verifying after enrolment (here: another backend, with
/// another CA, takes over the address): uploads fail and are retried, the batches stay queued
/// (none is dropped), and once the real backend is back every marked exec arrives exactly once.
#[test]
fn root_e2e_untrusted_server_certificate_keeps_the_batches_queued() {
    let Some(_serial) = serial() else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    let be = start_backend(&["--token", TOKEN, "--listen", &addr]);
    let url = be.url.clone();
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &url, &["--queue-mb", "64"]));
    a.wait_log("startup: first upload accepted", 90);
    let state = be.stop();
    let other = start_backend(&["--token", TOKEN, "--listen", &addr]);
    let m = marker("cert");
    exec_marked(&m, 20);
    a.wait_log("did not verify", 30);
    let s = status(&run);
    assert_eq!(s["stats"]["eventsDropped"]["upload"], 0, "{s}\n{}", a.log());
    drop(other);
    let be = start_backend_in(state, &["--token", TOKEN, "--listen", &addr]);
    // The backoff may have grown to its 60 s cap while the certificate did not verify.
    let end = Instant::now() + Duration::from_secs(90);
    while marked_execs(&be, &m).len() < 20 {
        assert!(
            Instant::now() < end,
            "only {} of 20 marked execs arrived after the certificate verified again; \
             status {}\n{}",
            marked_execs(&be, &m).len(),
            status(&run),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_exactly_once(&be, &m, 20);
    let s = status(&run);
    assert_eq!(s["stats"]["eventsDropped"]["upload"], 0, "{s}");
    a.signal_term();
    assert_eq!(a.wait_exit(20).code(), Some(0), "{}", a.log());
}

/// 503 for 30 s on uploads while marked processes run: after the outage every marked exec is at
/// the backend exactly once; the agent's counters agree with the backend's.
#[test]
fn root_e2e_503_outage_loses_nothing_within_the_bound() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "2"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &["--queue-mb", "64"]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "status": 503, "seconds": 30}),
    );
    let t0 = Instant::now();
    let m = marker("outage");
    let n = 300;
    exec_marked(&m, n);
    // The uploads are failing meanwhile.
    wait_for("failed uploads", 20, || {
        be.requests_to("/agent/events")
            .iter()
            .any(|r| r["status"] == 503)
    });
    assert!(
        marked_execs(&be, &m).is_empty(),
        "delivered during the outage"
    );
    a.wait_log("event upload failed: 503", 10);
    let left = Duration::from_secs(30).saturating_sub(t0.elapsed());
    std::thread::sleep(left);
    let end = Instant::now() + Duration::from_secs(60);
    while marked_execs(&be, &m).len() < n {
        assert!(
            Instant::now() < end,
            "after the outage only {} of {n} marked execs arrived; status {}\n{}",
            marked_execs(&be, &m).len(),
            status(&run),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_exactly_once(&be, &m, n);
    let s = status(&run);
    assert_eq!(s["stats"]["eventsDropped"]["queue"], 0, "{s}");
    assert!(
        s["pipeline"]["uploadFailures"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    // SIGTERM: the last events flush, the final heartbeat carries counters equal to the
    // backend's count of distinct-batch events.
    a.signal_term();
    assert_eq!(a.wait_exit(20).code(), Some(0), "{}", a.log());
    let st = be.admin_get("/admin/stats");
    assert_eq!(
        st["lastHeartbeat"]["stats"]["eventsSent"], st["eventsReceived"],
        "{st}"
    );
}

/// A tiny queue during an outage: the oldest events are dropped and counted, and the next
/// heartbeat reports the drops; what was sent equals what the backend counted.
#[test]
fn root_e2e_queue_bound_drops_are_counted_and_reported() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &["--queue-mb", "1"]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "status": 503, "seconds": 12}),
    );
    // Well over 1 MiB of events (exec + fork + exit, several hundred bytes each).
    exec_marked(&marker("flood"), 3000);
    wait_for("queue drops in a heartbeat", 30, || {
        let st = be.admin_get("/admin/stats");
        st["lastHeartbeat"]["stats"]["eventsDropped"]["queue"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let s = status(&run);
    let q = s["stats"]["eventsDropped"]["queue"].as_u64().unwrap_or(0);
    assert!(q > 0, "{s}");
    assert!(
        s["pipeline"]["queuedBytes"].as_u64().unwrap_or(u64::MAX) <= 1 << 20,
        "{s}"
    );
    a.signal_term();
    assert_eq!(a.wait_exit(30).code(), Some(0), "{}", a.log());
    let st = be.admin_get("/admin/stats");
    let hb = &st["lastHeartbeat"]["stats"];
    assert_eq!(hb["eventsSent"], st["eventsReceived"], "{st}");
    assert!(
        hb["eventsDropped"]["queue"].as_u64().unwrap_or(0) >= q,
        "{st}"
    );
}

/// Revoked identity: the next upload gets 401, the agent clears the cache and exits 5.
#[test]
fn root_e2e_revoked_on_upload_exits_5_and_clears_the_cache() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &[]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post("/admin/revoke", json!({}));
    exec_marked(&marker("revoked"), 3);
    let st = a.wait_exit(20);
    let log = a.log();
    assert_eq!(st.code(), Some(5), "{log}");
    assert!(
        log.contains("revoked the identity") && log.contains("event upload"),
        "{log}"
    );
    assert!(
        !run.cache().join("identity.json").exists(),
        "cache not cleared"
    );
}

/// 413: a backend limit far below the batch size; batches are split until they fit and every
/// event arrives once.
#[test]
fn root_e2e_oversized_batches_are_split() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--max-batch-bytes", "8192"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(
        &be,
        &be.url,
        &["--batch-max-bytes", "262144", "--batch-max-age-ms", "1500"],
    ));
    a.wait_log("startup: sensors attached", 30);
    let m = marker("split");
    exec_marked(&m, 60);
    wait_for("the marked execs", 30, || marked_execs(&be, &m).len() == 60);
    assert_exactly_once(&be, &m, 60);
    let statuses: Vec<Value> = be
        .requests_to("/agent/events")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(statuses.contains(&json!(413)), "{statuses:?}");
    assert!(a.alive());
}

/// SIGTERM with events still queued (a long batch age): they are flushed, a final heartbeat is
/// sent, exit 0. Also: `--output both` prints the same events as JSON lines, and the metrics
/// endpoint serves the counters.
#[test]
fn root_e2e_sigterm_flushes_sends_final_heartbeat_and_exits_0() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let port = free_port();
    let maddr = format!("127.0.0.1:{port}");
    let mut c = run.cmd(
        &be,
        &be.url,
        &["--output", "both", "--metrics-addr", &maddr],
    );
    c.args([
        "--batch-max-age-ms",
        "600000",
        "--batch-max-events",
        "1000000",
        "--batch-max-bytes",
        "67108864",
        "--queue-mb",
        "64",
        "--shutdown-grace",
        "5",
        "--stats-interval",
        "1",
    ]);
    let mut a = run.spawn(c);
    a.wait_log("startup: sensors attached", 30);
    // The first batch goes out at once; the marked events come after it.
    Command::new("/bin/true").status().expect("run /bin/true");
    a.wait_log("startup: first upload accepted", 10);
    let m = marker("term");
    exec_marked(&m, 20);
    wait_for("the marked execs on stdout", 10, || {
        (0..20).all(|i| a.stdout().contains(&format!("{m}-{i}\"")))
    });
    wait_for("a stats event on stdout", 10, || {
        a.stdout().contains("{\"type\":\"stats\"")
    });
    let mut metrics = String::new();
    std::net::TcpStream::connect(&maddr)
        .and_then(|mut s| {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            s.read_to_string(&mut metrics)
        })
        .expect("scrape metrics");
    assert!(
        metrics.contains("linuxguard_events_observed_total "),
        "{metrics}"
    );
    assert!(
        metrics.contains("linuxguard_events_dropped_total{stage=\"queue\"} 0"),
        "{metrics}"
    );
    // Which event types this kernel lets the agent watch: in the metrics, `status` and the
    // heartbeat (this machine's kernel has every hook).
    assert!(
        metrics.contains("linuxguard_event_type_state{type=\"exec\",state=\"active\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("linuxguard_event_type_state{type=\"exit\",state=\"absent\"} 0\n"),
        "{metrics}"
    );
    let s = status(&run);
    assert_eq!(s["stats"]["eventTypes"]["exec"], "active", "{s}");
    assert_eq!(s["stats"]["eventTypes"]["memfd"], "active", "{s}");
    assert!(
        marked_execs(&be, &m).is_empty(),
        "sent before the batch age"
    );
    let hb_before = be.admin_get("/admin/stats")["heartbeats"]
        .as_u64()
        .unwrap_or(0);
    a.signal_term();
    assert_eq!(a.wait_exit(30).code(), Some(0), "{}", a.log());
    assert_exactly_once(&be, &m, 20);
    let st = be.admin_get("/admin/stats");
    assert!(st["heartbeats"].as_u64().unwrap_or(0) > hb_before, "{st}");
    assert_eq!(
        st["lastHeartbeat"]["stats"]["eventsSent"], st["eventsReceived"],
        "{st}"
    );
    assert_eq!(
        st["lastHeartbeat"]["stats"]["eventTypes"]["exit"], "active",
        "{st}"
    );
    assert!(a.log().contains("final heartbeat sent"), "{}", a.log());
}

/// Garbage on the Unix socket gets an error answer or a close; the agent keeps running and
/// still answers `status`.
#[test]
fn root_e2e_garbage_on_the_socket_is_refused_without_a_crash() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &[]));
    a.wait_log("startup: sensors attached", 30);
    let payloads: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage\xff\n".to_vec(),
        b"{\"request\": 12}\n".to_vec(),
        vec![b'x'; 100_000],
        b"{not json\n".to_vec(),
    ];
    for p in payloads {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(run.socket()) {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = s.write_all(&p);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.is_empty() || text.contains("\"ok\":false"),
                "unexpected answer {text}"
            );
        }
    }
    assert!(a.alive(), "{}", a.log());
    let s = status(&run);
    assert_eq!(s["healthy"], true, "{s}");
    assert!(s["stats"]["eventsObserved"].is_u64(), "{s}");
}

/// The TLS cache on a full file system: a clear warning, the identity stays in memory, events
/// still flow.
#[test]
fn root_e2e_full_disk_for_the_cache_is_a_warning_not_a_crash() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN]);
    let run = Run::new();
    let mnt = run.dir.path().join("full");
    fs::create_dir_all(&mnt).expect("mount point");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "cannot run here: cannot mount a tmpfs (CI runs as root on a kernel with BTF, where it can)"
        );
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    fs::create_dir_all(mnt.join("tls")).expect("cache dir");
    // Fill the file system.
    let mut f = fs::File::create(mnt.join("filler")).expect("filler");
    let _ = f.write_all(&vec![0u8; 64 * 1024]);
    drop(f);
    let mut c = run.cmd(&be, &be.url, &[]);
    c.env("LINUXGUARD_TLS_CACHE", mnt.join("tls"));
    let mut a = run.spawn(c);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if a.log().contains("startup: first upload accepted") {
            let log = a.log();
            assert!(
                log.contains("kept in memory only") && log.contains("No space left"),
                "{log}"
            );
            break;
        }
        if let Ok(Some(st)) = a.child.try_wait() {
            panic!(
                "the agent exited ({st}) instead of running on:\n{}",
                a.log()
            );
        }
        assert!(Instant::now() < end, "{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    a.signal_term();
    assert_eq!(a.wait_exit(15).code(), Some(0), "{}", a.log());
}

const POD_UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
const CONTAINER_ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

fn pod_list() -> String {
    format!(
        r#"{{"kind":"PodList","items":[
      {{"metadata":{{"name":"web-7d4b9c","namespace":"shop","uid":"{POD_UID}","labels":{{"app":"web"}}}},
       "spec":{{"serviceAccountName":"web-sa","nodeName":"worker-1"}},
       "status":{{"containerStatuses":[{{"name":"nginx","image":"docker.io/library/nginx:1.25",
          "imageID":"docker.io/library/nginx@sha256:0123","containerID":"containerd://{CONTAINER_ID}"}}]}}}}
    ]}}"#
    )
}

/// A cgroup2 directory named like a Kubernetes pod's container, removed on drop.
struct PodCgroup {
    top: PathBuf,
    leaf: PathBuf,
}

impl PodCgroup {
    fn new() -> Option<PodCgroup> {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())?;
        let top = root.join(format!("lg-e2e-{}", std::process::id()));
        let leaf = top.join(format!("kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"));
        fs::create_dir_all(&leaf).ok()?;
        Some(PodCgroup { top, leaf })
    }
    /// Runs `sh -c script` inside the cgroup (moved in before the script's first command runs).
    fn run(&self, script: &str) {
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("read _; {script}")])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        fs::write(self.leaf.join("cgroup.procs"), child.id().to_string())
            .expect("move into the pod cgroup");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        assert!(child.wait().expect("wait sh").success());
    }
}

impl PodCgroup {
    /// Runs the agent binary with `args` inside the cgroup (moved in before it starts: `sh`
    /// waits, then execs the agent under the same pid) and returns its output.
    fn agent_output(&self, args: &[&str]) -> std::process::Output {
        let mut child = Command::new("/bin/sh")
            .env_clear()
            .args(["-c", "read _; exec \"$0\" \"$@\"", common::AGENT])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        fs::write(self.leaf.join("cgroup.procs"), child.id().to_string())
            .expect("move into the pod cgroup");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        child.wait_with_output().expect("wait for the agent")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.top) {
            let _ = fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

/// The exec event of `arg` at the backend, if delivered.
fn exec_event(be: &Backend, arg: &str) -> Option<Value> {
    let Value::Array(evs) = admin_events(be) else {
        return None;
    };
    evs.into_iter().find(|ev| {
        ev["type"] == "exec"
            && ev["process"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == arg))
    })
}

/// Kubelet down: events from a pod's process still flow, with the container and pod UID from the
/// cgroup but without pod fields, and the misses are counted (status and heartbeat). When the
/// kubelet answers again, the pod fields return.
#[test]
fn root_e2e_kubelet_down_events_flow_without_pod_fields() {
    use crate::kubelet_server::{Behaviour, TestKubelet, Tls};
    let Some(_serial) = serial() else { return };
    let Some(cg) = PodCgroup::new() else {
        panic!(
            "cannot run here: no writable cgroup2 hierarchy (CI runs as root on a kernel with BTF, where it can)"
        );
    };
    let k = TestKubelet::start(
        Tls::Plain,
        Behaviour {
            body: pod_list(),
            status: 503,
            token: None,
            delay: Duration::ZERO,
            later_body: None,
        },
    );
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    let run = Run::new();
    let url = format!("http://127.0.0.1:{}", k.port());
    let mut a = run.spawn(run.cmd(
        &be,
        &be.url,
        &[
            "--node-name",
            "worker-1",
            "--kubelet-url",
            &url,
            "--kubelet-poll-retry-interval-ms",
            "100",
            "--kubelet-max-poll-attempts",
            "1000",
        ],
    ));
    a.wait_log("startup: sensors attached", 30);
    let m = marker("kube");
    let down = format!("{m}-down");
    cg.run(&format!("/bin/true {down}"));
    let mut ev = None;
    wait_for("the pod's exec event", 20, || {
        ev = exec_event(&be, &down);
        ev.is_some()
    });
    let ev = ev.expect("event");
    assert_eq!(ev["container"]["id"], CONTAINER_ID, "{ev}");
    assert_eq!(ev["orchestrator"]["podUid"], POD_UID, "{ev}");
    assert!(ev["orchestrator"].get("podName").is_none(), "{ev}");
    let s = status(&run);
    assert!(s["stats"]["kubeletMisses"].as_u64().unwrap_or(0) > 0, "{s}");
    // Seeded from /proc at start: the host's processes are in the table.
    assert!(
        s["pipeline"]["processTable"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    wait_for("kubelet misses in a heartbeat", 10, || {
        be.admin_get("/admin/stats")["lastHeartbeat"]["stats"]["kubeletMisses"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert!(k.requests() > 0, "the kubelet was never asked");

    // The kubelet comes back: the pod fields return.
    k.behaviour.lock().expect("behaviour").status = 200;
    let mut named = None;
    for i in 0..40 {
        let arg = format!("{m}-up-{i}");
        cg.run(&format!("/bin/true {arg}"));
        std::thread::sleep(Duration::from_millis(500));
        if let Some(ev) = exec_event(&be, &arg) {
            if ev["orchestrator"]["podName"] == "web-7d4b9c" {
                named = Some(ev);
                break;
            }
        }
    }
    let ev = named.unwrap_or_else(|| panic!("pod fields never returned:\n{}", a.log()));
    assert_eq!(ev["orchestrator"]["namespace"], "shop", "{ev}");
    assert_eq!(ev["orchestrator"]["containerName"], "nginx", "{ev}");
    assert!(a.alive());
}

/// A lost response (the backend processes the batch, then closes the connection without an
/// answer): the agent retries the same batch under the same key, the backend counts it once.
#[test]
fn root_e2e_lost_upload_response_is_retried_under_the_same_key() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &[]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "dropResponse": true, "count": 1}),
    );
    let m = marker("lost");
    exec_marked(&m, 10);
    wait_for("the retried batch", 30, || {
        be.admin_get("/admin/stats")["duplicateBatches"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    wait_for("the marked execs", 20, || marked_execs(&be, &m).len() == 10);
    assert_exactly_once(&be, &m, 10);
    let reqs = be.requests_to("/agent/events");
    let mut keys: HashMap<String, usize> = HashMap::new();
    for r in &reqs {
        if let Some(k) = r["headers"]["idempotency-key"].as_str() {
            *keys.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    assert!(
        keys.values().any(|n| *n >= 2),
        "no key was sent twice: {keys:?}"
    );
    assert!(a.alive());
}

/// SIGTERM while uploads fail: after --shutdown-grace the agent exits 0, and what could not be
/// delivered is counted as dropped in the final heartbeat (nothing is lost silently).
#[test]
fn root_e2e_sigterm_during_an_outage_counts_what_was_not_delivered() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &["--shutdown-grace", "1"]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "status": 503, "seconds": 60}),
    );
    exec_marked(&marker("grace"), 20);
    a.wait_log("event upload failed: 503", 10);
    let t = Instant::now();
    a.signal_term();
    assert_eq!(a.wait_exit(40).code(), Some(0), "{}", a.log());
    // The fault lasts 60 s: ending well before it proves --shutdown-grace ended the flush.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(a.log().contains("counted as dropped"), "{}", a.log());
    let st = be.admin_get("/admin/stats");
    let hb = &st["lastHeartbeat"]["stats"];
    assert_eq!(hb["eventsSent"], st["eventsReceived"], "{st}");
    let dropped = hb["eventsDropped"]["queue"].as_u64().unwrap_or(0);
    assert!(dropped >= 60, "{st}");
    assert_eq!(
        hb["eventsObserved"].as_u64().unwrap_or(0),
        hb["eventsSent"].as_u64().unwrap_or(0) + dropped,
        "{st}"
    );
}

/// The final counters an agent printed on stderr (`final counters: {...}`).
pub(crate) fn final_counters(a: &Agent) -> Value {
    let log = a.log();
    let line = log
        .lines()
        .find_map(|l| l.split_once("final counters: ").map(|(_, j)| j.to_string()))
        .unwrap_or_else(|| panic!("no final counters line:\n{log}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("final counters {line:?}: {e}"))
}

/// Heartbeat-form counters add up: observed = sent + every drop (decode drops are in `queue`).
pub(crate) fn assert_adds_up(stats: &Value, ctx: &str) -> u64 {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let dropped = n(&stats["eventsDropped"]["queue"]) + n(&stats["eventsDropped"]["upload"]);
    assert_eq!(
        n(&stats["eventsObserved"]),
        n(&stats["eventsSent"]) + dropped,
        "{stats}\n{ctx}"
    );
    dropped
}

/// SIGTERM while an upload hangs (the backend took the request and never answers): the agent
/// exits after --shutdown-grace and the final heartbeat's allowance, not after the 60 s call
/// timeout, and counts the hanging batch and the queue as dropped.
#[test]
fn root_e2e_sigterm_during_a_hanging_upload_exits_in_time_and_counts_it() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &["--shutdown-grace", "2"]));
    a.wait_log("startup: first upload accepted", 30);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "stallSeconds": 120}),
    );
    exec_marked(&marker("hang"), 20);
    wait_for("a hanging upload", 20, || {
        be.requests_to("/agent/events")
            .iter()
            .any(|r| r["fault"] == "stall")
    });
    let t = Instant::now();
    a.signal_term();
    assert_eq!(a.wait_exit(40).code(), Some(0), "{}", a.log());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let log = a.log();
    assert!(log.contains("counted as dropped"), "{log}");
    assert!(assert_adds_up(&final_counters(&a), &log) >= 60);
}

/// SIGTERM during a retry wait, and the flush's post then hangs: it is cut off at
/// --shutdown-grace, the batch counted as dropped, and the final heartbeat still goes out and
/// adds up.
#[test]
fn root_e2e_a_post_hanging_in_the_shutdown_flush_is_cut_off_at_the_grace() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let mut a = run.spawn(run.cmd(&be, &be.url, &["--shutdown-grace", "4"]));
    a.wait_log("startup: first upload accepted", 30);
    // One 503 that asks for a 2 s wait, then every post hangs.
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "status": 503, "retryAfter": 2}),
    );
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/events", "stallSeconds": 120, "count": 10}),
    );
    exec_marked(&marker("flushhang"), 20);
    a.wait_log("event upload failed: 503", 20);
    let t = Instant::now();
    a.signal_term();
    assert_eq!(a.wait_exit(40).code(), Some(0), "{}", a.log());
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    let log = a.log();
    assert!(log.contains("final heartbeat sent"), "{log}");
    assert!(
        be.requests_to("/agent/events")
            .iter()
            .any(|r| r["fault"] == "stall"),
        "the flush did not post: {log}"
    );
    let st = be.admin_get("/admin/stats");
    assert!(
        assert_adds_up(&st["lastHeartbeat"]["stats"], &log) >= 60,
        "{st}"
    );
}

/// Runs marked execs (events for the agent to write) until the agent exits by itself (20 s).
fn exec_until_exit(a: &mut Agent, tag: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        exec_marked(&marker(tag), 5);
        if let Some(s) = a.child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < end, "still running:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--output stdout` and the reader goes away: stdout was the only output, so the agent stops
/// (as `watch` does) and exits 0; what it could not write is counted as dropped, so the final
/// counters add up.
#[test]
fn root_e2e_closed_stdout_as_the_only_output_stops_the_agent_and_counts_the_rest() {
    use std::io::BufRead;
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let run = Run::new();
    let c = run.cmd(&be, &be.url, &["--output", "stdout"]);
    let mut a = run.spawn_with(c, Stdio::piped());
    let mut reader = std::io::BufReader::new(a.child.stdout.take().expect("stdout pipe"));
    a.wait_log("startup: sensors attached", 60);
    Command::new("/bin/true").status().expect("run /bin/true");
    let mut first = String::new();
    reader.read_line(&mut first).expect("read the first event");
    assert!(first.starts_with('{'), "{first}");
    drop(reader);
    let status = exec_until_exit(&mut a, "closed");
    assert_eq!(status.code(), Some(0), "{}", a.log());
    let log = a.log();
    assert!(log.contains("it is the only output"), "{log}");
    let fc = final_counters(&a);
    assert!(
        fc["eventsDropped"]["upload"].as_u64().unwrap_or(0) > 0,
        "{fc}\n{log}"
    );
    assert_adds_up(&fc, &log);
}

/// A stdout that fails every write (/dev/full: ENOSPC). With `--output both` the backend still
/// gets every event and the agent keeps running; with `--output stdout` the agent stops with an
/// error that names stdout, its counters adding up.
#[test]
fn root_e2e_failing_stdout_is_an_error_only_when_it_is_the_only_output() {
    let Some(_serial) = serial() else { return };
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "300"]);
    let spawn = |run: &Run, output: &str| {
        let c = run.cmd(&be, &be.url, &["--output", output]);
        run.spawn_with(
            c,
            fs::File::create("/dev/full")
                .expect("open /dev/full")
                .into(),
        )
    };
    let run = Run::new();
    let mut a = spawn(&run, "both");
    a.wait_log("startup: first upload accepted", 60);
    let m = marker("devfull");
    exec_marked(&m, 5);
    wait_for("the marked execs at the backend", 20, || {
        marked_execs(&be, &m).len() == 5
    });
    assert!(a.alive(), "{}", a.log());
    assert!(
        a.log().contains("events now go to the backend only"),
        "{}",
        a.log()
    );
    a.signal_term();
    assert_eq!(a.wait_exit(20).code(), Some(0), "{}", a.log());

    let run = Run::new();
    let mut a = spawn(&run, "stdout");
    a.wait_log("startup: sensors attached", 60);
    let status = exec_until_exit(&mut a, "devfull-only");
    let log = a.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("failed to write events to stdout"), "{log}");
    assert_adds_up(&final_counters(&a), &log);
}

/// `--disable-container-selectors` over the socket: `attest --self` from a process whose
/// container is not yet among the pod's `containerStatuses` gets the pod selectors (exit 0);
/// without the option the answer is still the refusal naming the container.
#[test]
fn root_e2e_attest_self_with_disable_container_selectors_does_not_wait_for_the_container() {
    use crate::kubelet_server::{Behaviour, TestKubelet, Tls};
    let Some(_serial) = serial() else { return };
    let Some(cg) = PodCgroup::new() else {
        panic!(
            "cannot run here: no writable cgroup2 hierarchy (CI runs as root on a kernel with BTF, where it can)"
        );
    };
    // The pod is listed; its only container status is another container's.
    let other = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let k = TestKubelet::start(
        Tls::Plain,
        Behaviour {
            body: pod_list().replace(CONTAINER_ID, other),
            status: 200,
            token: None,
            delay: Duration::ZERO,
            later_body: None,
        },
    );
    let be = start_backend(&["--token", TOKEN]);
    let url = format!("http://127.0.0.1:{}", k.port());
    let kubelet = [
        "--kubelet-url",
        url.as_str(),
        "--kubelet-poll-retry-interval-ms",
        "100",
    ];
    for disable in [true, false] {
        let run = Run::new();
        let mut extra = kubelet.to_vec();
        if disable {
            extra.push("--disable-container-selectors");
        }
        let mut a = run.spawn(run.cmd(&be, &be.url, &extra));
        a.wait_log("startup: socket", 30);
        let sock = run.socket();
        let sock = sock.to_str().expect("utf-8 path");
        let o = cg.agent_output(&["attest", "--self", "--socket", sock]);
        let (out, err) = (common::stdout(&o), common::stderr(&o));
        if disable {
            assert!(
                o.status.success(),
                "stdout: {out}\nstderr: {err}\n{}",
                a.log()
            );
            let v: Value = serde_json::from_str(out.trim()).expect("attest --self JSON");
            assert_eq!(v["podUid"], POD_UID, "{v}");
            assert_eq!(v["containerId"], CONTAINER_ID, "{v}");
            let sel: Vec<&str> = v["selectors"]
                .as_array()
                .expect("selectors")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(sel.contains(&"k8s:ns:shop"), "{v}");
            assert!(sel.contains(&"k8s:pod-name:web-7d4b9c"), "{v}");
            assert!(sel.iter().all(|s| !s.starts_with("k8s:container-")), "{v}");
        } else {
            assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
            assert!(err.contains("is not among pod"), "{err}");
            assert!(out.trim().is_empty(), "{out}");
        }
        a.signal_term();
        assert_eq!(a.wait_exit(15).code(), Some(0), "{}", a.log());
    }
}
