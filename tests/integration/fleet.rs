//! Enrolment at fleet scale, with real parts: the real agent (real BPF) against the reference
//! backend over real TLS, with service-account tokens minted as kube-apiserver mints them. A
//! 3-node DaemonSet enrolling at once with `k8s_psat`; refused tokens; a leaf that expires while
//! the backend is down and comes back by itself (k8s_psat, API key); a spent single-use token
//! replaced through `--enroll-token-file` without a restart; a first boot with the backend down
//! that still delivers what it saw, with `status` answering `enrolling` meanwhile. All need
//! root and BPF (`root_*`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Agent, Backend, TempDir, start_backend, start_backend_in, wait_for};
use crate::e2e::{
    assert_adds_up, assert_exactly_once, exec_marked, final_counters, free_port, marked_execs,
    marker, serial,
};
use crate::sa_issuer::{self, Claims, IssuerKey};

const TENANT: &str = "demo";
const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWX";
const TOKEN2: &str = "QRSTUVWXYZ234567ABCDEFGH";
const API_KEY: &str = "lg_fleet_key_Zq9Wx7Vu5Ts3Rp1N";

/// One agent: its own directory (TLS cache, socket, secret files, log).
struct Node {
    dir: TempDir,
    agent: Option<Agent>,
    log: PathBuf,
}

