//! The HTTPS server: rustls with optional client certificates (mTLS), one thread per
//! connection, keep-alive, fault injection, the request record and the per-request log line.

use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use crate::ca::Ca;
use crate::http::{Conn, MAX_BODY_BYTES, ReadError, Response};
use crate::mtls::{DeferredVerifier, Peer};
use crate::state::{FaultKind, Record, State};
use crate::{admin, handlers};

/// Read/write timeout per connection: an idle keep-alive connection is closed after this long
/// (longer than the default 30 s heartbeat interval, so a pooled connection is not closed
/// exactly when the next heartbeat is sent).
const IO_TIMEOUT: Duration = Duration::from_secs(65);
/// Most connections served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 256;

/// Shared by every connection thread.
pub struct Shared {
    pub state: Mutex<State>,
    pub ca: Ca,
    pub tls: Arc<ServerConfig>,
    pub verifier: Arc<DeferredVerifier>,
}

/// The rustls server config (our server cert; client certs optional, their chains verified
/// after the handshake) and the verifier that classifies them.
pub fn tls_config(ca: &Ca) -> Result<(Arc<ServerConfig>, Arc<DeferredVerifier>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der.clone())
        .map_err(|e| format!("CA certificate unusable as a trust root: {e}"))?;
    let verifier = Arc::new(DeferredVerifier::new(roots)?);
    let (chain, key) = ca.server_identity()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    Ok((Arc::new(config), verifier))
}

/// Accepts connections forever.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log::warn!("over {MAX_CONNECTIONS} connections: closing a new one");
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let active2 = active.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = connection(stream, &shared) {
                    log::debug!("connection ended: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

fn connection(sock: TcpStream, shared: &Shared) -> io::Result<()> {
    let peer: IpAddr = sock.peer_addr()?.ip();
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    let tls = ServerConnection::new(shared.tls.clone()).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(tls, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let client = shared.verifier.classify(stream.conn.peer_certificates());
    let peer_agent = match &client {
        Peer::Agent(id) => Some(id.clone()),
        _ => None,
    };
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request(MAX_BODY_BYTES) {
            Ok(r) => r,
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Bad(status, msg)) => {
                log::info!("bad request -> {status}: {msg}");
                let _ = conn.write_response(&Response::error(status, &msg), false);
                conn.stream.conn.send_close_notify();
                let _ = conn.stream.conn.complete_io(&mut conn.stream.sock);
                linger_close(&conn.stream.sock);
                return Ok(());
            }
        };
        let keep_alive = req.keep_alive;
        if req.path.starts_with("/admin/") {
            let resp = admin::handle(&shared.state, &req, peer);
            log::info!("{} {} -> {}", req.method, req.path, resp.status);
            conn.write_response(&resp, keep_alive)?;
            if !keep_alive {
                return Ok(());
            }
            continue;
        }
        let fault = {
            let mut st = lock(&shared.state);
            if req.path == "/agent/enroll" {
                st.stats.enroll_calls += 1;
            }
            st.take_fault(&req.path, Instant::now())
        };
        let mut record = Record {
            method: req.method.clone(),
            path: req.path.clone(),
            status: None,
            headers: req.headers.clone(),
            body: req.body.clone(),
            agent_id: peer_agent.clone(),
            fault: None,
        };
        match fault {
            Some(FaultKind::Status {
                status,
                retry_after,
            }) => {
                let mut resp = Response::error(status, "injected");
                if let Some(s) = retry_after {
                    resp = resp.with_header("Retry-After", s.to_string());
                }
                record.status = Some(status);
                record.fault = Some("status");
                finish(shared, record, peer_agent.as_deref());
                conn.write_response(&resp, keep_alive)?;
            }
            Some(FaultKind::Stall(d)) => {
                record.fault = Some("stall");
                finish(shared, record, peer_agent.as_deref());
                std::thread::sleep(d);
                return Ok(());
            }
            Some(FaultKind::DropResponse) => {
                let h = handlers::handle(&shared.state, &shared.ca, &req, &client);
                record.status = Some(h.response.status);
                record.fault = Some("dropResponse");
                finish(
                    shared,
                    record,
                    h.agent_id.as_deref().or(peer_agent.as_deref()),
                );
                // Close without a response (no close_notify either: a lost response).
                return Ok(());
            }
            None => {
                let h = handlers::handle(&shared.state, &shared.ca, &req, &client);
                record.status = Some(h.response.status);
                finish(
                    shared,
                    record,
                    h.agent_id.as_deref().or(peer_agent.as_deref()),
                );
                conn.write_response(&h.response, keep_alive)?;
            }
        }
        if !keep_alive {
            conn.stream.conn.send_close_notify();
            let _ = conn.stream.conn.complete_io(&mut conn.stream.sock);
            return Ok(());
        }
    }
}

/// Closes after an error answer without losing it: closing a socket with unread input makes the
/// kernel send RST, which can destroy the response before the client reads it. So shut down our
/// side, then drain (bounded in time and bytes) what the client is still sending.
fn linger_close(sock: &std::net::TcpStream) {
    use std::io::Read;
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut buf = [0u8; 16 * 1024];
    let mut drained = 0usize;
    let mut reader = sock;
    while std::time::Instant::now() < deadline && drained < (4 << 20) {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs the request line (never headers or bodies: they carry tokens, keys and CSRs) and
/// records it.
fn finish(shared: &Shared, record: Record, agent_id: Option<&str>) {
    let status = record
        .status
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    let fault = record
        .fault
        .map_or_else(String::new, |f| format!(" (injected {f})"));
    log::info!(
        "{} {} -> {status}{fault} agentId={}",
        record.method,
        record.path,
        agent_id.unwrap_or("-")
    );
    lock(&shared.state).record(record);
}
