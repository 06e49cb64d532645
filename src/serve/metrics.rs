//! The HTTP endpoint on `--metrics-addr`: Prometheus text on `GET /metrics` and a health check
//! on `GET /healthz` (for HTTP probes). A non-loopback address is allowed, with a warning unless
//! `--metrics-allow-remote` says it is intended. A non-blocking listener polled by the agent
//! loop; the requests answered in one call share one deadline, so a slow client cannot hold the
//! loop for long.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Kind, Result};

/// Scrapes answered per readiness (a flood cannot hold the loop).
const ACCEPTS_PER_CALL: usize = 4;
/// The longest one `serve` call may take: the scrapes it answers must send their request heads
/// and take their answers within it, however they trickle their bytes.
const SERVE_BUDGET: Duration = Duration::from_millis(200);
/// Request heads larger than this are refused.
const MAX_HEAD: usize = 8192;

/// `--metrics-addr` and `--metrics-allow-remote`.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: String,
    /// A non-loopback address is intended: no warning.
    pub allow_remote: bool,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET /metrics`: the Prometheus text.
    Metrics,
    /// `GET /healthz`: a small JSON health answer.
    Health,
}

pub struct Metrics {
    listener: TcpListener,
    /// Requests answered (scrapes and health checks).
    pub scrapes: u64,
}

impl Metrics {
    pub fn bind(opts: &Options) -> Result<Metrics> {
        let addr = &opts.addr;
        let sa: std::net::SocketAddr = addr.parse().map_err(|_| {
            Error::config(format!(
                "--metrics-addr {addr:?} is not an ip:port (for example 127.0.0.1:9464)"
            ))
        })?;
        if !sa.ip().is_loopback() && !opts.allow_remote {
            log::warn!(
                "--metrics-addr {sa} is reachable from other hosts: /metrics and /healthz have no \
                 authentication (they serve counters only, never event data); restrict the port \
                 with a network policy or firewall, or listen on 127.0.0.1; pass \
                 --metrics-allow-remote to say this is intended"
            );
        }
        let listener = TcpListener::bind(sa).with_context(Kind::Runtime, || {
            format!("failed to listen for metrics on {addr}")
        })?;
        listener
            .set_nonblocking(true)
            .context(Kind::Runtime, "failed to set up the metrics listener")?;
        log::info!(
            "metrics: Prometheus text on http://{sa}/metrics, health on http://{sa}/healthz"
        );
        Ok(Metrics {
            listener,
            scrapes: 0,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Answers the waiting requests; `page` makes each answer's body when it is asked for.
    pub fn serve(&mut self, page: &mut dyn FnMut(Page) -> String) {
        let deadline = Instant::now() + SERVE_BUDGET;
        for _ in 0..ACCEPTS_PER_CALL {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = answer(s, page, deadline) {
                        log::debug!("metrics: scrape failed: {e}");
                    } else {
                        self.scrapes += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("metrics: accept failed: {e}");
                    return;
                }
            }
        }
    }
}

/// The time left until `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "scrape took too long"))
}

fn answer(
    mut s: TcpStream,
    page: &mut dyn FnMut(Page) -> String,
    deadline: Instant,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let path = loop {
        // The timeout is per read: renewing it with what is left bounds the whole head.
        s.set_read_timeout(Some(left(deadline)?))?;
        let got = s.read(&mut buf[n..])?;
        if got == 0 {
            return Ok(());
        }
        n += got;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("");
                // Probes and scrapers may add a query string (`/metrics?x=y`): ignored.
                let path = path.split('?').next().unwrap_or(path);
                break match (req.method.unwrap_or(""), path) {
                    ("GET", "/metrics") => Some(Page::Metrics),
                    ("GET", "/healthz") => Some(Page::Health),
                    _ => None,
                };
            }
            Ok(httparse::Status::Partial) if n < MAX_HEAD => continue,
            _ => break None,
        }
    };
    let (status, ctype, body) = match path {
        Some(Page::Metrics) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            page(Page::Metrics),
        ),
        Some(Page::Health) => ("200 OK", "application/json", page(Page::Health)),
        None => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try GET /metrics or GET /healthz\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    for part in [head.as_bytes(), body.as_bytes()] {
        s.set_write_timeout(Some(left(deadline)?))?;
        s.write_all(part)?;
    }
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(addr: &str) -> Options {
        Options {
            addr: addr.into(),
            allow_remote: false,
        }
    }

    fn page(p: Page) -> String {
        match p {
            Page::Metrics => "linuxguard_x 1\n".into(),
            Page::Health => "{\"status\":\"ok\"}".into(),
        }
    }

    /// One request to `m` from a client thread; the whole answer.
    fn ask(m: &mut Metrics, request: &'static [u8]) -> String {
        let addr = m.listener.local_addr().unwrap();
        let port = addr.port();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(request).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        });
        let before = m.scrapes;
        let t = std::time::Instant::now();
        while m.scrapes == before && t.elapsed() < Duration::from_secs(5) {
            m.serve(&mut page);
            std::thread::sleep(Duration::from_millis(5));
        }
        client.join().unwrap()
    }

    #[test]
    fn serves_metrics_and_health_on_any_address() {
        // A wildcard address binds (with a warning); the test talks to it over loopback.
        let mut m = Metrics::bind(&opts("0.0.0.0:0")).unwrap();
        let out = ask(&mut m, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("text/plain; version=0.0.4"), "{out}");
        assert!(out.ends_with("linuxguard_x 1\n"));
        let out = ask(&mut m, b"GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("{\"status\":\"ok\"}"), "{out}");
        let out = ask(&mut m, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(Metrics::bind(&opts("localhost:1")).is_err());
    }

    #[test]
    fn a_trickling_client_cannot_hold_the_loop() {
        let mut m = Metrics::bind(&opts("127.0.0.1:0")).unwrap();
        let addr = m.listener.local_addr().unwrap();
        // One byte every 20 ms: each read would finish within a per-read timeout.
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for b in b"GET /metrics HTTP/1.1\r\nHost: a-very-slow-client\r\n\r\n" {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        m.serve(&mut page);
        let took = t.elapsed();
        assert!(took < Duration::from_millis(400), "serve took {took:?}");
        assert_eq!(m.scrapes, 0);
        client.join().unwrap();
    }
}
