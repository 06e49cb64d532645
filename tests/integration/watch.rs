//! `watch` against the real kernel: starts the real binary, causes real events (a child process,
//! TCP connections over IPv4 and IPv6, setuid, memfd) and asserts them with their fields.
//! Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Agent, TempDir, agent, build_c_helper, marker};

/// A running `watch` whose stdout lines are collected in the background.
pub(crate) struct Watch {
    /// The agent process (stderr in its log file, stdout read here).
    pub(crate) agent: Agent,
    pub(crate) events: Arc<Mutex<Vec<Value>>>,
    _dir: TempDir,
}

impl Watch {
    pub(crate) fn start(extra: &[&str]) -> Watch {
        let dir = TempDir::new("watch");
        let mut c = agent();
        c.arg("watch").args(extra);
        let mut a = Agent::spawn(
            &mut c,
            dir.path().join("watch.log"),
            None,
            Some(Stdio::piped()),
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = a.child.stdout.take().expect("piped stdout");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("watch printed a line that is not JSON ({e}): {line}")
                });
                ev.lock().expect("lock").push(v);
            }
        });
        a.wait_log("watching:", 30);
        Watch {
            agent: a,
            events,
            _dir: dir,
        }
    }

    /// Waits up to 10 s for an event matching `pred`.
    pub(crate) fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.events.lock().expect("lock").iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!("no {what} event within 10 s; stderr: {}", self.agent.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, then the exit status and stderr.
    pub(crate) fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with(nix::sys::signal::Signal::SIGINT)
    }

    fn stop_with(mut self, sig: nix::sys::signal::Signal) -> (std::process::ExitStatus, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.agent.pid() as i32), sig)
            .expect("signal watch");
        let status = self.agent.wait_exit(30);
        (status, self.agent.log())
    }
}

pub(crate) fn pid_of(v: &Value) -> u64 {
    v["process"]["pid"].as_u64().unwrap_or(0)
}

