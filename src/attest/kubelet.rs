//! The kubelet client: `GET /pods` over the read-only port (plain HTTP) or the secure port
//! (rustls), configured like SPIRE's k8s workload attestor, with a shared single-flight cache.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::attest::pods::{self, PodList};
use crate::counters::KubeletCounts;
use crate::error::{Context, Error, Kind, Result};
use crate::secret::Secret;

/// A pod list larger than this is refused (a node runs at most a few hundred pods).
const MAX_BODY: u64 = 32 << 20;
/// Whole-request budget: a slow kubelet never stalls a caller longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How the agent authenticates to the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Bearer token read from this file before every request (service-account tokens rotate).
    Token(PathBuf),
    /// X509 client certificate and key (PEM files).
    Cert(PathBuf, PathBuf),
    Anonymous,
}

/// Everything the client needs, resolved from the settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://host:port` or `https://host:port`, no trailing slash.
    pub base: String,
    /// Connect here whatever the URL's host is (127.0.0.1 with the node's host name in the URL
    /// so the certificate is checked against that name).
    pub connect_to: Option<SocketAddr>,
    /// PEM bundle; None with `skip_verify`.
    pub ca: Option<PathBuf>,
    pub skip_verify: bool,
    pub auth: Auth,
    /// Minimum time between two fetches.
    pub min_interval: Duration,
    /// Fetches for an unknown pod UID before giving up on it.
    pub max_attempts: u32,
    pub timeout: Duration,
}

impl Options {
    fn https(&self) -> bool {
        self.base.starts_with("https://")
    }
}

/// Connects every request to one fixed address (the URL's host is kept for SNI and checks).
#[derive(Debug)]
struct FixedResolver(SocketAddr);

impl Resolver for FixedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let mut v = self.empty();
        v.push(self.0);
        Ok(v)
    }
}

struct State {
    pods: Arc<PodList>,
    fetched_at: Option<Instant>,
    in_flight: bool,
    last_error: Option<String>,
}

/// The shared client and pod-list cache. At most one request is in flight; callers arriving
/// meanwhile wait for it (bounded by the request timeout) and share its answer.
pub struct Kubelet {
    opts: Options,
    agent: ureq::Agent,
    state: Mutex<State>,
    done: Condvar,
    pub counters: KubeletCounts,
}

impl Kubelet {
    pub fn new(opts: Options) -> Result<Kubelet> {
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if opts.https() {
            if opts.skip_verify {
                tls = tls.disable_verification(true);
            } else if let Some(ca) = &opts.ca {
                let certs = load_certs(ca).map_err(|e| {
                    e.context(
                        "kubelet CA bundle unusable (set --kubelet-ca FILE, or --skip-kubelet-verification)",
                    )
                })?;
                tls = tls.root_certs(RootCerts::new_with_certs(&certs));
            }
            if let Auth::Cert(c, k) = &opts.auth {
                let chain = load_certs(c)?;
                let key = load_key(k)?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
            }
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(opts.timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(opts.timeout)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("linuxguard-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = match opts.connect_to {
            Some(addr) => {
                ureq::Agent::with_parts(config, DefaultConnector::default(), FixedResolver(addr))
            }
            None => ureq::Agent::new_with_config(config),
        };
        Ok(Kubelet {
            opts,
            agent,
            state: Mutex::new(State {
                pods: Arc::new(PodList::default()),
                fetched_at: None,
                in_flight: false,
                last_error: None,
            }),
            done: Condvar::new(),
            counters: KubeletCounts::default(),
        })
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last pod list fetched (empty before the first fetch).
    pub fn cached(&self) -> Arc<PodList> {
        self.lock().pods.clone()
    }

    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// A fresh pod list, unless one was fetched less than the minimum interval ago (then the
    /// cached one). Waits for a request already in flight instead of starting another.
    pub fn refresh(&self) -> Result<Arc<PodList>> {
        let mut st = self.lock();
        let deadline = Instant::now() + self.opts.timeout + Duration::from_secs(1);
        while st.in_flight {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::runtime(
                    "timed out waiting for the kubelet request in flight",
                ));
            }
            st = self
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if let Some(at) = st.fetched_at {
            if at.elapsed() < self.opts.min_interval {
                return match &st.last_error {
                    Some(e) => Err(Error::runtime(e.clone())),
                    None => Ok(st.pods.clone()),
                };
            }
        }
        st.in_flight = true;
        drop(st);
        let res = self.fetch();
        let mut st = self.lock();
        st.in_flight = false;
        st.fetched_at = Some(Instant::now());
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let out = match res {
            Ok(list) => {
                st.pods = Arc::new(list);
                st.last_error = None;
                Ok(st.pods.clone())
            }
            Err(e) => {
                self.counters.fetch_errors.fetch_add(1, Ordering::Relaxed);
                st.last_error = Some(e.to_string());
                Err(e)
            }
        };
        drop(st);
        self.done.notify_all();
        out
    }

    /// One `GET /pods`.
    fn fetch(&self) -> Result<PodList> {
        let url = format!("{}/pods", self.opts.base);
        let mut req = self.agent.get(&url).header("Accept", "application/json");
        // The token is re-read for every request (service-account tokens rotate); our copies
        // are zeroized on drop (ureq keeps its own header copy for the request's lifetime).
        let auth = match (&self.opts.auth, self.opts.https()) {
            (Auth::Token(path), true) => {
                // Sized up front: `format!` would grow its buffer and leave unzeroized copies.
                let token = read_token(path)?;
                let mut h = String::with_capacity(token.expose().len() + 7);
                h.push_str("Bearer ");
                h.push_str(token.expose());
                Some(Secret::new(h))
            }
            _ => None,
        };
        if let Some(h) = &auth {
            req = req.header("Authorization", h.expose());
        }
        let resp = req.call().with_context(Kind::Runtime, || {
            format!("kubelet request GET {url} failed")
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let hint = match status {
                401 => {
                    ": the kubelet rejected our credentials (check --kubelet-token-path / --kubelet-cert)"
                }
                403 => {
                    ": not authorised (the service account needs `get` on `nodes/pods` (Kubernetes 1.33+) or `nodes/proxy`; see deploy/kubernetes/rbac.yaml)"
                }
                _ => "",
            };
            return Err(Error::runtime(format!(
                "kubelet answered GET {url} with HTTP {status}{hint}"
            )));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .with_context(Kind::Runtime, || {
                format!("failed to read the kubelet's pod list from {url}")
            })?;
        pods::parse(&body).map_err(Error::runtime)
    }
}

/// Reads the bearer token; the file is small (tokens are ~1 KiB; 64 KiB is the bound).
fn read_token(path: &std::path::Path) -> Result<Secret> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(Kind::Runtime, || {
        format!(
            "failed to open the kubelet token `{}` (set --kubelet-token-path, --kubelet-cert/--kubelet-key or --kubelet-anonymous)",
            path.display()
        )
    })?;
    // Room for the whole bound up front: growing the buffer would leave unzeroized copies.
    let mut buf = zeroize::Zeroizing::new(String::with_capacity((64 << 10) + 1));
    f.take(64 << 10)
        .read_to_string(&mut buf)
        .with_context(Kind::Runtime, || {
            format!("failed to read the kubelet token `{}`", path.display())
        })?;
    let t = buf.trim();
    if t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Error::runtime(format!(
            "the kubelet token `{}` is empty or holds characters a bearer token cannot have",
            path.display()
        )));
    }
    Ok(Secret::new(t.to_string()))
}

/// Reads at most 1 MiB + 1 byte (a wrong path such as /dev/zero must not exhaust memory) into
/// a buffer that is never reallocated (it may hold a private key; callers zeroize it).
fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let mut data = Vec::with_capacity(MAX as usize + 1);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_end(&mut data))
        .with_context(Kind::Config, || {
            format!("failed to read the {what} `{}`", path.display())
        })?;
    if data.len() as u64 > MAX {
        return Err(Error::config(format!(
            "the {what} `{}` is over 1 MiB",
            path.display()
        )));
    }
    Ok(data)
}

