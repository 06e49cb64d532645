//! `dns` and `connection_close` events against the real kernel, over loopback only: DNS queries
//! sent with sendto, send on a connected socket, sendmsg, sendmmsg and through `int $0x80`
//! (nothing needs to answer: the question is seen as it is sent), malformed payloads counted
//! and never crashing anything, nothing for other ports; TCP connections' ends with their bytes
//! and owner. Needs root and BPF (`root_*`); CI runs as root on a BTF kernel.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TempDir, build_c_helper, marker};
use crate::watch::{Watch, pid_of};

/// A DNS query for `name` of type `qtype` with id `id` (RD set).
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    m
}

fn dns_named<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|v| v["type"] == "dns" && v["dns"]["question"]["name"] == name)
        .collect()
}

fn settled(w: &Watch) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(400));
    w.events.lock().expect("lock").clone()
}

#[test]
fn root_dns_questions_are_reported_however_they_are_sent() {
    crate::common::require_root("root");
    let dir = TempDir::new("dns");
    let helper = build_c_helper(dir.path(), "sysops.c", &["-no-pie"]);
    let w = Watch::start(&[]);
    let mark = marker("dns");
    let me = u64::from(std::process::id());

    // sendto to 127.0.0.1:53.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sport = udp.local_addr().expect("addr").port();
    let n1 = format!("a.{mark}.example");
    udp.send_to(&query(0x0101, &n1, 1), "127.0.0.1:53")
        .expect("sendto");
    // send() on a socket connect()ed to [::1]:53.
    let udp6 = UdpSocket::bind("[::1]:0").expect("bind6");
    udp6.connect("[::1]:53").expect("connect");
    let n2 = format!("b.{mark}.example");
    udp6.send(&query(0x0202, &n2, 28)).expect("send");
    // sendmsg, and sendmmsg with two messages (as glibc sends A and AAAA together).
    let n3 = format!("c.{mark}.example");
    let dst = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 53);
    let q3 = query(0x0303, &n3, 16);
    nix::sys::socket::sendmsg(
        std::os::fd::AsRawFd::as_raw_fd(&udp),
        &[IoSlice::new(&q3)],
        &[],
        nix::sys::socket::MsgFlags::empty(),
        Some(&dst),
    )
    .expect("sendmsg");
    let (n4, n5) = (format!("d.{mark}.example"), format!("e.{mark}.example"));
    let (q4, q5) = (query(0x0404, &n4, 1), query(0x0505, &n5, 28));
    let mut data =
        nix::sys::socket::MultiHeaders::<nix::sys::socket::SockaddrIn>::preallocate(2, None);
    let iovs = [[IoSlice::new(&q4)], [IoSlice::new(&q5)]];
    let addrs = [Some(dst), Some(dst)];
    nix::sys::socket::sendmmsg(
        std::os::fd::AsRawFd::as_raw_fd(&udp),
        &mut data,
        &iovs,
        addrs,
        [],
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("sendmmsg");
    // Through int $0x80 (socket and sendto of the 32-bit ABI).
    let n6 = format!("f.{mark}.example");
    let out = std::process::Command::new(&helper)
        .args(["dns32", &n6])
        .output()
        .expect("sysops dns32");
    assert!(out.status.success(), "{out:?}");
    let pid32: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid=").and_then(|p| p.parse().ok()))
        .expect("pid");
    // Unrelated: other ports, and TCP.
    let n7 = format!("g.{mark}.example");
    udp.send_to(&query(0x0707, &n7, 1), "127.0.0.1:5353")
        .expect("sendto 5353");
    udp.send_to(&query(0x0707, &n7, 1), "127.0.0.1:54")
        .expect("sendto 54");

    w.wait_for("the 32-bit query", |v| {
        v["type"] == "dns" && v["dns"]["question"]["name"] == n6.as_str()
    });
    let evs = settled(&w);
    let one = |name: &str| -> Value {
        let found = dns_named(&evs, name);
        assert_eq!(found.len(), 1, "{name}: {found:#?}");
        found[0].clone()
    };
    let e1 = one(&n1);
    assert_eq!(pid_of(&e1), me);
    assert_eq!(
        e1["dns"],
        json!({"type": "query", "id": "257", "op_code": "QUERY",
               "question": {"name": n1, "type": "A", "class": "IN"}, "size": query(1, &n1, 1).len()})
    );
    assert_eq!(e1["destination"], json!({"ip": "127.0.0.1", "port": 53}));
    assert_eq!(e1["source"], json!({"ip": "127.0.0.1", "port": sport}));
    assert_eq!(
        e1["network"],
        json!({"transport": "udp", "type": "ipv4", "direction": "egress", "protocol": "dns"})
    );
    assert_eq!(
        e1["event"],
        json!({"kind": "event", "category": ["network"], "type": ["protocol"], "action": "dns_query"})
    );
    let e2 = one(&n2);
    assert_eq!(e2["destination"], json!({"ip": "::1", "port": 53}));
    assert_eq!(e2["network"]["type"], "ipv6");
    assert_eq!(e2["dns"]["question"]["type"], "AAAA");
    assert_eq!(one(&n3)["dns"]["question"]["type"], "TXT");
    assert_eq!(one(&n4)["dns"]["id"], "1028");
    assert_eq!(one(&n5)["dns"]["question"]["type"], "AAAA");
    let e6 = one(&n6);
    assert_eq!(pid_of(&e6), pid32);
    assert_eq!(e6["destination"], json!({"ip": "127.0.0.1", "port": 53}));
    assert!(
        dns_named(&evs, &n7).is_empty(),
        "ports 5353 and 54 are not DNS here"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn root_dns_malformed_payloads_are_reported_and_counted() {
    crate::common::require_root("root");
    let w = Watch::start(&["--stats-interval", "1"]);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sport = u64::from(udp.local_addr().expect("addr").port());
    let mut response = query(9, "x.example", 1);
    response[2] |= 0x80;
    let mut pointer = query(9, "x.example", 1);
    pointer[12] = 0xc0;
    let payloads: Vec<Vec<u8>> = vec![
        b"not dns at all".to_vec(),
        vec![],
        response,
        pointer,
        query(9, "x.example", 1)[..20].to_vec(),
    ];
    for p in &payloads {
        udp.send_to(p, "127.0.0.1:53").expect("sendto");
    }
    let mine = |v: &Value| v["type"] == "dns" && v["source"]["port"] == sport;
    crate::common::wait_for("five dns events", 10, || {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| mine(v))
            .count()
            >= 5
    });
    let evs: Vec<Value> = settled(&w).into_iter().filter(|v| mine(v)).collect();
    let reasons: Vec<&str> = evs
        .iter()
        .map(|v| v["dns"]["malformed"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        reasons,
        [
            // "not dns at all": a query header by its bits, then 'a' (0x61) as a label length
            "a label that is a pointer or of a reserved type",
            "shorter than a DNS header",
            "a response, not a query",
            "a label that is a pointer or of a reserved type",
            "cut off inside the question"
        ],
        "{evs:#?}"
    );
    assert!(evs.iter().all(|v| v["dns"].get("question").is_none()));
    assert_eq!(evs[1]["dns"]["size"], 0);
    // Counted: the stats event after them says so.
    let last_seq = evs
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let stats = w.wait_for("stats after the queries", |v| {
        v["type"] == "stats" && v["seq"].as_u64() > Some(last_seq)
    });
    assert!(
        stats["stats"]["dns_malformed"].as_u64() >= Some(5),
        "{stats}"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}

/// 10,000 queries in bursts of 1,000: every one delivered, none dropped, each parsed. (The
/// unpaced storm is the benchmark's: scripts/bench (scripts/bench-open-dns.sh), with the release build; the
/// debug build these tests run reads the ring buffer several times slower.)
#[test]
fn root_dns_storm_of_ten_thousand_queries_is_delivered_whole() {
    crate::common::require_root("root");
    let w = Watch::start(&["--stats-interval", "1"]);
    let mark = marker("storm");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..10_000u32 {
        udp.send_to(
            &query(i as u16, &format!("q{i}.{mark}.example"), 1),
            "127.0.0.1:53",
        )
        .expect("sendto");
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let suffix = format!(".{mark}.example");
    let count = || {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| {
                v["type"] == "dns"
                    && v["dns"]["question"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(&suffix))
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() < 10_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(count(), 10_000, "{}", w.agent.log());
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("dropped_kernel=0"), "{err}");
}

#[test]
fn root_connection_close_reports_bytes_duration_and_owner_of_both_ends() {
    use std::io::{Read, Write};
    crate::common::require_root("root");
    let w = Watch::start(&[]);
    let me = u64::from(std::process::id());
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let cport = c.local_addr().expect("addr").port();
    let (mut s, _) = l.accept().expect("accept");
    c.write_all(&[7u8; 1000]).expect("write");
    let mut got = vec![0u8; 1000];
    s.read_exact(&mut got).expect("read");
    s.write_all(&[9u8; 300]).expect("write back");
    let mut back = vec![0u8; 300];
    c.read_exact(&mut back).expect("read back");
    std::thread::sleep(Duration::from_millis(50));
    drop(c);
    drop(s);
    // A connection from another process: bash's /dev/tcp.
    let mut child = std::process::Command::new("/bin/bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf hello >&3; exec 3>&-"),
        ])
        .spawn()
        .expect("bash");
    let (mut s2, _) = l.accept().expect("accept bash");
    let mut hello = Vec::new();
    s2.read_to_end(&mut hello).expect("read bash");
    assert_eq!(hello, b"hello");
    drop(s2);
    let bash = u64::from(child.id());
    child.wait().expect("bash");
    // A connect that fails (nothing listens) never was a connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr").port();
    drop(closed);
    assert!(std::net::TcpStream::connect(("127.0.0.1", dead)).is_err());

    let is_ours = |v: &Value| {
        v["type"] == "connection_close"
            && (v["source"]["port"] == port || v["destination"]["port"] == port)
    };
    crate::common::wait_for("four connection ends", 15, || {
        w.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| is_ours(v))
            .count()
            >= 4
    });
    let evs: Vec<Value> = settled(&w).into_iter().filter(|v| is_ours(v)).collect();
    assert_eq!(evs.len(), 4, "{evs:#?}");
    let out = evs
        .iter()
        .find(|v| v["network"]["direction"] == "egress" && pid_of(v) == me)
        .expect("the test's own connect");
    assert_eq!(
        out["source"],
        json!({"ip": "127.0.0.1", "port": cport, "bytes": 1000})
    );
    assert_eq!(
        out["destination"],
        json!({"ip": "127.0.0.1", "port": port, "bytes": 300})
    );
    assert_eq!(out["network"]["bytes"], 1300);
    assert_eq!(out["network"]["transport"], "tcp");
    assert!(
        out["event"]["duration"].as_u64() > Some(50_000_000),
        "{out}"
    );
    assert_eq!(out["event"]["category"], json!(["network"]),);
    assert_eq!(out["event"]["type"], json!(["connection", "end"]));
    assert_eq!(out["event"]["action"], "connection_close");
    let inb = evs
        .iter()
        .find(|v| v["network"]["direction"] == "ingress" && v["source"]["port"] == cport)
        .expect("the accepted end");
    assert_eq!(pid_of(inb), me);
    assert_eq!(inb["source"]["bytes"], 1000);
    assert_eq!(
        inb["destination"],
        json!({"ip": "127.0.0.1", "port": port, "bytes": 300})
    );
    let from_bash = evs
        .iter()
        .find(|v| v["network"]["direction"] == "egress" && pid_of(v) == bash)
        .expect("bash's connect, owned by bash");
    assert_eq!(from_bash["source"]["bytes"], 5);
    assert_eq!(from_bash["process"]["name"], "bash");
    assert!(
        !evs.iter().any(|v| v["destination"]["port"] == dead),
        "a failed connect is not a connection"
    );
    let (status, err) = w.stop();
    assert!(status.success(), "{err}");
}
