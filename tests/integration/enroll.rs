//! Enrolment and the mTLS identity: the real agent against the real reference backend — enrol,
//! replay, rejections, retries, the TLS cache, renewal, revocation — and proof that the token,
//! API key and private key never show in /proc, in log lines (at trace level) or in files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Agent, Backend, TempDir, start_backend, wait_for};

const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWX";
/// The same token as a user might paste it: lower case with dashes.
const TOKEN_TYPED: &str = "abcd-efgh-ijkl-mnop-qrst-uvwx";
const TOKEN2: &str = "QRSTUVWXYZ234567ABCDEFGH";
const API_KEY: &str = "lg_test_key_Zq9Wx7Vu5Ts3Rp1N";
const WORKLOAD: &str = "0123456789abcdef";
/// How long the backend stalls a call in the stop tests; a stop must not wait it out.
const STALL: Duration = Duration::from_secs(30);

/// One agent run: its own cwd/HOME/TMPDIR (scanned for secrets afterwards), a log file, and a
/// directory for secret files (as systemd's $CREDENTIALS_DIRECTORY or a Secret volume: the only
/// place besides the TLS cache where a secret may be on disk).
struct Run {
    home: TempDir,
    logs: TempDir,
    secrets: TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            home: TempDir::new("enroll-home"),
            logs: TempDir::new("enroll-logs"),
            secrets: TempDir::new("enroll-secrets"),
        }
    }
    /// Writes a secret file (mode 0600) outside HOME and returns its path.
    fn secret_file(&self, name: &str, value: &str) -> PathBuf {
        let p = self.secrets.path().join(name);
        fs::write(&p, value).expect("write secret file");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    }
    fn cache(&self) -> PathBuf {
        self.home.path().join("tls")
    }
    /// `linuxguard-agent start` against `be`, at trace level, with the TLS cache in HOME.
    fn cmd(&self, be: &Backend) -> Command {
        let mut c = common::agent();
        c.current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("TMPDIR", self.home.path())
            .env("RUST_LOG", "trace")
            .env("LINUXGUARD_SERVER", &be.url)
            .env("LINUXGUARD_SERVER_CA", be.ca_pem_path())
            .env("LINUXGUARD_TENANT_ID", "demo")
            .env("LINUXGUARD_WORKLOAD_ID", WORKLOAD)
            .env("LINUXGUARD_TLS_CACHE", self.cache())
            .arg("start");
        c
    }
    fn spawn(&self, mut c: Command, tag: &str) -> Agent {
        let log = self.logs.path().join(format!("{tag}.log"));
        Agent::spawn(&mut c, log, None, None)
    }
    /// Every log line written by the runs so far.
    fn all_logs(&self) -> String {
        let mut s = String::new();
        for e in fs::read_dir(self.logs.path()).expect("logs dir").flatten() {
            s.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
        }
        s
    }
    /// The cached identity file, parsed.
    fn cached(&self) -> Value {
        serde_json::from_slice(
            &fs::read(self.cache().join("identity.json")).expect("identity.json"),
        )
        .expect("identity.json is JSON")
    }
    /// Asserts no secret (token forms, API key, the cached private key in PEM, DER base64 and
    /// raw-scalar hex/base64) appears in any log line or any file in HOME outside the cache.
    fn assert_no_secrets(&self, extra: &[&str]) {
        let mut needles: Vec<String> = [TOKEN, TOKEN_TYPED, TOKEN2, API_KEY]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        needles.push(TOKEN.to_lowercase());
        if let Ok(b) = fs::read(self.cache().join("identity.json")) {
            let v: Value = serde_json::from_slice(&b).expect("identity.json");
            needles.extend(key_forms(v["privateKey"].as_str().expect("privateKey")));
        }
        let logs = self.all_logs();
        assert!(
            !logs.contains("TRACE ureq_proto"),
            "wire dumps reached the log"
        );
        for n in &needles {
            assert!(
                !logs.contains(n.as_str()),
                "a secret ({} chars) appears in the log",
                n.len()
            );
        }
        let mut files = Vec::new();
        walk(self.home.path(), &self.cache(), &mut files);
        for f in files {
            let text = String::from_utf8_lossy(&fs::read(&f).unwrap_or_default()).into_owned();
            for n in &needles {
                assert!(
                    !text.contains(n.as_str()),
                    "a secret appears in {}",
                    f.display()
                );
            }
        }
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        if p.is_dir() {
            walk(&p, skip, out);
        } else {
            out.push(p);
        }
    }
}

