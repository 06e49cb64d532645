//! `start`'s outputs end to end (all `root_*`: the real agent with real BPF): the metrics
//! endpoint parsed by Prometheus's own parser and `/healthz` while enrolling; several outputs at
//! once without a backend; the rotating file under an exec storm; syslog into a real rsyslog on
//! loopback; OTLP/HTTP into a receiver that decodes with the official OpenTelemetry protos.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{self, Agent, TempDir, http_get, prometheus_parse, wait_for};
use crate::e2e::{exec_marked, free_port, serial};

/// One agent run's directory (socket, log, stdout).
struct Run {
    dir: TempDir,
}

impl Run {
    fn new(tag: &str) -> Run {
        Run {
            dir: TempDir::new(tag),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `start` with a socket in this run's directory and `args`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::agent();
        c.current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("LINUXGUARD_SOCKET", self.path("agent.sock"))
            .arg("start")
            .args(args);
        c
    }
    fn spawn(&self, mut c: Command) -> Agent {
        Agent::spawn(
            &mut c,
            self.path("agent.log"),
            Some(self.path("agent.out")),
            None,
        )
    }
}

/// The value of the one sample `name{labels}` in parsed families.
fn sample(fams: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = fams[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {fams}"));
    samples
        .iter()
        .find(|s| {
            s[0] == name
                && labels.len() == s[1].as_object().map_or(0, |o| o.len())
                && labels.iter().all(|(k, v)| s[1][*k] == *v)
        })
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {family}: {fams}"))
}

/// `--metrics-addr 0.0.0.0:PORT` while the backend is unreachable: the agent warns that the
/// endpoint is reachable from other hosts, `/healthz` answers 200 with `enrolling`, and
/// `/metrics` parses with prometheus_client's parser, every family typed, the counters there.
#[test]
fn root_metrics_on_a_wildcard_address_answer_while_enrolling_and_parse_with_prometheus() {
    let Some(_serial) = serial() else { return };
    let run = Run::new("metrics");
    let dead = format!("https://127.0.0.1:{}", free_port());
    let port = free_port();
    let mut c = run.cmd(&[
        "--server",
        &dead,
        "--tenant-id",
        "demo",
        "--workload-id",
        "0000000000000abc",
        "--metrics-addr",
        &format!("0.0.0.0:{port}"),
    ]);
    c.env("LINUXGUARD_ENROLL_TOKEN", "ABCDEFGHIJKLMNOPQRSTUVWX");
    let mut a = run.spawn(c);
    let local = format!("127.0.0.1:{port}");
    a.wait_log("startup: watching before the identity is ready", 60);
    assert!(
        a.log().contains("reachable from other hosts"),
        "{}",
        a.log()
    );
    let (status, body) = http_get(&local, "/healthz");
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["enrolment"], "enrolling", "{h}");
    assert_eq!(h["sensor"], "attached", "{h}");
    exec_marked(&crate::e2e::marker("metrics"), 5);
    let mut fams = Value::Null;
    wait_for("observed events in /metrics", 10, || {
        let (status, text) = http_get(&local, "/metrics");
        assert_eq!(status, 200, "{text}");
        fams = prometheus_parse(&text);
        sample(
            &fams,
            "linuxguard_events_observed",
            "linuxguard_events_observed_total",
            &[],
        ) >= 5.0
    });
    for (fam, kind) in [
        ("linuxguard_events_observed", "counter"),
        ("linuxguard_events_sent", "counter"),
        ("linuxguard_events_dropped", "counter"),
        ("linuxguard_kubelet_misses", "counter"),
        ("linuxguard_queue_events", "gauge"),
        ("linuxguard_uptime_seconds", "gauge"),
        ("linuxguard_loop_body_max_seconds", "gauge"),
    ] {
        assert_eq!(fams[fam]["type"], kind, "{fam}: {fams}");
        assert!(
            !fams[fam]["help"].as_str().unwrap_or("").is_empty(),
            "{fam}"
        );
    }
    for stage in ["kernel", "decode", "queue", "upload"] {
        sample(
            &fams,
            "linuxguard_events_dropped",
            "linuxguard_events_dropped_total",
            &[("stage", stage)],
        );
    }
    // Nothing is sent while enrolling: the events wait in the queue.
    assert_eq!(
        sample(
            &fams,
            "linuxguard_events_sent",
            "linuxguard_events_sent_total",
            &[]
        ),
        0.0
    );
    assert!(
        sample(
            &fams,
            "linuxguard_queue_events",
            "linuxguard_queue_events",
            &[]
        ) >= 5.0
    );
    let (status, _) = http_get(&local, "/nothing-here");
    assert_eq!(status, 404);
    assert_eq!(a.term(20).code(), Some(0), "{}", a.log());
}

/// Follows `path` by name, as `tail -F` and log shippers do: reads the open file to its end;
/// at the end, if the name now points at another file (a rotation), reads the old one to its
/// end once more and switches to the new one. Returns every whole line read and the number of
/// switches; a line never ends without its newline.
struct Follower {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize, String)>,
}

