//! The Prometheus text endpoint on `--metrics-addr` (loopback only; the setting refuses other
//! addresses): a non-blocking listener polled by the agent loop; the scrapes answered in one
//! call share one deadline, so a slow client cannot hold the loop for long.

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

pub struct Metrics {
    listener: TcpListener,
    pub scrapes: u64,
}

impl Metrics {
    pub fn bind(addr: &str) -> Result<Metrics> {
        let sa: std::net::SocketAddr = addr.parse().map_err(|_| {
            Error::config(format!(
                "--metrics-addr {addr:?} is not an ip:port (for example 127.0.0.1:9464)"
            ))
        })?;
        if !sa.ip().is_loopback() {
            return Err(Error::config(format!(
                "--metrics-addr {addr} is not a loopback address; metrics are served on 127.0.0.1 or ::1 only"
            )));
        }
        let listener = TcpListener::bind(sa).with_context(Kind::Runtime, || {
            format!("failed to listen for metrics on {addr}")
        })?;
        listener
            .set_nonblocking(true)
            .context(Kind::Runtime, "failed to set up the metrics listener")?;
        log::info!("metrics: Prometheus text on http://{sa}/metrics");
        Ok(Metrics {
            listener,
            scrapes: 0,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Answers the waiting scrapes with `text`.
    pub fn serve(&mut self, text: &str) {
        let deadline = Instant::now() + SERVE_BUDGET;
        for _ in 0..ACCEPTS_PER_CALL {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = answer(s, text, deadline) {
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

fn answer(mut s: TcpStream, text: &str, deadline: Instant) -> std::io::Result<()> {
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
                break (req.method.unwrap_or(""), req.path.unwrap_or("")).eq(&("GET", "/metrics"));
            }
            Ok(httparse::Status::Partial) if n < MAX_HEAD => continue,
            _ => break false,
        }
    };
    let (status, ctype, body) = if path {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try GET /metrics\n",
        )
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

    #[test]
    fn refuses_non_loopback_and_serves_text() {
        assert!(Metrics::bind("0.0.0.0:0").is_err());
        let mut m = Metrics::bind("127.0.0.1:0").unwrap();
        let addr = m.listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        });
        let t = std::time::Instant::now();
        while m.scrapes == 0 && t.elapsed() < Duration::from_secs(5) {
            m.serve("linuxguard_x 1\n");
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = client.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("linuxguard_x 1\n"));
    }

    #[test]
    fn a_trickling_client_cannot_hold_the_loop() {
        let mut m = Metrics::bind("127.0.0.1:0").unwrap();
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
        m.serve("linuxguard_x 1\n");
        let took = t.elapsed();
        assert!(took < Duration::from_millis(400), "serve took {took:?}");
        assert_eq!(m.scrapes, 0);
        client.join().unwrap();
    }
}