/// Text forms of a PKCS#8 P-256 key that must never leak: each PEM body line, the whole
/// base64 body, and the 32-byte private scalar in hex (both cases) and base64.
fn key_forms(pem: &str) -> Vec<String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut out: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    out.push(body.clone());
    let der = b64_decode(&body);
    // ECPrivateKey: version INTEGER 1 (02 01 01), then privateKey OCTET STRING (04 20 ...).
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("P-256 scalar in the PKCS#8 key");
    let scalar = &der[at + 5..at + 37];
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_uppercase());
    out.push(hex);
    out.push(b64_encode(scalar)[..40].to_string());
    out
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn b64_encode(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, x| (a << 8) | *x as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn stats(be: &Backend) -> Value {
    be.admin_get("/admin/stats")
}

fn enroll_requests(be: &Backend) -> Vec<Value> {
    be.requests_to("/agent/enroll")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Enrols, sees the first heartbeat, checks the request against the contract and the cache's
/// modes and tag, then stops cleanly on SIGTERM. (How fast is `scripts/bench`'s job.)
#[test]
fn enroll_ok_first_heartbeat_and_clean_stop() {
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN_TYPED);
    let t0 = Instant::now();
    let mut a = run.spawn(c, "ok");
    a.wait_log("enrolled", 10);
    a.wait_log("heartbeat", 10);
    eprintln!("enrolled and first heartbeat after {:?}", t0.elapsed());

    let reqs = enroll_requests(&be);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r["status"], 201);
    let wid = sha256_hex(WORKLOAD.as_bytes());
    assert_eq!(r["headers"]["idempotency-key"], wid.as_str());
    assert_eq!(r["headers"]["content-type"], "application/json");
    assert_eq!(
        r["headers"]["user-agent"],
        format!("linuxguard-agent/{}", env!("CARGO_PKG_VERSION")).as_str()
    );
    assert!(r["headers"].get("authorization").is_none());
    let body = r["body"].as_str().expect("body");
    let fields = [
        "tenantId",
        "enrollCode",
        "workloadId",
        "nodeName",
        "podUid",
        "hostname",
        "agentVersion",
        "csr",
    ];
    let pos: Vec<usize> = fields
        .iter()
        .map(|f| {
            body.find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} missing"))
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "field order: {body}");
    let v: Value = serde_json::from_str(body).expect("body JSON");
    assert_eq!(v["enrollCode"], TOKEN, "normalized token");
    assert_eq!(v["workloadId"], wid.as_str());
    assert_eq!(v["tenantId"], "demo");

    // Cache: 0700 dir, 0600 files, tag per the contract.
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&run.cache()), 0o700);
    for f in ["identity.json", ".tag"] {
        assert_eq!(mode(&run.cache().join(f)), 0o600, "{f}");
    }
    let tag = fs::read_to_string(run.cache().join(".tag")).expect(".tag");
    let mut pre = b"linuxguard-tls-tag\0".to_vec();
    pre.extend_from_slice(TOKEN.as_bytes());
    pre.push(0);
    pre.extend_from_slice(wid.as_bytes());
    assert_eq!(tag.trim_end(), format!("v1 {}", sha256_hex(&pre)));

    wait_for("a second heartbeat", 5, || {
        stats(&be)["heartbeats"].as_u64() >= Some(2)
    });
    let st = a.term(STALL.as_secs() / 2);
    assert_eq!(st.code(), Some(0), "{}", a.log());
    assert!(a.log().contains("stopping on SIGTERM"), "{}", a.log());
    run.assert_no_secrets(&[]);
}

/// How the secret is handed to the agent in the /proc tests.
#[derive(Clone, Copy, PartialEq)]
enum Given {
    TokenEnv,
    TokenFlag,
    ApiKeyEqualsFlag,
    ApiKeyEnv,
    TokenFile,
    ApiKeyFile,
    SaTokenFile,
}

/// The node and pod of the `k8s_psat` runs.
const NODE: &str = "worker-7";
const POD: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

