//! Detection rules against the real kernel and the real binary: each default rule fires on its
//! real behaviour, ordinary activity raises none, a broken rule file at SIGHUP leaves the old
//! rules running, and `check-rules` / `--rules` refuse bad files with FILE:LINE.
//! Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{TempDir, agent, build_c_helper, marker, run, stderr, stdout};
use crate::watch::{Watch, pid_of};

const UNKNOWN_FIELD: &str = "- rule: t.bad\n  name: Bad\n  severity: low\n  events: [exec]\n  condition: process.nme == x\n";

#[test]
fn check_rules_exit_codes_and_an_unknown_field_with_its_line() {
    let dir = TempDir::new("check-rules");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "- list: more_tools\n  items: [x]\n- rule: t.good\n  name: Good\n  severity: low\n  events: [exec]\n  condition: in_container and process.name in more_tools\n",
    )
    .expect("write");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, UNKNOWN_FIELD).expect("write");
    let o = run(agent().arg("check-rules").arg(&good));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("no problems found"), "{}", stdout(&o));
    let o = run(agent().arg("--check-rules").arg(&bad));
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let want = format!(
        "{}:5: rule `t.bad`: unknown field `process.nme`",
        bad.display()
    );
    assert!(stdout(&o).contains(&want), "{}", stdout(&o));
    // Without the defaults, `in_container` is an unknown macro.
    let o = run(agent()
        .args(["check-rules", "--no-default-rules"])
        .arg(&good));
    assert_eq!(o.status.code(), Some(6));
    assert!(
        stdout(&o).contains(":7: rule `t.good`: unknown macro `in_container`"),
        "{}",
        stdout(&o)
    );
    // watch refuses to start with it (configuration error, before the sensor).
    let o = run(agent().arg("watch").arg("--rules").arg(&bad));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    let o = run(agent()
        .arg("watch")
        .arg("--rules")
        .arg(dir.path().join("missing.yaml")));
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("missing.yaml: cannot read the rule file"),
        "{}",
        stderr(&o)
    );
}

pub(crate) fn alerts(w: &Watch) -> Vec<Value> {
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["type"] == "alert")
        .cloned()
        .collect()
}

