//! HTTP clients for the backend: ureq agents over rustls (ring) that verify the server against
//! `--server-ca` or the compiled-in web PKI roots, optionally present the mTLS identity, and
//! carry our User-Agent, connect/read timeouts and a 1 MiB response cap.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::error::{Context, Error, Kind, Result};

pub const USER_AGENT: &str = concat!("linuxguard-agent/", env!("CARGO_PKG_VERSION"));
/// TCP connect (and DNS) timeout of every call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout for each of: sending the body, waiting for the response head, reading the body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one whole call (connect + TLS + send + receive).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body we read.
pub const MAX_RESPONSE: u64 = 1 << 20;
/// Largest `--server-ca` bundle we read.
const MAX_CA_FILE: u64 = 4 << 20;

/// How the backend's certificate is verified.
#[derive(Clone, Debug)]
pub struct ServerTrust {
    roots: RootCerts,
    /// For messages: `--server-ca /path` or `the compiled-in web PKI roots`.
    pub describe: String,
}

impl ServerTrust {
    /// `--server-ca FILE` (a PEM bundle with at least one certificate), else web PKI roots.
    pub fn load(server_ca: Option<&Path>) -> Result<ServerTrust> {
        let Some(path) = server_ca else {
            return Ok(ServerTrust {
                roots: RootCerts::WebPki,
                describe: "the compiled-in web PKI roots".into(),
            });
        };
        let shown = path.display();
        let mut pem = Vec::new();
        fs::File::open(path)
            .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
            .with_context(Kind::Config, || {
                format!("failed to read --server-ca `{shown}`")
            })?;
        if pem.len() as u64 > MAX_CA_FILE {
            return Err(Error::config(format!(
                "--server-ca `{shown}` is larger than 4 MiB; give a PEM bundle of CA certificates"
            )));
        }
        let certs = parse_certs(&pem).map_err(|why| {
            Error::config(format!(
                "--server-ca `{shown}` is not a usable PEM bundle: {why}"
            ))
        })?;
        Ok(ServerTrust {
            roots: RootCerts::new_with_certs(&certs),
            describe: format!("--server-ca `{shown}`"),
        })
    }
}

/// Every `CERTIFICATE` block of a PEM text (other blocks are ignored); at least one.
pub fn parse_certs(pem: &[u8]) -> std::result::Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("malformed PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// The client identity for mTLS: the chain (leaf first) and our PKCS#8 key (PEM).
pub fn client_cert(chain_pem: &str, key_pem: &str) -> Result<ClientCert> {
    let certs = parse_certs(chain_pem.as_bytes())
        .map_err(|why| Error::runtime(format!("the certificate chain is unusable: {why}")))?;
    let key = PrivateKey::from_pem(key_pem.as_bytes())
        .map_err(|e| Error::runtime(format!("the node key is unusable: {e}")))?;
    Ok(ClientCert::new_with_certs(&certs, key))
}

/// A blocking HTTPS client: status codes are returned (not errors), no redirects, https only.
pub fn agent(trust: &ServerTrust, client: Option<ClientCert>) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(trust.roots.clone())
        .client_cert(client)
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(true)
        .max_redirects(0)
        .user_agent(USER_AGENT)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_send_request(Some(READ_TIMEOUT))
        .timeout_send_body(Some(READ_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_recv_body(Some(READ_TIMEOUT))
        .timeout_global(Some(CALL_TIMEOUT))
        .tls_config(tls)
        .build();
    ureq::Agent::new_with_config(config)
}

/// A response read in full (status, `Retry-After`, body of at most [`MAX_RESPONSE`] bytes).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The `error` field of a JSON error body, cleaned for a log line (control characters
    /// dropped, at most 300 characters); a placeholder when the body has none.
    pub fn error_message(&self) -> String {
        let msg = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
        match msg {
            Some(m) if !m.trim().is_empty() => clean(&m),
            _ => "(no error message in the response body)".into(),
        }
    }
}

/// Printable text for a log line: control characters removed, length bounded.
pub fn clean(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(300).collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Why a call failed before a complete response arrived.
#[derive(Debug)]
pub enum CallError {
    /// The server's certificate did not verify: fatal at enrolment (a user is watching);
    /// retried with backoff after it (the backend's certificate or this node's clock will be
    /// fixed).
    Certificate(String),
    /// The response body was larger than [`MAX_RESPONSE`].
    TooLarge,
    /// Connection refused/reset, timeout, TLS handshake failure, truncated body: retryable.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Certificate(m) => write!(f, "the server certificate did not verify: {m}"),
            CallError::TooLarge => write!(f, "the response body is larger than 1 MiB"),
            CallError::Transport(m) => f.write_str(m),
        }
    }
}

