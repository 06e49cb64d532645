//! 32-bit syscalls (`int $0x80` from a 64-bit process) against the real kernel: `watch` must
//! report them exactly as the native ones, field by field. The syscalls are made by a small C
//! helper (tests/integration/compat32.c) built here with `cc -no-pie -static`.
//! Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{TempDir, build_c_helper, marker};
use crate::watch::{Watch, pid_of};

/// The helper, built in a fresh directory (kept alive by the caller), and a running `watch`;
/// None when not root.
fn start() -> Option<(TempDir, PathBuf, Watch)> {
    crate::common::require_root("root");
    let dir = TempDir::new("compat");
    let bin = build_c_helper(dir.path(), "compat32.c", &["-no-pie"]);
    Some((dir, bin, Watch::start(&[])))
}

/// Runs one helper action; its `key=value` words.
fn helper(bin: &Path, args: &[&str]) -> HashMap<String, i64> {
    let out = Command::new(bin).args(args).output().expect("run compat32");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "compat32 {args:?} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn hex(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or_else(|| panic!("not a hex string: {v}"))
}

/// A native memfd_create from the test process: reported, exactly once.
fn native_memfd_is_reported_once(w: &Watch) {
    let native = marker("native-memfd");
    let _fd = nix::sys::memfd::memfd_create(native.as_str(), nix::sys::memfd::MFdFlags::empty())
        .expect("memfd_create");
    let is_it = |v: &Value| v["type"] == "memfd" && v["memfd"]["name"] == native.as_str();
    w.wait_for("native memfd", is_it);
    assert_eq!(count(w, is_it), 1);
}

/// Events matching `pred` after a short settle: each syscall must be reported once, not by both
/// the native and the compat path.
fn count(w: &Watch, pred: impl Fn(&Value) -> bool) -> usize {
    std::thread::sleep(Duration::from_millis(300));
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| pred(v))
        .count()
}

#[test]
fn root_compat_int80_memfd_setuid_capset_ptrace_bpf_are_reported_like_native_ones() {
    let Some((_dir, bin, w)) = start() else {
        panic!("cannot run here: needs root (CI runs as root on a kernel with BTF, where it can)");
    };

    // memfd_create (356), with its name read through a 32-bit pointer.
    let name = marker("compat-memfd");
    let r = helper(&bin, &["memfd", &name]);
    let m = w.wait_for("memfd", |v| {
        v["type"] == "memfd" && v["memfd"]["name"] == name.as_str()
    });
    assert_eq!(pid_of(&m), r["pid"] as u64);
    assert_eq!(m["memfd"]["flags"], 1, "MFD_CLOEXEC");
    assert_eq!(m["memfd"]["result"], r["fd"]);
    assert_eq!(m["process"]["name"], "compat32");
    assert_eq!(m["process"]["executable"], bin.to_string_lossy().as_ref());
    assert_eq!(m["process"]["parent"]["pid"], std::process::id());
    assert_eq!(
        count(&w, |v| v["type"] == "memfd"
            && v["memfd"]["name"] == name.as_str()),
        1
    );
    // A native memfd_create right after is reported once too (no compat state left behind).
    native_memfd_is_reported_once(&w);

    // setgid (46, the 16-bit call) then setuid32 (213) to nobody, as root.
    let r = helper(&bin, &["setuid"]);
    let pid = r["pid"] as u64;
    assert_eq!(r["uid"], 65534);
    let g = w.wait_for("setgid", |v| {
        v["type"] == "setuid" && pid_of(v) == pid && v["credentials"]["syscall"] == "setgid"
    });
    assert_eq!(g["credentials"]["old"]["gid"], 0);
    assert_eq!(g["credentials"]["new"]["gid"], 65534);
    assert_eq!(g["credentials"]["new"]["egid"], 65534);
    assert_eq!(g["credentials"]["new"]["uid"], 0);
    let u = w.wait_for("setuid", |v| {
        v["type"] == "setuid" && pid_of(v) == pid && v["credentials"]["syscall"] == "setuid"
    });
    assert_eq!(u["credentials"]["old"]["uid"], 0);
    assert_eq!(u["credentials"]["new"]["uid"], 65534);
    assert_eq!(u["credentials"]["new"]["euid"], 65534);
    assert_eq!(u["credentials"]["new"]["suid"], 65534);
    assert_eq!(u["credentials"]["new"]["cap_effective"], "0x0");
    assert_eq!(u["process"]["user"]["id"], "65534");
    assert_eq!(count(&w, |v| v["type"] == "setuid" && pid_of(v) == pid), 2);

    // capset (185) dropping CAP_NET_RAW (bit 13) from the effective and permitted sets.
    let r = helper(&bin, &["capset"]);
    let pid = r["pid"] as u64;
    let c = w.wait_for("capset", |v| v["type"] == "capset" && pid_of(v) == pid);
    assert_eq!(c["credentials"]["syscall"], "capset");
    let (old, new) = (&c["credentials"]["old"], &c["credentials"]["new"]);
    assert_ne!(hex(&old["cap_effective"]) & (1 << 13), 0);
    assert_eq!(
        hex(&new["cap_effective"]),
        hex(&old["cap_effective"]) & !(1 << 13)
    );
    assert_eq!(
        hex(&new["cap_permitted"]),
        hex(&old["cap_permitted"]) & !(1 << 13)
    );
    assert_eq!(new["uid"], 0);

    // ptrace (26): PTRACE_ATTACH to its own child.
    let r = helper(&bin, &["ptrace"]);
    let p = w.wait_for("ptrace", |v| {
        v["type"] == "ptrace" && v["ptrace"]["target"]["pid"] == r["target"]
    });
    assert_eq!(pid_of(&p), r["pid"] as u64);
    assert_eq!(p["ptrace"]["request"], "attach");
    assert_eq!(p["ptrace"]["result"], 0);

    // bpf (357): BPF_PROG_LOAD, the attr read through a 32-bit pointer.
    let r = helper(&bin, &["bpf"]);
    let pid = r["pid"] as u64;
    let b = w.wait_for("bpf_load", |v| v["type"] == "bpf_load" && pid_of(v) == pid);
    assert_eq!(b["bpf"]["prog_type"], 1, "BPF_PROG_TYPE_SOCKET_FILTER");
    assert_eq!(b["bpf"]["prog_name"], "lg_compat");
    assert_eq!(b["bpf"]["insn_count"], 2);
    assert_eq!(b["bpf"]["result"], r["fd"]);

    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
    assert!(
        err.lines()
            .any(|l| l.contains("sensor: compat") && l.contains("attached via tp_btf/sys_enter")),
        "no compat hook line: {err}"
    );
    assert!(err.contains("dropped_kernel=0"), "{err}");
}