#[test]
fn root_watch_reports_exec_fork_exit_of_a_child() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let mark = marker("exit7");
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 7", &mark])
        .status()
        .expect("run sh");
    assert_eq!(status.code(), Some(7));
    let sh = std::fs::canonicalize("/bin/sh").expect("resolve /bin/sh");
    let exec = w.wait_for("exec", |v| {
        v["type"] == "exec"
            && v["process"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == mark.as_str()))
    });
    let pid = pid_of(&exec);
    assert!(pid > 0);
    assert_eq!(exec["process"]["executable"], sh.to_string_lossy().as_ref());
    assert_eq!(
        exec["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 7", mark])
    );
    assert_eq!(exec["process"]["args_count"], 4);
    assert_eq!(exec["process"]["args_truncated"], false);
    assert_eq!(exec["process"]["parent"]["pid"], std::process::id());
    assert_eq!(exec["process"]["user"]["id"], "0");
    assert_eq!(
        exec["event"],
        serde_json::json!({"kind": "event", "category": ["process"], "type": ["start"], "action": "exec"})
    );
    assert_eq!(exec["process"]["fileless"], false);
    assert!(exec["process"]["namespaces"]["pid"].as_u64().unwrap_or(0) > 0);
    assert!(
        exec["@timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 30)
    );
    let exit = w.wait_for("exit", |v| v["type"] == "exit" && pid_of(v) == pid);
    assert_eq!(exit["process"]["exit_code"], 7);
    assert_eq!(exit["process"]["exit_signal"], 0);
    assert_eq!(exit["process"]["executable"], sh.to_string_lossy().as_ref());
    assert!(
        exit["process"]["lifetime_ns"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    let fork = w.wait_for("fork", |v| v["type"] == "fork" && pid_of(v) == pid);
    assert_eq!(fork["process"]["parent"]["pid"], std::process::id());
    assert!(fork["seq"].as_u64() < exec["seq"].as_u64());
    assert!(exec["seq"].as_u64() < exit["seq"].as_u64());
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
    assert!(err.contains("final stats:"), "no final stats: {err}");
    assert!(err.contains("dropped_kernel=0"), "{err}");
}

fn tcp_roundtrip(addr: &str) -> (u16, u16) {
    let l = TcpListener::bind(addr).expect("bind loopback listener");
    let port = l.local_addr().expect("addr").port();
    let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (mut s, _) = l.accept().expect("accept");
    c.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("read");
    let client_port = c.local_addr().expect("addr").port();
    (port, client_port)
}

#[test]
fn root_watch_reports_tcp_connect_and_accept_over_ipv4_and_ipv6() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let me = u64::from(std::process::id());
    for (bind, ip, kind) in [
        ("127.0.0.1:0", "127.0.0.1", "ipv4"),
        ("[::1]:0", "::1", "ipv6"),
    ] {
        let (port, client_port) = tcp_roundtrip(bind);
        let c = w.wait_for("connect", |v| {
            v["type"] == "connect" && v["destination"]["port"] == port && pid_of(v) == me
        });
        assert_eq!(c["destination"]["ip"], ip);
        assert_eq!(c["source"]["port"], client_port);
        assert_eq!(c["network"]["transport"], "tcp");
        assert_eq!(c["network"]["type"], kind);
        assert_eq!(c["network"]["direction"], "egress");
        assert_eq!(c["network"]["result"], 0);
        let a = w.wait_for("accept", |v| {
            v["type"] == "accept" && v["destination"]["port"] == port && pid_of(v) == me
        });
        // ECS: for an inbound connection the remote client is the source.
        assert_eq!(a["source"]["port"], client_port);
        assert_eq!(a["source"]["ip"], ip);
        assert_eq!(a["network"]["direction"], "ingress");
    }
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_watch_reports_setuid_in_a_child() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let child = Command::new("/bin/true")
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("spawn as nobody");
    let pid = u64::from(child.id());
    let mut child = child;
    child.wait().expect("wait");
    let ev = w.wait_for("setuid", |v| {
        v["type"] == "setuid" && pid_of(v) == pid && v["credentials"]["syscall"] == "setuid"
    });
    assert_eq!(ev["credentials"]["old"]["uid"], 0);
    assert_eq!(ev["credentials"]["new"]["uid"], 65534);
    assert_eq!(ev["credentials"]["new"]["euid"], 65534);
    let g = w.wait_for("setgid", |v| {
        v["type"] == "setuid" && pid_of(v) == pid && v["credentials"]["syscall"] == "setgid"
    });
    assert_eq!(g["credentials"]["new"]["gid"], 65534);
    // The exec that follows runs with the new credentials.
    let exec = w.wait_for("exec", |v| v["type"] == "exec" && pid_of(v) == pid);
    assert_eq!(exec["process"]["user"]["id"], "65534");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_watch_reports_memfd_create_and_fileless_exec() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let name = marker("memfd");
    let fd = nix::sys::memfd::memfd_create(name.as_str(), nix::sys::memfd::MFdFlags::empty())
        .expect("memfd_create");
    let mut f = std::fs::File::from(fd);
    f.write_all(&std::fs::read("/bin/true").expect("read /bin/true"))
        .expect("fill memfd");
    use std::os::fd::AsRawFd;
    let path = format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd());
    let status = Command::new(&path).status().expect("exec the memfd");
    assert!(status.success());
    let m = w.wait_for("memfd", |v| {
        v["type"] == "memfd" && v["memfd"]["name"] == name.as_str()
    });
    assert_eq!(pid_of(&m), u64::from(std::process::id()));
    assert!(m["memfd"]["result"].as_i64().is_some_and(|r| r >= 0));
    let exec = w.wait_for("fileless exec", |v| {
        v["type"] == "exec"
            && v["process"]["fileless"] == true
            && v["process"]["executable"]
                .as_str()
                .is_some_and(|e| e.contains(name.as_str()))
    });
    assert_eq!(exec["process"]["parent"]["pid"], std::process::id());
    // A file on disk merely named like one is not fileless, and keeps its absolute path.
    let dir = TempDir::new("memfd-name");
    let fake = dir.path().join(format!("memfd:{}", marker("ondisk")));
    // Copied by a child process: a file this (multi-threaded) test process had open for writing
    // could be inherited by a process another test forks meanwhile, and the exec below would
    // then fail with ETXTBSY.
    let cp = Command::new("cp").arg("/bin/true").arg(&fake).status();
    assert!(cp.expect("run cp").success(), "cp /bin/true");
    assert!(Command::new(&fake).status().expect("exec").success());
    let fake = std::fs::canonicalize(&fake).expect("canonical path");
    let fake = fake.to_str().expect("utf-8 path");
    let exec = w.wait_for("exec of a file named memfd:", |v| {
        v["type"] == "exec" && v["process"]["executable"] == fake
    });
    assert_eq!(exec["process"]["fileless"], false, "{exec}");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_watch_stats_events_and_closed_stdout_end_cleanly() {
    crate::common::require_root("root");
    // --stats-interval: {"type":"stats"} events on stdout.
    let w = Watch::start(&["--stats-interval", "1"]);
    let s = w.wait_for("stats", |v| v["type"] == "stats");
    assert_eq!(s["schema_version"], 2);
    assert!(s["stats"]["seen"]["exec"].is_u64());
    assert!(s["stats"]["dropped_kernel"].is_u64());
    assert!(s["stats"]["dropped_user"].is_u64());
    assert!(s["stats"]["ring_buffer"]["size_bytes"] == 2 << 20); // the default --ring-buffer-mb
    // SIGTERM stops as cleanly as SIGINT: exit 0, a last stats event, final counters.
    let (status, err) = w.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{err}");
    assert!(err.contains("final stats:"), "{err}");

    // A reader that goes away: watch stops by itself, successfully.
    let mut child = agent()
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    // Make sure at least one event comes: the sensor attaches a moment after the spawn, and
    // reading blocks until a line arrives, so processes keep starting until one has.
    let got_one = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let got_one = got_one.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !got_one.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                let _ = Command::new("/bin/true").status();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let first = lines.next();
    got_one.store(true, std::sync::atomic::Ordering::SeqCst);
    busy.join().expect("process starter");
    assert!(first.is_some(), "no event at all");
    drop(lines);
    for _ in 0..50 {
        let _ = Command::new("/bin/true").status();
        if let Ok(Some(st)) = child.try_wait() {
            assert!(st.success(), "watch exited with {st} after its reader left");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("watch kept running after stdout was closed");
}

#[test]
fn root_watch_reports_bpf_loads_and_ptrace_by_other_processes() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    // A second agent loading its programs is "another process loading BPF".
    let second = Watch::start(&[]);
    let spid = u64::from(second.agent.pid());
    let b = w.wait_for("bpf_load", |v| v["type"] == "bpf_load" && pid_of(v) == spid);
    assert!(b["bpf"]["prog_type"].is_u64());
    assert!(b["bpf"]["insn_count"].as_u64().is_some_and(|n| n > 0));
    let _ = second.stop();
    // The first agent's own loads are filtered in the kernel: none come from its pid.
    let me = u64::from(w.agent.pid());
    assert!(
        !w.events
            .lock()
            .expect("lock")
            .iter()
            .any(|v| pid_of(v) == me)
    );

    // ptrace: attach to a sleeping child.
    let mut victim = Command::new("/bin/sleep")
        .arg("5")
        .spawn()
        .expect("spawn sleep");
    let vpid = nix::unistd::Pid::from_raw(victim.id() as i32);
    nix::sys::ptrace::attach(vpid).expect("PTRACE_ATTACH");
    let _ = nix::sys::wait::waitpid(vpid, None);
    let _ = nix::sys::ptrace::detach(vpid, None);
    let _ = victim.kill();
    let _ = victim.wait();
    let p = w.wait_for("ptrace", |v| {
        v["type"] == "ptrace" && v["ptrace"]["target"]["pid"] == u64::from(victim.id())
    });
    assert_eq!(p["ptrace"]["request"], "attach");
    assert_eq!(p["ptrace"]["result"], 0);
    assert_eq!(pid_of(&p), u64::from(std::process::id()));
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// A loader whose second thread keeps rewriting the attr's prog_name during BPF_PROG_LOAD
/// (tests/integration/bpfrace.c): every bpf_load event must name the program the kernel
/// actually loaded, and give its size, not whatever the caller's memory held at the exit.
#[test]
fn root_watch_bpf_load_reports_the_kernel_copy_not_the_callers_memory() {
    crate::common::require_root("root");
    let dir = TempDir::new("bpfrace");
    let bin = build_c_helper(dir.path(), "bpfrace.c", &["-pthread"]);
    let w = Watch::start(&[]);
    let n = 20;
    let out = Command::new(&bin)
        .arg(n.to_string())
        .output()
        .expect("run bpfrace");
    assert!(
        out.status.success(),
        "bpfrace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("bpfrace JSON");
    let pid = r["pid"].as_u64().expect("pid");
    let loads = r["loads"].as_array().expect("loads");
    assert_eq!(loads.len(), n);
    let loaded = || -> Vec<Value> {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| v["type"] == "bpf_load" && pid_of(v) == pid)
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} loads seen",
            loaded().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = loaded();
    for (i, (ev, load)) in events.iter().zip(loads).enumerate() {
        assert_eq!(ev["bpf"]["prog_name"], load["name"], "load {i}: {ev}");
        assert_eq!(ev["bpf"]["insn_count"], load["insns"], "load {i}: {ev}");
        assert_eq!(
            ev["bpf"]["prog_type"], 1,
            "BPF_PROG_TYPE_SOCKET_FILTER: {ev}"
        );
    }
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// ptrace from inside a pid namespace (tests/integration/ptracens.c): the namespace's init
/// attaches to its child, pid 2 in there. The event names the tracee by its host pid (pid 2 on
/// the host is kthreadd), and a failed attach says its pid is the tracer's own number for it.
#[test]
fn root_watch_ptrace_inside_a_pid_namespace_names_the_host_pid() {
    crate::common::require_root("root");
    let dir = TempDir::new("ptracens");
    let bin = build_c_helper(dir.path(), "ptracens.c", &[]);
    let w = Watch::start(&[]);
    let out = Command::new(&bin).output().expect("run ptracens");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ptracens: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ns_child=2 attach=0 bad=-3"), "{text}");
    let exe = bin.to_str().expect("utf-8 path");
    let ok = w.wait_for("the attach inside the namespace", |v| {
        v["type"] == "ptrace" && v["ptrace"]["result"] == 0 && v["process"]["executable"] == exe
    });
    let tracer = pid_of(&ok);
    let child = w.wait_for("the tracee's fork", |v| {
        v["type"] == "fork" && v["process"]["parent"]["pid"] == tracer
    });
    assert_eq!(
        ok["ptrace"]["target"]["pid"], child["process"]["pid"],
        "{ok}"
    );
    assert_eq!(ok["ptrace"]["target"]["executable"], exe, "{ok}");
    assert!(
        ok["ptrace"].get("target_pid_in_tracer_ns").is_none(),
        "{ok}"
    );
    let bad = w.wait_for("the failed attach", |v| {
        v["type"] == "ptrace" && v["ptrace"]["result"] == -3 && pid_of(v) == tracer
    });
    assert_eq!(bad["ptrace"]["target"]["pid"], 4242, "{bad}");
    assert_eq!(bad["ptrace"]["target_pid_in_tracer_ns"], true, "{bad}");
    assert!(bad["ptrace"]["target"].get("executable").is_none(), "{bad}");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_watch_without_privileges_says_what_is_missing() {
    crate::common::require_root("root (to drop to an unprivileged user)");
    let out = agent()
        .arg("watch")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run watch as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs root, or CAP_BPF and CAP_PERFMON"),
        "{err}"
    );
}

#[test]
fn root_watch_counts_kernel_drops_when_the_reader_stalls() {
    crate::common::require_root("root");
    // A 1 MiB ring and a stopped reader: exec records (about 2 KiB each) fill it quickly.
    let w = Watch::start(&["--ring-buffer-mb", "1"]);
    let pid = nix::unistd::Pid::from_raw(w.agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    for _ in 0..1500 {
        let _ = Command::new("/bin/true").status();
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    std::thread::sleep(Duration::from_millis(500));
    let events = w.events.clone();
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("final stats:"))
        .unwrap_or_else(|| panic!("no final stats: {err}"));
    let dropped: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dropped_kernel="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped_kernel in {line}"));
    assert!(dropped > 0, "a full ring buffer must be counted: {line}");
    // What did arrive is numbered without gaps: loss is only ever in the kernel counter.
    let seqs: Vec<u64> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(!seqs.is_empty());
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1);
    }
}

#[test]
fn root_watch_reports_capset_that_changes_capabilities() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    // setpriv (util-linux) calls capset() to add CAP_NET_RAW (bit 13) to the inheritable set.
    let mut child = Command::new("setpriv")
        .args(["--inh-caps=+net_raw", "/bin/true"])
        .spawn()
        .expect("spawn setpriv");
    let pid = u64::from(child.id());
    assert!(child.wait().expect("wait").success());
    let ev = w.wait_for("capset", |v| v["type"] == "capset" && pid_of(v) == pid);
    assert_eq!(ev["credentials"]["syscall"], "capset");
    assert_eq!(ev["credentials"]["old"]["cap_inheritable"], "0x0");
    assert_eq!(ev["credentials"]["new"]["cap_inheritable"], "0x2000");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// The cgroup v1 hierarchy holding the memory controller, if this host has one.
fn memory_v1_mount() -> Option<std::path::PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        let memory = f.get(dash + 1) == Some(&"cgroup")
            && f.get(dash + 3)?.split(',').any(|o| o == "memory");
        memory.then(|| std::path::PathBuf::from(f[4]))
    })
}

