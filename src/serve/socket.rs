//! The agent's Unix socket: a non-blocking server driven from the caller's poll loop (one epoll
//! fd to watch, `handle_ready()` to call), callers identified by `SO_PEERCRED`/`SO_PEERPIDFD`,
//! and the small client used by `attest --self` and `status`. Protocol: docs/socket.md.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{Value, json};

use crate::counters::SocketStats;
use crate::error::{Context, Error, Kind, Result};

/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 4096;
/// A response longer than this is refused by the client.
pub const MAX_RESPONSE: usize = 1 << 20;
/// A connection must send its request (and take its answer) within this time.
const CONN_DEADLINE: Duration = Duration::from_secs(2);
/// A connection must send its whole request line within this time (our clients send it at
/// once), so a silent connection holds a slot for a quarter second, not two.
const FIRST_LINE_DEADLINE: Duration = Duration::from_millis(250);
/// Connections served at once; more are answered "busy" and closed.
const MAX_CONNS: usize = 64;
/// Connections one caller (one uid in one pid namespace) may hold at once; more are "busy".
const MAX_CONNS_PER_PEER: usize = 4;
/// Extra slots, over `MAX_CONNS`, for callers with the agent's own uid and pid namespace (the
/// `status` liveness probe runs in the agent's container), so workloads cannot starve them.
const OWN_RESERVE: usize = MAX_CONNS_PER_PEER;
/// How long the client keeps retrying a "busy" answer.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(2);
/// The busy answer (the client matches it to retry).
const BUSY: &str = "agent busy, retry";
/// Accepts per `handle_ready` call, so a flood cannot hold the loop.
const ACCEPTS_PER_CALL: usize = 64;

const LISTENER: u64 = 0;

/// What a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    AttestSelf,
    Status,
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::AttestSelf => "attest-self",
            Request::Status => "status",
        }
    }
}

/// The process at the other end, as the kernel reports it at connect time.
#[derive(Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `SO_PEERPIDFD` (Linux 6.5+): pins the exact process, so a reused pid is detected.
    pidfd: Option<OwnedFd>,
}

/// Who a connection counts against for the per-caller limit: the peer's uid and the inode of
/// its pid namespace (0 when it cannot be read, e.g. a pid not visible from the agent's
/// namespace). Each pod has its own pid namespace, so one pod cannot use another's share; on
/// the host, each uid has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerKey {
    uid: u32,
    pidns: u64,
}

fn pidns_of(pid: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).map_or(0, |m| m.ino())
}

impl Peer {
    /// False once the peer process has exited (its pid may then belong to someone else).
    /// Without a pidfd (older kernels) this cannot tell and returns true.
    pub fn still_alive(&self) -> bool {
        let Some(fd) = &self.pidfd else { return true };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // A pidfd polls readable when the process exits.
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => true,
            Ok(_) => false,
            Err(_) => true,
        }
    }
}

struct Conn {
    stream: UnixStream,
    peer: Peer,
    key: PeerKey,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// Until the request line is in; then `deadline`.
    first_line_deadline: Instant,
    deadline: Instant,
}

/// The listening socket and its connections.
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// The agent's own uid and pid namespace (its probes' key).
    own: PeerKey,
    pub stats: SocketStats,
}

