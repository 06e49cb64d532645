//! The Prometheus text endpoint on `--metrics-addr` (loopback only; the setting refuses other
//! addresses): a non-blocking listener polled by the agent loop; each scrape is answered with
//! short socket timeouts so a slow client cannot hold the loop for long.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::error::{Context, Error, Kind, Result};

/// Scrapes answered per readiness (a flood cannot hold the loop).
const ACCEPTS_PER_CALL: usize = 4;
/// A client must send its request head within this time, and take the answer within it.
const IO_TIMEOUT: Duration = Duration::from_millis(100);
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
        for _ in 0..ACCEPTS_PER_CALL {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = answer(s, text) {
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

fn answer(mut s: TcpStream, text: &str) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let path = loop {
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
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
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
}