/// POSTs `body` and reads the whole response. `timeout` bounds the whole call (used to respect
/// an overall deadline such as `--enroll-timeout`).
pub fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::result::Result<Reply, CallError> {
    let mut req = agent
        .post(url)
        .config()
        .timeout_global(Some(timeout.min(CALL_TIMEOUT)))
        .build();
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send(body).map_err(classify)?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::identity::backoff::parse_retry_after);
    let body = resp
        .into_body()
        .into_with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(classify)?;
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

fn classify(e: ureq::Error) -> CallError {
    if let ureq::Error::BodyExceedsLimit(_) = e {
        return CallError::TooLarge;
    }
    let rustls_err = match &e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    if let Some(r @ rustls::Error::InvalidCertificate(_)) = rustls_err {
        return CallError::Certificate(r.to_string());
    }
    CallError::Transport(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_has_the_version() {
        assert_eq!(
            USER_AGENT,
            format!("linuxguard-agent/{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn bundle_needs_a_certificate() {
        assert!(parse_certs(b"").is_err());
        assert!(
            parse_certs(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let pem = ca.cert.pem();
        assert_eq!(
            parse_certs(format!("{pem}{pem}").as_bytes()).unwrap().len(),
            2
        );
    }

    #[test]
    fn missing_server_ca_is_a_config_error() {
        let e = ServerTrust::load(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert_eq!(e.kind(), Kind::Config);
        assert!(e.to_string().contains("--server-ca"), "{e}");
    }

    #[test]
    fn error_message_is_cleaned() {
        let r = Reply {
            status: 400,
            retry_after: None,
            body: br#"{"error":"bad\nthing"}"#.to_vec(),
        };
        assert_eq!(r.error_message(), "badthing");
        let r = Reply {
            status: 400,
            retry_after: None,
            body: b"<html>".to_vec(),
        };
        assert!(r.error_message().contains("no error message"));
    }

    /// A one-connection HTTPS server on loopback that answers every request with `reply`.
    fn serve_once(reply: Vec<u8>) -> (String, std::path::PathBuf) {
        use std::io::Write;
        use std::sync::Arc;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("lg-tls-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ca = dir.join(format!("ca-{n}.pem"));
        fs::write(&ca, ck.cert.pem()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls.write_all(&reply);
            let _ = tls.flush();
            // Drain until the client hangs up: closing with unread input would send a RST.
            while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
        });
        (url, ca)
    }

    #[test]
    fn responses_over_1_mib_are_refused_not_read() {
        let body = vec![b'a'; 2 << 20];
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend_from_slice(&body);
        let (url, ca) = serve_once(reply);
        let trust = ServerTrust::load(Some(&ca)).unwrap();
        let r = post(
            &agent(&trust, None),
            &format!("{url}/x"),
            &[],
            b"{}",
            Duration::from_secs(10),
        );
        assert!(matches!(r, Err(CallError::TooLarge)), "{r:?}");
    }

    #[test]
    fn a_small_answer_is_read_with_retry_after() {
        let reply = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 16\r\n\r\n{\"error\":\"busy\"}".to_vec();
        let (url, ca) = serve_once(reply);
        let trust = ServerTrust::load(Some(&ca)).unwrap();
        let r = post(
            &agent(&trust, None),
            &format!("{url}/x"),
            &[],
            b"{}",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(r.error_message(), "busy");
    }
}
