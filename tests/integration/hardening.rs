//! Issue 20, each finding of the attack run as the attacker would use it, through the binary
//! or the socket: the socket (impersonation, fairness, deadlines, line limits, permission
//! denied, a trickling or hostile server), the TLS cache (FIFOs, a directory), exec events
//! (a path the kernel could not walk, secrets given as flags), attest on a non-UTF-8 cgroup,
//! tracefs closed to a capable non-root user, and the README's two commands for root and for
//! a normal user. Tests that need root are named `root_*` and fail as a normal user.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    self, AGENT, Backend, TempDir, agent, build_c_helper, require_root, run, start_backend, stderr,
    stdout,
};
use crate::watch::Watch;

const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWX";
/// Unprivileged uids for the attacker and for the other caller (no passwd entry needed).
const ATTACKER: u32 = 65534;
const OTHER: u32 = 65533;

/// `prog` run as `uid` (and gid) with no supplementary groups.
fn as_user(uid: u32, prog: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(prog);
    for (k, _) in std::env::vars() {
        if k.starts_with("LINUXGUARD_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// A directory `name` in `base`, owned by `uid`, with `mode`.
fn dir_of(base: &Path, name: &str, uid: u32, mode: u32) -> PathBuf {
    let d = base.join(name);
    fs::create_dir_all(&d).expect("mkdir");
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).expect("chown");
    fs::set_permissions(&d, fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// Runs `f` on a thread whose credentials (only its own: a raw setresuid) are `uid`'s.
fn on_thread_as<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: a raw syscall changing only this thread's credentials; no memory is passed.
        let rc = unsafe { nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(rc, 0, "setresuid({uid})");
        f()
    })
}

/// A fake agent: answers each of `n` connections with `answer` (after reading its line).
fn serve(listener: UnixListener, n: usize, answer: String) {
    for _ in 0..n {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut b = [0u8; 512];
        let _ = s.read(&mut b);
        let _ = s.write_all(answer.as_bytes());
    }
}

const FORGED: &str = r#"{"ok":true,"result":{"healthy":true,"agentId":"forged-agent","podUid":"x","selectors":["k8s:sa:cluster-admin"]}}
"#;

fn assert_refused(o: &Output, what: &str) {
    let (so, se) = (stdout(o), stderr(o));
    assert_eq!(o.status.code(), Some(1), "{what}: {so} {se}");
    assert!(
        !so.contains("forged") && !so.contains("cluster-admin"),
        "{what} printed the forger's answer: {so}"
    );
    assert!(
        se.contains("refusing the answer") && se.contains(&format!("uid {ATTACKER}")),
        "{what}: {se}"
    );
}

/// A listener bound by another (unprivileged) uid on the path the clients are given: `status`
/// and `attest --self` refuse its answer (SO_PEERCRED), as root and as a third user; only
/// `--agent-uid` makes a non-root server believed.
#[test]
fn root_forged_server_of_another_uid_is_refused_by_the_clients() {
    require_root("root (a listener bound by another uid)");
    let base = TempDir::new("forged");
    // The attacker's own directory (as in the issue: DIR owned by an unprivileged user).
    let dir = dir_of(base.path(), "attacker", ATTACKER, 0o755);
    let sock = dir.join("agent.sock");
    let s2 = sock.clone();
    let forger = on_thread_as(ATTACKER, move || {
        let l = UnixListener::bind(&s2).expect("forger binds");
        fs::set_permissions(&s2, fs::Permissions::from_mode(0o777)).expect("chmod");
        serve(l, 4, FORGED.to_string());
    });
    let end = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = run(agent().args(["status", "--socket"]).arg(&sock));
    assert_refused(&o, "status");
    let o = run(agent().args(["status", "--json", "--socket"]).arg(&sock));
    assert_refused(&o, "status --json");
    let o = run(agent().args(["attest", "--self", "--socket"]).arg(&sock));
    assert_refused(&o, "attest --self");
    let o = run(as_user(OTHER, AGENT)
        .args(["attest", "--self", "--socket"])
        .arg(&sock));
    assert_refused(&o, "attest --self as another user");
    // Unblock the forger's last accept.
    let _ = UnixStream::connect(&sock);
    forger.join().expect("forger");

    // An agent that does run as that uid is believed when the caller says so (--agent-uid).
    let svc = dir_of(base.path(), "svc", ATTACKER, 0o755);
    let sock = svc.join("agent.sock");
    let s2 = sock.clone();
    let honest = on_thread_as(ATTACKER, move || {
        let l = UnixListener::bind(&s2).expect("bind");
        serve(
            l,
            1,
            "{\"ok\":true,\"result\":{\"healthy\":true,\"agentId\":\"svc-agent\"}}\n".into(),
        );
    });
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = run(agent()
        .args(["status", "--agent-uid", &ATTACKER.to_string(), "--socket"])
        .arg(&sock));
    assert!(o.status.success(), "{} {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("svc-agent"), "{}", stdout(&o));
    honest.join().expect("svc server");
}

/// `start` refuses a socket whose path has a directory another user owns or can write (before
/// any network call), with a clear error naming the directory; its own directory, root's and
/// open to all (an emptyDir), is made sticky and served.
#[test]
fn root_start_refuses_a_socket_directory_another_user_controls() {
    require_root("root (directories owned by another uid)");
    let base = TempDir::new("sockdir");
    let open = dir_of(base.path(), "open", 0, 0o777);
    let group = dir_of(base.path(), "group", 0, 0o775);
    let cases = [
        (
            dir_of(base.path(), "users", ATTACKER, 0o755),
            "is owned by uid 65534",
        ),
        (dir_of(&open, "below", 0, 0o755), "writable by every user"),
        (dir_of(&group, "below", 0, 0o755), "writable by its group"),
        (
            dir_of(&base.path().join("users"), "below", 0, 0o755),
            "is owned by uid 65534",
        ),
    ];
    for (dir, why) in &cases {
        let sock = dir.join("agent.sock");
        let o = run(agent()
            .env("LINUXGUARD_SERVER", "https://127.0.0.1:9")
            .env("LINUXGUARD_API_KEY", "lg_test_key_Zq9Wx7Vu5Ts3Rp1N")
            .env("LINUXGUARD_WORKLOAD_ID", "abcd")
            .args(["start", "--socket"])
            .arg(&sock));
        let se = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{}: {se}", dir.display());
        assert!(
            se.contains("refusing the socket") && se.contains(why),
            "{}: {se}",
            dir.display()
        );
        assert!(!sock.exists(), "nothing was bound");
    }
    // The socket's own directory, root's and open to all (a Kubernetes emptyDir is 0777): the
    // agent makes it sticky, like /tmp, and serves.
    let mut a = Running::start_in(Some(open.clone()));
    assert_eq!(
        fs::metadata(&open).expect("stat").permissions().mode() & 0o7777,
        0o1777
    );
    assert!(a.log().contains("made it sticky"), "{}", a.log());
    let o = run(agent()
        .args(["status", "--socket"])
        .arg(open.join("agent.sock")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.alive());
}

/// A caller who may not open the socket is told so (not "the agent is not running").
#[test]
fn root_status_without_permission_says_permission_denied() {
    require_root("root (a socket another user may not open)");
    let base = TempDir::new("denied");
    let sock = base.path().join("agent.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = run(as_user(OTHER, AGENT)
        .args(["status", "--socket"])
        .arg(&sock));
    let se = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{se}");
    assert!(se.contains("permission denied"), "{se}");
    assert!(!se.contains("not running"), "{se}");
    drop(l);
}

/// A server that trickles its answer a byte per 200 ms cannot hold `status` past its one
/// deadline (5 s), and control characters in an answer never reach the terminal raw.
#[test]
fn status_has_one_deadline_and_escapes_control_characters() {
    let base = TempDir::new("trickle");
    let sock = base.path().join("agent.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    let t = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut b = [0u8; 512];
        let _ = s.read(&mut b);
        let body = format!(
            "{{\"ok\":true,\"result\":{{\"pad\":\"{}\"}}}}\n",
            "x".repeat(200)
        );
        for byte in body.bytes() {
            if s.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let started = Instant::now();
    let o = run(agent().args(["status", "--socket"]).arg(&sock));
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no complete answer from the agent within 5"),
        "{}",
        stderr(&o)
    );
    assert!(took < Duration::from_secs(8), "status took {took:?}");
    drop(t);

    // Hostile text: ESC sequences, DEL, C1 CSI, a bidi override, in keys and values.
    let evil = "{\"ok\":true,\"result\":{\"healthy\":false,\"reason\":\"\\u001b]0;owned\\u0007\\u009b2J\",\
                \"k\\u001b[31m\":\"v\\u007f\\u202e\"}}\n";
    let refusal = "{\"ok\":false,\"error\":\"\\u001b[2Jno \\u009b\"}\n";
    for (answer, args) in [
        (evil, &["status"][..]),
        (evil, &["status", "--json"][..]),
        (refusal, &["status"][..]),
        (refusal, &["attest", "--self"][..]),
    ] {
        let sock = base.path().join("evil.sock");
        let _ = fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).expect("bind");
        let a = answer.to_string();
        let t = std::thread::spawn(move || serve(l, 1, a));
        let o = run(agent().args(args).arg("--socket").arg(&sock));
        t.join().expect("server");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            !all.chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{args:?} printed control characters raw: {all:?}"
        );
        assert!(all.contains("\\u"), "{args:?}: escaped: {all:?}");
    }
}

/// `show-config` prints settings from flags and the environment: their control characters
/// are escaped too.
#[test]
fn show_config_escapes_control_characters() {
    let o = run(agent()
        .args(["show-config", "--workload-id", "abcd", "--tenant-id"])
        .arg("t\u{1b}]0;x\u{7}")
        .args(["--proc-root", "/tmp/\u{1b}[2J\u{9b}"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let so = stdout(&o);
    assert!(
        !so.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters: {so:?}"
    );
    assert!(so.contains("\\u{1b}[2J"), "{so}");
    let o = run(agent()
        .args([
            "show-config",
            "--json",
            "--workload-id",
            "abcd",
            "--proc-root",
        ])
        .arg("/tmp/\u{9b}x"));
    let so = stdout(&o);
    assert!(!so.contains('\u{9b}'), "{so:?}");
    let v: Value = serde_json::from_str(so.trim()).expect("still JSON");
    assert_eq!(v["settings"]["proc-root"]["value"], "/tmp/\u{9b}x");
}

/// One running agent (real BPF, real backend) with its socket open to every user.
struct Running {
    _dir: TempDir,
    sock: PathBuf,
    agent: common::Agent,
    _be: Backend,
}

impl Running {
    fn start() -> Running {
        Running::start_in(None)
    }
    /// With the socket in `sock_dir` (default: the run's own directory).
    fn start_in(sock_dir: Option<PathBuf>) -> Running {
        let be = start_backend(&["--token", TOKEN]);
        let dir = TempDir::new("hardening-agent");
        let sock = sock_dir
            .unwrap_or_else(|| dir.path().to_path_buf())
            .join("agent.sock");
        let log = dir.path().join("agent.log");
        let mut c = agent();
        c.current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("LINUXGUARD_SERVER", &be.url)
            .env("LINUXGUARD_SERVER_CA", be.ca_pem_path())
            .env("LINUXGUARD_TENANT_ID", "demo")
            .env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
            .env("LINUXGUARD_WORKLOAD_ID", "e2e0000000000020")
            .env("LINUXGUARD_SOCKET", &sock)
            .args(["start", "--socket-mode", "0666"]);
        let mut agent = common::Agent::spawn(&mut c, log, None, None);
        agent.wait_log("startup: sensors attached", 60);
        Running {
            _dir: dir,
            sock,
            agent,
            _be: be,
        }
    }
    fn socket(&self) -> PathBuf {
        self.sock.clone()
    }
    fn alive(&mut self) -> bool {
        self.agent.alive()
    }
    fn log(&self) -> String {
        self.agent.log()
    }
}

/// Sends `line` and reads the whole answer; a reset is an error.
fn exchange(sock: &Path, line: &[u8]) -> std::io::Result<String> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(line)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The running agent's socket: silent connections are cut at 250 ms, at whatever phase of the
/// agent's loop they arrive (before: at the next once-a-second housekeeping pass, ~1.0 s).
#[test]
fn root_socket_cuts_silent_connections_at_250_ms() {
    require_root("root and BPF (the running agent)");
    let mut a = Running::start();
    let sock = a.socket();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let t = Instant::now();
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        held.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(170));
    }
    assert!(
        held.iter().all(|d| *d < Duration::from_millis(450)),
        "silent connections held for {held:?} (documented: 250 ms)"
    );
    assert!(a.alive(), "{}", a.log());
}

/// The running agent's socket: a line of 4,096 bytes is answered; lines over it (4,097 and
/// 5,000 bytes too) get the error answer, and 8 KB and 60 KB lines get it without a reset.
#[test]
fn root_socket_lines_over_4096_bytes_get_the_error_answer_without_a_reset() {
    require_root("root and BPF (the running agent)");
    let mut a = Running::start();
    let sock = a.socket();
    let status_line = |len: usize| {
        let mut v = br#"{"request":"status"}"#.to_vec();
        v.resize(len, b' ');
        v.push(b'\n');
        v
    };
    let ok = exchange(&sock, &status_line(4096)).expect("4096-byte line");
    assert!(ok.contains("\"ok\":true"), "{ok}");
    for len in [4097, 5000, 8192, 60_000] {
        let answer = exchange(&sock, &status_line(len))
            .unwrap_or_else(|e| panic!("{len}-byte line: {e} instead of the error answer"));
        assert!(
            answer.contains("\"ok\":false") && answer.contains("request too long"),
            "{len}: {answer}"
        );
    }
    assert!(a.alive(), "{}", a.log());
}

/// One unprivileged uid holding silent connections from twenty `unshare -Urpf` children (new
/// user and pid namespaces each) and from the host cannot make another uid's `attest --self`
/// or `status` fail: slots are per uid as the agent sees it, not per namespace.
#[test]
fn root_socket_one_uid_in_many_namespaces_cannot_starve_another_uid() {
    require_root("root and BPF (the running agent)");
    let mut a = Running::start();
    let sock = a.socket();
    let helpers = TempDir::new("hold");
    let hold = build_c_helper(helpers.path(), "hold_conns.c", &[]);
    fs::set_permissions(helpers.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let hold = hold.to_string_lossy().into_owned();
    let sock_s = sock.to_string_lossy().into_owned();
    let mut attackers: Vec<Child> = (0..20)
        .map(|_| {
            as_user(ATTACKER, "unshare")
                .args(["-Urpf", &hold, &sock_s, "4", "12"])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn unshare attacker")
        })
        .chain((0..2).map(|_| {
            as_user(ATTACKER, &hold)
                .args([&sock_s, "8", "12"])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn attacker")
        }))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut failures = Vec::new();
    for i in 0..5 {
        for cmd in [&["attest", "--self"][..], &["status"][..]] {
            let o = run(as_user(OTHER, AGENT).args(cmd).arg("--socket").arg(&sock));
            if !o.status.success() {
                failures.push(format!("{cmd:?} #{i}: {}", stderr(&o)));
            }
        }
    }
    let conns = {
        let o = run(agent().args(["status", "--json", "--socket"]).arg(&sock));
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<Value>(stdout(&o).trim()).expect("status JSON")["pipeline"]
            ["socketConnections"]
            .clone()
    };
    for c in &mut attackers {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        failures.is_empty(),
        "another uid was starved while uid {ATTACKER} held connections: {failures:#?}"
    );
    // The attacker's uid holds at most its 4 slots (plus the probe's own, when counted).
    assert!(conns.as_u64().is_some_and(|n| n <= 6), "{conns}");
    assert!(a.alive(), "{}", a.log());
}

/// A binary under 18 directories of 255 characters, ending in `/usr/bin/python3-aaa...`: the
/// kernel walk stops early, and the exec event says so (`executable_truncated`, a path that
/// starts with `...`, never a plausible complete path), with `args_truncated` false.
#[test]
fn root_exec_of_a_path_the_kernel_walk_cannot_finish_is_marked_truncated() {
    require_root("root and BPF (watch)");
    use std::os::fd::AsRawFd;
    let base = TempDir::new("deep");
    // Build the tree through /proc/self/fd/N: the full path is longer than PATH_MAX.
    let long = "a".repeat(255);
    let mut dir = fs::File::open(base.path()).expect("open base");
    for _ in 0..18 {
        let at = format!("/proc/self/fd/{}/{long}", dir.as_raw_fd());
        fs::create_dir(&at).expect("mkdir");
        dir = fs::File::open(&at).expect("open level");
    }
    let bin_dir = format!("/proc/self/fd/{}/usr/bin", dir.as_raw_fd());
    fs::create_dir_all(&bin_dir).expect("mkdir usr/bin");
    let leaf = format!("python3-{}", "a".repeat(200));
    let exe = format!("{bin_dir}/{leaf}");
    fs::copy("/bin/true", &exe).expect("copy /bin/true");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    let w = Watch::start(&[]);
    let mark = common::marker("deep");
    // The child runs it by its short /proc/self/fd path: the fd is inherited across fork and
    // closed (close-on-exec) only after exec has looked the path up.
    let st = Command::new(&exe)
        .arg(&mark)
        .status()
        .expect("run the deep binary");
    assert!(st.success());
    let ev = w.wait_for("exec of the deep binary", |v| {
        v["type"] == "exec"
            && v["process"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == mark.as_str()))
    });
    let _ = w.stop();
    let p = &ev["process"];
    let shown = p["executable"].as_str().expect("executable");
    assert_eq!(p["executable_truncated"], true, "{ev}");
    assert!(
        shown.starts_with("...") && !shown.starts_with('/'),
        "looks complete: {shown}"
    );
    assert!(shown.ends_with(&format!("/usr/bin/{leaf}")), "{shown}");
    assert_eq!(p["args_truncated"], false, "{ev}");
    drop(dir);
}

/// Secrets given as flags never reach events: the agent's own `--api-key`/`--enroll-token`
/// (this binary, also through a hard link under another name), well-known flags of any
/// program in both forms and inside a shell command line; `--enroll-token` of another program
/// is its own business.
#[test]
fn root_secret_flags_never_reach_exec_events() {
    require_root("root and BPF (watch)");
    let w = Watch::start(&[]);
    let dir = TempDir::new("redact");
    let link = dir.path().join("renamed-tool");
    fs::hard_link(AGENT, &link).expect("hard link the agent");
    let mark = common::marker("redact");
    let secrets = [
        format!("{mark}-KEY1"),
        format!("{mark}-TOK2"),
        format!("{mark}-LINK3"),
        format!("{mark}-PW4"),
        format!("{mark}-TOK5"),
        format!("{mark}-SH6"),
        format!("{mark}-ENV7"),
    ];
    let quiet = |c: &mut Command| {
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    let show = ["show-config", "--workload-id", "abcd", "--tenant-id", &mark];
    quiet(agent().args(show).args(["--api-key", &secrets[0]]));
    quiet(
        agent()
            .args(show)
            .arg(format!("--enroll-token={}", secrets[1])),
    );
    quiet(
        Command::new(&link)
            .args(show)
            .args(["--enroll-token", &secrets[2]]),
    );
    quiet(Command::new("/bin/echo").args([
        "--password",
        &secrets[3],
        &format!("--token={}", secrets[4]),
        "--enroll-token",
        &format!("{mark}-visible"),
    ]));
    quiet(
        Command::new("/bin/sh").args(["-c", &format!("true --password '{} x' {mark}", secrets[5])]),
    );
    quiet(Command::new("/usr/bin/env").args([
        &format!("LINUXGUARD_API_KEY={}", secrets[6]),
        "/bin/true",
        &mark,
    ]));
    // The last exec of the batch is in: everything before it was read from the ring too.
    let last = w.wait_for("the env exec", |v| {
        v["type"] == "exec"
            && v["process"]["executable"]
                .as_str()
                .is_some_and(|e| e.ends_with("/env"))
            && v.to_string().contains(&mark)
    });
    w.wait_for("the visible flag", |v| {
        v["type"] == "exec" && v.to_string().contains(&format!("{mark}-visible"))
    });
    std::thread::sleep(Duration::from_millis(500));
    let events = w.events.lock().expect("lock").clone();
    let (_, err) = w.stop();
    let execs: Vec<&Value> = events
        .iter()
        .filter(|v| v["type"] == "exec" && v.to_string().contains(&mark))
        .collect();
    assert!(execs.len() >= 6, "exec events seen: {execs:#?}\n{err}");
    for s in &secrets {
        for v in &events {
            assert!(!v.to_string().contains(s.as_str()), "{s} leaked: {v}");
        }
    }
    let redacted = execs
        .iter()
        .filter(|v| v["process"]["args_redacted"] == true)
        .count();
    assert!(redacted >= 6, "args_redacted: {execs:#?}");
    assert_eq!(last["process"]["args_redacted"], true, "{last}");
    assert!(
        last.to_string().contains("LINUXGUARD_API_KEY=[REDACTED]"),
        "{last}"
    );
}

/// Start in a directory, with a backend, waiting for `needle` in the log.
fn start_with_cache(be: &Backend, home: &TempDir, needle: &str) -> String {
    let log = home.path().join("agent.log");
    let mut child = agent()
        .current_dir(home.path())
        .env("RUST_LOG", "info")
        .env("LINUXGUARD_SERVER", &be.url)
        .env("LINUXGUARD_SERVER_CA", be.ca_pem_path())
        .env("LINUXGUARD_TENANT_ID", "demo")
        .env("LINUXGUARD_ENROLL_TOKEN", TOKEN)
        .env("LINUXGUARD_WORKLOAD_ID", "e2e0000000000021")
        .env("LINUXGUARD_TLS_CACHE", home.path().join("tls"))
        .env("LINUXGUARD_SOCKET", home.path().join("agent.sock"))
        .arg("start")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let end = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) {
            break text;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {needle:?} within 20 s (start blocked?):\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM, as an operator would: it must stop promptly.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let end = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < end, "start ignored SIGTERM:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    text
}

/// A FIFO planted as `.tag` or `identity.json` does not block start-up (it is refused as not
/// a regular file and the agent enrols); `identity.json` as a directory gets a clear warning
/// and leaves no `.identity.json.tmp` (which would hold the private key) behind.
#[test]
fn tls_cache_fifos_and_a_directory_are_refused_without_blocking_or_leftovers() {
    let be = start_backend(&["--token", TOKEN]);
    for name in [".tag", "identity.json"] {
        let home = TempDir::new("cache-fifo");
        let cache = home.path().join("tls");
        fs::create_dir(&cache).expect("mkdir");
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).expect("chmod");
        nix::unistd::mkfifo(
            &cache.join(name),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let log = start_with_cache(&be, &home, "enrolled as agent");
        assert!(
            log.contains("not a regular file (a FIFO)"),
            "{name}: the FIFO is named in the log:\n{log}"
        );
    }
    let home = TempDir::new("cache-dir");
    let cache = home.path().join("tls");
    fs::create_dir_all(cache.join("identity.json")).expect("mkdir");
    fs::write(cache.join("identity.json").join("keep"), b"x").expect("a file inside");
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).expect("chmod");
    let log = start_with_cache(&be, &home, "enrolled as agent");
    assert!(
        log.contains("identity.json") && log.contains("is a directory, not a file"),
        "{log}"
    );
    assert!(
        !cache.join(".identity.json.tmp").exists(),
        "the temp file with the private key was left behind"
    );
    let left: Vec<_> = fs::read_dir(&cache)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.ends_with(".tmp")),
        "leftovers: {left:?}"
    );
}

/// `attest --pid` of a process whose cgroup path is not UTF-8 (any bytes make a cgroup name)
/// reports its placement, not "process not found".
#[test]
fn attest_on_a_cgroup_path_that_is_not_utf8_finds_the_process() {
    let root = TempDir::new("attest-utf8");
    let p = root.path().join("4242");
    fs::create_dir_all(&p).expect("mkdir");
    fs::write(
        p.join("cgroup"),
        b"0::/user.slice/user-1000.slice/\xff\xfe-evil.scope\n",
    )
    .expect("cgroup");
    fs::write(p.join("mountinfo"), b"").expect("mountinfo");
    let o = run(agent()
        .args(["attest", "--pid", "4242", "--proc-root"])
        .arg(root.path()));
    let (so, se) = (stdout(&o), stderr(&o));
    assert!(!se.contains("not found"), "{se}");
    assert_eq!(o.status.code(), Some(6), "{so} {se}");
    assert!(se.contains("not in a Kubernetes pod"), "{se}");
}

/// A non-root user with CAP_BPF and CAP_PERFMON and tracefs mounted but closed to it (the
/// default mode 0700) is told that, not "tracefs is not mounted". A private mount namespace
/// with a 0700 directory at the tracefs path makes this independent of the host's mode.
#[test]
fn root_tracefs_closed_to_a_capable_user_is_named_as_unreadable() {
    require_root("root (a private mount namespace, a capable non-root user)");
    let script = format!(
        "mount -t tmpfs -o mode=0700 none /sys/kernel/tracing && mkdir /sys/kernel/tracing/events && \
         exec setpriv --reuid={ATTACKER} --regid={ATTACKER} --clear-groups --inh-caps=+bpf,+perfmon \
         --ambient-caps=+bpf,+perfmon {AGENT} watch"
    );
    let o = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("RUST_LOG"));
    let se = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{se}");
    assert!(
        se.contains("tracefs at /sys/kernel/tracing is not readable by this user (uid 65534)"),
        "{se}"
    );
    assert!(!se.contains("not mounted"), "{se}");
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The README's two commands work verbatim for root and for a normal user: neither starts
/// with `sudo` (a root machine may have none); the scripts elevate themselves with sudo only
/// when not root, and say clearly what to do when there is no sudo.
#[test]
fn root_readme_commands_elevate_only_when_needed() {
    require_root("root (runs the scripts as another user)");
    let readme = fs::read_to_string(repo("README.md")).expect("README");
    let block: Vec<&str> = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the first sh block")
        .lines()
        .collect();
    assert_eq!(block.len(), 2, "{block:?}");
    for l in &block {
        assert!(!l.trim_start().starts_with("sudo"), "{l}");
    }
    assert!(
        block[0].starts_with("scripts/setup && scripts/watch"),
        "{}",
        block[0]
    );
    assert!(block[1].starts_with("scripts/test "), "{}", block[1]);

    // A normal user: a sudo that records how it was asked, and none at all.
    let fake = TempDir::new("fake-sudo");
    let bin = fake.path().join("bin");
    fs::create_dir(&bin).expect("mkdir");
    let record = fake.path().join("sudo.log");
    let sudo = bin.join("sudo");
    fs::write(
        &sudo,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 0\n", record.display()),
    )
    .expect("fake sudo");
    // A dpkg-query that says nothing is installed, so setup has apt work to elevate.
    fs::write(bin.join("dpkg-query"), "#!/bin/sh\nexit 1\n").expect("fake dpkg-query");
    for f in ["sudo", "dpkg-query"] {
        fs::set_permissions(bin.join(f), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fs::set_permissions(fake.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    // Without sudo: every program of /usr/bin and /bin but sudo (a machine may have one).
    let nosudo = fake.path().join("nosudo");
    fs::create_dir(&nosudo).expect("mkdir");
    for d in ["/usr/bin", "/bin"] {
        for e in fs::read_dir(d).expect("list").flatten() {
            let name = e.file_name();
            if name != "sudo" && !nosudo.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(e.path(), nosudo.join(&name));
            }
        }
    }
    fs::copy(bin.join("dpkg-query"), nosudo.join("dpkg-query.fake")).expect("copy");
    let _ = fs::remove_file(nosudo.join("dpkg-query"));
    fs::rename(nosudo.join("dpkg-query.fake"), nosudo.join("dpkg-query")).expect("rename");
    let with_sudo = format!("{}:/usr/bin:/bin", bin.display());
    let without = nosudo.display().to_string();
    let script = |name: &str, path: &str| {
        let mut c = as_user(ATTACKER, "/bin/bash");
        c.arg(repo(&format!("scripts/{name}")))
            .env("PATH", path)
            .env("HOME", fake.path());
        run(&mut c)
    };
    for name in ["test", "watch"] {
        let _ = fs::remove_file(&record);
        let o = script(name, &with_sudo);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let asked = fs::read_to_string(&record).unwrap_or_default();
        assert!(
            asked.contains(&format!("scripts/{name}")) || asked.contains("linuxguard-agent watch"),
            "{name} did not re-run itself with sudo: {asked:?}"
        );
        let o = script(name, &without);
        let se = stderr(&o);
        assert_ne!(o.status.code(), Some(127), "{name}: {se}");
        assert!(!o.status.success(), "{name}");
        assert!(
            se.contains("needs root") && se.contains("sudo"),
            "{name}: {se}"
        );
    }
    // setup: only the apt step is elevated; without sudo it says so.
    let _ = fs::remove_file(&record);
    let o = script("setup", &with_sudo);
    let asked = fs::read_to_string(&record).unwrap_or_default();
    assert!(asked.contains("apt-get"), "setup: {asked:?} {}", stderr(&o));
    let o = script("setup", &without);
    let se = stderr(&o);
    assert_ne!(o.status.code(), Some(127), "{se}");
    assert!(
        se.contains("needs root") && se.contains("sudo"),
        "setup: {se}"
    );
    // As root the scripts never ask sudo (there may be none).
    let _ = fs::remove_file(&record);
    let o = run(Command::new(repo("scripts/watch"))
        .arg("--help")
        .env("PATH", &with_sudo));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("watch"), "{}", stdout(&o));
    assert!(!record.exists(), "root was sent through sudo");
}