impl Follower {
    fn start(path: PathBuf) -> Follower {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut lines, mut switches, mut partial) = (Vec::new(), 0, Vec::<u8>::new());
            let mut buf = vec![0u8; 1 << 20];
            let mut cur: Option<std::fs::File> = None;
            let take = |bytes: &[u8], lines: &mut Vec<String>, partial: &mut Vec<u8>| {
                partial.extend_from_slice(bytes);
                while let Some(i) = partial.iter().position(|c| *c == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    lines.push(String::from_utf8_lossy(&line[..i]).into_owned());
                }
            };
            loop {
                // Checked before the last pass: after the flag, one more full read.
                let last = flag.load(std::sync::atomic::Ordering::SeqCst);
                if cur.is_none() {
                    cur = std::fs::File::open(&path).ok();
                }
                if let Some(f) = cur.as_mut() {
                    loop {
                        match f.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => take(&buf[..n], &mut lines, &mut partial),
                            Err(e) => panic!("read {}: {e}", path.display()),
                        }
                    }
                    let ours = f.metadata().map(|m| m.ino()).ok();
                    let named = std::fs::metadata(&path).map(|m| m.ino()).ok();
                    if named.is_some() && named != ours {
                        // Rotated: the old file is complete (the agent never writes it again);
                        // read what came since the last read, then switch.
                        loop {
                            match f.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => take(&buf[..n], &mut lines, &mut partial),
                                Err(e) => panic!("read {}: {e}", path.display()),
                            }
                        }
                        assert!(
                            partial.is_empty(),
                            "a rotated file ends in part of a line: {:?}",
                            String::from_utf8_lossy(&partial)
                        );
                        cur = None;
                        switches += 1;
                        continue;
                    }
                }
                if last {
                    let rest = String::from_utf8_lossy(&partial).into_owned();
                    return (lines, switches, rest);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Follower { stop, thread }
    }

    /// Stops after one more full read; (lines, switches, trailing bytes without a newline).
    fn finish(self) -> (Vec<String>, usize, String) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("follower thread")
    }
}

/// Runs `storm N PREFIX` (tests/integration/storm.c): N marked execs as fast as one process
/// can spawn them.
fn storm(dir: &std::path::Path, n: usize, prefix: &str) {
    let bin = common::build_c_helper(dir, "storm.c", &[]);
    let o = Command::new(bin)
        .arg(n.to_string())
        .arg(prefix)
        .output()
        .expect("run storm");
    assert!(o.status.success(), "storm: {}", common::stderr(&o));
}

