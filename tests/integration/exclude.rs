//! In-kernel exclusions (`--exclude`, rule files' `exclude:`) against the real kernel: an
//! excluded executable's process tree (its exec, its children's forks and execs, its connects
//! and file opens) produces no events and the `exe` filter counts exactly what an unexcluded run
//! of the same script produced; an excluded uid's activity is dropped while root's is not; a
//! SIGHUP with a changed `exclude:` takes effect; a bad `--exclude` is refused naming the flag.
//! Needs root and BPF (`root_*`).

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{TempDir, agent, marker, run, stderr};
use crate::watch::{Watch, pid_of};

/// The newest `{"type":"stats"}` event's `filtered_kernel_by_filter[kind]`.
fn filtered(w: &Watch, kind: &str) -> u64 {
    w.events
        .lock()
        .expect("lock")
        .iter()
        .rev()
        .find(|v| v["type"] == "stats")
        .and_then(|v| v["stats"]["filtered_kernel_by_filter"][kind].as_u64())
        .unwrap_or(0)
}

/// The number of events received so far.
fn received(w: &Watch) -> usize {
    w.events.lock().expect("lock").len()
}

/// Waits for a stats event after the first `after` events, then returns `filtered(kind)`.
fn filtered_after(w: &Watch, kind: &str, after: usize) -> u64 {
    let start = after;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = w
            .events
            .lock()
            .expect("lock")
            .get(start..)
            .is_some_and(|new| new.iter().any(|v| v["type"] == "stats"));
        if fresh {
            return filtered(w, kind);
        }
        assert!(
            Instant::now() < deadline,
            "no stats event: {}",
            w.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_marker(v: &Value, mark: &str) -> bool {
    v.to_string().contains(mark)
}

/// The script both runs execute: a child exec (with a file read), a TCP connect, exit.
fn script(mark: &str, port: u16) -> String {
    format!(
        "/bin/true {mark}; cat /etc/shadow >/dev/null; exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-; exit 0"
    )
}

#[test]
fn root_an_excluded_executable_and_its_children_produce_nothing_and_are_counted() {
    crate::common::require_root("root");
    let dir = TempDir::new("exclude-exe");
    // Our own copy of bash: excluded by its (device, inode), while /bin/bash is not.
    let xsh = dir.path().join("xsh");
    std::fs::copy("/bin/bash", &xsh).expect("copy bash");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    // Accept and close at once, so both connections end promptly (connection_close).
    std::thread::spawn(move || {
        for c in listener.incoming().take(2) {
            drop(c);
        }
    });
    let excl = format!("exe:{}", xsh.display());
    let w = Watch::start(&["--exclude", &excl, "--stats-interval", "1"]);
    let before = filtered_after(&w, "exe", 0);

    // The excluded run: nothing of its tree may arrive.
    let xmark = marker("excluded");
    let mut child = Command::new(&xsh)
        .args(["-c", &script(&xmark, port)])
        .spawn()
        .expect("run xsh");
    let xpid = u64::from(child.id());
    assert!(child.wait().expect("wait").success());

    // The same script run by /bin/bash: what the excluded run would have produced.
    let cmark = marker("control");
    let mut child = Command::new("/bin/bash")
        .args(["-c", &script(&cmark, port)])
        .spawn()
        .expect("run bash");
    let cpid = u64::from(child.id());
    assert!(child.wait().expect("wait").success());
    w.wait_for("the control run's connection_close", |v| {
        v["type"] == "connection_close" && pid_of(v) == cpid
    });
    std::thread::sleep(Duration::from_millis(500));

    // The control tree: bash and the processes it forked (a fork event describes the child).
    let events = w.events.lock().expect("lock").clone();
    let parent = |v: &Value| v["process"]["parent"]["pid"].as_u64().unwrap_or(0);
    let mut tree: HashSet<u64> = [cpid].into();
    for v in &events {
        if v["type"] == "fork" && tree.contains(&parent(v)) {
            tree.insert(pid_of(v));
        }
    }
    // This test's fork of the shell is this process's record, not the tree's.
    let ours = |v: &Value| v["type"] == "fork" && !tree.contains(&parent(v));
    let control: Vec<&Value> = events
        .iter()
        .filter(|v| {
            v["type"] != "alert" && v["type"] != "stats" && tree.contains(&pid_of(v)) && !ours(v)
        })
        .collect();
    let kinds: HashSet<&str> = control.iter().filter_map(|v| v["type"].as_str()).collect();
    for k in [
        "exec",
        "fork",
        "exit",
        "connect",
        "file",
        "connection_close",
    ] {
        assert!(
            kinds.contains(k),
            "the control run produced no {k}: {kinds:?}"
        );
    }
    assert!(
        control.iter().any(|v| has_marker(v, &cmark)),
        "the control run's child exec was not seen"
    );
    // Nothing from the excluded tree: not its exec, its child's, or anything with its pid.
    let leaked: Vec<&Value> = events
        .iter()
        .filter(|v| {
            v["type"] != "stats"
                && (has_marker(v, &xmark) || pid_of(v) == xpid)
                && !(v["type"] == "fork" && parent(v) == u64::from(std::process::id()))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "excluded activity was reported: {leaked:?}"
    );

    // Counted exactly: one filtered record per event the control run delivered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while Instant::now() < deadline {
        got = filtered_after(&w, "exe", received(&w)) - before;
        if got == control.len() as u64 {
            break;
        }
    }
    let control_kinds: Vec<&str> = control.iter().filter_map(|v| v["type"].as_str()).collect();
    assert_eq!(
        got,
        control.len() as u64,
        "filtered by exe vs the control run's events {control_kinds:?}"
    );
    assert_eq!(filtered(&w, "uid"), 0);
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// Runs /bin/true `mark` as uid/gid 65534 (setpriv), then waits for it.
fn as_nobody(mark: &str) {
    let s = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/bin/true", mark])
        .status()
        .expect("setpriv");
    assert!(s.success());
}

/// Execs of /bin/true with `mark` in their arguments (setpriv's own exec, as root, aside).
fn true_execs(w: &Watch, mark: &str) -> Vec<Value> {
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| {
            v["type"] == "exec" && has_marker(v, mark) && v["process"]["args"][0] == "/bin/true"
        })
        .cloned()
        .collect()
}

#[test]
fn root_an_excluded_uid_is_dropped_and_root_is_not() {
    crate::common::require_root("root");
    let w = Watch::start(&["--exclude", "uid:65534", "--stats-interval", "1"]);
    let before = filtered_after(&w, "uid", 0);
    let nobody = marker("nobody");
    as_nobody(&nobody);
    let root = marker("root");
    let s = Command::new("/bin/true").arg(&root).status().expect("true");
    assert!(s.success());
    w.wait_for("root's exec", |v| {
        v["type"] == "exec" && has_marker(v, &root)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        true_execs(&w, &nobody).is_empty(),
        "uid 65534's exec was reported"
    );
    // At least its exec and exit (and setpriv's setuid, made as 65534 by then).
    let n = filtered_after(&w, "uid", received(&w)) - before;
    assert!(n >= 2, "filtered by uid: {n}");
    assert_eq!(filtered(&w, "exe"), 0);
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_a_rule_file_exclude_takes_effect_at_sighup() {
    crate::common::require_root("root");
    let dir = TempDir::new("exclude-hup");
    let file = dir.path().join("own.yaml");
    let rule = "- rule: t.any\n  name: Any\n  severity: low\n  events: [exit]\n  condition: process.pid == 1\n";
    std::fs::write(&file, rule).expect("write");
    let w = Watch::start(&["--rules", &file.to_string_lossy(), "--stats-interval", "1"]);
    let first = marker("before-hup");
    as_nobody(&first);
    w.wait_for("uid 65534's exec before the reload", |v| {
        v["type"] == "exec" && has_marker(v, &first) && v["process"]["args"][0] == "/bin/true"
    });
    std::fs::write(&file, format!("{rule}- exclude: [uid:65534]\n")).expect("write");
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    };
    hup();
    crate::common::wait_for("the reload", 10, || {
        w.agent.log().contains("rules reloaded")
    });
    let second = marker("after-hup");
    as_nobody(&second);
    let root = marker("root");
    Command::new("/bin/true").arg(&root).status().expect("true");
    w.wait_for("root's exec", |v| {
        v["type"] == "exec" && has_marker(v, &root)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        true_execs(&w, &second).is_empty(),
        "excluded after SIGHUP, still reported"
    );
    assert!(filtered_after(&w, "uid", received(&w)) >= 2);
    // And out again.
    std::fs::write(&file, rule).expect("write");
    hup();
    crate::common::wait_for("the second reload", 10, || {
        w.agent.log().matches("rules reloaded").count() >= 2
    });
    let third = marker("again");
    as_nobody(&third);
    w.wait_for("uid 65534's exec after the exclusion went", |v| {
        v["type"] == "exec" && has_marker(v, &third) && v["process"]["args"][0] == "/bin/true"
    });
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn a_bad_exclude_is_refused_naming_the_flag() {
    for (value, want) in [
        ("uid:abc", "uid: takes a number"),
        ("exe:bin/sh", "must be an absolute path"),
        ("pid:1", "unknown kind"),
    ] {
        let o = run(agent().args(["watch", "--exclude", value]));
        assert_eq!(o.status.code(), Some(3), "{value}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("--exclude") && err.contains(want),
            "{value}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let o = run(agent()
        .arg("watch")
        .env("LINUXGUARD_EXCLUDE", "cgroup:relative"));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("LINUXGUARD_EXCLUDE"), "{}", stderr(&o));
}

#[test]
fn root_an_exclude_that_names_no_file_stops_the_start() {
    crate::common::require_root("root");
    let o = run(agent().args(["watch", "--exclude", "exe:/nonexistent/lg-x"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--exclude exe:/nonexistent/lg-x: No such file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn root_an_excluded_cgroup_is_dropped() {
    crate::common::require_root("root");
    let name = format!("lg-exclude-test-{}", std::process::id());
    // cgroup v2: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host (this VM's).
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let root = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup2 mount");
    let dir = std::path::Path::new(&root).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let excl = format!("cgroup:/{name}");
    let w = Watch::start(&["--exclude", &excl, "--stats-interval", "1"]);
    let before = filtered_after(&w, "cgroup", 0);
    let inside = marker("in-cgroup");
    // The shell moves itself into the cgroup, then runs /bin/true there.
    let procs = dir.join("cgroup.procs");
    let s = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("echo $$ > {}; /bin/true {inside}", procs.display()),
        ])
        .status()
        .expect("sh");
    assert!(s.success());
    let outside = marker("outside");
    Command::new("/bin/true")
        .arg(&outside)
        .status()
        .expect("true");
    w.wait_for("the exec outside the cgroup", |v| {
        v["type"] == "exec" && has_marker(v, &outside)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        true_execs(&w, &inside).is_empty(),
        "an exec in the excluded cgroup was reported"
    );
    // At least /bin/true's exec and exit, and the shell's exit.
    let n = filtered_after(&w, "cgroup", received(&w)) - before;
    assert!(n >= 3, "filtered by cgroup: {n}");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}