/// The secret (token, API key, service-account token) is gone from /proc/<pid>/environ and
/// cmdline while the agent is blocked in an enrolment call (from a file it was never there);
/// a SIGTERM then stops it at once; no log line and no file outside the cache holds it.
fn assert_proc_clean(given: Given) {
    use crate::sa_issuer::{self, Claims, IssuerKey};
    let issuer = sa_issuer::dir();
    let key = IssuerKey::es256("k1");
    let jwks = sa_issuer::write_jwks(issuer.path(), &[&key]);
    let be = start_backend(&[
        "--token",
        TOKEN,
        "--api-key",
        API_KEY,
        "--psat-jwks",
        jwks.to_str().expect("path"),
    ]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "stallSeconds": STALL.as_secs()}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    let sa_token = key.mint(&Claims::pod(NODE, POD));
    let secret: &str = match given {
        Given::TokenEnv => {
            c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN_TYPED);
            TOKEN_TYPED
        }
        Given::TokenFlag => {
            c.args(["--enroll-token", TOKEN_TYPED]);
            TOKEN_TYPED
        }
        Given::ApiKeyEqualsFlag => {
            c.arg(format!("--api-key={API_KEY}"));
            API_KEY
        }
        Given::ApiKeyEnv => {
            c.env("LINUXGUARD_API_KEY", API_KEY);
            API_KEY
        }
        Given::TokenFile => {
            c.env(
                "LINUXGUARD_ENROLL_TOKEN_FILE",
                run.secret_file("enroll-token", &format!("{TOKEN_TYPED}\n")),
            );
            TOKEN_TYPED
        }
        Given::ApiKeyFile => {
            c.arg("--api-key-file")
                .arg(run.secret_file("api-key", API_KEY));
            API_KEY
        }
        Given::SaTokenFile => {
            c.env_remove("LINUXGUARD_WORKLOAD_ID")
                .env("LINUXGUARD_NODE_NAME", NODE)
                .env("LINUXGUARD_POD_UID", POD)
                .env(
                    "LINUXGUARD_SA_TOKEN_FILE",
                    run.secret_file("token", &sa_token),
                );
            &sa_token
        }
    };
    let mut a = run.spawn(c, "proc");
    wait_for("the enrol request to reach the backend", 10, || {
        !enroll_requests(&be).is_empty()
    });
    let pid = a.child.id();
    let environ = fs::read(format!("/proc/{pid}/environ"));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"));
    if !common::is_root() && environ.is_err() {
        eprintln!("skipping /proc checks: not root and the agent is non-dumpable");
        return;
    }
    let environ = environ.expect("read environ");
    let cmdline = cmdline.expect("read cmdline");
    assert!(
        a.child.try_wait().expect("wait").is_none(),
        "agent must still be blocked"
    );
    for (name, bytes) in [("environ", &environ), ("cmdline", &cmdline)] {
        let text = String::from_utf8_lossy(bytes);
        for t in [
            TOKEN,
            TOKEN_TYPED,
            &TOKEN.to_lowercase(),
            API_KEY,
            &sa_token,
        ] {
            assert!(!text.contains(t), "secret bytes in /proc/{pid}/{name}");
        }
        // No 8-character run of the secret either (partial scrubbing would show).
        for w in secret.as_bytes().windows(8) {
            assert!(
                !bytes.windows(8).any(|x| x == w),
                "secret fragment in /proc/{pid}/{name}"
            );
        }
    }
    let cmd = String::from_utf8_lossy(&cmdline).into_owned();
    let env = String::from_utf8_lossy(&environ).into_owned();
    match given {
        Given::TokenFlag | Given::ApiKeyEqualsFlag => {
            assert!(
                cmd.contains("--enroll-token") || cmd.contains("--api-key="),
                "{cmd:?}"
            );
            assert!(
                a.log().contains("leaks through shell history"),
                "{}",
                a.log()
            );
        }
        Given::TokenEnv => assert!(env.contains("LINUXGUARD_ENROLL_TOKEN="), "{env:?}"),
        Given::ApiKeyEnv => assert!(env.contains("LINUXGUARD_API_KEY="), "{env:?}"),
        Given::TokenFile => assert!(env.contains("LINUXGUARD_ENROLL_TOKEN_FILE="), "{env:?}"),
        Given::ApiKeyFile => assert!(cmd.contains("--api-key-file"), "{cmd:?}"),
        Given::SaTokenFile => {
            assert!(env.contains("LINUXGUARD_SA_TOKEN_FILE="), "{env:?}");
            // The request carried the token (so the scans below look for something real).
            let r = enroll_requests(&be).pop().expect("the enrol request");
            assert!(r["body"].as_str().unwrap_or("").contains(&sa_token));
        }
    }
    // SIGTERM while the enrol call is stalled: a clean stop that does not wait out the stall.
    let t = Instant::now();
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    assert!(
        t.elapsed() < STALL / 2,
        "stop waited for the stalled call: {:?}",
        t.elapsed()
    );
    run.assert_no_secrets(&[&sa_token]);
}

