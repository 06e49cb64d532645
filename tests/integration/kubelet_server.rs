//! A small real kubelet for tests: serves `GET /pods` over plain HTTP or HTTPS (rustls), checks a
//! bearer token or a client certificate, and can be slow. Certificates come from rcgen.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and one leaf it signed, as PEM and DER.
pub struct Pki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    /// A CA and a leaf for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf_params = CertificateParams::new(names).expect("leaf params");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf cert");
        Pki {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
            ca_der: ca.der().clone(),
        }
    }
}

/// What the kubelet does; tests may change it while it runs.
pub struct Behaviour {
    pub body: String,
    pub status: u16,
    /// Required `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub delay: Duration,
    /// Serve this body instead once this many requests were served.
    pub later_body: Option<(u32, String)>,
}

pub struct TestKubelet {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

pub enum Tls<'a> {
    Plain,
    /// Server certificate; optionally require client certificates signed by this CA.
    Https {
        server: &'a Pki,
        client_ca: Option<&'a Pki>,
    },
}

impl TestKubelet {
    pub fn start(tls: Tls<'_>, behaviour: Behaviour) -> TestKubelet {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test kubelet");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let config = match tls {
            Tls::Plain => None,
            Tls::Https { server, client_ca } => Some(Arc::new(server_config(server, client_ca))),
        };
        let behaviour = Arc::new(Mutex::new(behaviour));
        let requests = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s) = (behaviour.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (b, r, c) = (b.clone(), r.clone(), config.clone());
                        std::thread::spawn(move || serve(stream, c, &b, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TestKubelet {
            addr,
            behaviour,
            requests,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(server: &Pki, client_ca: Option<&Pki>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_der.clone()).expect("client ca");
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(
            vec![server.leaf_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.leaf_key_der.clone())),
        )
        .expect("server cert")
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    b: &Mutex<Behaviour>,
    r: &AtomicU32,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    match tls {
        None => handle(stream, b, r),
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            handle(rustls::StreamOwned::new(conn, stream), b, r)
        }
    }
}

fn handle(mut s: impl Read + Write, b: &Mutex<Behaviour>, r: &AtomicU32) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return, // handshake failures end here
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 16 << 10 {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&buf), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let (status, body, delay) = {
        let b = b.lock().expect("behaviour lock");
        let body = match &b.later_body {
            Some((after, later)) if n > *after => later.clone(),
            _ => b.body.clone(),
        };
        let authorised = match &b.token {
            Some(t) => auth.as_deref() == Some(format!("Bearer {t}").as_str()),
            None => true,
        };
        if req.path != Some("/pods") || req.method != Some("GET") {
            (404, "{}".to_string(), b.delay)
        } else if !authorised {
            (401, "Unauthorized".to_string(), b.delay)
        } else {
            (b.status, body, b.delay)
        }
    };
    std::thread::sleep(delay);
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let _ = s.flush();
}
