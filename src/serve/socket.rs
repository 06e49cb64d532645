//! The agent's Unix socket: a non-blocking server driven from the caller's poll loop (one epoll
//! fd to watch, `handle_ready()` to call), callers identified by `SO_PEERCRED`/`SO_PEERPIDFD`,
//! and the small client used by `attest --self` and `status`. Protocol: docs/socket.md.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde_json::{Value, json};

use crate::counters::SocketStats;
use crate::error::{Context, Error, Kind, Result};
use crate::serve::request::{Line, TOO_LONG, frame};
pub use crate::serve::request::{MAX_REQUEST, Request, parse_request};
use crate::serve::socket_path;

/// A response longer than this is refused by the client.
pub const MAX_RESPONSE: usize = 1 << 20;
/// A connection must send its request (and take its answer) within this time.
const CONN_DEADLINE: Duration = Duration::from_secs(2);
/// A connection must send its whole request line within this time (our clients send it at
/// once), so a silent connection holds a slot for a quarter second, not two.
const FIRST_LINE_DEADLINE: Duration = Duration::from_millis(250);
/// Connections from workloads served at once; more are answered "busy" and closed.
const MAX_CONNS: usize = 64;
/// Connections one caller (one uid) may hold at once; more are "busy".
const MAX_CONNS_PER_PEER: usize = 4;
/// Of the `MAX_CONNS` workload slots, this many are kept for uids that hold no connection, so
/// callers already holding one cannot fill every slot between them.
const FRESH_RESERVE: usize = 16;
/// Extra slots, over `MAX_CONNS`, for callers with the agent's own uid and pid namespace (the
/// `status` liveness probe runs in the agent's container), so workloads cannot starve them.
const OWN_RESERVE: usize = MAX_CONNS_PER_PEER;
/// How long the client keeps retrying a "busy" answer.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(2);
/// The busy answer (the client matches it to retry).
const BUSY: &str = "agent busy, retry";
/// Accepts per `handle_ready` call, so a flood cannot hold the loop.
const ACCEPTS_PER_CALL: usize = 64;
/// Input discarded after a too-long line (up to its end) before the error answer, so closing
/// does not reset the connection under the caller's read.
const MAX_DISCARD: usize = 64 << 10;

/// Epoll ids of the listener and of the deadline timer; connections count up from 1.
const LISTENER: u64 = 0;
const TIMER: u64 = u64::MAX;

/// The process at the other end, as the kernel reports it at connect time.
#[derive(Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `SO_PEERPIDFD` (Linux 6.5+): pins the exact process, so a reused pid is detected.
    pidfd: Option<OwnedFd>,
}

/// Who a connection counts against for the per-caller limit: the agent's own probes (its uid
/// in its pid namespace), or a uid. The uid is `SO_PEERCRED`'s, which the kernel maps into the
/// agent's user namespace: a caller cannot become someone new by making user or pid
/// namespaces (`unshare -Urp` keeps its uid as the agent sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Own,
    Uid(u32),
}

fn pidns_of(pid: &str) -> u64 {
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

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request line.
    Reading,
    /// The line was too long: discarding the rest of it, then answering the error.
    Discarding { discarded: usize },
    /// Writing the answer.
    Writing,
}

struct Conn {
    stream: UnixStream,
    peer: Peer,
    caller: Caller,
    phase: Phase,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// Until the request line is in; then `deadline`.
    first_line_deadline: Instant,
    deadline: Instant,
}

impl Conn {
    /// When this connection is cut if it makes no progress.
    fn due(&self) -> Instant {
        match self.phase {
            Phase::Writing => self.deadline,
            _ => self.first_line_deadline.min(self.deadline),
        }
    }
}

/// The listening socket and its connections.
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    /// Armed at the earliest connection deadline, so a silent connection is cut on time even
    /// when nothing else wakes the loop.
    timer: TimerFd,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// The agent's own uid and pid namespace (its probes).
    own_uid: u32,
    own_pidns: u64,
    pub stats: SocketStats,
}