#[test]
fn token_from_env_is_absent_from_proc_while_enrolling() {
    assert_proc_clean(Given::TokenEnv);
}

#[test]
fn token_from_flag_is_absent_from_proc_while_enrolling() {
    assert_proc_clean(Given::TokenFlag);
}

#[test]
fn api_key_from_env_or_equals_flag_is_absent_from_proc_while_enrolling() {
    assert_proc_clean(Given::ApiKeyEnv);
    assert_proc_clean(Given::ApiKeyEqualsFlag);
}

#[test]
fn secrets_from_files_are_absent_from_proc_logs_and_files() {
    assert_proc_clean(Given::TokenFile);
    assert_proc_clean(Given::ApiKeyFile);
    assert_proc_clean(Given::SaTokenFile);
}

/// A lost enrolment response (token consumed, no answer) is retried with the same bytes and
/// gets the same identity back.
#[test]
fn replay_after_lost_response_gets_the_same_identity() {
    let be = start_backend(&["--token", TOKEN]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "dropResponse": true, "count": 1}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "replay");
    a.wait_log("enrolled", 20);
    let reqs = enroll_requests(&be);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["body"], reqs[1]["body"]);
    assert_eq!(
        reqs[0]["headers"]["idempotency-key"],
        reqs[1]["headers"]["idempotency-key"]
    );
    assert_eq!(reqs[1]["status"], 200, "the replay is answered 200");
    assert_eq!(stats(&be)["enrolled"], 1, "one agent id only");
    a.wait_log("heartbeat", 10);
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
    run.assert_no_secrets(&[]);
}

/// 503 ×3 (Retry-After 1) then success: four identical requests.
#[test]
fn retries_503_then_enrols_with_identical_bytes() {
    let be = start_backend(&["--token", TOKEN]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "status": 503, "count": 3, "retryAfter": 1}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let t0 = Instant::now();
    let mut a = run.spawn(c, "retry");
    a.wait_log("enrolled", 40);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "Retry-After 1 ×3 honoured: {took:?}"
    );
    let reqs = enroll_requests(&be);
    let statuses: Vec<u64> = reqs
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [503, 503, 503, 201]);
    for r in &reqs[1..] {
        assert_eq!(r["body"], reqs[0]["body"], "byte-identical bodies");
        assert_eq!(
            r["headers"]["idempotency-key"],
            reqs[0]["headers"]["idempotency-key"]
        );
    }
    assert!(a.log().contains("retrying in"), "{}", a.log());
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
    run.assert_no_secrets(&[]);
}

/// Starts an agent and expects it to exit with `code`, logging `line`.
fn expect_exit(run: &Run, c: Command, code: i32, line: &str) -> String {
    let mut a = run.spawn(c, &format!("exit{code}-{}", line.len()));
    let st = a.wait_exit(20);
    let log = a.log();
    assert_eq!(st.code(), Some(code), "{log}");
    assert!(log.contains(line), "no {line:?} in:\n{log}");
    log
}

#[test]
fn conflict_expired_unknown_token_and_key_are_rejected_with_code_4() {
    let be = start_backend(&[
        "--token",
        TOKEN,
        "--expired-token",
        TOKEN2,
        "--api-key",
        API_KEY,
    ]);
    let run = Run::new();
    // First workload consumes the token.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env_remove("LINUXGUARD_TLS_CACHE");
    let mut a = run.spawn(c, "first");
    a.wait_log("enrolled", 10);
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
    // Another workload with the same token: 409.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_WORKLOAD_ID", "feed");
    let log = expect_exit(
        &run,
        c,
        4,
        "enrolment failed: 409 conflict: token already consumed by another workload",
    );
    assert!(log.contains("rotate the Secret"), "{log}");
    let said = log
        .lines()
        .filter(|l| l.contains("enrolment failed") && !l.contains(" DEBUG "))
        .count();
    assert_eq!(said, 1, "said once, as the exit error: {log}");
    // Expired token: 400.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN2);
    expect_exit(&run, c, 4, "enrolment failed: 400 enrollment token expired");
    // Unknown token: 401.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", "ZZZZZZZZZZZZZZZZZZZZZZZZ");
    expect_exit(&run, c, 4, "enrolment failed: 401 ");
    // Wrong tenant: 401 as well.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_TENANT_ID", "other");
    expect_exit(&run, c, 4, "enrolment failed: 401 ");
    // Unknown API key: 401 on the Bearer path.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_API_KEY", "lg_wrong_key_0123456789");
    expect_exit(&run, c, 4, "enrolment failed: 401 ");
    let last = enroll_requests(&be).pop().expect("requests");
    assert_eq!(
        last["headers"]["authorization"],
        "Bearer lg_wrong_key_0123456789"
    );
    run.assert_no_secrets(&["lg_wrong_key_0123456789", "ZZZZZZZZZZZZZZZZZZZZZZZZ"]);
}