impl Node {
    fn new(tag: &str) -> Node {
        let dir = TempDir::new(&format!("fleet-{tag}"));
        let log = dir.path().join("agent.log");
        Node {
            dir,
            agent: None,
            log,
        }
    }
    fn a(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the agent was started")
    }
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_log(&mut self, needle: &str, secs: u64) {
        self.a().wait_log(needle, secs);
    }
    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        self.a().wait_exit(secs)
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("tls")
    }
    /// A secret file in this node's directory (outside HOME and the cache).
    fn secret(&self, name: &str, value: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, value).expect("write secret");
        p
    }
    /// `start` against `url`, trusting `ca`, fast batches, TLS cache and socket in the dir.
    fn cmd(&self, url: &str, ca: &Path) -> Command {
        let mut c = common::agent();
        c.current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "info")
            .env("LINUXGUARD_SERVER", url)
            .env("LINUXGUARD_SERVER_CA", ca)
            .env("LINUXGUARD_TENANT_ID", TENANT)
            .env("LINUXGUARD_TLS_CACHE", self.cache())
            .env("LINUXGUARD_SOCKET", self.socket())
            .args(["start", "--batch-max-age-ms", "200"]);
        c
    }
    /// The `k8s_psat` agent of pod `uid` on `node`, its token in `token`.
    fn psat_cmd(&self, url: &str, ca: &Path, node: &str, uid: &str, token: &str) -> Command {
        let mut c = self.cmd(url, ca);
        c.env("LINUXGUARD_NODE_NAME", node)
            .env("LINUXGUARD_POD_UID", uid)
            .env("LINUXGUARD_SA_TOKEN_FILE", self.secret("sa-token", token));
        c
    }
    fn spawn(&mut self, mut c: Command) {
        self.agent = Some(Agent::spawn(&mut c, self.log.clone(), None, None));
    }
    fn pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Agent::pid)
    }
    fn term(&mut self) -> std::process::ExitStatus {
        self.a().term(30)
    }
    fn alive(&mut self) -> bool {
        self.a().alive()
    }
    /// `status --json`: exit 0 and the answer.
    fn status(&self) -> Value {
        let o = common::agent()
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .expect("run status");
        assert!(
            o.status.success(),
            "status exited {:?}: {}",
            o.status.code(),
            common::stderr(&o)
        );
        serde_json::from_slice(&o.stdout).expect("status JSON")
    }
    fn cached(&self) -> Value {
        serde_json::from_slice(&fs::read(self.cache().join("identity.json")).expect("identity"))
            .expect("identity.json")
    }
    /// How many log lines contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
    /// Waits until the log has `n` lines containing `needle`.
    fn wait_count(&mut self, needle: &str, n: usize, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while self.count(needle) < n {
            assert!(self.alive(), "agent exited:\n{}", self.log());
            assert!(
                Instant::now() < end,
                "fewer than {n} {needle:?} lines after {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `.tag` the contract gives a credential secret and workload id.
fn tag(secret: &str, workload: &str) -> String {
    format!(
        "v1 {}",
        sha256_hex(format!("linuxguard-tls-tag\0{secret}\0{workload}").as_bytes())
    )
}

/// Asserts no secret appears in the node's log, in any file of its directory outside the TLS
/// cache and the secret files themselves, or in /proc/<pid>/environ and cmdline.
fn assert_no_secrets(n: &Node, secrets: &[&str]) {
    let log = n.log();
    for s in secrets {
        assert!(
            !log.contains(s),
            "a secret ({} chars) is in the log",
            s.len()
        );
    }
    let skip = |p: &Path| {
        p == n.cache()
            || p.file_name()
                .is_some_and(|f| f == "sa-token" || f == "enroll-token")
    };
    for e in fs::read_dir(n.dir.path()).expect("dir").flatten() {
        let p = e.path();
        if skip(&p) || p.is_dir() || p == n.log {
            continue;
        }
        let text = String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()).into_owned();
        for s in secrets {
            assert!(!text.contains(s), "a secret is in {}", p.display());
        }
    }
    if n.pid() != 0 {
        for f in ["environ", "cmdline"] {
            if let Ok(b) = fs::read(format!("/proc/{}/{f}", n.pid())) {
                let text = String::from_utf8_lossy(&b);
                for s in secrets {
                    assert!(!text.contains(s), "a secret is in /proc/<pid>/{f}");
                }
            }
        }
    }
}

/// Events with `marker` in their args that the backend accepted from `agent_id` (from the
/// request record: each batch is recorded with the agent id of its client certificate).
fn marked_from(be: &Backend, agent_id: &str, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in be.requests_to("/agent/events") {
        if r["agentId"].as_str() != Some(agent_id) || r["status"] != 202 {
            continue;
        }
        for line in r["body"].as_str().unwrap_or("").lines() {
            let Ok(ev) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if ev["type"] != "exec" {
                continue;
            }
            for a in ev["process"]["args"].as_array().into_iter().flatten() {
                if let Some(s) = a.as_str().filter(|s| s.starts_with(marker)) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// A DaemonSet on three nodes: three agents with their own node names, pod UIDs and projected
/// service-account tokens (two ES256, one RS256) start at the same moment; each enrols with
/// `k8s_psat` (201, never 409) as its own agent, caches an identity tagged with the literal
/// `k8s_psat`, reports `enrolled` in `status`, and no token shows in logs, files or /proc. A
/// rotated token does not re-enrol on restart.
#[test]
fn root_fleet_three_nodes_enrol_with_their_own_service_account_tokens_at_once() {
    let Some(_serial) = serial() else { return };
    let issuer = sa_issuer::dir();
    let es = IssuerKey::es256("es-1");
    let rs = IssuerKey::rs256("rs-1", issuer.path());
    let jwks = sa_issuer::write_jwks(issuer.path(), &[&es, &rs]);
    let be = start_backend(&[
        "--psat-jwks",
        jwks.to_str().expect("path"),
        "--heartbeat-interval-secs",
        "1",
    ]);
    let pods = [
        ("node-a", "a1b2c3d4-0001-4000-8000-00000000000a", &es),
        ("node-b", "a1b2c3d4-0002-4000-8000-00000000000b", &rs),
        ("node-c", "a1b2c3d4-0003-4000-8000-00000000000c", &es),
    ];
    let mut nodes = Vec::new();
    let mut tokens = Vec::new();
    for (node, uid, key) in pods {
        let n = Node::new(node);
        let token = key.mint(&Claims::pod(node, uid));
        let c = n.psat_cmd(&be.url, &be.ca_pem_path(), node, uid, &token);
        tokens.push(token);
        nodes.push((n, c));
    }
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .map(|(mut n, c)| {
            n.spawn(c);
            n
        })
        .collect();
    for n in &mut nodes {
        n.wait_log("enrolled as agent", 60);
        n.wait_log("first heartbeat accepted", 20);
    }
    eprintln!(
        "three k8s_psat agents enrolled {:?} after start",
        t0.elapsed()
    );

    let reqs = be.requests_to("/agent/enroll");
    assert_eq!(reqs.len(), 3, "one enrolment call each: {reqs:?}");
    let mut agents = std::collections::HashSet::new();
    for (n, (node, uid, _)) in nodes.iter().zip(pods) {
        let w = sa_issuer::workload_id(node, uid);
        let r = reqs
            .iter()
            .find(|r| r["headers"]["idempotency-key"] == w.as_str())
            .unwrap_or_else(|| panic!("no enrolment of {node}"));
        assert_eq!(r["status"], 201, "{r}");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        let body: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
        assert_eq!(body["attestation"]["type"], "k8s_psat");
        assert_eq!(body["enrollCode"], Value::Null);
        assert_eq!(
            (body["nodeName"].as_str(), body["podUid"].as_str()),
            (Some(node), Some(uid))
        );
        assert_eq!(body["tenantId"], TENANT);
        let id = n.cached()["agentId"].as_str().expect("agentId").to_string();
        assert_eq!(
            fs::read_to_string(n.cache().join(".tag"))
                .expect(".tag")
                .trim_end(),
            tag("k8s_psat", &w)
        );
        let s = n.status();
        assert_eq!(s["enrolment"], "enrolled", "{s}");
        assert_eq!(s["identity"]["credential"], "k8s_psat", "{s}");
        assert_eq!(s["agentId"], id.as_str(), "{s}");
        agents.insert(id);
    }
    assert_eq!(agents.len(), 3, "each node its own identity");
    assert_eq!(be.admin_get("/admin/stats")["enrolled"], 3);
    let toks: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for n in &nodes {
        assert_no_secrets(n, &toks);
    }

    // The kubelet rotates node-a's token; the container restarts: the cache is reused.
    let mut a = nodes.remove(0);
    assert_eq!(a.term().code(), Some(0), "{}", a.log());
    let rotated = es.mint(&Claims::pod(pods[0].0, pods[0].1));
    let c = a.psat_cmd(&be.url, &be.ca_pem_path(), pods[0].0, pods[0].1, &rotated);
    a.spawn(c);
    a.wait_log("reusing the identity", 30);
    a.wait_log("first heartbeat accepted", 20);
    assert_eq!(
        be.requests_to("/agent/enroll").len(),
        3,
        "a rotation does not re-enrol"
    );
    for n in nodes.iter_mut().chain(std::iter::once(&mut a)) {
        assert_eq!(n.term().code(), Some(0), "{}", n.log());
        assert_no_secrets(n, &toks);
        assert!(!n.log().contains(&rotated));
    }
}

/// The wrong audience, an expired token, another pod's token and a bad signature: each agent
/// exits 4 with the contract's line `enrolment failed: 401 service account token rejected: ...`,
/// said once.
#[test]
fn root_fleet_refused_service_account_tokens_exit_4_with_the_401_line() {
    let Some(_serial) = serial() else { return };
    let issuer = sa_issuer::dir();
    let key = IssuerKey::es256("k1");
    let jwks = sa_issuer::write_jwks(issuer.path(), &[&key]);
    let be = start_backend(&["--psat-jwks", jwks.to_str().expect("path")]);
    let (node, uid) = ("node-r", "c0ffee00-0000-4000-8000-000000000001");
    let ok = Claims::pod(node, uid);
    let mut wrong_aud = ok.clone();
    wrong_aud.audience = vec!["https://kubernetes.default.svc.cluster.local".into()];
    let mut expired = ok.clone();
    expired.exp_in = -600;
    let other_pod = Claims::pod(node, "c0ffee00-0000-4000-8000-000000000002");
    let t = key.mint(&ok);
    let (head, sig) = t.rsplit_once('.').expect("jwt");
    let bad_sig = format!(
        "{head}.{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    let cases = [
        (
            "audience",
            key.mint(&wrong_aud),
            "the audience does not contain",
        ),
        ("expired", key.mint(&expired), "expired"),
        ("other-pod", key.mint(&other_pod), "issued to pod"),
        ("signature", bad_sig, "the signature does not verify"),
    ];
    let mut runs: Vec<(Node, &str, &str)> = cases
        .iter()
        .map(|(tag, token, want)| {
            let mut n = Node::new(tag);
            let c = n.psat_cmd(&be.url, &be.ca_pem_path(), node, uid, token);
            n.spawn(c);
            (n, *want, token.as_str())
        })
        .collect();
    for (n, want, token) in &mut runs {
        let st = n.wait_exit(60);
        let log = n.log();
        assert_eq!(st.code(), Some(4), "{log}");
        let line = "enrolment failed: 401 service account token rejected: ";
        assert!(
            log.contains(line) && log.contains(*want),
            "{want:?}:\n{log}"
        );
        assert!(log.contains("audience: linuxguard"), "the hint: {log}");
        let said = log
            .lines()
            .filter(|l| l.contains("enrolment failed") && !l.contains(" DEBUG "))
            .count();
        assert_eq!(said, 1, "said once, as the exit error: {log}");
        assert!(log.contains("final counters"), "{log}");
        assert!(!log.contains(*token), "the token is not logged");
    }
    let statuses: Vec<u64> = be
        .requests_to("/agent/enroll")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401]);
}

/// Offline past the leaf's lifetime: the backend goes away right after enrolment, the
/// certificates (6 s) expire, and the agents — one with `k8s_psat`, one with an API key — enrol
/// again by themselves once it is back, in the same process. `status` says `enrolling` in
/// between (exit 0), and the events seen during the outage arrive.
#[test]
fn root_fleet_leaf_expires_while_the_backend_is_down_and_comes_back_by_itself() {
    let Some(_serial) = serial() else { return };
    let issuer = sa_issuer::dir();
    let key = IssuerKey::es256("k1");
    let jwks = sa_issuer::write_jwks(issuer.path(), &[&key]);
    let addr = format!("127.0.0.1:{}", free_port());
    let args = [
        "--psat-jwks",
        jwks.to_str().expect("path"),
        "--api-key",
        API_KEY,
        "--cert-lifetime-secs",
        "6",
        "--heartbeat-interval-secs",
        "1",
        "--listen",
        &addr,
    ];
    let be = start_backend(&args);
    let (url, ca) = (be.url.clone(), TempDir::new("fleet-ca"));
    fs::copy(be.ca_pem_path(), ca.path().join("ca.pem")).expect("copy ca");
    let ca_pem = ca.path().join("ca.pem");
    let (node, uid) = ("edge-1", "e0e0e0e0-0000-4000-8000-000000000001");
    let mut psat = Node::new("psat");
    let c = psat.psat_cmd(&url, &ca_pem, node, uid, &key.mint(&Claims::pod(node, uid)));
    psat.spawn(c);
    let mut keyed = Node::new("apikey");
    let mut c = keyed.cmd(&url, &ca_pem);
    c.env("LINUXGUARD_WORKLOAD_ID", "ed9e000000000002")
        .env("LINUXGUARD_API_KEY_FILE", keyed.secret("api-key", API_KEY));
    keyed.spawn(c);
    let (pid1, pid2) = (psat.pid(), keyed.pid());
    for n in [&mut psat, &mut keyed] {
        n.wait_log("first heartbeat accepted", 60);
    }
    let first: Vec<String> = [&psat, &keyed]
        .iter()
        .map(|n| n.cached()["agentId"].as_str().expect("id").to_string())
        .collect();
    let state = be.stop();
    let down_at = Instant::now();
    let m = marker("expiry");
    exec_marked(&m, 5);
    for n in [&mut psat, &mut keyed] {
        n.wait_log("before it could be renewed", 30);
        n.wait_log("enrolling again with", 5);
        let s = n.status();
        assert_eq!(s["enrolment"], "enrolling", "{s}");
        assert_eq!(s["healthy"], true, "{s}");
    }
    eprintln!(
        "both leaves expired {:?} after the backend went down",
        down_at.elapsed()
    );
    let be = start_backend_in(state, &args);
    let up_at = Instant::now();
    for n in [&mut psat, &mut keyed] {
        n.wait_count("enrolled as agent", 2, 90);
    }
    eprintln!(
        "both enrolled again {:?} after the backend came back",
        up_at.elapsed()
    );
    assert_eq!((psat.pid(), keyed.pid()), (pid1, pid2), "no restart");
    for (i, n) in [&mut psat, &mut keyed].into_iter().enumerate() {
        assert!(n.alive());
        let id = n.cached()["agentId"].as_str().expect("id").to_string();
        assert_ne!(id, first[i], "a new identity from the restarted backend");
        wait_for("the outage's events from this agent", 30, || {
            marked_from(&be, &id, &m).len() >= 5
        });
        let got = marked_from(&be, &id, &m);
        assert_eq!(got.len(), 5, "each exactly once: {got:?}");
        let s = n.status();
        assert_eq!(s["enrolment"], "enrolled", "{s}");
        assert_eq!(n.term().code(), Some(0), "{}", n.log());
        assert_adds_up(&final_counters(n.a()), &n.log());
    }
    let creds: Vec<String> = be
        .requests_to("/agent/enroll")
        .iter()
        .map(|r| {
            let b: Value =
                serde_json::from_str(r["body"].as_str().unwrap_or("{}")).unwrap_or_default();
            format!(
                "{} {}",
                r["status"],
                b["attestation"]["type"].as_str().unwrap_or("api-key")
            )
        })
        .collect();
    assert!(creds.contains(&"201 k8s_psat".to_string()), "{creds:?}");
    assert!(creds.contains(&"201 api-key".to_string()), "{creds:?}");
}

/// A single-use token is spent: after its identity expires the agent keeps watching, says
/// `expired` in `status` and logs once a minute that a new token is needed; the spent token
/// written back is not presented again; a new token in `--enroll-token-file` enrols without a
/// restart, and the events seen meanwhile arrive.
#[test]
fn root_fleet_spent_token_waits_for_a_new_one_in_the_token_file() {
    let Some(_serial) = serial() else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    let be = start_backend(&[
        "--token",
        TOKEN,
        "--cert-lifetime-secs",
        "6",
        "--heartbeat-interval-secs",
        "1",
        "--listen",
        &addr,
    ]);
    let (url, ca) = (be.url.clone(), TempDir::new("fleet-ca"));
    fs::copy(be.ca_pem_path(), ca.path().join("ca.pem")).expect("copy ca");
    let mut n = Node::new("token");
    let file = n.secret("enroll-token", &format!("{TOKEN}\n"));
    let mut c = n.cmd(&url, &ca.path().join("ca.pem"));
    c.env("LINUXGUARD_WORKLOAD_ID", "ed9e000000000003")
        .env("LINUXGUARD_ENROLL_TOKEN_FILE", &file);
    n.spawn(c);
    let pid = n.pid();
    n.wait_log("first heartbeat accepted", 60);
    // Removed after enrolment, as the docs advise.
    fs::remove_file(&file).expect("remove token");
    let state = be.stop();
    let m = marker("spent");
    exec_marked(&m, 5);
    n.wait_log(
        "waiting for a new single-use token in --enroll-token-file",
        30,
    );
    let s = n.status();
    assert_eq!(s["enrolment"], "expired", "{s}");
    assert!(
        s["identity"]["waitingFor"]
            .as_str()
            .unwrap_or("")
            .contains("--enroll-token-file"),
        "{s}"
    );
    let be = start_backend_in(
        state,
        &[
            "--token",
            TOKEN,
            "--token",
            TOKEN2,
            "--heartbeat-interval-secs",
            "1",
            "--listen",
            &addr,
        ],
    );
    // The spent token written back: never presented again.
    fs::write(&file, TOKEN).expect("write spent token");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        be.requests_to("/agent/enroll").is_empty(),
        "the spent token was sent"
    );
    assert_eq!(n.status()["enrolment"], "expired");
    assert_eq!(
        n.count("waiting for a new single-use token"),
        1,
        "once a minute:\n{}",
        n.log()
    );
    fs::write(&file, TOKEN2).expect("write new token");
    n.wait_count("enrolled as agent", 2, 30);
    assert_eq!(n.pid(), pid, "no restart");
    let id = n.cached()["agentId"].as_str().expect("id").to_string();
    assert_eq!(
        fs::read_to_string(n.cache().join(".tag"))
            .expect(".tag")
            .trim_end(),
        tag(TOKEN2, &sha256_hex(b"ed9e000000000003"))
    );
    wait_for("the events seen while expired", 30, || {
        marked_from(&be, &id, &m).len() >= 5
    });
    assert_eq!(marked_from(&be, &id, &m).len(), 5);
    assert_eq!(n.status()["enrolment"], "enrolled");
    assert_eq!(n.term().code(), Some(0), "{}", n.log());
    assert_adds_up(&final_counters(n.a()), &n.log());
    assert_no_secrets(&n, &[TOKEN, TOKEN2]);
}

/// First boot with the backend down: the sensor attaches at once, `status` answers `enrolling`
/// (exit 0, so the liveness probe passes), the start-up log says what it waits for; once the
/// backend is up the agent enrols and every marked exec from before arrives exactly once;
/// observed = sent + dropped at exit.
#[test]
fn root_fleet_first_boot_with_the_backend_down_delivers_what_it_saw() {
    let Some(_serial) = serial() else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    let be = start_backend(&["--token", TOKEN, "--listen", &addr]);
    let (url, state) = (be.url.clone(), be.stop());
    let ca = TempDir::new("fleet-ca");
    fs::copy(state.path().join("ca.pem"), ca.path().join("ca.pem")).expect("copy ca");
    let mut n = Node::new("boot");
    let mut c = n.cmd(&url, &ca.path().join("ca.pem"));
    c.env("LINUXGUARD_WORKLOAD_ID", "b0070000000000004")
        .env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let t0 = Instant::now();
    n.spawn(c);
    // `status` answers as soon as the socket is bound, before the sensor is attached.
    let first_status = loop {
        let o = common::agent()
            .args(["status", "--json", "--socket"])
            .arg(n.socket())
            .output()
            .expect("status");
        if o.status.success() {
            break serde_json::from_slice::<Value>(&o.stdout).expect("json");
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", n.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    let status_after = t0.elapsed();
    assert_eq!(first_status["enrolment"], "enrolling", "{first_status}");
    // Attestation is answered too, before enrolment (a host process: its cgroup placement).
    let o = common::agent()
        .args(["attest", "--self", "--socket"])
        .arg(n.socket())
        .output()
        .expect("attest --self");
    assert!(
        o.status.success() && common::stdout(&o).contains("\"selectors\""),
        "attest --self while enrolling: {:?} {} {}",
        o.status.code(),
        common::stdout(&o),
        common::stderr(&o)
    );
    n.wait_log("startup: sensors attached", 30);
    let attached_after = t0.elapsed();
    n.wait_log("startup: watching before the identity is ready", 5);
    assert!(
        n.log().contains("enrolment at"),
        "what it waits for:\n{}",
        n.log()
    );
    let m = marker("boot");
    exec_marked(&m, 10);
    n.wait_log("retrying in", 20);
    let s = n.status();
    assert_eq!(s["enrolment"], "enrolling", "{s}");
    assert_eq!(s["sensor"], "attached", "{s}");
    assert!(s["identity"]["attempts"].as_u64() >= Some(1), "{s}");
    wait_for(
        "status to count the events queued before enrolment",
        10,
        || {
            let s = n.status();
            s["stats"]["eventsObserved"].as_u64() > Some(0)
                && s["pipeline"]["queuedEvents"].as_u64() > Some(0)
        },
    );
    let be = start_backend_in(state, &["--token", TOKEN, "--listen", &addr]);
    let up = Instant::now();
    n.wait_log("enrolled as agent", 90);
    let enrolled_after = up.elapsed();
    wait_for("the marked execs from before enrolment", 30, || {
        marked_execs(&be, &m).len() == 10
    });
    assert_exactly_once(&be, &m, 10);
    eprintln!(
        "first boot, backend down: status answered {status_after:?} after start, sensors \
         attached {attached_after:?} after start; enrolled {enrolled_after:?} after the backend \
         came up"
    );
    assert_eq!(n.term().code(), Some(0), "{}", n.log());
    assert_adds_up(&final_counters(n.a()), &n.log());
}