impl Server {
    /// Binds `path` with `mode` (0o660 or 0o666). A stale socket file is replaced; a live agent
    /// already listening there is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(Kind::Runtime, || {
                format!("failed to create the socket directory `{}`", dir.display())
            })?;
        }
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if !md.file_type().is_socket() {
                return Err(Error::runtime(format!(
                    "`{}` exists and is not a socket; remove it or choose another --socket",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::runtime(format!(
                    "another agent is already listening on `{}`",
                    path.display()
                )));
            }
            std::fs::remove_file(path).with_context(Kind::Runtime, || {
                format!("failed to remove the stale socket `{}`", path.display())
            })?;
        }
        let listener = UnixListener::bind(path).with_context(Kind::Runtime, || {
            format!("failed to bind `{}`", path.display())
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(Kind::Runtime, || {
                format!("failed to set mode {mode:o} on `{}`", path.display())
            })?;
        listener
            .set_nonblocking(true)
            .context(Kind::Runtime, "failed to make the socket non-blocking")?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .context(Kind::Runtime, "failed to create an epoll instance")?;
        epoll
            .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .context(Kind::Runtime, "failed to watch the socket")?;
        log::info!("listening on {} (mode {mode:o})", path.display());
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            next_id: 1,
            own: PeerKey {
                uid: nix::unistd::geteuid().as_raw(),
                pidns: pidns_of("self"),
            },
            stats: SocketStats::default(),
        })
    }

    /// The one fd to poll for `POLLIN` (an epoll fd covering the listener and connections).
    /// Call [`Server::handle_ready`] when it is readable, and at least once a second so slow
    /// callers are timed out.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts, reads, answers and times out connections; never blocks. `answer` computes the
    /// reply to one request from one peer and must not block either.
    pub fn handle_ready(&mut self, answer: &mut dyn FnMut(Request, &Peer) -> Value) {
        // Drain the epoll readiness list (level-triggered: what stays ready shows up again).
        let mut events = [EpollEvent::empty(); 64];
        let _ = self.epoll.wait(&mut events, EpollTimeout::ZERO);
        self.accept_some();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        let now = Instant::now();
        for id in ids {
            let done = match self.conns.get_mut(&id) {
                Some(c) => {
                    let waiting = c.out.is_empty() && !c.inbuf.contains(&b'\n');
                    if now > c.deadline || (waiting && now > c.first_line_deadline) {
                        self.stats.timed_out += 1;
                        true
                    } else {
                        progress(c, answer, &mut self.stats)
                    }
                }
                None => false,
            };
            if done {
                if let Some(c) = self.conns.remove(&id) {
                    let _ = self.epoll.delete(&c.stream);
                }
            } else if let Some(c) = self.conns.get(&id) {
                let flags = if c.out.is_empty() {
                    EpollFlags::EPOLLIN
                } else {
                    EpollFlags::EPOLLOUT
                };
                let _ = self
                    .epoll
                    .modify(&c.stream, &mut EpollEvent::new(flags, id));
            }
        }
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_CALL {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("socket accept failed: {e}");
                    return;
                }
            };
            self.stats.accepted += 1;
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() >= MAX_CONNS + OWN_RESERVE {
                self.stats.rejected += 1;
                let _ = (&stream).write(&line(&error_reply(BUSY)));
                continue;
            }
            let Ok(cred) = getsockopt(&stream, sockopt::PeerCredentials) else {
                self.stats.rejected += 1;
                continue;
            };
            let key = PeerKey {
                uid: cred.uid(),
                pidns: match cred.pid() {
                    pid if pid > 0 => pidns_of(&pid.to_string()),
                    _ => 0,
                },
            };
            let own = key == self.own && key.pidns != 0;
            let (mine, others) = self.conns.values().fold((0, 0), |(m, o), c| {
                (
                    m + usize::from(c.key == key),
                    o + usize::from(c.key != self.own),
                )
            });
            if mine >= MAX_CONNS_PER_PEER || (!own && others >= MAX_CONNS) {
                self.stats.rejected += 1;
                log::debug!(
                    "socket: busy for pid {} uid {} ({mine} of its connections open)",
                    cred.pid(),
                    cred.uid()
                );
                let _ = (&stream).write(&line(&error_reply(BUSY)));
                continue;
            }
            let pidfd = getsockopt(&stream, sockopt::PeerPidfd).ok();
            let peer = Peer {
                pid: u32::try_from(cred.pid()).unwrap_or(0),
                uid: cred.uid(),
                gid: cred.gid(),
                pidfd,
            };
            let id = self.next_id;
            self.next_id += 1;
            if self
                .epoll
                .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, id))
                .is_err()
            {
                continue;
            }
            log::debug!(
                "socket: connection from pid {} uid {} gid {}",
                peer.pid,
                peer.uid,
                peer.gid
            );
            self.conns.insert(
                id,
                Conn {
                    stream,
                    peer,
                    key,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    written: 0,
                    first_line_deadline: Instant::now() + FIRST_LINE_DEADLINE,
                    deadline: Instant::now() + CONN_DEADLINE,
                },
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Moves one connection along; true when it is finished and should be closed.
fn progress(
    c: &mut Conn,
    answer: &mut dyn FnMut(Request, &Peer) -> Value,
    stats: &mut SocketStats,
) -> bool {
    if c.out.is_empty() {
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return true, // closed before a full line
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    if c.inbuf.contains(&b'\n') {
                        break;
                    }
                    if c.inbuf.len() > MAX_REQUEST {
                        stats.rejected += 1;
                        c.out = line(&error_reply("request too long"));
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        if c.out.is_empty() {
            let end = c
                .inbuf
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(c.inbuf.len());
            let reply = match parse_request(&c.inbuf[..end]) {
                Ok(req) => {
                    stats.answered += 1;
                    answer(req, &c.peer)
                }
                Err(why) => {
                    stats.rejected += 1;
                    error_reply(&why)
                }
            };
            c.out = line(&reply);
        }
    }
    loop {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return true,
            Ok(n) => {
                c.written += n;
                if c.written >= c.out.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// `{"request":"attest-self"}` or `{"request":"status"}`.
pub fn parse_request(raw: &[u8]) -> std::result::Result<Request, String> {
    let v: Value = serde_json::from_slice(raw).map_err(|_| {
        "expected one JSON object per line, such as {\"request\":\"status\"}".to_string()
    })?;
    match v.get("request").and_then(Value::as_str) {
        Some("attest-self") => Ok(Request::AttestSelf),
        Some("status") => Ok(Request::Status),
        Some(other) => Err(format!(
            "unknown request {:?}; requests: attest-self, status",
            other.chars().take(64).collect::<String>()
        )),
        None => Err("missing \"request\" (attest-self or status)".into()),
    }
}

pub fn ok_reply(result: Value) -> Value {
    json!({"ok": true, "result": result})
}

pub fn error_reply(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
}

fn line(v: &Value) -> Vec<u8> {
    let mut s = v.to_string().into_bytes();
    s.push(b'\n');
    s
}

/// The client: sends one request and returns the `result` of an `ok` reply, or the agent's
/// error as a runtime error. A "busy" answer is retried for up to two seconds.
pub fn request(path: &Path, req: Request, timeout: Duration) -> Result<Value> {
    let give_up = Instant::now() + BUSY_RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match request_once(path, req, timeout) {
            Err(e) if e.to_string().ends_with(BUSY) && Instant::now() + pause < give_up => {
                log::debug!("{e}; retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

fn request_once(path: &Path, req: Request, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(path).with_context(Kind::Runtime, || {
        format!(
            "the agent is not running (cannot connect to `{}`; start it, or pass --socket)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .context(Kind::Runtime, "failed to set socket timeouts")?;
    // A busy agent may answer and close before our request is sent: read its answer anyway.
    let sent = s.write_all(&line(&json!({"request": req.name()})));
    let mut buf = Vec::new();
    let mut limited = (&mut s).take(MAX_RESPONSE as u64 + 1);
    let mut chunk = [0u8; 4096];
    loop {
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A busy agent answers and closes without reading our request, which resets the
            // connection after its answer: what was read is the whole answer.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && buf.ends_with(b"\n") => break,
            Err(e) => {
                sent.context(Kind::Runtime, "failed to send the request to the agent")?;
                return Err(e).context(Kind::Runtime, "no answer from the agent in time");
            }
        }
    }
    if buf.is_empty() {
        sent.context(Kind::Runtime, "failed to send the request to the agent")?;
    }
    if buf.len() > MAX_RESPONSE {
        return Err(Error::runtime("the agent's answer is over 1 MiB"));
    }
    let v: Value =
        serde_json::from_slice(&buf).context(Kind::Runtime, "the agent's answer is not JSON")?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        Err(Error::runtime(format!("the agent refused: {msg}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsing() {
        assert_eq!(
            parse_request(br#"{"request":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"request":"attest-self"}"#),
            Ok(Request::AttestSelf)
        );
        assert!(parse_request(b"").is_err());
        assert!(parse_request(br#"{"request":"attest","pid":1}"#).is_err());
        assert!(parse_request(b"\xff\xfe").is_err());
    }

    fn serve_until(srv: &mut Server, done: impl Fn(&Server) -> bool) {
        let start = Instant::now();
        while !done(srv) && start.elapsed() < Duration::from_secs(5) {
            let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
            srv.handle_ready(&mut |req, peer| {
                ok_reply(json!({"req": req.name(), "pid": peer.pid, "alive": peer.still_alive()}))
            });
        }
    }

    #[test]
    fn serves_in_process_and_survives_garbage() {
        let dir = std::env::temp_dir().join(format!("lg-sock-{}", std::process::id()));
        let path = dir.join("agent.sock");
        let mut srv = Server::bind(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(Server::bind(&path, 0o660).is_err(), "second bind must fail");
        // A silent client, a garbage client and an oversize client, then a good one.
        let _silent = UnixStream::connect(&path).unwrap();
        let mut garbage = UnixStream::connect(&path).unwrap();
        garbage.write_all(b"\x00\x01 not json\n").unwrap();
        let mut big = UnixStream::connect(&path).unwrap();
        let _ = big.write_all(&vec![b'a'; MAX_REQUEST * 2]);
        let p2 = path.clone();
        let t = std::thread::spawn(move || request(&p2, Request::Status, Duration::from_secs(5)));
        serve_until(&mut srv, |s| s.stats.answered >= 1 && s.stats.rejected >= 2);
        let v = t.join().unwrap().unwrap();
        assert_eq!(v["req"], "status");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["alive"], true);
        let mut reply = String::new();
        garbage.read_to_string(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":false"), "{reply}");
        // The silent client is timed out.
        std::thread::sleep(CONN_DEADLINE + Duration::from_millis(100));
        srv.handle_ready(&mut |_, _| Value::Null);
        assert_eq!(srv.connections(), 0);
        assert!(srv.stats.timed_out >= 1);
        drop(srv);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn temp_socket(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lg-sock-{tag}-{}", std::process::id()));
        (dir.join("agent.sock"), dir)
    }

    #[test]
    fn silent_connections_are_cut_at_the_first_line_deadline_and_busy_is_retried() {
        let (path, dir) = temp_socket("busy");
        let mut srv = Server::bind(&path, 0o660).unwrap();
        // This process is the agent's own key: it gets its per-caller share and no more.
        let silent: Vec<UnixStream> = (0..MAX_CONNS_PER_PEER)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        srv.handle_ready(&mut |_, _| Value::Null);
        assert_eq!(srv.connections(), MAX_CONNS_PER_PEER);
        let started = Instant::now();
        let p2 = path.clone();
        let t = std::thread::spawn(move || request(&p2, Request::Status, Duration::from_secs(5)));
        serve_until(&mut srv, |s| s.stats.answered >= 1);
        let v = t.join().unwrap().expect("answered after a busy retry");
        assert_eq!(v["req"], "status");
        let took = started.elapsed();
        assert!(srv.stats.rejected >= 1, "the fifth connection was busy");
        assert!(srv.stats.timed_out >= MAX_CONNS_PER_PEER as u64);
        assert!(
            took < Duration::from_secs(1),
            "silent ones cut at 250 ms: {took:?}"
        );
        drop(silent);
        drop(srv);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn one_caller_holding_many_silent_connections_does_not_starve_another() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a second caller with another uid): run the tests as root (sudo scripts/test)"
        );
        let (path, dir) = temp_socket("starve");
        let mut srv = Server::bind(&path, 0o666).unwrap();
        // Make this process an ordinary workload, not the agent's own probe.
        srv.own = PeerKey {
            uid: u32::MAX,
            pidns: 1,
        };
        let mut silent: Vec<UnixStream> = (0..MAX_CONNS + 6)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        srv.handle_ready(&mut |_, _| Value::Null);
        srv.handle_ready(&mut |_, _| Value::Null);
        assert_eq!(srv.connections(), MAX_CONNS_PER_PEER);
        // Another caller (this thread's uid only: raw setresuid changes one thread's creds,
        // which SO_PEERCRED reports), asking once, without the client's busy retry.
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            // SAFETY: a raw syscall changing only this thread's credentials; no memory passed.
            let rc = unsafe { nix::libc::syscall(nix::libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0);
            request_once(&p2, Request::Status, Duration::from_secs(5))
        });
        serve_until(&mut srv, |s| s.stats.answered >= 1);
        let v = t.join().unwrap().expect("the other caller is answered");
        assert_eq!(v["req"], "status");
        // The surplus of the first caller was told to retry.
        let mut reply = String::new();
        silent
            .last_mut()
            .unwrap()
            .read_to_string(&mut reply)
            .unwrap();
        assert!(reply.contains(BUSY), "{reply}");
        drop(srv);
        let _ = std::fs::remove_dir_all(dir);
    }
}