#[test]
fn root_compat_int80_connect_accept4_and_socketcall_are_reported_like_native_ones() {
    let Some((_dir, bin, w)) = start() else {
        panic!("cannot run here: needs root (CI runs as root on a kernel with BTF, where it can)");
    };
    // connect (362) + accept4 (364), then socketcall(SYS_CONNECT) + socketcall(SYS_ACCEPT).
    let r = helper(&bin, &["tcp"]);
    let pid = r["pid"] as u64;
    let port = r["port"];
    for (sport, fd) in [
        (r["sport_a"], r["accept4"]),
        (r["sport_b"], r["socketcall_accept"]),
    ] {
        let c = w.wait_for("connect", |v| {
            v["type"] == "connect" && pid_of(v) == pid && v["source"]["port"] == sport
        });
        assert_eq!(c["destination"]["ip"], "127.0.0.1");
        assert_eq!(c["destination"]["port"], port);
        assert_eq!(c["network"]["transport"], "tcp");
        assert_eq!(c["network"]["type"], "ipv4");
        assert_eq!(c["network"]["direction"], "egress");
        assert_eq!(c["network"]["result"], 0);
        let a = w.wait_for("accept", |v| {
            v["type"] == "accept" && pid_of(v) == pid && v["source"]["port"] == sport
        });
        assert_eq!(a["source"]["ip"], "127.0.0.1");
        assert_eq!(a["destination"]["port"], port);
        assert_eq!(a["network"]["direction"], "ingress");
        assert_eq!(a["network"]["result"], fd);
    }
    assert_eq!(count(&w, |v| v["type"] == "connect" && pid_of(v) == pid), 2);
    assert_eq!(count(&w, |v| v["type"] == "accept" && pid_of(v) == pid), 2);
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// `--compat-syscalls=false` (the opt-out for syscall-heavy hosts) leaves the hook out, says so
/// at start-up, and the blind spot is really there: an `int $0x80` memfd_create goes unseen
/// while a native one is reported.
#[test]
fn root_compat_syscalls_false_leaves_the_hook_out_and_says_so() {
    crate::common::require_root("root");
    let dir = TempDir::new("compat");
    let bin = build_c_helper(dir.path(), "compat32.c", &["-no-pie"]);
    let w = Watch::start(&["--compat-syscalls=false"]);
    let name = marker("compat-off");
    helper(&bin, &["memfd", &name]);
    native_memfd_is_reported_once(&w);
    assert_eq!(
        count(&w, |v| v["type"] == "memfd"
            && v["memfd"]["name"] == name.as_str()),
        0
    );
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("sensor: compat")
            && l.contains("not watched: turned off (--compat-syscalls=false)")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("watching: ") && l.contains(" compat=absent")),
        "the start line names the absent hook: {err}"
    );
}
