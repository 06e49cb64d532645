//! Shared helpers for the integration tests: the built binaries, temp dirs, running with env.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const AGENT: &str = env!("CARGO_BIN_EXE_linuxguard-agent");
pub const BACKEND: &str = env!("CARGO_BIN_EXE_linuxguard-backend");

/// A fresh, empty directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name no other test, thread or run uses at the same time: the pid, a per-process counter and
/// the wall clock's nanoseconds. Every `watch` sees every process's events, so tests running
/// side by side must never pick the same marker.
pub fn marker(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "lg-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The agent with a clean environment: no LINUXGUARD_* or RUST_LOG inherited from the caller.
pub fn agent() -> Command {
    let mut c = Command::new(AGENT);
    for (k, _) in std::env::vars() {
        if k.starts_with("LINUXGUARD_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run the agent binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Root-only tests call this first: as a normal user they fail loudly, never pass silently
/// (`scripts/test` runs them as root, through sudo for a normal user; CI runs as root).
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "this test needs {what}: run the tests as root (scripts/test elevates itself)"
    );
}

/// A running reference backend (`linuxguard-backend`), killed on drop.
///
/// Its state dir is a fresh `TempDir`; stdout and stderr go to `backend.stdout` and
/// `backend.stderr` beside it (read them with `stdout_text()` / `log_text()`).
pub struct Backend {
    pub child: std::process::Child,
    /// Base URL, e.g. `https://127.0.0.1:40123`.
    pub url: String,
    /// The backend's `--state-dir` (holds `ca.pem`, `ca-key.pem`, `url`).
    pub state: TempDir,
    /// Holds the stdout/stderr capture files.
    pub logs: TempDir,
}

/// Starts `linuxguard-backend --listen 127.0.0.1:0 --state-dir <fresh dir> <extra_args>` and
/// waits (up to 20 s) for it to write its `url` file.
pub fn start_backend(extra_args: &[&str]) -> Backend {
    start_backend_in(TempDir::new("backend-state"), extra_args)
}

/// Like `start_backend`, with a given state dir (to test restarts with the same CA).
pub fn start_backend_in(state: TempDir, extra_args: &[&str]) -> Backend {
    use std::process::Stdio;
    let logs = TempDir::new("backend-logs");
    let out = std::fs::File::create(logs.path().join("backend.stdout")).expect("stdout file");
    let err = std::fs::File::create(logs.path().join("backend.stderr")).expect("stderr file");
    let _ = std::fs::remove_file(state.path().join("url"));
    let mut cmd = Command::new(BACKEND);
    for (k, _) in std::env::vars() {
        if k.starts_with("LINUXGUARD_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = cmd.spawn().expect("spawn linuxguard-backend");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(state.path().join("url")) {
            if u.starts_with("https://") {
                break u.trim().to_string();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log =
                std::fs::read_to_string(logs.path().join("backend.stderr")).unwrap_or_default();
            panic!("linuxguard-backend exited early ({status}): {log}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("linuxguard-backend wrote no url file within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Backend {
        child,
        url,
        state,
        logs,
    }
}

impl Backend {
    /// Stops the backend and hands back its state dir (to restart on the same CA).
    pub fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.state, TempDir(PathBuf::new()))
    }

    /// Path of the backend CA certificate (PEM), for `--server-ca`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.state.path().join("ca.pem")
    }

    /// The backend's CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_pem_path()).expect("read ca.pem")
    }

    /// Everything the backend printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("backend.stdout")).unwrap_or_default()
    }

    /// Everything the backend logged on stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("backend.stderr")).unwrap_or_default()
    }

    /// The token the backend generated and printed (`enroll token: X`), when started with no
    /// `--token`/`--api-key`.
    pub fn printed_token(&self) -> Option<String> {
        self.stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("enroll token: ").map(str::to_string))
    }

    /// A ureq agent that trusts the backend CA, optionally presenting a client identity
    /// (`chain_pem` leaf first, `key_pem` PKCS#8). HTTP error statuses are returned, not errors.
    pub fn client(&self, identity: Option<(&str, &str)>) -> ureq::Agent {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let ca = Certificate::from_pem(self.ca_pem().as_bytes()).expect("parse ca.pem");
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
        if let Some((chain_pem, key_pem)) = identity {
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(chain_pem.as_bytes())
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let key = PrivateKey::from_pem(key_pem.as_bytes()).expect("parse client key");
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs, key)));
        }
        ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(20)))
            .build()
            .into()
    }

    /// GET an admin endpoint (e.g. `/admin/stats`) and return its JSON body. Panics on non-2xx.
    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        let resp = self
            .client(None)
            .get(format!("{}{path}", self.url))
            .call()
            .expect("admin GET");
        admin_json(&format!("GET {path}"), resp)
    }

    /// POST JSON to an admin endpoint (e.g. `/admin/faults`) and return its JSON body.
    /// Panics on non-2xx.
    pub fn admin_post(&self, path: &str, json: serde_json::Value) -> serde_json::Value {
        let resp = self
            .client(None)
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(json.to_string().as_bytes())
            .expect("admin POST");
        admin_json(&format!("POST {path}"), resp)
    }

    /// DELETE an admin endpoint (e.g. `/admin/faults`). Panics on non-2xx.
    pub fn admin_delete(&self, path: &str) {
        let resp = self
            .client(None)
            .delete(format!("{}{path}", self.url))
            .call()
            .expect("admin DELETE");
        let status = resp.status().as_u16();
        assert!((200..300).contains(&status), "DELETE {path}: {status}");
    }

    /// The recorded requests to `path` (from `GET /admin/requests`), oldest first.
    pub fn requests_to(&self, path: &str) -> Vec<serde_json::Value> {
        match self.admin_get("/admin/requests") {
            serde_json::Value::Array(all) => all
                .into_iter()
                .filter(|r| r["path"].as_str() == Some(path))
                .collect(),
            other => panic!("/admin/requests is not an array: {other}"),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one harness for a running agent process (`start` or `watch`): stderr goes to a log
/// file, stdout to a file or wherever the test points it; killed on drop.
pub struct Agent {
    pub child: std::process::Child,
    log: PathBuf,
    out: Option<PathBuf>,
}

impl Agent {
    /// Spawns `c` with stdin closed, stderr into `log` and stdout into `out` (a file created
    /// there) or `stdout` when given.
    pub fn spawn(
        c: &mut Command,
        log: PathBuf,
        out: Option<PathBuf>,
        stdout: Option<std::process::Stdio>,
    ) -> Agent {
        let stdout = match (stdout, &out) {
            (Some(s), _) => s,
            (None, Some(p)) => std::fs::File::create(p).expect("stdout file").into(),
            (None, None) => std::process::Stdio::null(),
        };
        let child = c
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn agent");
        Agent { child, log, out }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the agent wrote to its stdout file (empty when stdout went elsewhere).
    pub fn stdout(&self) -> String {
        self.out
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal_term(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// SIGTERM, then waits up to `secs` for the exit.
    pub fn term(&mut self, secs: u64) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit(secs)
    }

    /// Waits for a log line containing `needle`; panics with the log after `secs`.
    pub fn wait_log(&mut self, needle: &str, secs: u64) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "agent exited ({st}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "no {needle:?} in the agent log within {secs} s:\n{}",
            self.log()
        );
    }

    /// Waits for the process to exit; kills it and panics after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!("agent still running after {secs} s:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `f` holds; panics after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// An admin answer's JSON body; panics on non-2xx. Large when the machine is busy (every agent
/// sees every process on the host), hence the generous limit.
fn admin_json(what: &str, mut resp: ureq::http::Response<ureq::Body>) -> serde_json::Value {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .expect("admin body");
    assert!((200..300).contains(&status), "{what}: {status} {body}");
    serde_json::from_str(&body).expect("admin JSON")
}

/// Builds the C helper `tests/integration/<name>` into `dir` (static, `-Wall -Werror`, plus
/// `flags`); returns the binary's path.
pub fn build_c_helper(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration")
        .join(name);
    let bin = dir.join(name.trim_end_matches(".c"));
    let out = Command::new("cc")
        .args(["-static", "-O1", "-Wall", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (scripts/setup installs gcc and libc6-dev)");
    assert!(
        out.status.success(),
        "cc failed to build {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The test virtualenv's Python (`scripts/setup` creates `target/test-venv` with the packages in
/// tests/integration/py/requirements.txt: Prometheus's parser, the OpenTelemetry protos).
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it creates the test virtualenv)",
        p.display()
    );
    p
}

/// A helper script in tests/integration/py/.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/py")
        .join(name)
}

/// One HTTP/1.0 GET over plain TCP: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read answer");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
    (status, body.to_string())
}

/// Prometheus text parsed by prometheus_client's own parser (panics with its message when the
/// text does not parse): `{family: {"type", "help", "samples": [[name, labels, value]]}}`.
pub fn prometheus_parse(text: &str) -> serde_json::Value {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(python())
        .arg(py_script("prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prom_parse.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let o = child.wait_with_output().expect("prom_parse.py");
    assert!(
        o.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("prom_parse.py JSON")
}