/// Bad settings are reported before any network call (the backend sees nothing), exit 3.
#[test]
fn settings_are_checked_before_any_network_call() {
    let be = start_backend(&["--token", TOKEN]);
    let run = Run::new();
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("LINUXGUARD_ENROLL_TOKEN", TOKEN),
                ("LINUXGUARD_TENANT_ID", ""),
            ],
            vec![],
            "tenantId required for TOTP enrollment",
        ),
        (
            vec![("LINUXGUARD_ENROLL_TOKEN", "ABCDEFGHIJKLMNOPQRSTUVW1")],
            vec![],
            "base32",
        ),
        (
            vec![("LINUXGUARD_ENROLL_TOKEN", "ABCDEFGH")],
            vec![],
            "too short",
        ),
        (
            vec![
                ("LINUXGUARD_ENROLL_TOKEN", TOKEN),
                ("LINUXGUARD_API_KEY", API_KEY),
            ],
            vec![],
            "exactly one",
        ),
        (vec![], vec![], "no enrolment credential"),
        (
            vec![
                ("LINUXGUARD_ENROLL_TOKEN", TOKEN),
                ("LINUXGUARD_SERVER", ""),
            ],
            vec![],
            "LINUXGUARD_SERVER",
        ),
        (
            vec![("LINUXGUARD_ENROLL_TOKEN", TOKEN)],
            vec!["--server", "http://127.0.0.1:1"],
            "https://",
        ),
    ];
    for (envs, args, want) in cases {
        let mut c = run.cmd(&be);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.args(args);
        let log = expect_exit(&run, c, 3, want);
        assert!(
            !log.contains("ABCDEFGHIJKLMNOPQRSTUVW"),
            "token echoed: {log}"
        );
    }
    // The API-key path needs no tenant id.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_API_KEY", "lg_unknown_key_0123456789")
        .env_remove("LINUXGUARD_TENANT_ID");
    expect_exit(&run, c, 4, "enrolment failed: 401");
    assert_eq!(
        enroll_requests(&be).len(),
        1,
        "only the API-key run reached the backend"
    );
}