/// A listening Unix socket bound at `path` with `mode` already applied: the mode is set on the
/// socket before `bind` (`fchmod`) and the umask is narrowed around it, so the file never
/// exists with other permissions and no chmod follows a path.
fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener> {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use nix::sys::stat::{Mode, fchmod, umask};
    use std::os::fd::AsRawFd;
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context(Kind::Runtime, "failed to create a Unix socket")?;
    let perm = Mode::from_bits_truncate(mode & 0o777);
    fchmod(&fd, perm).context(Kind::Runtime, "failed to set the socket's mode")?;
    let addr = UnixAddr::new(path).with_context(Kind::Config, || {
        format!("`{}` is too long for a Unix socket path", path.display())
    })?;
    // The file's mode is the socket's mode less the umask: clear the bits of `mode` from the
    // umask for the bind only (process-wide, but the agent's threads create no files here).
    let old = umask(Mode::from_bits_truncate(0o777));
    let _ = umask(old & !perm);
    let bound = nix::sys::socket::bind(fd.as_raw_fd(), &addr);
    let _ = umask(old);
    bound.with_context(Kind::Runtime, || {
        format!("failed to bind `{}`", path.display())
    })?;
    nix::sys::socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .with_context(Kind::Runtime, || {
            format!("failed to listen on `{}`", path.display())
        })?;
    // Never chmod by path: check what bind made (without following a link).
    let md = std::fs::symlink_metadata(path).with_context(Kind::Runtime, || {
        format!("failed to inspect the socket `{}`", path.display())
    })?;
    if !md.file_type().is_socket() || md.mode() & 0o777 != mode & 0o777 {
        let _ = std::fs::remove_file(path);
        return Err(Error::runtime(format!(
            "the socket `{}` was created with mode {:o}, not {mode:o}",
            path.display(),
            md.mode() & 0o777
        )));
    }
    Ok(UnixListener::from(fd))
}