fn load_certs(path: &std::path::Path) -> Result<Vec<Certificate<'static>>> {
    let data = read_pem(path, "kubelet certificate file")?;
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(&data) {
        if let Ok(PemItem::Certificate(c)) = item {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "`{}` holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(out)
}

fn load_key(path: &std::path::Path) -> Result<PrivateKey<'static>> {
    let data = zeroize::Zeroizing::new(read_pem(path, "kubelet client key")?);
    for item in ureq::tls::parse_pem(&data) {
        if let Ok(PemItem::PrivateKey(k)) = item {
            return Ok(k);
        }
    }
    Err(Error::config(format!(
        "`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options for a plain-HTTP test kubelet at `url` (no token, no TLS).
    fn opts(url: String) -> Options {
        Options {
            base: url,
            connect_to: None,
            ca: None,
            skip_verify: false,
            auth: Auth::Anonymous,
            min_interval: Duration::from_millis(500),
            max_attempts: 60,
            timeout: REQUEST_TIMEOUT,
        }
    }

    #[test]
    fn oversized_or_endless_pem_files_are_refused_not_read() {
        let e = read_pem(std::path::Path::new("/dev/zero"), "kubelet client key").unwrap_err();
        assert_eq!(e.kind(), Kind::Config);
        assert!(e.to_string().contains("over 1 MiB"), "{e}");
    }

    /// Concurrent callers share one request; a call within the minimum interval is served from
    /// the cache; a failing kubelet is reported, not retried in a tight loop.
    #[test]
    fn single_flight_and_min_interval() {
        use std::io::{Read, Write};
        use std::sync::atomic::AtomicU32;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(Duration::from_millis(200));
                let body = r#"{"items":[{"metadata":{"uid":"u1"}}]}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let mut o = opts(format!("http://127.0.0.1:{port}"));
        o.min_interval = Duration::from_millis(300);
        let k = Arc::new(Kubelet::new(o).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let k = k.clone();
                std::thread::spawn(move || k.refresh().map(|l| l.items.len()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 1);
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one request for four callers"
        );
        assert!(k.refresh().unwrap().by_uid("u1").is_some());
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "within the interval: cached"
        );
        std::thread::sleep(Duration::from_millis(350));
        k.refresh().unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(k.counters.fetches.load(Ordering::Relaxed), 2);
    }
}
