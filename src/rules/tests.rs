//! Unit tests of the rules: loading (findings with file:line), evaluation of every default rule
//! on built events, malformed input, the docs naming every field, and the per-event cost.

use std::net::IpAddr;

use super::*;
use crate::events::event::Builder;
use crate::events::proctable::{ExecAt, ProcTable};
use crate::sensor::decode::*;

fn task(pid: u32, ppid: u32, comm: &str, uid: u32) -> Task {
    Task {
        ts_boot_ns: 2_000_000_000,
        start_boot_ns: 1_000_000_000,
        cgroup_id: 1,
        memcg_v1_id: 0,
        pid,
        tid: pid,
        ppid,
        uid,
        gid: uid,
        euid: uid,
        egid: uid,
        auid: uid,
        pidns: 4026531836,
        mntns: 4026531832,
        comm: comm.into(),
    }
}

struct World {
    procs: ProcTable,
    b: Builder,
}

impl World {
    fn new() -> World {
        let mut procs = ProcTable::new(64);
        procs.exec(1, 0, "/sbin/init", ExecAt::default());
        procs.exec(50, 1, "/usr/sbin/nginx", ExecAt::default());
        procs.exec(100, 50, "/usr/bin/bash", ExecAt::default());
        procs.exec(200, 1, "/usr/bin/bash", ExecAt::default());
        World {
            procs,
            b: Builder::new("h"),
        }
    }

    fn build(&mut self, r: Record) -> Event {
        self.b.build(r, &mut self.procs)
    }

    fn exec(&mut self, pid: u32, ppid: u32, path: &str, memfd: bool) -> Event {
        let comm = fields::base_name(path);
        self.build(Record::Exec(Exec {
            task: task(pid, ppid, comm, 1000),
            old_pid: pid,
            filename: path.into(),
            path: path.into(),
            path_truncated: false,
            args: vec![comm.into(), "-i".into()],
            args_truncated: false,
            memfd,
            stdio_sockets: if comm == "sh" && pid == 600 { 3 } else { 0 },
            exe_nlink: 1,
            exe_ino: 0,
            exe_dev: 0,
        }))
    }

    fn creds(&mut self, syscall: &'static str, old: Creds, new: Creds, exe: &str) -> Event {
        self.procs.exec(300, 200, exe, ExecAt::default());
        self.build(Record::Creds(CredChange {
            task: task(300, 200, fields::base_name(exe), old.uid),
            syscall,
            old,
            new,
        }))
    }
}

fn ids(rules: &Rules, ev: &Event) -> Vec<String> {
    let mut out = Vec::new();
    rules.evaluate(ev, &mut out);
    out.into_iter().map(|a| a.rule.id).collect()
}

fn defaults() -> Rules {
    Rules::new(Options {
        defaults: true,
        files: Vec::new(),
    })
    .expect("the default rules load")
}

fn user(uid: u32) -> Creds {
    Creds {
        uid,
        euid: uid,
        suid: uid,
        fsuid: uid,
        gid: uid,
        egid: uid,
        sgid: uid,
        fsgid: uid,
        ..Creds::default()
    }
}