/// Waits for the alert of `rule` whose trigger came from `pid`, and checks its shape.
fn alert_of(w: &Watch, rule: &str, pid: u64) -> Value {
    let a = w.wait_for(rule, |v| {
        v["type"] == "alert" && v["rule"]["id"] == rule && pid_of(v) == pid
    });
    assert_eq!(a["event"]["kind"], "alert");
    assert!(a["event"]["severity"].as_u64().is_some_and(|s| s > 0));
    assert!(
        a["threat"]["technique"]["id"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    assert!(a["process"]["executable"].is_string() || a["process"]["name"].is_string());
    let seq = a["trigger"]["seq"].as_u64().expect("trigger.seq");
    let trig = w
        .events
        .lock()
        .expect("lock")
        .iter()
        .find(|v| v["seq"] == seq)
        .cloned()
        .expect("the trigger was delivered before its alert");
    assert_eq!(trig["type"], a["trigger"]["type"]);
    assert_eq!(pid_of(&trig), pid);
    a
}

/// Rules (by id) alerted for `pid`, after a settle.
fn rules_for(w: &Watch, pid: u64) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(300));
    alerts(w)
        .iter()
        .filter(|a| pid_of(a) == pid)
        .map(|a| a["rule"]["id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn root_each_default_rule_fires_on_its_real_behaviour() {
    crate::common::require_root("root");
    let dir = TempDir::new("rules-fire");
    let w = Watch::start(&[]);

    // Fileless exec from a memfd.
    let fd =
        nix::sys::memfd::memfd_create(marker("m").as_str(), nix::sys::memfd::MFdFlags::empty())
            .expect("memfd_create");
    let mut f = std::fs::File::from(fd);
    f.write_all(&std::fs::read("/bin/true").expect("read"))
        .expect("fill");
    let path = format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd());
    let child = Command::new(&path).spawn().expect("exec the memfd");
    let pid = u64::from(child.id());
    let _ = child.wait_with_output();
    alert_of(&w, "lg.defense_evasion.fileless_exec", pid);
    assert_eq!(rules_for(&w, pid), ["lg.defense_evasion.fileless_exec"]);

    // ptrace attach by this test process (not a debugger).
    let mut victim = Command::new("/bin/sleep").arg("5").spawn().expect("sleep");
    let vpid = nix::unistd::Pid::from_raw(victim.id() as i32);
    nix::sys::ptrace::attach(vpid).expect("PTRACE_ATTACH");
    let _ = nix::sys::wait::waitpid(vpid, None);
    let _ = nix::sys::ptrace::detach(vpid, None);
    let _ = victim.kill();
    let _ = victim.wait();
    let a = alert_of(
        &w,
        "lg.defense_evasion.ptrace_attach",
        u64::from(std::process::id()),
    );
    assert_eq!(a["trigger"]["fields"]["ptrace.request"], "attach");

    // A BPF load by a program not on the allow list: a second agent.
    let second = Watch::start(&["--no-default-rules"]);
    let spid = u64::from(second.agent.pid());
    alert_of(&w, "lg.defense_evasion.bpf_load", spid);
    let _ = second.stop();

    // uid 0 gained by a process with no root uid (CAP_SETUID kept as an ambient capability).
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+setuid",
            "--ambient-caps=+setuid",
            "/usr/bin/perl",
            "-e",
            "$< = 0; $> = 0; exit($< == 0 ? 0 : 1)",
        ])
        .spawn()
        .expect("setpriv");
    let pid = u64::from(child.id());
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "perl did not get uid 0");
    alert_of(&w, "lg.privilege_escalation.uid_zero_gained", pid);

    // Capabilities raised by a non-root process: drop the effective set, raise it again.
    let py = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        class H(ctypes.Structure): _fields_ = [('v', ctypes.c_uint32), ('pid', ctypes.c_int)]\n\
        class D(ctypes.Structure): _fields_ = [('e', ctypes.c_uint32), ('p', ctypes.c_uint32), ('i', ctypes.c_uint32)]\n\
        h = H(0x20080522, 0); d = (D * 2)()\n\
        assert libc.capget(ctypes.byref(h), d) == 0\n\
        perm = d[0].p; d[0].e = 0\n\
        assert libc.capset(ctypes.byref(h), d) == 0\n\
        d[0].e = perm\n\
        assert libc.capset(ctypes.byref(h), d) == 0\n";
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_raw",
            "--ambient-caps=+net_raw",
        ])
        // Standard library only: the system interpreter scripts/setup builds the venv from.
        .arg("/usr/bin/python3")
        .args(["-c", py])
        .spawn()
        .expect("setpriv python");
    let pid = u64::from(child.id());
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "capset script failed");
    alert_of(&w, "lg.privilege_escalation.capabilities_gained", pid);

    // A shell connecting out (bash's /dev/tcp).
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    let child = Command::new("/bin/bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .spawn()
        .expect("bash");
    let pid = u64::from(child.id());
    let _ = l.accept();
    let _ = child.wait_with_output();
    alert_of(&w, "lg.execution.reverse_shell_connect", pid);

    // A shell whose stdin and stdout are a TCP connection.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    let child = Command::new("/bin/bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec /bin/sh -c 'exit 0' <&3 >&3"),
        ])
        .spawn()
        .expect("bash");
    let pid = u64::from(child.id());
    let _conn = l.accept();
    let _ = child.wait_with_output();
    let a = alert_of(&w, "lg.execution.reverse_shell_stdio", pid);
    assert_eq!(
        a["trigger"]["fields"]["process.stdio_sockets"],
        serde_json::json!(["stdin", "stdout"])
    );

    // A credential file read by cat.
    let child = Command::new("/bin/cat")
        .arg("/etc/shadow")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cat");
    let pid = u64::from(child.id());
    let _ = child.wait_with_output();
    let a = alert_of(&w, "lg.credential_access.sensitive_file_read", pid);
    assert_eq!(a["trigger"]["fields"]["file.path"], "/etc/shadow");

    // A write below a binary directory (removed again).
    let target = format!("/usr/local/bin/{}", marker("lg-rules"));
    let child = Command::new("/bin/sh")
        .args(["-c", &format!("echo x > {target}; rm -f {target}")])
        .spawn()
        .expect("sh");
    let pid = u64::from(child.id());
    let _ = child.wait_with_output();
    let _ = std::fs::remove_file(&target);
    let a = alert_of(&w, "lg.persistence.write_below_system_paths", pid);
    assert_eq!(a["trigger"]["fields"]["file.path"], target.as_str());

    // A kernel module load attempt (it fails: not a module).
    let bin = build_c_helper(dir.path(), "sysops.c", &["-no-pie"]);
    let ko = dir.path().join("lg-fake.ko");
    std::fs::write(&ko, b"\x7fELF not a module").expect("write");
    let child = Command::new(&bin)
        .args(["modules", &ko.to_string_lossy(), &marker("mod")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sysops");
    let pid = u64::from(child.id());
    let _ = child.wait_with_output();
    alert_of(&w, "lg.defense_evasion.kernel_module_load", pid);

    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// Ordinary activity raises no alert: a package-like install under a temporary prefix, shells,
/// a compile, setuid to an unprivileged user, reading ordinary files, name lookups. Only alerts
/// from this activity's process tree count (other tests run at the same time).
#[test]
fn root_ordinary_activity_raises_no_alert() {
    crate::common::require_root("root");
    let dir = TempDir::new("rules-quiet");
    let prefix = dir.path().join("prefix");
    let w = Watch::start(&[]);
    let script = format!(
        "set -e
         mkdir -p {p}/usr/bin {p}/usr/lib {p}/etc/systemd/system
         printf 'int main(void){{return 0;}}\\n' > {d}/hello.c
         cc -o {d}/hello {d}/hello.c
         install -m 755 {d}/hello {p}/usr/bin/hello
         cp /etc/hostname {p}/usr/lib/data
         echo '[Unit]' > {p}/etc/systemd/system/x.service
         {p}/usr/bin/hello
         cat /etc/passwd /etc/hostname > /dev/null
         ls -la / > /dev/null
         sh -c 'for i in 1 2 3; do echo $i; done' > /dev/null
         bash -c 'x=$(date); echo $x' > /dev/null
         setpriv --reuid=65534 --regid=65534 --clear-groups /bin/true
         getent hosts localhost > /dev/null || true
         rm -rf {p}",
        p = prefix.display(),
        d = dir.path().display()
    );
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("sh");
    let root = u64::from(child.id());
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "the ordinary activity failed");
    // The activity's processes: the script and everything below it.
    w.wait_for("the script's exit", |v| {
        v["type"] == "exit" && pid_of(v) == root
    });
    std::thread::sleep(Duration::from_millis(500));
    let ours: Vec<Value> = alerts(&w)
        .into_iter()
        .filter(|a| {
            pid_of(a) == root
                || a["process"]["ancestry"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|p| p["pid"] == root))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "ordinary activity raised alerts: {ours:#?}"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

#[test]
fn root_a_broken_rule_file_at_sighup_keeps_the_old_rules() {
    crate::common::require_root("root");
    let dir = TempDir::new("rules-hup");
    let file = dir.path().join("own.yaml");
    let rule = |id: &str, name: &str| {
        format!(
            "- rule: {id}\n  name: Marker\n  severity: medium\n  mitre: [T1059]\n  events: [exec]\n  condition: process.args contains {name}\n"
        )
    };
    let mark = marker("hup");
    std::fs::write(&file, rule("t.first", &mark)).expect("write");
    let w = Watch::start(&["--no-default-rules", "--rules", &file.to_string_lossy()]);
    let fire = |w: &Watch, id: &str| {
        let child = Command::new("/bin/true").arg(&mark).spawn().expect("true");
        let pid = u64::from(child.id());
        let _ = child.wait_with_output();
        alert_of(w, id, pid)
    };
    let a = fire(&w, "t.first");
    assert_eq!(a["rule"]["ruleset"], file.to_string_lossy().as_ref());
    let hup = |w: &Watch| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    };
    // A broken file: the old rule stays, the log says why, with the line.
    std::fs::write(&file, UNKNOWN_FIELD).expect("write");
    hup(&w);
    crate::common::wait_for("the refused reload", 10, || {
        w.agent.log().contains("rules not reloaded")
    });
    let log = w.agent.log();
    assert!(
        log.contains(&format!(
            "{}:5: rule `t.bad`: unknown field",
            file.display()
        )),
        "{log}"
    );
    fire(&w, "t.first");
    // A good file takes.
    std::fs::write(&file, rule("t.second", &mark)).expect("write");
    hup(&w);
    crate::common::wait_for("the reload", 10, || {
        w.agent.log().contains("rules reloaded")
    });
    fire(&w, "t.second");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}
