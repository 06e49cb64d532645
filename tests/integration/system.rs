//! `namespace`, `mount` and `module_load` events against the real kernel: a small C helper
//! (tests/integration/sysops.c, built here) makes the syscalls, natively and through
//! `int $0x80`, and `watch` must report each with the acting pid and what it acted on.
//! Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TempDir, build_c_helper, marker};
use crate::watch::{Watch, pid_of};

/// The helper, built in a fresh directory (kept alive by the caller).
fn helper_bin() -> (TempDir, PathBuf) {
    crate::common::require_root("root");
    let dir = TempDir::new("sysops");
    let bin = build_c_helper(dir.path(), "sysops.c", &["-no-pie"]);
    (dir, bin)
}

/// Runs one helper action; its `key=value` words (numbers).
fn helper(bin: &Path, args: &[&str]) -> HashMap<String, i64> {
    let out = Command::new(bin).args(args).output().expect("run sysops");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sysops {args:?} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn n(m: &HashMap<String, i64>, k: &str) -> i64 {
    *m.get(k)
        .unwrap_or_else(|| panic!("helper printed no {k}: {m:?}"))
}

/// Events of `ty` by process `pid` (after a short settle, so that duplicates would show).
fn of(w: &Watch, ty: &str, pid: i64) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(300));
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["type"] == ty && pid_of(v) == pid as u64)
        .cloned()
        .collect()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string"))
        .collect()
}

