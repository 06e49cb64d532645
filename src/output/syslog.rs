//! The syslog output (`--output syslog`): each event as one RFC 5424 message — `<PRI>1
//! TIMESTAMP HOSTNAME linuxguard-agent PID TYPE - {event JSON}` — with the event's severity
//! mapped into PRI (`--syslog-facility`), sent to the local socket (`/dev/log`, a datagram Unix
//! socket), over UDP (one datagram each), or over TCP (RFC 6587 octet counting, reconnecting
//! after a failure).

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::output::queue::Batch;
use crate::output::{Deliver, Outcome, head, level};

/// Where messages go (`--syslog-addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A datagram Unix socket: `/dev/log` (the default), `unix:/path`.
    Unix(PathBuf),
    /// `udp://host:port`.
    Udp(String),
    /// `tcp://host:port`.
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Udp(a) => write!(f, "udp://{a}"),
            Target::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// `--syslog-addr`: `/dev/log`, `unix:/path`, `udp://host:port` or `tcp://host:port`.
pub fn parse_target(v: &str) -> std::result::Result<Target, String> {
    let host_port = |rest: &str| -> std::result::Result<String, String> {
        let ok = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if ok && !rest.contains(['/', ' ', '@']) {
            Ok(rest.to_string())
        } else {
            Err(format!(
                "expected udp://HOST:PORT or tcp://HOST:PORT (e.g. tcp://127.0.0.1:514), got {v:?}"
            ))
        }
    };
    if let Some(rest) = v.strip_prefix("udp://") {
        return host_port(rest).map(Target::Udp);
    }
    if let Some(rest) = v.strip_prefix("tcp://") {
        return host_port(rest).map(Target::Tcp);
    }
    let path = v.strip_prefix("unix:").unwrap_or(v);
    if path.starts_with('/') {
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    Err(format!(
        "expected /dev/log, unix:/PATH, udp://HOST:PORT or tcp://HOST:PORT, got {v:?}"
    ))
}

/// The facilities `--syslog-facility` accepts, with their RFC 5424 codes.
pub const FACILITIES: &[(&str, u8)] = &[
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// `--syslog-addr`, `--syslog-facility`, and the header fields.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// RFC 5424 facility code.
    pub facility: u8,
    pub hostname: String,
}

/// The largest message sent in one UDP datagram (IPv4's limit); larger events are dropped and
/// counted (use TCP or the local socket for them).
const UDP_MAX: usize = 65_507;
/// TCP frames are written in chunks of about this size.
const TCP_CHUNK: usize = 64 * 1024;

enum Conn {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

pub struct Syslog {
    opts: Options,
    conn: Option<Conn>,
    /// The header's HOSTNAME (`-` when the host name is not printable ASCII).
    host: String,
    pid: u32,
    msg: Vec<u8>,
}

impl Syslog {
    /// Checks the target at start-up (the local socket must exist; a TCP peer may come later).
    pub fn open(opts: Options) -> Result<Syslog> {
        if let Target::Unix(p) = &opts.target {
            if !p.exists() {
                return Err(Error::config(format!(
                    "--syslog-addr {}: no socket there (is a syslog daemon running?); give the \
                     daemon's socket or udp://HOST:PORT / tcp://HOST:PORT",
                    opts.target
                )));
            }
        }
        let host: String = opts
            .hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        log::info!(
            "output syslog: RFC 5424 to {} (facility {})",
            opts.target,
            opts.facility
        );
        Ok(Syslog {
            host: if host.is_empty() { "-".into() } else { host },
            opts,
            conn: None,
            pid: std::process::id(),
            msg: Vec::with_capacity(4096),
        })
    }

    fn connect(&self, timeout: Duration) -> io::Result<Conn> {
        let timeout = timeout.max(Duration::from_millis(100));
        match &self.opts.target {
            Target::Unix(p) => {
                let s = UnixDatagram::unbound()?;
                s.connect(p)?;
                s.set_write_timeout(Some(timeout))?;
                Ok(Conn::Unix(s))
            }
            Target::Udp(a) => {
                let addr = a
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::other("the host name has no address"))?;
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = UdpSocket::bind(local)?;
                s.connect(addr)?;
                s.set_write_timeout(Some(timeout))?;
                Ok(Conn::Udp(s))
            }
            Target::Tcp(a) => {
                let addr = a
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::other("the host name has no address"))?;
                let s = TcpStream::connect_timeout(&addr, timeout)?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
        }
    }

    /// Formats one event as an RFC 5424 message into `self.msg`.
    fn format(&mut self, line: &[u8]) {
        let h = head(line);
        let pri =
            u16::from(self.opts.facility) * 8 + u16::from(level(h.severity.as_deref()).syslog());
        self.msg.clear();
        // TIME-SECFRAC has at most 6 digits: the event's nanoseconds are cut to microseconds.
        let ts = h
            .time
            .as_deref()
            .map(rfc5424_time)
            .unwrap_or_else(|| "-".to_string());
        let msgid: String = h
            .kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        let msgid = if msgid.is_empty() { "-".into() } else { msgid };
        let _ = write!(
            self.msg,
            "<{pri}>1 {ts} {} linuxguard-agent {} {msgid} - ",
            self.host, self.pid
        );
        self.msg.extend_from_slice(line);
    }

    /// Sends the batch: (events dealt with — handed over, or refused as too large — of which
    /// refused, and the error that stopped it).
    fn send(&mut self, b: &Batch, timeout: Duration) -> (usize, u64, io::Result<()>) {
        if self.conn.is_none() {
            match self.connect(timeout) {
                Ok(c) => self.conn = Some(c),
                Err(e) => return (0, 0, Err(e)),
            }
        }
        let tcp = matches!(self.conn, Some(Conn::Tcp(_)));
        let (mut done, mut rejected) = (0, 0);
        let (mut chunk, mut in_chunk) = (Vec::new(), 0);
        for line in b.lines() {
            self.format(line);
            let res = if tcp {
                // RFC 6587 octet counting: "LEN SP MSG", written in chunks.
                let _ = write!(chunk, "{} ", self.msg.len());
                chunk.extend_from_slice(&self.msg);
                in_chunk += 1;
                if chunk.len() < TCP_CHUNK {
                    continue;
                }
                let r = self.write_tcp(&chunk);
                chunk.clear();
                if r.is_ok() {
                    done += in_chunk;
                    in_chunk = 0;
                }
                r
            } else if matches!(self.conn, Some(Conn::Udp(_))) && self.msg.len() > UDP_MAX {
                rejected += 1;
                done += 1;
                Ok(())
            } else {
                let r = match self.conn.as_ref() {
                    Some(Conn::Unix(s)) => s.send(&self.msg).map(drop),
                    Some(Conn::Udp(s)) => s.send(&self.msg).map(drop),
                    _ => Err(io::Error::other("not connected")),
                };
                if r.is_ok() {
                    done += 1;
                }
                r
            };
            if let Err(e) = res {
                self.conn = None;
                return (done, rejected, Err(e));
            }
        }
        if !chunk.is_empty() {
            if let Err(e) = self.write_tcp(&chunk) {
                self.conn = None;
                return (done, rejected, Err(e));
            }
            done += in_chunk;
        }
        (done, rejected, Ok(()))
    }

    fn write_tcp(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.conn.as_mut() {
            Some(Conn::Tcp(s)) => s.write_all(bytes),
            _ => Err(io::Error::other("not connected")),
        }
    }
}

/// An RFC 3339 time with nanoseconds as RFC 5424 wants it: at most 6 fractional digits.
fn rfc5424_time(t: &str) -> String {
    match t.split_once('.') {
        Some((secs, frac)) => {
            let digits: String = frac
                .chars()
                .take_while(char::is_ascii_digit)
                .take(6)
                .collect();
            let zone = frac.trim_start_matches(|c: char| c.is_ascii_digit());
            if digits.is_empty() {
                format!("{secs}{zone}")
            } else {
                format!("{secs}.{digits}{zone}")
            }
        }
        None => t.to_string(),
    }
}

impl Deliver for Syslog {
    fn batched(&self) -> bool {
        false
    }

    fn deliver(&mut self, b: &Batch, timeout: Duration) -> Outcome {
        let (done, rejected, res) = self.send(b, timeout);
        if rejected > 0 {
            log::warn!(
                "output syslog: {rejected} events larger than a UDP datagram ({UDP_MAX} bytes) \
                 dropped and counted; use tcp:// or the local socket for large events"
            );
        }
        match res {
            Ok(()) => Outcome::Done { rejected },
            Err(e) => Outcome::Retry {
                delivered: done,
                rejected,
                why: format!("sending to syslog at {} failed: {e}", self.opts.target),
                after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("/dev/log"),
            Ok(Target::Unix("/dev/log".into()))
        );
        assert_eq!(
            parse_target("unix:/run/x.sock"),
            Ok(Target::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            parse_target("udp://127.0.0.1:514"),
            Ok(Target::Udp("127.0.0.1:514".into()))
        );
        assert_eq!(
            parse_target("tcp://[::1]:601"),
            Ok(Target::Tcp("[::1]:601".into()))
        );
        assert_eq!(
            parse_target("tcp://logs.example:6514"),
            Ok(Target::Tcp("logs.example:6514".into()))
        );
        for bad in [
            "",
            "dev/log",
            "tcp://host",
            "udp://:514",
            "tcp://h:0",
            "http://h:1",
            "tcp://h:1/x",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_rfc5424_with_the_event_time_type_and_severity() {
        let mut s = Syslog::open(Options {
            target: Target::Udp("127.0.0.1:9".into()),
            facility: 16,
            hostname: "node-1".into(),
        })
        .unwrap();
        let ev = br#"{"type":"exec","schema_version":1,"@timestamp":"2026-01-02T03:04:05.123456789Z","seq":7}"#;
        s.format(ev);
        let m = String::from_utf8(s.msg.clone()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            m,
            format!(
                "<134>1 2026-01-02T03:04:05.123456Z node-1 linuxguard-agent {pid} exec - {}",
                String::from_utf8_lossy(ev)
            )
        );
        s.format(br#"{"type":"alert","@timestamp":"2026-01-02T03:04:05Z","severity":"high"}"#);
        let m = String::from_utf8(s.msg.clone()).unwrap();
        assert!(m.starts_with("<131>1 2026-01-02T03:04:05Z "), "{m}");
    }
}
