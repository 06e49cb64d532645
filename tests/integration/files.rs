//! `file` events against the real kernel: reads of watched credential files and changes below
//! watched directories, with the path the KERNEL resolved, through the evasions an attacker
//! would try (relative paths and `..`, symlinks, openat2 RESOLVE_*, O_PATH and /proc/self/fd,
//! rename over a watched file, a thread racing the path buffer, 32-bit syscalls), and nothing
//! for unrelated files. Watch lists point into a fresh temporary directory so the tests change
//! nothing on the system; one test uses the built-in defaults.
//! Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{TempDir, build_c_helper};
use crate::watch::{Watch, pid_of};

/// A watched tree: `secret/` on the read list, `bin/` on the write list, `other/` on none.
struct Tree {
    _dir: TempDir,
    root: PathBuf,
    helper: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        crate::common::require_root("root");
        let dir = TempDir::new("files");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        for d in ["secret", "bin", "other"] {
            std::fs::create_dir(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("secret/key"), b"k").expect("write");
        std::fs::set_permissions(root.join("secret/key"), PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::fs::write(root.join("other/benign"), b"b").expect("write");
        let helper = build_c_helper(&root, "fileops.c", &["-no-pie", "-pthread"]);
        Tree {
            _dir: dir,
            root,
            helper,
        }
    }

    fn p(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    fn watch(&self) -> Watch {
        Watch::start(&[
            "--watch-read",
            &format!("{}/,/etc/shadow", self.p("secret")),
            "--watch-write",
            &format!("{}/", self.p("bin")),
        ])
    }

    fn helper(&self, args: &[&str]) -> HashMap<String, i64> {
        let out = Command::new(&self.helper)
            .args(args)
            .output()
            .expect("run fileops");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "fileops {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }
}

/// File events below `root` (after a settle, so that extra ones would show).
fn files_below(w: &Watch, root: &Path) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(400));
    let root = root.to_string_lossy().into_owned();
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| {
            v["type"] == "file"
                && (v["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&root))
                    || v["file"]["old_path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(&root)))
        })
        .cloned()
        .collect()
}

fn is_file(v: &Value, action: &str, path: &str) -> bool {
    v["type"] == "file" && v["event"]["action"] == action && v["file"]["path"] == path
}

#[test]
fn root_file_reads_of_watched_paths_resolve_as_the_kernel_did() {
    let t = Tree::new();
    let w = t.watch();
    let key = t.p("secret/key");
    let me = u64::from(std::process::id());

    // Plain, relative with `..`, through a symlink, and an O_PATH descriptor reopened through
    // /proc/self/fd: every one is reported with the kernel's path.
    std::fs::read(&key).expect("read");
    let rel = Command::new("/bin/sh")
        .current_dir(t.root.join("other"))
        .args(["-c", "exec cat ../secret/./key > /dev/null"])
        .status()
        .expect("sh");
    assert!(rel.success());
    std::os::unix::fs::symlink(&key, t.root.join("other/link")).expect("symlink");
    std::fs::read(t.root.join("other/link")).expect("read via symlink");
    let opath = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH)
        .open(&key)
        .expect("O_PATH");
    let via_proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&opath));
    std::fs::read(&via_proc).expect("reopen through /proc/self/fd");
    let m = t.helper(&["openat2", &t.p("secret"), "key"]);
    assert!(m["fd"] >= 0, "{m:?}");
    let m32 = t.helper(&["open32", &key]);
    assert!(m32["fd"] >= 0, "{m32:?}");