#[test]
fn each_default_rule_fires_on_its_behaviour_only() {
    let r = defaults();
    let mut w = World::new();
    // Fileless exec.
    let ev = w.exec(400, 200, "/memfd:x (deleted)", true);
    assert_eq!(ids(&r, &ev), ["lg.defense_evasion.fileless_exec"]);
    let ev = w.exec(401, 200, "/usr/bin/ls", false);
    assert!(ids(&r, &ev).is_empty());
    // ptrace by a non-debugger; gdb is allowed.
    for (comm, want) in [("evil", 1), ("gdb", 0)] {
        let ev = w.build(Record::Ptrace(Ptrace {
            task: task(200, 1, comm, 0),
            request: "attach",
            target_pid: 1,
            target_host: true,
            ret: 0,
        }));
        assert_eq!(ids(&r, &ev).len(), want, "{comm}");
    }
    // BPF load.
    let ev = w.build(Record::BpfLoad(BpfLoad {
        task: task(200, 1, "bash", 0),
        prog_type: 1,
        prog_name: "p".into(),
        insn_cnt: 2,
        ret: 5,
    }));
    assert_eq!(ids(&r, &ev), ["lg.defense_evasion.bpf_load"]);
    // uid 0 gained by a process with no root uid at all; sudo's setresuid (saved uid 0) is fine.
    let ev = w.creds("setuid", user(1000), user(0), "/tmp/exploit");
    assert_eq!(ids(&r, &ev), ["lg.privilege_escalation.uid_zero_gained"]);
    let sudo_old = Creds {
        euid: 0,
        suid: 0,
        ..user(1000)
    };
    let ev = w.creds("setresuid", sudo_old, user(0), "/usr/bin/sudo");
    assert!(ids(&r, &ev).is_empty());
    let ev = w.creds("setuid", user(0), user(1000), "/usr/sbin/sshd");
    assert!(
        ids(&r, &ev).is_empty(),
        "dropping root is not an escalation"
    );
    // capabilities raised by a non-root process; ping is allowed.
    let caps = Creds {
        cap_effective: 1 << 13,
        ..user(1000)
    };
    let ev = w.creds("capset", user(1000), caps, "/tmp/x");
    assert_eq!(
        ids(&r, &ev),
        ["lg.privilege_escalation.capabilities_gained"]
    );
    let ev = w.creds("capset", user(1000), caps, "/usr/bin/ping");
    assert!(ids(&r, &ev).is_empty());
    // A shell connecting out.
    let sock = |comm: &str| Sock {
        task: task(200, 1, comm, 1000),
        inbound: false,
        src: IpAddr::from([10, 0, 0, 1]),
        sport: 40000,
        dst: IpAddr::from([10, 0, 0, 2]),
        dport: 4444,
        ret: 0,
    };
    let ev = w.build(Record::Sock(sock("bash")));
    assert_eq!(ids(&r, &ev), ["lg.execution.reverse_shell_connect"]);
    let ev = w.build(Record::Sock(sock("curl")));
    assert!(ids(&r, &ev).is_empty());
    // A shell whose stdin/stdout are sockets.
    let ev = w.exec(600, 200, "/usr/bin/sh", false);
    assert_eq!(ids(&r, &ev), ["lg.execution.reverse_shell_stdio"]);
    // A web server's shell in a container (and not outside one).
    let mut ev = w.exec(500, 100, "/usr/bin/sh", false);
    assert!(ids(&r, &ev).is_empty(), "no container");
    ev.container = Some(serde_json::json!({"id": "abc", "runtime": "containerd"}));
    assert_eq!(
        ids(&r, &ev),
        ["lg.persistence.web_server_shell_in_container"]
    );
}

/// A Unix connect to a runtime socket from a container alerts; from the host, or from the
/// runtime's own set-up process (exec'd outside the container's cgroup), it does not.
#[test]
fn runtime_socket_and_the_runtime_exemption() {
    let r = defaults();
    let mut w = World::new();
    let connect = |w: &mut World, pid: u32| {
        w.build(Record::File(FileChange {
            task: task(pid, 200, "curl", 0),
            op: FileOp::Connect,
            ret: 0,
            mode: 0,
            path: "/run/docker.sock".into(),
            old_path: String::new(),
            from_caller: false,
            truncated: false,
            watch_read: false,
            watch_write: false,
            watch_connect: true,
        }))
    };
    let host = ExecAt {
        cgroup: 1,
        memcg: 0,
        mntns: 4026531832,
    };
    w.procs.exec(700, 200, "/usr/bin/curl", host);
    let mut ev = connect(&mut w, 700);
    assert_eq!(ev.file.as_ref().map(|f| f.watch), Some("connect"));
    assert!(ids(&r, &ev).is_empty(), "not in a container");
    ev.container = Some(serde_json::json!({"id": "abc", "runtime": "docker"}));
    assert_eq!(
        ids(&r, &ev),
        ["lg.privilege_escalation.container_runtime_socket"]
    );
    // The same process, exec'd in another cgroup than the event's: a runtime's set-up step.
    w.procs
        .exec(701, 200, "/usr/bin/curl", ExecAt { cgroup: 9, ..host });
    let mut ev = connect(&mut w, 701);
    ev.container = Some(serde_json::json!({"id": "abc", "runtime": "docker"}));
    assert_eq!(ev.process.as_ref().and_then(|p| p.exec_outside), Some(true));
    assert!(ids(&r, &ev).is_empty());
}

