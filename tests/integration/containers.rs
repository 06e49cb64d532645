//! Detection rules against real containers: podman runs a scratch image (busybox and
//! tests/integration/ctool.c, both static) while `watch` runs with its default rules. An
//! ordinary container's start and work raise no alert; a container reaching a runtime socket
//! bind-mounted into it, a web server's shell, a namespace change and a mount inside a
//! (privileged) container each raise exactly their rule's alert, attributed to that container.
//! Needs root, BPF and podman (`root_*`); CI runs as root with podman (scripts/setup).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::{TempDir, build_c_helper};
use crate::watch::Watch;

/// The flags that work on these machines (as scripts/image-test: runc, cgroupfs).
const PODMAN: &[&str] = &["--runtime", "runc", "--cgroup-manager=cgroupfs"];
const IMAGE: &str = "localhost/linuxguard-test-tools:latest";

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(PODMAN);
    c
}

/// Builds the test image once per run: busybox as /bin/busybox and /bin/sh, ctool as
/// /bin/ctool and as /usr/sbin/nginx (a "web server").
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = TempDir::new("ctool-image");
        build_c_helper(dir.path(), "ctool.c", &[]);
        std::fs::copy("/usr/bin/busybox", dir.path().join("busybox"))
            .expect("copy busybox (scripts/setup installs it)");
        std::fs::write(
            dir.path().join("Containerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n\
             COPY ctool /bin/ctool\nCOPY ctool /usr/sbin/nginx\n",
        )
        .expect("write Containerfile");
        let o = podman()
            .args(["build", "-q", "-t", IMAGE])
            .arg(dir.path())
            .output()
            .expect("run podman (scripts/setup installs it)");
        assert!(
            o.status.success(),
            "podman build: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
    IMAGE
}

/// Runs `args` in a new container of the test image (after the podman `flags`), waits for it,
/// and returns the container's id and its output.
fn run(dir: &Path, flags: &[&str], args: &[&str]) -> (String, String) {
    let cidfile = dir.join(format!("cid-{}", crate::common::marker("c")));
    let o = podman()
        .args(["run", "--rm", "--network=none"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg("--cidfile")
        .arg(&cidfile)
        .args(flags)
        .arg(image())
        .args(args)
        .output()
        .expect("podman run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "podman run {args:?}: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let cid = std::fs::read_to_string(&cidfile).expect("cidfile");
    (cid.trim().to_string(), out)
}

/// Every event of container `cid` so far.
fn of_container(w: &Watch, cid: &str) -> Vec<Value> {
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["container"]["id"] == cid)
        .cloned()
        .collect()
}

/// The alerts whose triggering event came from container `cid` (after a settle).
fn alerts_of(w: &Watch, cid: &str) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(500));
    let events = w.events.lock().expect("lock");
    events
        .iter()
        .filter(|a| a["type"] == "alert")
        .filter(|a| {
            events
                .iter()
                .any(|t| t["seq"] == a["trigger"]["seq"] && t["container"]["id"] == cid)
        })
        .cloned()
        .collect()
}

/// What the alerts say, for a failure's message.
fn show(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| {
            format!(
                "{} process={} trigger={}",
                a["rule"]["id"], a["process"], a["trigger"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ids(alerts: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| a["rule"]["id"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Waits until the agent has attributed an exec of `cid` (so that it knew the container).
fn saw_container(w: &Watch, cid: &str, exe: &str) {
    let seen = || {
        of_container(w, cid)
            .iter()
            .any(|v| v["type"] == "exec" && v["process"]["executable"] == exe)
    };
    for _ in 0..300 {
        if seen() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let execs: Vec<String> = w
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["type"] == "exec")
        .map(|v| format!("{} {}", v["process"]["executable"], v["container"]))
        .collect();
    panic!("no exec of {exe} in container {cid}; execs: {execs:#?}");
}

#[test]
fn root_containers_raise_their_rules_and_ordinary_ones_none() {
    crate::common::require_root("root");
    image();
    let dir = TempDir::new("containers");
    let root: PathBuf = std::fs::canonicalize(dir.path()).expect("canonical");
    // A stand-in for dockerd's API socket, on the connect list next to the defaults.
    std::fs::create_dir(root.join("rt")).expect("mkdir");
    let sock = root.join("rt/docker.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let w = Watch::start(&[
        "--watch-connect",
        &format!("default,{}/rt/", root.display()),
    ]);

    // An ordinary container: the runtime starting it (namespaces, mounts, pivot_root) and a
    // shell doing ordinary work raise nothing.
    let (quiet, out) = run(
        &root,
        &[],
        &[
            "/bin/sh",
            "-c",
            "ls / > /dev/null; echo hello; cat /etc/hostname > /dev/null",
        ],
    );
    assert_eq!(out.trim(), "hello");
    saw_container(&w, &quiet, "/bin/sh");
    let a = alerts_of(&w, &quiet);
    assert_eq!(ids(&a), Vec::<String>::new(), "{}", show(&a));

    // The runtime's socket bind-mounted into the container under docker's usual name.
    let vol = format!("{}:/var/run/docker.sock", sock.display());
    let (escape, out) = run(
        &root,
        &["-v", &vol],
        &["/bin/ctool", "connect", "/var/run/docker.sock"],
    );
    assert_eq!(out.trim(), "0", "the container could not connect");
    saw_container(&w, &escape, "/bin/ctool");
    let a = alerts_of(&w, &escape);
    assert_eq!(
        ids(&a),
        vec!["lg.privilege_escalation.container_runtime_socket"],
        "{}",
        show(&a)
    );
    let trig = &a[0]["trigger"]["fields"];
    assert_eq!(trig["container.id"], escape.as_str());
    assert_eq!(trig["event.action"], "connect");
    // The event names the socket by the host's path, not the container's name for it.
    let ev = of_container(&w, &escape)
        .into_iter()
        .find(|v| v["type"] == "file")
        .expect("the connect's file event");
    assert_eq!(ev["file"]["path"], sock.to_string_lossy().as_ref());
    assert_eq!(ev["file"]["watch"], "connect");

    // A web server's shell.
    let (web, _) = run(
        &root,
        &[],
        &["/usr/sbin/nginx", "spawn", "/bin/sh", "-c", "true"],
    );
    saw_container(&w, &web, "/bin/sh");
    assert_eq!(
        ids(&alerts_of(&w, &web)),
        vec!["lg.persistence.web_server_shell_in_container"]
    );

    // A namespace change and a mount inside a privileged container.
    let (ns, _) = run(
        &root,
        &["--privileged"],
        &[
            "/bin/sh",
            "-c",
            "busybox unshare -n true && busybox mkdir -p /m && busybox mount -t tmpfs none /m",
        ],
    );
    saw_container(&w, &ns, "/bin/sh");
    assert_eq!(
        ids(&alerts_of(&w, &ns)),
        vec![
            "lg.privilege_escalation.container_mount",
            "lg.privilege_escalation.container_namespace_change"
        ]
    );

    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}