    let evs = files_below(&w, &t.root);
    let reads: Vec<&Value> = evs.iter().filter(|v| is_file(v, "open", &key)).collect();
    // Ours: read, the symlink, /proc/self/fd (the O_PATH open itself is not a read).
    let mine = reads.iter().filter(|v| pid_of(v) == me).count();
    assert_eq!(mine, 3, "{evs:#?}");
    assert!(
        reads
            .iter()
            .any(|v| v["process"]["name"] == "cat" && v["file"]["watch"] == "read"),
        "the relative ../secret/./key open: {evs:#?}"
    );
    for (what, pid) in [("openat2", m["pid"]), ("int $0x80 open", m32["pid"])] {
        assert!(
            reads.iter().any(|v| pid_of(v) == pid as u64),
            "{what}: {evs:#?}"
        );
    }
    for v in &reads {
        assert_eq!(
            v["event"],
            serde_json::json!({"kind": "event", "category": ["file"], "type": ["access"],
                               "action": "open", "outcome": "success"})
        );
        assert!(v["file"].get("path_from_caller").is_none(), "{v}");
    }
    // Nothing else: the symlink's own name, the O_PATH open, other/ are never reported.
    assert!(
        evs.iter().all(|v| v["file"]["path"] == key.as_str()),
        "{evs:#?}"
    );

    // A refused open (EACCES) is an attempt: reported from the caller's string.
    let m = t.helper(&["eacces", &key]);
    assert_eq!(m["fd"], -i64::from(nix::libc::EACCES));
    let ev = w.wait_for("refused open", |v| {
        v["type"] == "file" && pid_of(v) == m["pid"] as u64
    });
    assert_eq!(ev["file"]["path"], key.as_str());
    assert_eq!(ev["file"]["result"], -nix::libc::EACCES);
    assert_eq!(ev["file"]["path_from_caller"], true);
    assert_eq!(ev["event"]["outcome"], "failure");
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// A second thread rewrites the path buffer while the first opens it: the events must name
/// exactly the files the kernel opened, never the buffer's other content.
#[test]
fn root_file_a_thread_racing_the_path_buffer_cannot_disguise_the_open() {
    let t = Tree::new();
    let w = t.watch();
    let (key, benign) = (t.p("secret/key"), t.p("other/benign"));
    let m = t.helper(&["race", &key, &benign, "3000"]);
    let pid = m["pid"] as u64;
    assert!(m["watched"] > 0 && m["watched"] < m["opened"], "{m:?}");
    crate::common::wait_for("the race's reads", 10, || {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| v["type"] == "file" && pid_of(v) == pid)
            .count() as i64
            >= m["watched"]
    });
    let evs: Vec<Value> = files_below(&w, &t.root)
        .into_iter()
        .filter(|v| pid_of(v) == pid)
        .collect();
    assert_eq!(
        evs.len() as i64,
        m["watched"],
        "one event per real open of the key"
    );
    assert!(evs.iter().all(|v| v["file"]["path"] == key.as_str()));
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn root_file_changes_below_watched_directories_are_reported() {
    let t = Tree::new();
    let w = t.watch();
    let bin = t.root.join("bin");
    let tool = t.p("bin/tool");

    // Create, write, chmod, rename over, link, symlink, mkdir, delete.
    std::fs::write(&tool, b"#!/bin/sh\n").expect("create");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tool)
        .expect("open for writing");
    std::fs::set_permissions(&tool, PermissionsExt::from_mode(0o4755)).expect("chmod");
    std::fs::write(t.root.join("other/payload"), b"evil").expect("write outside");
    // rename(2) from outside over the watched file, by a relative path with `..`.
    let renamed = Command::new("/bin/mv")
        .current_dir(t.root.join("other"))
        .args(["payload", "../bin/./tool"])
        .status()
        .expect("mv");
    assert!(renamed.success());
    std::fs::hard_link(&tool, bin.join("hard")).expect("link");
    std::os::unix::fs::symlink("/opt/elsewhere", bin.join("soft")).expect("symlink");
    std::fs::create_dir(bin.join("dir")).expect("mkdir");
    std::fs::remove_file(bin.join("hard")).expect("unlink");
    // Unrelated: changes in other/ are not reported.
    std::fs::write(t.root.join("other/x"), b"x").expect("write");
    std::fs::remove_file(t.root.join("other/x")).expect("unlink");