#[test]
fn an_alert_carries_the_rule_the_process_and_what_the_rule_read() {
    let r = defaults();
    let mut w = World::new();
    let ev = w.exec(400, 200, "/memfd:x (deleted)", true);
    let mut infos = Vec::new();
    r.evaluate(&ev, &mut infos);
    let a = w.b.alert(&ev, infos.remove(0));
    let mut out = Vec::new();
    a.write_json(&mut out).expect("write");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        serde_json::to_string(&a).expect("serde"),
        "the writer matches serde"
    );
    assert_eq!(v["type"], "alert");
    assert_eq!(v["seq"], ev.seq + 1);
    assert_eq!(v["rule"]["id"], "lg.defense_evasion.fileless_exec");
    assert_eq!(v["rule"]["severity"], "high");
    assert_eq!(v["rule"]["ruleset"], "default");
    assert_eq!(v["event"]["severity"], 73);
    assert_eq!(v["threat"]["technique"]["id"][0], "T1620");
    assert_eq!(v["process"]["pid"], 400);
    assert_eq!(v["process"]["parent"]["pid"], 200);
    assert!(v["process"].get("args").is_none());
    assert_eq!(v["trigger"]["seq"], ev.seq);
    assert_eq!(v["trigger"]["type"], "exec");
    assert_eq!(v["trigger"]["fields"]["process.fileless"], true);
}

fn load_one(text: &str) -> Result<Vec<Rule>, Vec<Finding>> {
    load::load(&[Source {
        name: "my.yaml".into(),
        text: text.into(),
    }])
}

fn first_finding(text: &str) -> String {
    load_one(text).expect_err("refused")[0].to_string()
}

#[test]
fn findings_name_the_file_the_line_and_the_reason() {
    let f = first_finding(
        "- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: process.nme == x\n",
    );
    assert!(
        f.starts_with("my.yaml:5: rule `a`: unknown field `process.nme`"),
        "{f}"
    );
    let f = first_finding("- rule: a\n  name: A\n  severity: huge\n");
    assert!(f.starts_with("my.yaml:3: severity \"huge\""), "{f}");
    let f = first_finding("- rule: a\n  nam: A\n");
    assert!(f.starts_with("my.yaml:2: unknown key `nam`"), "{f}");
    let f = first_finding(
        "- rule: a\n  name: A\n  severity: low\n  events: [exek]\n  condition: true\n",
    );
    assert!(f.starts_with("my.yaml:4: unknown event type"), "{f}");
    let f = first_finding("- rule: a\n  name: A\n");
    assert!(f.contains("lacks severity, events, condition"), "{f}");
    let f = first_finding("rules: []\n");
    assert!(f.starts_with("my.yaml:1: a rule file is a list"), "{f}");
    let f = first_finding("- macro: m\n  condition: process.pid ==\n");
    assert!(f.starts_with("my.yaml:2: macro `m`"), "{f}");
    let f = first_finding("- list: l\n  items: [a]\n- list: l\n  items: [b]\n");
    assert!(
        f.starts_with("my.yaml:3: list `l` is already defined at my.yaml:1"),
        "{f}"
    );
    let f = first_finding("- rule: a\n  name: A\n  severity: low\n  mitre: [T12]\n");
    assert!(f.contains("not a MITRE"), "{f}");
    let f = first_finding(
        "- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: a and (\n",
    );
    assert!(f.starts_with("my.yaml:5:"), "{f}");
}

#[test]
fn later_files_extend_lists_and_switch_rules_off() {
    let own = "- list: ptrace_tools\n  append: true\n  items: [evil]\n- rule: lg.defense_evasion.fileless_exec\n  enabled: false\n";
    let rules = load::load(&[
        Source {
            name: "default".into(),
            text: DEFAULT_RULES.into(),
        },
        Source {
            name: "own.yaml".into(),
            text: own.into(),
        },
    ])
    .expect("load");
    assert!(
        !rules
            .iter()
            .any(|r| r.id == "lg.defense_evasion.fileless_exec")
    );
    let r = Rules {
        by_type: {
            let mut v = vec![Vec::new(); EVENT_TYPES.len()];
            for (i, r) in rules.iter().enumerate() {
                for &t in &r.types {
                    v[t].push(i as u32);
                }
            }
            v
        },
        rules,
        ..Rules::default()
    };
    let mut w = World::new();
    let ev = w.build(Record::Ptrace(Ptrace {
        task: task(200, 1, "evil", 0),
        request: "seize",
        target_pid: 1,
        target_host: true,
        ret: 0,
    }));
    assert!(
        ids(&r, &ev).is_empty(),
        "evil was appended to the allow list"
    );
    let ev = w.exec(400, 200, "/memfd:x", true);
    assert!(ids(&r, &ev).is_empty(), "switched off");
}