/// The second start with --tls-cache makes no enrol call; a rotated token or a new pod UID
/// re-enrols; a corrupted cache file re-enrols.
#[test]
fn tls_cache_reuse_rotation_and_corruption() {
    let be = start_backend(&[
        "--token",
        TOKEN,
        "--api-key",
        API_KEY,
        "--heartbeat-interval-secs",
        "1",
    ]);
    let run = Run::new();
    let start = |envs: &[(&str, &str)], tag: &str, want: &str| {
        let mut c = run.cmd(&be);
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut a = run.spawn(c, tag);
        a.wait_log(want, 15);
        a.wait_log("heartbeat", 10);
        let log = a.log();
        assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
        log
    };
    let calls = || stats(&be)["enrollCalls"].as_u64().unwrap_or(0);
    let tok = [("LINUXGUARD_ENROLL_TOKEN", TOKEN)];
    start(&tok, "c1", "enrolled");
    let agent1 = run.cached()["agentId"]
        .as_str()
        .expect("agentId")
        .to_string();
    assert_eq!(calls(), 1);
    let log = start(&tok, "c2", "reusing the identity");
    assert!(!log.contains("enrolled as"), "{log}");
    assert_eq!(calls(), 1, "second start made no enrol call");
    assert_eq!(run.cached()["agentId"], agent1.as_str());

    // Corrupted identity file: cleared and enrolled again (a replay for this token+workload).
    fs::write(run.cache().join("identity.json"), b"{ not json").expect("corrupt");
    let log = start(&tok, "c3", "enrolled");
    assert!(log.contains("corrupt") && log.contains("cleared"), "{log}");
    assert_eq!(calls(), 2);
    // Corrupted tag.
    fs::write(run.cache().join(".tag"), b"v1 garbage").expect("corrupt tag");
    let log = start(&tok, "c4", "enrolled");
    assert!(log.contains("tag differs"), "{log}");
    assert_eq!(calls(), 3);

    // Rotated token: tag differs, enrol with the new token.
    be.admin_post("/admin/tokens", json!({"token": TOKEN2, "expired": false}));
    let log = start(&[("LINUXGUARD_ENROLL_TOKEN", TOKEN2)], "c5", "enrolled");
    assert!(log.contains("tag differs"), "{log}");
    assert_eq!(calls(), 4);
    let last = enroll_requests(&be).pop().expect("request");
    let body: Value = serde_json::from_str(last["body"].as_str().expect("body")).expect("json");
    assert_eq!(body["enrollCode"], TOKEN2);

    // API key, then a new pod UID: tag differs, enrol again as a new agent.
    let pod = |uid: &'static str| {
        [
            ("LINUXGUARD_API_KEY", API_KEY),
            ("LINUXGUARD_NODE_NAME", "node-1"),
            ("LINUXGUARD_POD_UID", uid),
        ]
    };
    let start_pod = |uid: &'static str, tag: &str| {
        let mut c = run.cmd(&be);
        c.env_remove("LINUXGUARD_WORKLOAD_ID");
        for (k, v) in pod(uid) {
            c.env(k, v);
        }
        let mut a = run.spawn(c, tag);
        a.wait_log("enrolled", 15);
        let log = a.log();
        assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
        log
    };
    start_pod("11111111-2222-3333-4444-555555555555", "p1");
    let a1 = run.cached()["agentId"]
        .as_str()
        .expect("agentId")
        .to_string();
    let log = start_pod("66666666-2222-3333-4444-555555555555", "p2");
    assert!(log.contains("tag differs"), "{log}");
    assert_ne!(
        run.cached()["agentId"],
        a1.as_str(),
        "a new pod is a new agent"
    );
    assert_eq!(calls(), 6);
    run.assert_no_secrets(&[]);
}

/// Short certificates are renewed before they expire, with a fresh key, and the cache follows.
#[test]
fn renewal_happens_before_expiry() {
    // Renewal is due at 57-67 % of the lifetime: about 4 s of slack before expiry.
    const LIFETIME: Duration = Duration::from_secs(12);
    let be = start_backend(&[
        "--token",
        TOKEN,
        "--cert-lifetime-secs",
        &LIFETIME.as_secs().to_string(),
        "--heartbeat-interval-secs",
        "1",
    ]);
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "renew");
    a.wait_log("enrolled", 10);
    let first = run.cached();
    let t0 = Instant::now();
    a.wait_log("renewed the certificate", 2 * LIFETIME.as_secs());
    let took = t0.elapsed();
    assert!(
        took < LIFETIME,
        "renewed {took:?} after enrolment, past the {LIFETIME:?} lifetime"
    );
    wait_for("the cache to hold the renewed key", 5, || {
        run.cached()["privateKey"] != first["privateKey"]
    });
    let second = run.cached();
    assert_eq!(second["agentId"], first["agentId"]);
    assert_ne!(second["certificateChain"], first["certificateChain"]);
    // Heartbeats keep flowing over the renewed identity, past the first leaf's expiry.
    std::thread::sleep(Duration::from_secs(7));
    assert!(a.child.try_wait().expect("wait").is_none(), "{}", a.log());
    let s = stats(&be);
    assert!(s["renewals"].as_u64() >= Some(1), "{s}");
    let hb = be.requests_to("/agent/heartbeat");
    let last = hb.last().expect("heartbeats");
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0));
    run.assert_no_secrets(&[]);
    for forms in key_forms(first["privateKey"].as_str().expect("key")) {
        assert!(!run.all_logs().contains(&forms), "the first key leaked");
    }
}

/// Revocation: the next heartbeat gets 401, the agent clears the cache and exits 5.
#[test]
fn revoke_exits_5_and_clears_the_cache() {
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "revoke");
    a.wait_log("heartbeat", 10);
    let key = run.cached()["privateKey"]
        .as_str()
        .expect("key")
        .to_string();
    be.admin_post("/admin/revoke", json!({}));
    let st = a.wait_exit(10);
    let log = a.log();
    assert_eq!(st.code(), Some(5), "{log}");
    let said = log
        .lines()
        .filter(|l| l.contains("revoked the identity") && !l.contains(" DEBUG "))
        .count();
    assert_eq!(said, 1, "said once, as the exit error: {log}");
    assert!(!run.cache().join("identity.json").exists());
    assert!(!run.cache().join(".tag").exists());
    for f in key_forms(&key) {
        assert!(!run.all_logs().contains(&f), "the key leaked");
    }
    run.assert_no_secrets(&[]);
}