impl Server {
    /// Binds `path` with `mode` (0o660 or 0o666). Every directory on the path must be safe from
    /// other users (`socket_path::check_server_path`). A stale socket file is replaced; a live
    /// agent already listening there is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Server> {
        let own_uid = nix::unistd::geteuid().as_raw();
        let path = socket_path::check_server_path(path, own_uid)?;
        if let Ok(md) = std::fs::symlink_metadata(&path) {
            if !md.file_type().is_socket() {
                return Err(Error::runtime(format!(
                    "`{}` exists and is not a socket; remove it or choose another --socket",
                    path.display()
                )));
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(Error::runtime(format!(
                    "another agent is already listening on `{}`",
                    path.display()
                )));
            }
            std::fs::remove_file(&path).with_context(Kind::Runtime, || {
                format!("failed to remove the stale socket `{}`", path.display())
            })?;
        }
        let listener = bind_with_mode(&path, mode)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .context(Kind::Runtime, "failed to create an epoll instance")?;
        epoll
            .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .context(Kind::Runtime, "failed to watch the socket")?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context(Kind::Runtime, "failed to create the socket's timer")?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER))
            .context(Kind::Runtime, "failed to watch the socket's timer")?;
        log::info!("listening on {} (mode {mode:o})", path.display());
        Ok(Server {
            path,
            listener,
            epoll,
            timer,
            conns: HashMap::new(),
            next_id: 1,
            own_uid,
            own_pidns: pidns_of("self"),
            stats: SocketStats::default(),
        })
    }

    /// The one fd to poll for `POLLIN` (an epoll fd covering the listener, the connections and
    /// a timer set to the next connection deadline). Call [`Server::handle_ready`] when it is
    /// readable.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts, reads, answers and times out connections; never blocks. `answer` computes the
    /// reply to one request from one peer and must not block either.
    pub fn handle_ready(&mut self, answer: &mut dyn FnMut(Request, &Peer) -> Value) {
        // Drain the epoll readiness list (level-triggered: what stays ready shows up again),
        // and the timer's expiry count.
        let mut events = [EpollEvent::empty(); 64];
        let _ = self.epoll.wait(&mut events, EpollTimeout::ZERO);
        let _ = nix::unistd::read(&self.timer, &mut [0u8; 8]);
        self.accept_some();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        let now = Instant::now();
        for id in ids {
            let done = match self.conns.get_mut(&id) {
                Some(c) => {
                    if now >= c.due() {
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
                    discard_pending(&c.stream);
                }
            } else if let Some(c) = self.conns.get(&id) {
                let flags = if c.phase == Phase::Writing {
                    EpollFlags::EPOLLOUT
                } else {
                    EpollFlags::EPOLLIN
                };
                let _ = self
                    .epoll
                    .modify(&c.stream, &mut EpollEvent::new(flags, id));
            }
        }
        self.arm_timer();
    }

    /// Sets the timer to the earliest connection deadline (off when there is none).
    fn arm_timer(&self) {
        match self.conns.values().map(Conn::due).min() {
            Some(due) => {
                // At least 1 ms: a zero one-shot would disarm the timer.
                let wait = due
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let _ = self.timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                );
            }
            None => {
                let _ = self.timer.unset();
            }
        }
    }

    /// Whether a new connection from `caller` gets a slot.
    fn admit(&self, caller: Caller) -> std::result::Result<(), String> {
        let (mine, workloads) = self.conns.values().fold((0, 0), |(m, w), c| {
            (
                m + usize::from(c.caller == caller),
                w + usize::from(c.caller != Caller::Own),
            )
        });
        if mine >= MAX_CONNS_PER_PEER {
            return Err(format!("{mine} of its connections open"));
        }
        if caller == Caller::Own {
            return Ok(());
        }
        // A caller already holding a connection may not take the slots kept for the others.
        let limit = if mine == 0 {
            MAX_CONNS
        } else {
            MAX_CONNS - FRESH_RESERVE
        };
        if workloads >= limit {
            return Err(format!(
                "{workloads} workload connections open, {mine} of them its own"
            ));
        }
        Ok(())
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
            let own = cred.uid() == self.own_uid
                && self.own_pidns != 0
                && cred.pid() > 0
                && pidns_of(&cred.pid().to_string()) == self.own_pidns;
            let caller = if own {
                Caller::Own
            } else {
                Caller::Uid(cred.uid())
            };
            if let Err(why) = self.admit(caller) {
                self.stats.rejected += 1;
                log::debug!(
                    "socket: busy for pid {} uid {} ({why})",
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
            let now = Instant::now();
            self.conns.insert(
                id,
                Conn {
                    stream,
                    peer,
                    caller,
                    phase: Phase::Reading,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    written: 0,
                    first_line_deadline: now + FIRST_LINE_DEADLINE,
                    deadline: now + CONN_DEADLINE,
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

/// Reads and drops what the peer sent that was not read (bounded), so closing does not make
/// the kernel reset the connection under the peer's read of its answer.
fn discard_pending(mut stream: &UnixStream) {
    let mut buf = [0u8; 4096];
    let mut left = MAX_DISCARD;
    while left > 0 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Moves one connection along; true when it is finished and should be closed.
fn progress(
    c: &mut Conn,
    answer: &mut dyn FnMut(Request, &Peer) -> Value,
    stats: &mut SocketStats,
) -> bool {
    let mut buf = [0u8; 1024];
    while c.phase != Phase::Writing {
        let n = match c.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        };
        match c.phase {
            Phase::Reading => {
                if n == 0 {
                    return true; // closed before a full line
                }
                c.inbuf.extend_from_slice(&buf[..n]);
                let reply = match frame(&c.inbuf) {
                    Line::Partial => continue,
                    Line::Complete(raw) => match parse_request(raw) {
                        Ok(req) => {
                            stats.answered += 1;
                            answer(req, &c.peer)
                        }
                        Err(why) => {
                            stats.rejected += 1;
                            error_reply(&why)
                        }
                    },
                    Line::TooLong => {
                        stats.rejected += 1;
                        // Discard up to the line's end (it may already be here), then answer.
                        let rest = c.inbuf.len().saturating_sub(MAX_REQUEST + 1);
                        let ended = c.inbuf.contains(&b'\n');
                        c.inbuf = Vec::new();
                        if ended {
                            error_reply(TOO_LONG)
                        } else {
                            c.phase = Phase::Discarding { discarded: rest };
                            continue;
                        }
                    }
                };
                c.out = line(&reply);
                c.phase = Phase::Writing;
            }
            Phase::Discarding { discarded } => {
                let discarded = discarded + n;
                if n == 0 || buf[..n].contains(&b'\n') || discarded >= MAX_DISCARD {
                    c.out = line(&error_reply(TOO_LONG));
                    c.phase = Phase::Writing;
                } else {
                    c.phase = Phase::Discarding { discarded };
                }
            }
            Phase::Writing => {}
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
/// error as a runtime error. Each attempt has one deadline, `timeout`, for connecting, sending
/// and the whole answer; a "busy" answer is retried for up to two seconds. The answer is
/// believed only from a server running as root, as the caller's uid or as `agent_uid`
/// (`--agent-uid`; see `socket_path`).
pub fn request(
    path: &Path,
    req: Request,
    timeout: Duration,
    agent_uid: Option<u32>,
) -> Result<Value> {
    let give_up = Instant::now() + BUSY_RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match request_once(path, req, timeout, agent_uid) {
            Err(e) if e.to_string().ends_with(BUSY) && Instant::now() + pause < give_up => {
                log::debug!("{e}; retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// Connects to the agent and checks who answers (`SO_PEERCRED` of the listening process).
fn connect_checked(path: &Path, agent_uid: Option<u32>) -> Result<UnixStream> {
    let own = nix::unistd::geteuid().as_raw();
    let trusted = socket_path::trusted_uids(own, agent_uid);
    let s = UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::PermissionDenied => format!(
                "permission denied connecting to `{}` (uid {own}): the socket (or a directory on its path) does not \
                 let this user in; run as root or as a member of the socket's group, or ask for --socket-mode 0666",
                path.display()
            ),
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => format!(
                "the agent is not running (cannot connect to `{}`: {e}; start it, or pass --socket)",
                path.display()
            ),
            _ => format!("cannot connect to the agent at `{}`: {e}", path.display()),
        };
        Error::runtime(why)
    })?;
    let cred = getsockopt(&s, sockopt::PeerCredentials).context(
        Kind::Runtime,
        "cannot read the agent socket's peer credentials",
    )?;
    if !trusted.contains(&cred.uid()) {
        return Err(Error::runtime(format!(
            "refusing the answer on `{}`: the process listening there (pid {}) runs as uid {}, not as root or as \
             the agent's uid (believed: uid {}); another user may be impersonating the agent: check who owns the \
             socket and its directories, or pass --agent-uid when the agent runs as that uid (docs/socket.md)",
            path.display(),
            cred.pid(),
            cred.uid(),
            trusted
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", uid ")
        )));
    }
    Ok(s)
}

fn request_once(
    path: &Path,
    req: Request,
    timeout: Duration,
    agent_uid: Option<u32>,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut s = connect_checked(path, agent_uid)?;
    let left = |what: &str| -> Result<Duration> {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(Error::runtime(format!(
                "no {what} from the agent within {} s",
                timeout.as_secs_f32()
            )))
        } else {
            Ok(d)
        }
    };
    s.set_write_timeout(Some(left("answer")?))
        .context(Kind::Runtime, "failed to set socket timeouts")?;
    // A busy agent may answer and close before our request is sent: read its answer anyway.
    let sent = s.write_all(&line(&json!({"request": req.name()})));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One deadline for the whole answer: a server trickling bytes cannot extend it.
        let wait = left("complete answer")?;
        s.set_read_timeout(Some(wait))
            .context(Kind::Runtime, "failed to set socket timeouts")?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(Error::runtime("the agent's answer is over 1 MiB"));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A busy agent answers and closes without reading our request, which resets the
            // connection after its answer: what was read is the whole answer.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && buf.ends_with(b"\n") => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                sent.context(Kind::Runtime, "failed to send the request to the agent")?;
                return Err(Error::runtime(format!(
                    "no complete answer from the agent within {} s",
                    timeout.as_secs_f32()
                )));
            }
            Err(e) => {
                sent.context(Kind::Runtime, "failed to send the request to the agent")?;
                return Err(e).context(Kind::Runtime, "failed to read the agent's answer");
            }
        }
    }
    if buf.is_empty() {
        sent.context(Kind::Runtime, "failed to send the request to the agent")?;
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
        // Text from another process: main escapes what a terminal would act on when it prints.
        Err(Error::runtime(format!("the agent refused: {msg}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(Server::bind(&path, 0o660).is_err(), "second bind must fail");
        // A silent client, a garbage client and an oversize client, then a good one.
        let _silent = UnixStream::connect(&path).unwrap();
        let mut garbage = UnixStream::connect(&path).unwrap();
        garbage.write_all(b"\x00\x01 not json\n").unwrap();
        let mut big = UnixStream::connect(&path).unwrap();
        let _ = big.write_all(&vec![b'a'; MAX_REQUEST * 2]);
        let p2 = path.clone();
        let t =
            std::thread::spawn(move || request(&p2, Request::Status, Duration::from_secs(5), None));
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
        let t =
            std::thread::spawn(move || request(&p2, Request::Status, Duration::from_secs(5), None));
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

    /// The agent's loop polls only `fd()`: a silent connection alone must make it readable at
    /// its 250 ms deadline (the timer), not leave it to the next housekeeping pass.
    #[test]
    fn the_fd_wakes_the_loop_at_a_silent_connections_deadline() {
        let (path, dir) = temp_socket("timer");
        let mut srv = Server::bind(&path, 0o660).unwrap();
        let _silent = UnixStream::connect(&path).unwrap();
        srv.handle_ready(&mut |_, _| Value::Null);
        assert_eq!(srv.connections(), 1);
        let started = Instant::now();
        let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
        let n = nix::poll::poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
        let woke = started.elapsed();
        assert_eq!(n, 1, "the fd became readable");
        assert!(
            woke > Duration::from_millis(150) && woke < Duration::from_millis(600),
            "{woke:?}"
        );
        srv.handle_ready(&mut |_, _| Value::Null);
        assert_eq!(srv.connections(), 0);
        assert_eq!(srv.stats.timed_out, 1);
        // Nothing left: the timer is off and the fd stays quiet.
        let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, PollTimeout::from(400u16)).unwrap(),
            0
        );
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
        srv.own_uid = u32::MAX;
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
            request_once(&p2, Request::Status, Duration::from_secs(5), None)
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