/// The markers (`PREFIX-i`) in the args of the exec events among `lines`, with their counts.
fn marked(lines: &[Value], prefix: &str) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for ev in lines.iter().filter(|e| e["type"] == "exec") {
        for a in ev["process"]["args"].as_array().into_iter().flatten() {
            if let Some(s) = a.as_str().filter(|s| s.starts_with(&format!("{prefix}-"))) {
                *seen.entry(s.to_string()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Every marker `PREFIX-0..n` exactly once.
fn assert_each_once(
    seen: &std::collections::HashMap<String, usize>,
    prefix: &str,
    n: usize,
    ctx: &str,
) {
    let missing: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&format!("{prefix}-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} marked execs missing ({ctx}), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let dup: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).take(10).collect();
    assert!(
        dup.is_empty(),
        "marked execs seen more than once ({ctx}): {dup:?}"
    );
    assert_eq!(seen.len(), n, "{ctx}");
}

/// The final counters line of an agent's log.
fn final_counters(a: &Agent) -> Value {
    crate::e2e::final_counters(a)
}

/// The edge deployment (`start --workload-id ID --output file,stdout`: no --server, no
/// credential, no enrolment) under an exec storm of 34,000 marked execs (over 100,000 events):
/// a reader following the file by name while it is written sees every event exactly once, in
/// order (consecutive `seq`), every line parses, across at least 5 rotations; the files kept on
/// disk hold the same lines; every file is 0600 in a directory the agent created; stdout got
/// the same events; the file's counters add up with nothing dropped; fsync on SIGTERM.
#[test]
fn root_file_output_rotates_under_an_exec_storm_without_losing_or_splitting_a_line() {
    const EXECS: usize = 34_000;
    let Some(_serial) = serial() else { return };
    let run = Run::new("file");
    let dir = run.path("out/linuxguard");
    let path = dir.join("events.jsonl");
    let follower = Follower::start(path.clone());
    let mut a = run.spawn(run.cmd(&[
        "--workload-id",
        "00000000000f11e5",
        "--output",
        "file,stdout",
        "--file-path",
        path.to_str().expect("utf-8 path"),
        "--file-max-mb",
        "10",
        "--file-keep",
        "50",
        "--queue-mb",
        "512",
        "--ring-buffer-mb",
        "16",
    ]));
    a.wait_log("startup: sensors attached", 60);
    let log = a.log();
    assert!(
        log.contains("no backend among the outputs, so no enrolment"),
        "{log}"
    );
    assert!(!log.contains("enrol "), "{log}");
    let prefix = crate::e2e::marker("storm");
    let t = std::time::Instant::now();
    storm(run.dir.path(), EXECS, &prefix);
    let storm_secs = t.elapsed().as_secs_f64();
    // Everything written (the queue empty) before the stop: then SIGTERM.
    let last = format!("{prefix}-{}\"", EXECS - 1);
    wait_for("the last marked exec in the file", 120, || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&last))
    });
    assert_eq!(a.term(30).code(), Some(0), "{}", a.log());
    let (lines, switches, rest) = follower.finish();
    let log = a.log();
    assert!(log.contains("synced to disk"), "{log}");
    assert_eq!(rest, "", "the file ends in part of a line");

    // What the follower read: every line parses; seq 1, 2, 3... with no gap or repeat.
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(
            ev["seq"],
            i as u64 + 1,
            "line {} of the followed file",
            i + 1
        );
    }
    assert!(events.len() >= 100_000, "{} events", events.len());
    assert!(switches >= 5, "{switches} rotations seen by the follower");
    assert_each_once(
        &marked(&events, &prefix),
        &prefix,
        EXECS,
        "followed by name",
    );

    // The files on disk: the same lines, oldest file first; 0600; the directory 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut on_disk = String::new();
    for n in (1..=switches).rev() {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        on_disk.push_str(&std::fs::read_to_string(&p).expect("rotated file"));
    }
    assert_eq!(mode(&path), 0o600);
    on_disk.push_str(&std::fs::read_to_string(&path).expect("current file"));
    assert!(
        on_disk == lines.join("\n") + "\n",
        "the files kept differ from what was followed"
    );

    // Stdout, the second output, got the same events.
    let out = a.stdout();
    assert_each_once(
        &marked(
            &out.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>(),
            &prefix,
        ),
        &prefix,
        EXECS,
        "stdout",
    );
    // The file's counters: everything observed was written, nothing dropped.
    let fc = final_counters(&a);
    let f = &fc["outputs"]["file"];
    assert_eq!(f["eventsSent"], events.len() as u64, "{fc}");
    assert_eq!(f["eventsDropped"]["queue"], 0, "{fc}");
    assert_eq!(f["eventsDropped"]["output"], 0, "{fc}");
    assert_eq!(fc["eventsObserved"], events.len() as u64, "{fc}");
    assert_eq!(
        fc["outputs"]["stdout"]["eventsSent"],
        events.len() as u64,
        "{fc}"
    );
    eprintln!(
        "file storm: {EXECS} execs in {storm_secs:.1} s, {} events, {} rotations, {} bytes",
        events.len(),
        switches,
        on_disk.len()
    );
}

/// A real rsyslogd on loopback, with its own configuration (never the system's): a Unix
/// datagram socket, UDP (a 32 MiB receive buffer: UDP has no flow control, and an exec storm's
/// burst overflows the default one) and TCP inputs on free ports, and every message written to
/// one file as
/// `input|facility|severity|host|app|procid|msgid|time|msg`. Killed on drop.
struct Rsyslog {
    child: std::process::Child,
    dir: TempDir,
    udp: u16,
    tcp: u16,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let dir = TempDir::new("rsyslog");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("free udp port");
        let tcp = free_port();
        let d = dir.path().display().to_string();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="256k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
input(type="imuxsock" Socket="{d}/log.sock" UseSpecialParser="off" ParseHostname="on" IgnoreTimestamp="off")
input(type="imudp" address="127.0.0.1" port="{udp}" rcvbufSize="32m")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="t" type="string" string="%inputname%|%syslogfacility%|%syslogseverity%|%hostname%|%app-name%|%procid%|%msgid%|%timereported:::date-rfc3339%|%msg%\n")
*.* action(type="omfile" file="{d}/out.log" template="t")
"#
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).expect("write rsyslog.conf");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(std::fs::File::create(dir.path().join("rsyslogd.out")).expect("out"))
            .stderr(std::fs::File::create(dir.path().join("rsyslogd.err")).expect("err"))
            .spawn()
            .expect("run rsyslogd (scripts/setup installs rsyslog)");
        let r = Rsyslog {
            child,
            dir,
            udp,
            tcp,
        };
        // Ready when a probe sent on each input comes out in the file: a port that another
        // program took between free_port() and rsyslogd's bind fails here, not later.
        let nonce = crate::e2e::marker("rsyslog-probe");
        let msg = |input: &str| format!("<14>1 - probe - - - - {nonce}-{input}");
        wait_for("rsyslogd receiving on its three inputs", 20, || {
            let sock = r.dir.path().join("log.sock");
            if let Ok(u) = std::os::unix::net::UnixDatagram::unbound() {
                let _ = u.send_to(msg("unix").as_bytes(), &sock);
            }
            if let Ok(u) = std::net::UdpSocket::bind("127.0.0.1:0") {
                let _ = u.send_to(msg("udp").as_bytes(), ("127.0.0.1", udp));
            }
            if let Ok(mut t) = std::net::TcpStream::connect(("127.0.0.1", tcp)) {
                use std::io::Write;
                let m = msg("tcp");
                let _ = write!(t, "{} {m}", m.len());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let out = std::fs::read_to_string(r.dir.path().join("out.log")).unwrap_or_default();
            ["unix", "udp", "tcp"]
                .iter()
                .all(|i| out.contains(&format!("{nonce}-{i}")))
        });
        r
    }

    /// The messages received so far, split into their fields (9 each).
    fn messages(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.dir.path().join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(9, '|').map(str::to_string).collect())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--output syslog` into a real rsyslog on loopback, over TCP (octet counting), UDP and a
/// Unix datagram socket: every marked exec arrives exactly once, as an RFC 5424 message that
/// rsyslog parses (facility local0, severity info, our host name, app-name linuxguard-agent,
/// the agent's pid, MSGID = the event type, the event's own time) with the event JSON as MSG;
/// over TCP and the Unix socket, rsyslog holds exactly as many of the agent's messages as the
/// agent counted sent, and the syslog output's counters add up.
#[test]
fn root_syslog_output_delivers_every_marked_event_to_rsyslog() {
    let Some(_serial) = serial() else { return };
    let rs = Rsyslog::start();
    let host = nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("utf-8 hostname");
    let targets = [
        ("tcp", format!("tcp://127.0.0.1:{}", rs.tcp), 5000),
        ("udp", format!("udp://127.0.0.1:{}", rs.udp), 300),
        (
            "unix",
            format!("unix:{}", rs.dir.path().join("log.sock").display()),
            300,
        ),
    ];
    for (name, addr, n) in targets {
        let run = Run::new(&format!("syslog-{name}"));
        let mut a = run.spawn(run.cmd(&[
            "--workload-id",
            "0000000000005150",
            "--output",
            "syslog",
            "--syslog-addr",
            &addr,
        ]));
        a.wait_log("startup: sensors attached", 60);
        let pid = a.pid().to_string();
        let prefix = crate::e2e::marker(&format!("syslog-{name}"));
        storm(run.dir.path(), n, &prefix);
        let ours = |rs: &Rsyslog| -> Vec<Vec<String>> {
            rs.messages()
                .into_iter()
                .filter(|m| m.len() == 9 && m[5] == pid)
                .collect()
        };
        let mut seen = std::collections::HashMap::new();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.len() < n {
            let evs: Vec<Value> = ours(&rs)
                .iter()
                .filter_map(|m| serde_json::from_str(&m[8]).ok())
                .collect();
            seen = marked(&evs, &prefix);
            assert!(
                std::time::Instant::now() < end,
                "{} of {n} marked execs in rsyslog over {name} after 60 s; {} messages of \
                 ours, {} in all; rsyslogd: {}\nagent:\n{}",
                seen.len(),
                ours(&rs).len(),
                rs.messages().len(),
                std::fs::read_to_string(rs.dir.path().join("rsyslogd.err")).unwrap_or_default(),
                a.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_each_once(&seen, &prefix, n, name);
        assert_eq!(a.term(30).code(), Some(0), "{}", a.log());
        let fc = final_counters(&a);
        let s = &fc["outputs"]["syslog"];
        let sent = s["eventsSent"].as_u64().unwrap_or(0);
        let dropped = s["eventsDropped"]["queue"].as_u64().unwrap_or(0)
            + s["eventsDropped"]["output"].as_u64().unwrap_or(0)
            + s["eventsDropped"]["decode"].as_u64().unwrap_or(0);
        assert_eq!(fc["eventsObserved"].as_u64(), Some(sent + dropped), "{fc}");
        let input = match name {
            "tcp" => "imtcp",
            "udp" => "imudp",
            _ => "imuxsock",
        };
        if name != "udp" {
            wait_for("rsyslog to write every message the agent sent", 20, || {
                ours(&rs).len() as u64 == sent
            });
        }
        for m in ours(&rs) {
            assert_eq!(m[0], input, "{m:?}");
            assert_eq!(
                (m[1].as_str(), m[2].as_str()),
                ("16", "6"),
                "local0.info: {m:?}"
            );
            assert_eq!(m[3], host, "{m:?}");
            assert_eq!(m[4], "linuxguard-agent", "{m:?}");
            let ev: Value = serde_json::from_str(&m[8])
                .unwrap_or_else(|e| panic!("MSG is not the event JSON ({e}): {m:?}"));
            assert_eq!(m[6], ev["type"].as_str().unwrap_or("?"), "MSGID: {m:?}");
            // rsyslog re-renders the time (RFC 3339, microseconds): same instant as the event's.
            let t = ev["@timestamp"].as_str().unwrap_or("");
            assert_eq!(m[7][..19], t[..19], "{m:?}");
        }
    }
}

/// A CA and a leaf it signed, with distinct subject names (OpenSSL, which the Python receiver
/// uses, takes a leaf named like its issuer for a self-signed certificate).
struct Pki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl Pki {
    fn new(tag: &str, names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("linuxguard test {tag} CA"));
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut leaf = CertificateParams::new(names).expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, format!("linuxguard test {tag}"));
        let key = KeyPair::generate().expect("leaf key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf cert");
        Pki {
            ca_pem: ca.pem(),
            leaf_pem: cert.pem(),
            leaf_key_pem: key.serialize_pem(),
        }
    }
}

/// The OTLP receiver (tests/integration/py/otlp_receiver.py), decoding with the official
/// opentelemetry-proto definitions; its records in a file, faults through a control port.
/// Killed on drop.
struct Receiver {
    child: std::process::Child,
    dir: TempDir,
    port: u16,
    control: u16,
}

impl Receiver {
    fn start(extra: &[&str]) -> Receiver {
        let dir = TempDir::new("otlp-receiver");
        let (port, control) = (free_port(), free_port());
        let child = Command::new(common::python())
            .arg(common::py_script("otlp_receiver.py"))
            .args([
                "--port",
                &port.to_string(),
                "--control-port",
                &control.to_string(),
            ])
            .arg("--out")
            .arg(dir.path().join("records.jsonl"))
            .args(extra)
            .stdout(std::fs::File::create(dir.path().join("out")).expect("out"))
            .stderr(std::fs::File::create(dir.path().join("err")).expect("err"))
            .spawn()
            .expect("run the OTLP receiver");
        let r = Receiver {
            child,
            dir,
            port,
            control,
        };
        wait_for("the OTLP receiver", 30, || {
            r.log().contains("receiver: ready")
        });
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }

    /// Every record received so far: whole lines only (the receiver may be writing the last
    /// one while it is read).
    fn records(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join("records.jsonl")).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).expect("receiver record"))
            .collect()
    }

    /// The events (record bodies, parsed).
    fn events(&self) -> Vec<Value> {
        self.records()
            .iter()
            .map(|r| {
                let b = r["body"]
                    .as_str()
                    .unwrap_or_else(|| panic!("body not a string: {r}"));
                serde_json::from_str(b).unwrap_or_else(|e| panic!("body is not JSON ({e}): {r}"))
            })
            .collect()
    }

    fn control(&self, path: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.control)).expect("control");
        write!(s, "POST {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").expect("control request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("control answer");
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The OTLP bar: 10,000 marked execs reach a receiver that decodes with the official
/// OpenTelemetry protos exactly once each, through a 5 s outage of the receiver (connections
/// refused) in the middle of the storm; the agent's counters for the otlp output equal the
/// receiver's count, nothing dropped. Meanwhile the file output, in the same agent, kept
/// writing during the outage (one slow output never stalls another). Each record carries the
/// event's time, severity INFO, the event JSON as its body, `event.name`, and the resource
/// attributes (service, version, host, workload id; no k8s ones outside Kubernetes).
#[test]
fn root_otlp_delivers_10000_marked_events_exactly_once_through_a_receiver_outage() {
    const EXECS: usize = 10_000;
    let Some(_serial) = serial() else { return };
    let rx = Receiver::start(&[]);
    let run = Run::new("otlp");
    let file = run.path("events.jsonl");
    let mut a = run.spawn(run.cmd(&[
        "--workload-id",
        "00000000000071e1",
        "--output",
        "otlp,file",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", rx.port),
        "--file-path",
        file.to_str().expect("utf-8"),
        "--batch-max-age-ms",
        "200",
        "--queue-mb",
        "256",
        "--ring-buffer-mb",
        "16",
    ]));
    a.wait_log("startup: sensors attached", 60);
    let prefix = crate::e2e::marker("otlp");
    let storm_dir = run.dir.path().to_path_buf();
    let p = prefix.clone();
    let storming = std::thread::spawn(move || storm(&storm_dir, EXECS, &p));
    let file_marks = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .matches(&format!("\"{prefix}-"))
            .count()
    };
    wait_for("the storm under way", 30, || file_marks() > 500);
    rx.control("/outage?seconds=5");
    wait_for("the receiver down", 10, || {
        rx.log().contains("receiver: down")
    });
    let (before, at) = (rx.records().len(), file_marks());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (during, later) = (rx.records().len(), file_marks());
    assert_eq!(before, during, "the receiver took records while down");
    assert!(
        later > at,
        "the file stalled while the OTLP receiver was down ({at} -> {later})"
    );
    storming.join().expect("storm");
    wait_for("the receiver up again", 20, || {
        rx.log().contains("receiver: up again")
    });
    let mut seen = std::collections::HashMap::new();
    wait_for("10,000 marked execs at the receiver", 180, || {
        seen = marked(&rx.events(), &prefix);
        seen.len() >= EXECS
    });
    assert_each_once(&seen, &prefix, EXECS, "OTLP receiver");
    assert_eq!(a.term(30).code(), Some(0), "{}", a.log());
    let log = a.log();
    assert!(
        log.contains("output otlp: POST"),
        "no failed post logged: {log}"
    );

    let records = rx.records();
    let fc = final_counters(&a);
    let o = &fc["outputs"]["otlp"];
    assert_eq!(o["eventsSent"], records.len() as u64, "{fc}");
    assert_eq!(o["eventsDropped"]["queue"], 0, "{fc}");
    assert_eq!(o["eventsDropped"]["output"], 0, "{fc}");
    assert!(o["failures"].as_u64().unwrap_or(0) > 0, "{fc}");
    assert_eq!(fc["eventsObserved"], records.len() as u64, "{fc}");
    assert_eq!(
        fc["outputs"]["file"]["eventsSent"],
        records.len() as u64,
        "{fc}"
    );

    // Every event once (seq 1..N in some order), with its time, severity and resource.
    let mut seqs: Vec<u64> = Vec::with_capacity(records.len());
    let workload = log
        .split("workload id ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no workload id in the log: {log}"))
        .to_string();
    for r in &records {
        let ev: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("body JSON");
        seqs.push(ev["seq"].as_u64().expect("seq"));
        let t = humantime::parse_rfc3339(ev["@timestamp"].as_str().expect("time")).expect("time");
        let ns = t
            .duration_since(std::time::UNIX_EPOCH)
            .expect("epoch")
            .as_nanos();
        assert_eq!(r["time"].as_u64().map(u128::from), Some(ns), "{r}");
        assert!(r["observed"].as_u64().unwrap_or(0) > 0, "{r}");
        assert_eq!(
            (r["severityNumber"].as_u64(), r["severityText"].as_str()),
            (Some(9), Some("INFO")),
            "{r}"
        );
        assert_eq!(
            r["attributes"]["event.name"],
            format!("linuxguard.{}", ev["type"].as_str().unwrap_or("?")),
            "{r}"
        );
        let res = &r["resource"];
        assert_eq!(res["service.name"], "linuxguard-agent", "{r}");
        assert_eq!(res["service.version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert_eq!(res["linuxguard.workload.id"], workload.as_str(), "{r}");
        assert_eq!(res["host.name"], ev["host"]["name"], "{r}");
        assert!(res.get("k8s.pod.uid").is_none(), "{r}");
        assert_eq!(r["scope"][0], "linuxguard-agent", "{r}");
    }
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=records.len() as u64).collect();
    assert!(
        seqs == want,
        "events lost or delivered twice (seq 1..{})",
        records.len()
    );
    eprintln!(
        "otlp: {} records, {} failed attempts during the outage",
        records.len(),
        o["failures"]
    );
}

/// OTLP over https with mTLS and a token from a headers file, in Kubernetes (node name and pod
/// UID given): the receiver verifies the agent's client certificate and the Authorization
/// header; a 429 with `Retry-After: 2` is honoured (the retry waits at least 2 s); records carry
/// `k8s.node.name` and `k8s.pod.uid`; the token never reaches the agent's log.
#[test]
fn root_otlp_over_mtls_with_a_header_token_honours_retry_after() {
    let Some(_serial) = serial() else { return };
    let dir = TempDir::new("otlp-tls");
    let server = Pki::new("server", &["127.0.0.1"]);
    let client = Pki::new("client", &["linuxguard-agent"]);
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p.display().to_string()
    };
    let (srv_cert, srv_key, srv_ca) = (
        w("srv.pem", &server.leaf_pem),
        w("srv.key", &server.leaf_key_pem),
        w("srv-ca.pem", &server.ca_pem),
    );
    let (cl_cert, cl_key, cl_ca) = (
        w("client.pem", &client.leaf_pem),
        w("client.key", &client.leaf_key_pem),
        w("client-ca.pem", &client.ca_pem),
    );
    let token = "Bearer s3cret-otlp-token-0123456789";
    let headers = w(
        "headers",
        &format!("# the collector's token\nAuthorization: {token}\n"),
    );
    let rx = Receiver::start(&[
        "--cert",
        &srv_cert,
        "--key",
        &srv_key,
        "--client-ca",
        &cl_ca,
        "--header",
        &format!("Authorization: {token}"),
    ]);
    rx.control("/fail?status=429&count=1&retryAfter=2");
    let run = Run::new("otlp-tls");
    let mport = free_port();
    let maddr = format!("0.0.0.0:{mport}");
    let mut c = run.cmd(&[
        "--metrics-addr",
        &maddr,
        "--metrics-allow-remote",
        "--output",
        "otlp",
        "--otlp-endpoint",
        &format!("https://127.0.0.1:{}", rx.port),
        "--otlp-ca",
        &srv_ca,
        "--otlp-cert",
        &cl_cert,
        "--otlp-key",
        &cl_key,
        "--otlp-headers-file",
        &headers,
        "--batch-max-age-ms",
        "100",
    ]);
    c.env("LINUXGUARD_NODE_NAME", "worker-7")
        .env("LINUXGUARD_POD_UID", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        .env(
            "LINUXGUARD_KUBELET_URL",
            format!("http://127.0.0.1:{}", free_port()),
        );
    let mut a = run.spawn(c);
    a.wait_log("startup: sensors attached", 60);
    let prefix = crate::e2e::marker("otlp-tls");
    storm(run.dir.path(), 50, &prefix);
    a.wait_log("the collector answered 429", 30);
    let mut seen = std::collections::HashMap::new();
    wait_for("50 marked execs at the receiver", 60, || {
        seen = marked(&rx.events(), &prefix);
        seen.len() >= 50
    });
    assert_each_once(&seen, &prefix, 50, "mTLS receiver");
    // The per-output metrics parse with Prometheus's parser; no warning for the wildcard
    // address with --metrics-allow-remote; /healthz says there is no enrolment.
    let local = format!("127.0.0.1:{mport}");
    let (_, text) = http_get(&local, "/metrics");
    let fams = prometheus_parse(&text);
    let sent = sample(
        &fams,
        "linuxguard_output_events_sent",
        "linuxguard_output_events_sent_total",
        &[("output", "otlp")],
    );
    assert!(sent >= 50.0, "{fams}");
    assert!(
        sample(
            &fams,
            "linuxguard_output_failures",
            "linuxguard_output_failures_total",
            &[("output", "otlp")]
        ) >= 1.0,
        "the 429 counts as a failed attempt: {fams}"
    );
    sample(
        &fams,
        "linuxguard_output_events_dropped",
        "linuxguard_output_events_dropped_total",
        &[("output", "otlp"), ("stage", "queue")],
    );
    let (_, h) = http_get(&local, "/healthz");
    assert!(h.contains("\"enrolment\":\"off\""), "{h}");
    assert_eq!(a.term(30).code(), Some(0), "{}", a.log());
    let log = a.log();
    assert!(!log.contains("reachable from other hosts"), "{log}");
    // The retry after the 429 waited for Retry-After (2 s) at least.
    let delay: f64 = log
        .lines()
        .find(|l| l.contains("the collector answered 429"))
        .and_then(|l| l.split(" in ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no retry delay logged: {log}"));
    assert!(
        delay >= 2.0,
        "retried after {delay} s despite Retry-After: 2"
    );
    assert!(
        !log.contains("s3cret-otlp-token"),
        "the token reached the log: {log}"
    );
    let records = rx.records();
    let r = &records[0];
    assert_eq!(r["resource"]["k8s.node.name"], "worker-7", "{r}");
    assert_eq!(
        r["resource"]["k8s.pod.uid"], "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "{r}"
    );
    let fc = final_counters(&a);
    assert_eq!(
        fc["outputs"]["otlp"]["eventsSent"],
        records.len() as u64,
        "{fc}"
    );
    assert_eq!(fc["eventsObserved"], records.len() as u64, "{fc}");
}