#[test]
fn root_namespace_changes_are_reported_with_inodes_before_and_after() {
    let (_dir, bin) = helper_bin();
    let w = Watch::start(&[]);

    // unshare, native and 32-bit: the caller's own namespaces change.
    for op in ["unshare", "unshare32"] {
        let m = helper(&bin, &[op]);
        let pid = n(&m, "pid");
        w.wait_for(op, |v| v["type"] == "namespace" && pid_of(v) == pid as u64);
        let evs = of(&w, "namespace", pid);
        assert_eq!(evs.len(), 1, "{op}: {evs:?}");
        let ns = &evs[0]["namespace"];
        assert_eq!(ns["syscall"], "unshare", "{op}");
        assert_eq!(names(&ns["requested"]), ["mnt", "uts"], "{op}");
        assert_eq!(names(&ns["changed"]), ["mnt", "uts"], "{op}");
        assert_eq!(ns["from"]["uts"], n(&m, "uts_before"), "{op}");
        assert_eq!(ns["to"]["uts"], n(&m, "uts_after"), "{op}");
        assert_eq!(ns["from"]["mnt"], n(&m, "mnt_before"), "{op}");
        assert_eq!(ns["to"]["mnt"], n(&m, "mnt_after"), "{op}");
        assert_ne!(ns["from"]["uts"], ns["to"]["uts"]);
        assert_eq!(ns["result"], 0);
        assert_eq!(
            evs[0]["event"],
            json!({"kind": "event", "category": ["process"], "type": ["change"],
                   "action": "unshare", "outcome": "success"})
        );
    }

    // setns into another process's network namespace.
    let mut other = Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .expect("unshare --net sleep");
    let target = format!("/proc/{}/ns/net", other.id());
    let own =
        std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    crate::common::wait_for("the new net namespace", 10, || {
        std::fs::metadata(&target)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
            != own.as_ref().ok().copied()
    });
    let m = helper(&bin, &["setns", &target]);
    let _ = other.kill();
    let _ = other.wait();
    let pid = n(&m, "pid");
    let ev = w.wait_for("setns", |v| {
        v["type"] == "namespace" && pid_of(v) == pid as u64
    });
    let ns = &ev["namespace"];
    assert_eq!(ns["syscall"], "setns");
    assert_eq!(names(&ns["requested"]), ["net"]);
    assert_eq!(names(&ns["changed"]), ["net"]);
    assert_eq!(ns["from"]["net"], n(&m, "net_before"));
    assert_eq!(ns["to"]["net"], n(&m, "net_after"));
    assert_eq!(ns["result"], 0);

    // A failed setns is reported too, as a failure.
    let m = helper(&bin, &["setns-bad"]);
    let pid = n(&m, "pid");
    let ev = w.wait_for("failed setns", |v| {
        v["type"] == "namespace" && pid_of(v) == pid as u64
    });
    assert_eq!(ev["namespace"]["result"], -nix::libc::EBADF);
    assert_eq!(names(&ev["namespace"]["requested"]), Vec::<&str>::new());
    assert_eq!(names(&ev["namespace"]["changed"]), Vec::<&str>::new());
    assert_eq!(ev["event"]["outcome"], "failure");

    // clone3 and clone with CLONE_NEW*: the parent reports, `to` is the child's.
    for (op, requested) in [("clone3", vec!["uts", "net"]), ("clone", vec!["uts"])] {
        let m = helper(&bin, &[op]);
        let pid = n(&m, "pid");
        let ev = w.wait_for(op, |v| v["type"] == "namespace" && pid_of(v) == pid as u64);
        let ns = &ev["namespace"];
        assert_eq!(ns["syscall"], op);
        assert_eq!(ns["result"], n(&m, "child"), "{op}");
        assert_eq!(names(&ns["requested"]), requested, "{op}");
        assert_eq!(ns["to"]["uts"], n(&m, "child_uts"), "{op}: {ev}");
        assert_eq!(ns["from"]["uts"], n(&m, "uts_before"), "{op}");
        assert!(names(&ns["changed"]).contains(&"uts"), "{op}: {ev}");
        if op == "clone3" {
            assert_eq!(ns["to"]["net"], n(&m, "child_net"));
        }
        // The child (which returns from clone too) does not report.
        assert!(of(&w, "namespace", n(&m, "child")).is_empty(), "{op}");
    }

    // Unrelated activity: processes forked and run without new namespaces report none.
    let plain = Command::new("/bin/sh")
        .args(["-c", "/bin/true; /bin/true"])
        .spawn()
        .expect("sh");
    let plain_pid = plain.id();
    let _ = plain.wait_with_output();
    assert!(of(&w, "namespace", plain_pid.into()).is_empty());
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn root_mount_family_is_reported_with_source_target_type_and_result() {
    let (dir, bin) = helper_bin();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt = mnt.to_string_lossy().into_owned();
    let mark = marker("mount");
    let w = Watch::start(&[]);
    let m = helper(&bin, &["mounts", &mnt, &mark]);
    let pid = n(&m, "pid");
    crate::common::wait_for("ten mount events", 10, || of_len(&w, pid) >= 10);
    let evs = of(&w, "mount", pid);
    let calls: Vec<&str> = evs
        .iter()
        .map(|v| v["mount"]["syscall"].as_str().expect("syscall"))
        .collect();
    assert_eq!(
        calls,
        [
            "mount",
            "mount",
            "umount",
            "fsmount",
            "move_mount",
            "open_tree",
            "umount",
            "pivot_root",
            "mount",
            "umount"
        ],
        "{evs:#?}"
    );
    // The first one makes the helper's new mount namespace private.
    assert_eq!(evs[0]["mount"]["target"], "/");
    let evs = &evs[1..];
    let fields = |i: usize| evs[i]["mount"].clone();
    assert_eq!(
        fields(0),
        json!({"syscall": "mount", "source": format!("{mark}-src"), "target": mnt,
               "fs_type": "tmpfs", "flags": nix::libc::MS_NOSUID, "result": 0})
    );
    assert_eq!(
        evs[0]["event"],
        json!({"kind": "event", "category": ["configuration"], "type": ["change"],
               "action": "mount", "outcome": "success"})
    );
    assert_eq!(
        fields(1),
        json!({"syscall": "umount", "target": mnt, "flags": 0, "result": 0})
    );
    // fsmount: type and source from the kernel's file-system context.
    assert_eq!(
        fields(2),
        json!({"syscall": "fsmount", "source": format!("{mark}-fs"), "fs_type": "tmpfs",
               "flags": 0, "result": n(&m, "fsmount")})
    );
    assert_eq!(
        fields(3),
        json!({"syscall": "move_mount", "source": format!("{mark}-fs"), "target": mnt,
               "fs_type": "tmpfs", "flags": 4, "result": 0})
    );
    assert_eq!(
        fields(4),
        json!({"syscall": "open_tree", "source": mnt, "fs_type": "tmpfs", "flags": 1,
               "result": n(&m, "open_tree")})
    );
    assert_eq!(fields(5)["flags"], nix::libc::MNT_DETACH);
    assert_eq!(
        fields(6),
        json!({"syscall": "pivot_root", "source": format!("/nonexistent-{mark}"),
               "target": format!("/nonexistent-{mark}"), "flags": 0,
               "result": n(&m, "pivot_root")})
    );
    assert!(n(&m, "pivot_root") < 0);
    assert_eq!(evs[6]["event"]["outcome"], "failure");
    // Through int $0x80: the same as native.
    assert_eq!(
        fields(7),
        json!({"syscall": "mount", "source": format!("{mark}-32"), "target": mnt,
               "fs_type": "tmpfs", "flags": 0, "result": 0})
    );
    assert_eq!(
        fields(8),
        json!({"syscall": "umount", "target": mnt, "flags": 0, "result": 0})
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

fn of_len(w: &Watch, pid: i64) -> usize {
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["type"] == "mount" && pid_of(v) == pid as u64)
        .count()
}

#[test]
fn root_module_load_attempts_are_reported_even_when_they_fail() {
    let (dir, bin) = helper_bin();
    let file = dir.path().join("lg-fake.ko");
    std::fs::write(&file, b"\x7fELF not a module").expect("write");
    let file = std::fs::canonicalize(&file).expect("canonical");
    let mark = marker("module");
    let w = Watch::start(&[]);
    let m = helper(&bin, &["modules", &file.to_string_lossy(), &mark]);
    let pid = n(&m, "pid");
    w.wait_for("init_module32", |v| {
        v["type"] == "module_load"
            && pid_of(v) == pid as u64
            && v["module"]["params"] == format!("lgmark32={mark}")
    });
    let evs = of(&w, "module_load", pid);
    assert_eq!(evs.len(), 3, "{evs:#?}");
    for (ev, key) in evs
        .iter()
        .zip(["init_module", "finit_module", "init_module32"])
    {
        let r = n(&m, key);
        assert!(r < 0, "a test helper cannot load a module: {key}={r}");
        assert_eq!(ev["module"]["result"], r, "{key}");
        assert_eq!(ev["event"]["outcome"], "failure");
        assert_eq!(ev["event"]["category"], json!(["driver"]));
    }
    assert_eq!(
        evs[0]["module"],
        json!({"syscall": "init_module", "size": 64, "params": format!("lgmark={mark}"),
               "flags": 0, "result": n(&m, "init_module")})
    );
    assert_eq!(evs[0]["event"]["action"], "init_module");
    // finit_module: the file as the kernel resolved it through the descriptor.
    assert_eq!(
        evs[1]["module"],
        json!({"syscall": "finit_module", "path": file.to_string_lossy(),
               "params": format!("lgmark={mark}"), "flags": 0,
               "result": n(&m, "finit_module")})
    );
    assert_eq!(evs[2]["module"]["syscall"], "init_module");
    assert_eq!(evs[2]["module"]["size"], 64);
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// With `--compat-syscalls=false` the dispatcher is off: namespace and mount come from their
/// own `syscalls:*` tracepoints, with the same fields.
#[test]
fn root_without_the_compat_hook_namespace_and_mount_use_syscall_tracepoints() {
    let (dir, bin) = helper_bin();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt = mnt.to_string_lossy().into_owned();
    let mark = marker("tpmount");
    let mut w = Watch::start(&["--compat-syscalls=false"]);
    w.agent
        .wait_log("sensor: namespace attached via tracepoint/syscalls/", 5);
    w.agent
        .wait_log("sensor: mount    attached via tracepoint/syscalls/", 5);
    let m = helper(&bin, &["unshare"]);
    let pid = n(&m, "pid");
    let ev = w.wait_for("unshare", |v| {
        v["type"] == "namespace" && pid_of(v) == pid as u64
    });
    assert_eq!(ev["namespace"]["to"]["uts"], n(&m, "uts_after"));
    assert_eq!(names(&ev["namespace"]["changed"]), ["mnt", "uts"]);
    let m = helper(&bin, &["mounts", &mnt, &mark]);
    let pid = n(&m, "pid");
    let ev = w.wait_for("mount", |v| {
        v["type"] == "mount" && pid_of(v) == pid as u64 && v["mount"]["target"] == mnt.as_str()
    });
    assert_eq!(ev["mount"]["source"], format!("{mark}-src"));
    assert_eq!(ev["mount"]["fs_type"], "tmpfs");
    // 32-bit calls are not seen without the compat hook (the documented blind spot).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !w.events
            .lock()
            .expect("lock")
            .iter()
            .any(|v| v["type"] == "mount" && v["mount"]["source"] == format!("{mark}-32"))
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}