/// --enroll-timeout bounds the whole enrolment; SIGTERM during a backoff wait stops at once.
#[test]
fn enroll_timeout_and_prompt_stop_while_retrying() {
    let be = start_backend(&["--token", TOKEN]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "status": 503, "seconds": 60}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_ENROLL_TIMEOUT", "3");
    let t0 = Instant::now();
    let log = expect_exit(&run, c, 1, "did not succeed within --enroll-timeout 3 s");
    // The fault lasts 60 s: ending well before it proves the timeout, not the backend, ended it.
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "{:?}\n{log}",
        t0.elapsed()
    );

    be.admin_delete("/admin/faults");
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "status": 503, "seconds": 60, "retryAfter": 30}),
    );
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "stop");
    a.wait_log("retrying in", 10);
    let t = Instant::now();
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop waited out the 30 s Retry-After: {:?}",
        t.elapsed()
    );
    run.assert_no_secrets(&[]);
}

/// A server certificate that does not verify is a clear error naming the server.
#[test]
fn unverifiable_server_certificate_is_a_config_error() {
    let be = start_backend(&["--token", TOKEN]);
    let other = TempDir::new("other-ca");
    let ca = rcgen::generate_simple_self_signed(vec!["other".into()]).expect("ca");
    fs::write(other.path().join("ca.pem"), ca.cert.pem()).expect("write ca");
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_SERVER_CA", other.path().join("ca.pem"));
    let log = expect_exit(&run, c, 3, "did not verify");
    assert!(log.contains(&be.url), "{log}");
}

/// The secret scan itself has teeth: a planted token in HOME, or the private scalar (hex) or a
/// PEM line in a log, is caught.
#[test]
fn secret_scan_catches_planted_secrets() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let run = Run::new();
    run.assert_no_secrets(&[]);
    fs::write(
        run.home.path().join("notes.txt"),
        format!("x{TOKEN_TYPED}y"),
    )
    .expect("plant");
    assert!(catch_unwind(AssertUnwindSafe(|| run.assert_no_secrets(&[]))).is_err());
    fs::remove_file(run.home.path().join("notes.txt")).expect("unplant");

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let pem = key.serialize_pem();
    fs::create_dir_all(run.cache()).expect("cache dir");
    fs::write(
        run.cache().join("identity.json"),
        json!({"privateKey": pem}).to_string(),
    )
    .expect("id");
    run.assert_no_secrets(&[]);
    let forms = key_forms(&pem);
    for (i, leak) in [
        forms[0].clone(),
        forms[forms.len() - 3].clone(),
        forms[forms.len() - 2].clone(),
    ]
    .iter()
    .enumerate()
    {
        let f = run.logs.path().join(format!("planted{i}.log"));
        fs::write(&f, format!("[TRACE x] {leak}\n")).expect("plant log");
        assert!(
            catch_unwind(AssertUnwindSafe(|| run.assert_no_secrets(&[]))).is_err(),
            "form {i}"
        );
        fs::remove_file(&f).expect("unplant");
    }
}