    crate::common::wait_for("the delete", 10, || {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .any(|v| is_file(v, "delete", &t.p("bin/hard")))
    });
    let all = files_below(&w, &t.root);
    // Failed attempts are reported too: mv first tries renameat2(RENAME_NOREPLACE), which the
    // existing target refuses, then renames.
    let (evs, failed): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|v| v["file"]["result"].as_i64() >= Some(0));
    for v in &failed {
        assert_eq!(v["event"]["action"], "rename", "{v}");
        assert_eq!(v["file"]["result"], -nix::libc::EEXIST, "{v}");
        assert_eq!(v["event"]["outcome"], "failure", "{v}");
    }
    let summary: Vec<(String, String)> = evs
        .iter()
        .map(|v| {
            (
                v["event"]["action"].as_str().unwrap_or("").to_string(),
                v["file"]["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = [
        ("create", tool.clone()),
        ("write", tool.clone()),
        ("chmod", tool.clone()),
        ("rename", tool.clone()),
        ("link", t.p("bin/hard")),
        ("symlink", t.p("bin/soft")),
        ("mkdir", t.p("bin/dir")),
        ("delete", t.p("bin/hard")),
    ];
    assert_eq!(
        summary,
        want.iter()
            .map(|(a, p)| (a.to_string(), p.clone()))
            .collect::<Vec<_>>(),
        "{evs:#?}"
    );
    let by = |action: &str| {
        evs.iter()
            .find(|v| v["event"]["action"] == action)
            .unwrap_or_else(|| panic!("{action}"))
    };
    assert_eq!(by("chmod")["file"]["mode"], "4755");
    assert_eq!(by("rename")["file"]["old_path"], t.p("other/payload"));
    assert_eq!(by("rename")["process"]["name"], "mv");
    assert_eq!(by("rename")["file"]["path_from_caller"], true);
    assert_eq!(by("link")["file"]["old_path"], tool.as_str());
    assert_eq!(by("symlink")["file"]["target_path"], "/opt/elsewhere");
    assert_eq!(
        by("create")["event"]["type"],
        serde_json::json!(["creation"])
    );
    assert_eq!(
        by("delete")["event"]["type"],
        serde_json::json!(["deletion"])
    );
    assert!(by("create")["file"].get("path_from_caller").is_none());
    for v in &evs {
        assert_eq!(v["file"]["watch"], "write");
        assert_eq!(
            v["file"]["result"].as_i64().map(|r| r >= 0),
            Some(true),
            "{v}"
        );
    }
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// The built-in lists: reading /etc/shadow is reported; files elsewhere, read or written, are not.
#[test]
fn root_file_default_lists_report_shadow_and_nothing_unrelated() {
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let tmp = crate::common::TempDir::new("files-default");
    let me = u64::from(std::process::id());
    std::fs::read("/etc/shadow").expect("read /etc/shadow");
    let scratch = tmp.path().join("scratch");
    std::fs::write(&scratch, b"x").expect("write");
    std::fs::read(&scratch).expect("read");
    std::fs::remove_file(&scratch).expect("rm");
    let ev = w.wait_for("/etc/shadow", |v| {
        is_file(v, "open", "/etc/shadow") && pid_of(v) == me
    });
    assert_eq!(ev["file"]["watch"], "read");
    std::thread::sleep(Duration::from_millis(400));
    let dir = tmp.path().to_string_lossy().into_owned();
    assert!(
        !w.events
            .lock()
            .expect("lock")
            .iter()
            .any(|v| v["type"] == "file"
                && v["file"]["path"].as_str().is_some_and(|p| p.contains(&dir))),
        "unrelated files were reported"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// Unix socket connects to a socket on the connect list are reported with the path the
/// listening socket was bound to, however the client named it (a symlink, a relative name, a
/// bind mount of the socket file elsewhere); a connect refused by the socket file's permissions
/// is reported with the caller's path; connects to other sockets, abstract ones and TCP are not.
#[test]
fn root_file_unix_connects_to_watched_sockets_are_reported_by_the_listeners_path() {
    let t = Tree::new();
    std::fs::create_dir(t.root.join("sock")).expect("mkdir");
    let api = t.root.join("sock/api.sock");
    let _l = std::os::unix::net::UnixListener::bind(&api).expect("bind api.sock");
    let _p = std::os::unix::net::UnixListener::bind(t.root.join("other/plain.sock"))
        .expect("bind plain.sock");
    // A stranger can reach the directory but not the socket (mode 0700, root's).
    for d in [&t.root, &t.root.join("sock")] {
        std::fs::set_permissions(d, PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&api, PermissionsExt::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(&api, t.root.join("other/link.sock")).expect("symlink");
    let alias = t.root.join("other/alias.sock");
    std::fs::write(&alias, b"").expect("mount point");
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(&api)
        .arg(&alias)
        .status()
        .expect("mount");
    assert!(mounted.success(), "bind-mounting the socket failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(alias.clone());

    let w = Watch::start(&["--watch-connect", &format!("{}/", t.p("sock"))]);
    // One client process connecting every way; results printed for the test to check.
    const CLIENT: &str = r#"
import os, socket, sys
def go(path, family=socket.AF_UNIX):
    s = socket.socket(family)
    try:
        s.connect(path)
        return 0
    except OSError as e:
        return -e.errno
    finally:
        s.close()
root = sys.argv[1]
print("direct", go(root + "/sock/api.sock"))
print("symlink", go(root + "/other/link.sock"))
os.chdir(root + "/sock")
print("relative", go("api.sock"))
print("bind_mount", go(root + "/other/alias.sock"))
print("unwatched", go(root + "/other/plain.sock"))
print("abstract", go("\0lg-test-abstract"))
print("missing", go(root + "/sock/missing.sock"))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", CLIENT, &t.p("")])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "direct 0",
        "symlink 0",
        "relative 0",
        "bind_mount 0",
        "unwatched 0",
        "missing -2",
    ] {
        assert!(text.contains(line), "client: {text}");
    }
    // A stranger is refused by the socket's mode: reported with the path it asked for.
    let refused = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(-e.errno)")
        .arg(t.p("sock/api.sock"))
        .output()
        .expect("setpriv");
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout).trim(),
        "-13",
        "EACCES expected"
    );

    let api = t.p("sock/api.sock");
    let successful = || {
        files_below_now(&w, &t.root)
            .into_iter()
            .filter(|v| is_file(v, "connect", &api) && v["file"]["result"] == 0)
            .collect::<Vec<_>>()
    };
    crate::common::wait_for("four successful connects", 10, || successful().len() >= 4);
    let ok = successful().remove(0);
    assert_eq!(ok["file"]["watch"], "connect");
    assert_eq!(ok["event"]["category"][0], "file");
    assert_eq!(ok["event"]["type"][0], "access");
    assert!(ok["file"].get("path_from_caller").is_none(), "{ok}");
    let denied = w.wait_for("the refused connect", |v| {
        is_file(v, "connect", &api) && v["file"]["result"] == -13
    });
    assert_eq!(denied["file"]["path_from_caller"], true);
    assert_eq!(denied["process"]["user"]["id"], "65534");
    // Exactly those five: nothing for the unwatched, abstract or missing sockets.
    let all = files_below(&w, &t.root);
    let connects: Vec<&Value> = all
        .iter()
        .filter(|v| v["event"]["action"] == "connect")
        .collect();
    assert_eq!(connects.len(), 5, "{connects:#?}");
    assert!(
        connects.iter().all(|v| v["file"]["path"] == api.as_str()),
        "{connects:#?}"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// `files_below` without the settle, for polling.
fn files_below_now(w: &Watch, root: &Path) -> Vec<Value> {
    let root = root.to_string_lossy().into_owned();
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| {
            v["type"] == "file"
                && v["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&root))
        })
        .cloned()
        .collect()
}