/// Test cgroups under a v1 hierarchy, removed (leaves first) on drop.
struct V1Cgroups(std::path::PathBuf);

impl Drop for V1Cgroups {
    fn drop(&mut self) {
        fn rm(dir: &std::path::Path) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        rm(&self.0);
    }
}

/// A hybrid host where containers live only in cgroup v1 hierarchies (cgroupfs driver) and all
/// share the cgroup2 root: the sensor's memory cgroup id tells two containers and the host
/// apart, for every one of their short-lived processes.
#[test]
fn root_watch_attributes_v1_only_containers_by_memory_cgroup() {
    crate::common::require_root("root");
    let Some(mem) = memory_v1_mount() else {
        panic!(
            "cannot run here: this host has no cgroup v1 memory hierarchy (CI runs as root on a kernel with BTF, where it can)"
        );
    };
    const UID: &str = "7b8f0a5c-3c1e-4d2a-9f6b-1e2d3c4b5d6e";
    let cids = ["a1".repeat(32), "b2".repeat(32)];
    let top = V1Cgroups(mem.join(format!("lg-watch-{}", std::process::id())));
    let leaves: Vec<_> = cids
        .iter()
        .map(|cid| {
            let leaf = top.0.join(format!("kubepods/pod{UID}/{cid}"));
            std::fs::create_dir_all(&leaf).expect("create a v1 memory cgroup");
            leaf
        })
        .collect();
    let w = Watch::start(&[]);
    let m = marker("v1");
    const RUNS: usize = 20;
    for (i, leaf) in leaves.iter().enumerate() {
        let mut sh = Command::new("/bin/sh")
            .args([
                "-c",
                &format!("read _; i=0; while [ $i -lt {RUNS} ]; do /bin/true {m}-{i}-$i; i=$((i+1)); done"),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        std::fs::write(leaf.join("cgroup.procs"), sh.id().to_string())
            .expect("move into the v1 cgroup");
        sh.stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        assert!(sh.wait().expect("wait sh").success());
    }
    let host = format!("{m}-host");
    assert!(
        Command::new("/bin/true")
            .arg(&host)
            .status()
            .expect("true")
            .success()
    );
    let exec_of = |arg: String| {
        w.wait_for(&format!("exec of {arg}"), move |v| {
            v["type"] == "exec" && v["process"]["args"][1] == arg.as_str()
        })
    };
    for (i, cid) in cids.iter().enumerate() {
        for run in 0..RUNS {
            let ev = exec_of(format!("{m}-{i}-{run}"));
            assert_eq!(ev["container"]["id"], cid.as_str(), "{ev}");
            assert_eq!(ev["orchestrator"]["podUid"], UID, "{ev}");
        }
    }
    let ev = exec_of(host);
    assert!(ev.get("container").is_none_or(|c| c.is_null()), "{ev}");
    let (st, _) = w.stop();
    assert!(st.success());
}