/// 503 on heartbeats is retried (the agent keeps running); SIGINT stops it cleanly.
#[test]
fn heartbeat_503_is_retried_and_sigint_stops() {
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/heartbeat", "status": 503, "count": 2, "retryAfter": 1}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "hb");
    a.wait_log("heartbeat failed: 503", 10);
    a.wait_log("first heartbeat accepted", 15);
    let pid = nix::unistd::Pid::from_raw(a.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    // Within the 5 s --shutdown-grace plus the sensor's detach, with room for a busy machine.
    let st = a.wait_exit(STALL.as_secs() / 2);
    assert_eq!(st.code(), Some(0), "{}", a.log());
    assert!(a.log().contains("stopping on SIGINT"), "{}", a.log());
    run.assert_no_secrets(&[]);
}

/// SIGTERM while a heartbeat call is stalled by the server: the agent still stops at once.
#[test]
fn sigterm_during_a_stalled_heartbeat_stops_promptly() {
    let be = start_backend(&["--token", TOKEN]);
    be.admin_post(
        "/admin/faults",
        json!({"path": "/agent/heartbeat", "stallSeconds": STALL.as_secs()}),
    );
    let run = Run::new();
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN", TOKEN);
    let mut a = run.spawn(c, "stall-hb");
    a.wait_log("enrolled", 10);
    wait_for("the heartbeat to reach the backend", 10, || {
        !be.requests_to("/agent/heartbeat").is_empty()
    });
    let t = Instant::now();
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    // `start` also detaches the sensor on the way out (the kernel serializes the ~30 link
    // releases, ~1.2 s on a quiet machine): the bound only proves the stall was not waited out
    // (the uplink thread is blocked in the call; the loop gives it --shutdown-grace plus the
    // final heartbeat's allowance, 5 + 5 s, then exits and counts what was not delivered).
    eprintln!(
        "stopped {:?} after SIGTERM during a stalled heartbeat",
        t.elapsed()
    );
    assert!(t.elapsed() < STALL / 2, "stop took {:?}", t.elapsed());
}

/// `--enroll-token-file`: enrols; the file may then be removed (a systemd credential, a
/// one-shot Secret) and a later start with a valid cache and no secret reuses it without an
/// enrolment call (contract v1.1); with no cache and no secret, a clear configuration error.
/// `show-config` shows what the file holds as `<set, N chars>`.
#[test]
fn token_file_may_be_removed_after_enrolment() {
    let be = start_backend(&["--token", TOKEN, "--heartbeat-interval-secs", "1"]);
    let run = Run::new();
    let file = run.secret_file("enroll-token", &format!("{TOKEN_TYPED}\n"));
    let o = common::agent()
        .args([
            "show-config",
            "--json",
            "--workload-id",
            WORKLOAD,
            "--enroll-token-file",
        ])
        .arg(&file)
        .output()
        .expect("show-config");
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let shown = v["settings"]["enroll-token-file"]["value"]
        .as_str()
        .expect("value")
        .to_string();
    assert_eq!(shown, format!("{} <set, 29 chars>", file.display()));
    let out = common::stdout(&o);
    assert!(!out.contains(TOKEN) && !out.contains(TOKEN_TYPED), "{out}");

    let calls = || stats(&be)["enrollCalls"].as_u64().unwrap_or(0);
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN_FILE", &file);
    let mut a = run.spawn(c, "file1");
    a.wait_log("enrolled as agent", 15);
    a.wait_log("first heartbeat accepted", 10);
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    assert_eq!(calls(), 1);
    let body: Value = serde_json::from_str(enroll_requests(&be)[0]["body"].as_str().expect("body"))
        .expect("json");
    assert_eq!(
        body["enrollCode"], TOKEN,
        "the normalized token from the file"
    );
    let agent = run.cached()["agentId"].clone();

    // The token file is gone: the cache is reused for the same workload id, no enrol call.
    fs::remove_file(&file).expect("remove the token file");
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN_FILE", &file);
    let mut a = run.spawn(c, "file2");
    a.wait_log("matched by workload id", 15);
    a.wait_log("first heartbeat accepted", 10);
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    assert_eq!(calls(), 1, "no enrolment call without a secret");
    assert_eq!(run.cached()["agentId"], agent);
    // Nor with no credential setting at all.
    let mut a = run.spawn(run.cmd(&be), "bare");
    a.wait_log("matched by workload id", 15);
    a.wait_log("first heartbeat accepted", 10);
    assert_eq!(a.term(STALL.as_secs() / 2).code(), Some(0), "{}", a.log());
    assert_eq!(calls(), 1);

    // Another workload id with that cache and no secret: nothing usable, exit 3, cache kept.
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN_FILE", &file)
        .env("LINUXGUARD_WORKLOAD_ID", "feedface");
    let log = expect_exit(&run, c, 3, "no enrolment credential");
    assert!(
        log.contains("does not exist") && log.contains("another workload id"),
        "{log}"
    );
    assert!(run.cache().join("identity.json").exists());
    // No cache at all and no secret: exit 3 before any call.
    fs::remove_dir_all(run.cache()).expect("remove cache");
    let mut c = run.cmd(&be);
    c.env("LINUXGUARD_ENROLL_TOKEN_FILE", &file);
    expect_exit(&run, c, 3, "no enrolment credential");
    assert_eq!(calls(), 1);
    run.assert_no_secrets(&[]);
}