#[test]
fn malformed_rule_files_never_panic() {
    let cases = [
        "",
        "-",
        "- ",
        "- 1",
        "- [a, b]",
        "- rule:\n",
        "- rule: [x]\n",
        "- rule: a\n  name: {x: 1}\n",
        "- rule: a\n  events: {}\n",
        "- list: x\n",
        "- list: x\n  items: {a: 1}\n",
        "- list: x\n  items: [[a]]\n",
        "- macro: m\n  condition: m\n- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: m\n",
        "- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: process.pid == 99999999999999999999\n",
        "- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: process.name glob '['\n",
        "\u{0}\u{1}\u{2}",
        "- rule: a\n  name: A\n  severity: low\n  events: [exec]\n  condition: \"\\u00e9 == 1\"\n",
        "{a: [}",
        "- &a x\n- *a\n",
        "- list: l\n  append: true\n  items: [a]\n",
        "- rule: a\n  enabled: maybe\n",
    ];
    for c in cases {
        let _ = load_one(c);
    }
    // Byte soup made from the default file: every prefix and a few mutations.
    let d = DEFAULT_RULES.as_bytes();
    for cut in (0..d.len()).step_by(97) {
        let _ = load_one(&String::from_utf8_lossy(&d[..cut]));
    }
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..300 {
        let mut b = d.to_vec();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = b"-:[]{}()'\"&*!# \nab0"[(x >> 32) as usize % 19];
        }
        let _ = load_one(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn the_docs_describe_every_field_and_every_default_rule() {
    let doc = include_str!("../../docs/rules.md");
    for f in fields::names() {
        // `credentials.old.X` / `credentials.new.X` are documented once, with the list of X.
        let f = f
            .strip_prefix("credentials.old.")
            .or_else(|| f.strip_prefix("credentials.new."))
            .unwrap_or(f);
        assert!(
            doc.contains(&format!("`{f}`")),
            "docs/rules.md does not name `{f}`"
        );
    }
    for r in load_one(DEFAULT_RULES).expect("defaults") {
        assert!(
            doc.contains(&format!("`{}`", r.id)),
            "docs/rules.md lacks {}",
            r.id
        );
    }
}

/// Evaluating the default rules on an exec storm's events: the per-event median, printed
/// (`cargo test --release rules::tests::evaluation_cost -- --nocapture`); the bar is 1 µs.
#[test]
fn evaluation_cost() {
    let r = defaults();
    let mut w = World::new();
    let evs: Vec<Event> = (0..64)
        .map(|i| w.exec(1000 + i, 200, "/usr/bin/true", false))
        .collect();
    let median = bench_median_ns(&r, &evs, 200);
    println!("default rules: {median} ns per exec event (median of 200 rounds of 64)");
    // Debug builds are ~10x slower than release; the bar applies to release builds.
    assert!(median < 20_000, "{median} ns per event");
}

/// The median, over `rounds`, of the per-event time of evaluating `rules` on every event of
/// `evs` (ns).
pub fn bench_median_ns(rules: &Rules, evs: &[Event], rounds: usize) -> u64 {
    let mut out = Vec::new();
    let mut times: Vec<u64> = (0..rounds.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            for e in evs {
                rules.evaluate(e, &mut out);
                out.clear();
            }
            t.elapsed().as_nanos() as u64 / evs.len().max(1) as u64
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

#[test]
fn exclude_items_are_collected_and_a_bad_one_is_a_finding() {
    use crate::sensor::exclude::Exclusion;
    let l = load::load_all(&[
        Source {
            name: "a.yaml".into(),
            text: "- exclude: [uid:998, 'exe:/usr/bin/x']\n".into(),
        },
        Source {
            name: "b.yaml".into(),
            text: "- exclude:\n  - uid:998\n  - cgroup:/system.slice/x.service\n".into(),
        },
    ])
    .expect("loads");
    assert_eq!(
        l.exclude,
        vec![
            Exclusion::Uid(998),
            Exclusion::Exe("/usr/bin/x".into()),
            Exclusion::Cgroup("/system.slice/x.service".into()),
        ]
    );
    let f = first_finding("- exclude:\n  - uid:1\n  - uid:nobody\n");
    assert!(f.starts_with("my.yaml:3: exclude: "), "{f}");
    let f = first_finding("- exclude: [uid:1]\n  name: x\n");
    assert!(f.contains("unknown key `name`"), "{f}");
}
