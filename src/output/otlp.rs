//! The OpenTelemetry output (`--output otlp`): batches of events POSTed as OTLP/HTTP logs in
//! the OTLP/JSON encoding (`ExportLogsServiceRequest`, `Content-Type: application/json`) to
//! `--otlp-endpoint` (`http://` or `https://`; `/v1/logs` appended to a bare host). One
//! `LogRecord` per event: its time, the severity (info, or an alert's own), the event JSON as
//! the string body, `event.name`; resource attributes `host.name`, `service.name`,
//! `service.version`, `service.instance.id` and `linuxguard.workload.id` (the workload id),
//! `k8s.node.name` and `k8s.pod.uid` in Kubernetes. Headers from a file (tokens), `--otlp-ca`,
//! mTLS with `--otlp-cert`/`--otlp-key`. 429/5xx and transport errors are retried with backoff
//! (`Retry-After` honoured), 413 splits the batch, other 4xx drop it (counted);
//! `partialSuccess.rejectedLogRecords` are counted as output drops.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::error::{Context, Error, Kind, Result};
use crate::identity::tls::{self, CallError};
use crate::output::queue::Batch;
use crate::output::{Deliver, Outcome, head, level};
use crate::secret::{self, Secret};

/// `--otlp-endpoint` and the rest.
#[derive(Debug, Clone)]
pub struct Options {
    /// The logs URL (`/v1/logs` already appended to a bare host).
    pub url: String,
    pub headers_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// `--otlp-cert` and `--otlp-key` (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
    /// Resource attributes, in order.
    pub resource: Vec<(String, String)>,
}

/// The logs URL for `--otlp-endpoint`: a URL without a path gets `/v1/logs` (the OTLP/HTTP
/// default); a URL with a path is used as given (a collector behind a path prefix).
pub fn logs_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    let rest = e.split_once("://").map_or(e, |(_, r)| r);
    if rest.contains('/') {
        e.to_string()
    } else {
        format!("{e}/v1/logs")
    }
}

/// One request takes at most this long (the OpenTelemetry exporters' default is 10 s).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate or key file read.
const MAX_PEM: u64 = 1 << 20;

/// Headers from `--otlp-headers-file`: `Name: value` lines (`#` comments, blank lines
/// ignored). Values are secrets (tokens): never logged, zeroized.
#[derive(Default)]
struct Headers {
    list: Vec<(String, Secret)>,
    /// The file's modification time when read: a changed file is read again (a rotated token).
    mtime: Option<SystemTime>,
}

fn read_headers(path: &std::path::Path) -> Result<Headers> {
    let shown = path.display();
    let mtime = fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = secret::read_file(path).with_context(Kind::Config, || {
        format!("failed to read --otlp-headers-file `{shown}`")
    })?;
    let mut list = Vec::new();
    for (i, line) in text.expose().lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            Error::config(format!(
                "--otlp-headers-file `{shown}` line {}: {why}; write one `Name: value` per line",
                i + 1
            ))
        };
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("no `:` between the header name and its value"));
        };
        let name = name.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(bad("the header name is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if [
            "content-type",
            "content-length",
            "host",
            "transfer-encoding",
        ]
        .contains(&lower.as_str())
        {
            return Err(bad("the agent sets this header itself"));
        }
        let value = value.trim();
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad("the value holds a control character"));
        }
        list.push((name.to_string(), Secret::new(value.to_string())));
    }
    Ok(Headers { list, mtime })
}

/// The client identity from `--otlp-cert` (chain, leaf first) and `--otlp-key` (PEM).
fn client_cert(cert: &std::path::Path, key: &std::path::Path) -> Result<ClientCert> {
    use std::io::Read;
    let read = |p: &std::path::Path, what: &str| -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        fs::File::open(p)
            .and_then(|f| f.take(MAX_PEM).read_to_end(&mut buf))
            .with_context(Kind::Config, || {
                format!("failed to read {what} `{}`", p.display())
            })?;
        Ok(buf)
    };
    let chain = read(cert, "--otlp-cert")?;
    let certs = tls::parse_certs(&chain).map_err(|why| {
        Error::config(format!(
            "--otlp-cert `{}` is not a usable PEM certificate chain: {why}",
            cert.display()
        ))
    })?;
    let pem = read(key, "--otlp-key")?;
    let key = PrivateKey::from_pem(&pem).map_err(|_| {
        Error::config(format!(
            "--otlp-key `{}` is not a usable PEM private key (PKCS#8, RSA or EC)",
            key.display()
        ))
    })?;
    Ok(ClientCert::new_with_certs(&certs, key))
}

pub struct Otlp {
    url: String,
    agent: ureq::Agent,
    headers_file: Option<PathBuf>,
    headers: Headers,
    resource: Vec<(String, String)>,
}

impl Otlp {
    /// Reads the CA, client identity and headers at start-up (a bad file fails the start).
    pub fn open(opts: Options) -> Result<Otlp> {
        let roots = match &opts.ca {
            Some(p) => {
                let pem = fs::read(p).with_context(Kind::Config, || {
                    format!("failed to read --otlp-ca `{}`", p.display())
                })?;
                let certs = tls::parse_certs(&pem).map_err(|why| {
                    Error::config(format!(
                        "--otlp-ca `{}` is not a usable PEM bundle: {why}",
                        p.display()
                    ))
                })?;
                RootCerts::new_with_certs(&certs)
            }
            None => RootCerts::WebPki,
        };
        let client = match &opts.client {
            Some((c, k)) => Some(client_cert(c, k)?),
            None => None,
        };
        let tls_config = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .client_cert(client)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(tls::USER_AGENT)
            .timeout_connect(Some(TIMEOUT))
            .timeout_resolve(Some(TIMEOUT))
            .timeout_global(Some(TIMEOUT))
            .tls_config(tls_config)
            .build();
        let headers = match &opts.headers_file {
            Some(p) => read_headers(p)?,
            None => Headers::default(),
        };
        log::info!(
            "output otlp: OTLP/HTTP JSON logs to {} ({} headers from a file, {}{})",
            opts.url,
            headers.list.len(),
            match &opts.ca {
                Some(p) => format!("server verified with --otlp-ca `{}`", p.display()),
                None => "server verified with the web PKI roots".into(),
            },
            if opts.client.is_some() {
                ", client certificate"
            } else {
                ""
            }
        );
        Ok(Otlp {
            url: opts.url,
            agent: ureq::Agent::new_with_config(config),
            headers_file: opts.headers_file,
            headers,
            resource: opts.resource,
        })
    }

    /// Reads the headers file again when it changed (a rotated token); keeps the old headers
    /// when the new file is unusable.
    fn refresh_headers(&mut self) {
        let Some(p) = &self.headers_file else { return };
        let mtime = fs::metadata(p).and_then(|m| m.modified()).ok();
        if mtime == self.headers.mtime {
            return;
        }
        match read_headers(p) {
            Ok(h) => {
                log::info!("output otlp: --otlp-headers-file changed: read again");
                self.headers = h;
            }
            Err(e) => {
                log::warn!("output otlp: {e}; keeping the headers read before");
                self.headers.mtime = mtime;
            }
        }
    }

    /// The `ExportLogsServiceRequest` for a batch, in OTLP/JSON.
    fn body(&self, b: &Batch) -> Vec<u8> {
        let now = nanos(SystemTime::now()).to_string();
        let records: Vec<LogRecord<'_>> = b
            .lines()
            .map(|line| {
                let h = head(line);
                let time = h
                    .time
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .map_or_else(|| now.clone(), |t| nanos(t).to_string());
                let (severity_number, severity_text) = level(h.severity.as_deref()).otlp();
                LogRecord {
                    time_unix_nano: time,
                    observed_time_unix_nano: now.clone(),
                    severity_number,
                    severity_text,
                    body: AnyValue::StringValue(String::from_utf8_lossy(line)),
                    attributes: [KeyValue {
                        key: "event.name".into(),
                        value: AnyValue::StringValue(format!("linuxguard.{}", h.kind).into()),
                    }],
                }
            })
            .collect();
        let attributes: Vec<KeyValue<'_>> = self
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.as_str().into(),
                value: AnyValue::StringValue(v.as_str().into()),
            })
            .collect();
        let req = Request {
            resource_logs: [ResourceLogs {
                resource: Resource { attributes },
                scope_logs: [ScopeLogs {
                    scope: Scope {
                        name: "linuxguard-agent",
                        version: env!("CARGO_PKG_VERSION"),
                    },
                    log_records: records,
                }],
            }],
        };
        serde_json::to_vec(&req).unwrap_or_default()
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

// OTLP/JSON (the protobuf JSON mapping with OTLP's rules: lowerCamelCase field names, 64-bit
// integers as decimal strings, enums as numbers), opentelemetry-proto's logs.proto.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    resource_logs: [ResourceLogs<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceLogs<'a> {
    resource: Resource<'a>,
    scope_logs: [ScopeLogs<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeLogs<'a> {
    scope: Scope,
    log_records: Vec<LogRecord<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogRecord<'a> {
    time_unix_nano: String,
    observed_time_unix_nano: String,
    severity_number: u8,
    severity_text: &'static str,
    body: AnyValue<'a>,
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: std::borrow::Cow<'a, str>,
    value: AnyValue<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum AnyValue<'a> {
    StringValue(std::borrow::Cow<'a, str>),
}

/// `partialSuccess.rejectedLogRecords` of a 2xx answer (an int64: a string or a number).
fn rejected(body: &[u8]) -> (u64, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let p = &v["partialSuccess"];
    let n = match &p["rejectedLogRecords"] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    };
    (n, tls::clean(p["errorMessage"].as_str().unwrap_or("")))
}

impl Deliver for Otlp {
    fn batched(&self) -> bool {
        true
    }

    fn deliver(&mut self, b: &Batch, timeout: Duration) -> Outcome {
        self.refresh_headers();
        let body = self.body(b);
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        headers.extend(
            self.headers
                .list
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose())),
        );
        let reply = tls::post(
            &self.agent,
            &self.url,
            &headers,
            &body,
            timeout.min(TIMEOUT),
        );
        let r = match reply {
            Ok(r) => r,
            Err(e) => {
                let why = match e {
                    CallError::Certificate(m) => {
                        format!("the collector's certificate did not verify ({m}); check --otlp-ca")
                    }
                    e => format!("POST {} failed: {e}", self.url),
                };
                return Outcome::Retry {
                    delivered: 0,
                    rejected: 0,
                    why,
                    after: None,
                };
            }
        };
        let msg = || {
            let text: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
            tls::clean(&text)
        };
        match r.status {
            200..=299 => {
                let (n, why) = rejected(&r.body);
                if n > 0 {
                    log::warn!(
                        "output otlp: the collector rejected {n} of {} log records: {why}; \
                         dropped and counted",
                        b.events
                    );
                }
                Outcome::Done { rejected: n }
            }
            413 => Outcome::TooLarge,
            401 | 403 => Outcome::Retry {
                delivered: 0,
                rejected: 0,
                why: format!(
                    "the collector answered {} (check the token in --otlp-headers-file or the \
                     client certificate; the file is read again when it changes): {}",
                    r.status,
                    msg()
                ),
                after: r.retry_after,
            },
            408 | 429 | 500..=599 => Outcome::Retry {
                delivered: 0,
                rejected: 0,
                why: format!("the collector answered {}: {}", r.status, msg()),
                after: r.retry_after,
            },
            s => Outcome::Rejected(format!("the collector answered {s}: {}", msg())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::queue::{Limits, Queue};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn logs_url_appends_the_default_path_to_a_bare_host() {
        assert_eq!(logs_url("http://c:4318"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("https://c:4318/"), "https://c:4318/v1/logs");
        assert_eq!(logs_url("https://c/v1/logs"), "https://c/v1/logs");
        assert_eq!(
            logs_url("https://gw/otlp/v1/logs"),
            "https://gw/otlp/v1/logs"
        );
    }

    #[test]
    fn headers_file_lines_and_errors_never_show_values() {
        let dir = std::env::temp_dir().join(format!("lg-otlp-h-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h");
        fs::write(
            &p,
            "# a comment\n\nAuthorization: Bearer tok-123\nX-Scope-OrgID:  t1 \n",
        )
        .unwrap();
        let h = read_headers(&p).unwrap();
        let got: Vec<(&str, &str)> = h
            .list
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            got,
            [("Authorization", "Bearer tok-123"), ("X-Scope-OrgID", "t1")]
        );
        for (bad, why) in [
            ("Bearer tok-456", "no `:`"),
            ("Bad Name: tok-456", "not a valid HTTP header name"),
            ("Content-Type: tok-456", "sets this header itself"),
        ] {
            fs::write(&p, format!("A: b\n{bad}\n")).unwrap();
            let e = read_headers(&p).err().unwrap().to_string();
            assert!(e.contains("line 2") && e.contains(why), "{e}");
            assert!(!e.contains("tok-456"), "a value in an error: {e}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_request_is_otlp_json_with_time_severity_body_and_resource() {
        let o = Otlp::open(Options {
            url: "http://127.0.0.1:9/v1/logs".into(),
            headers_file: None,
            ca: None,
            client: None,
            resource: vec![("service.name".into(), "linuxguard-agent".into())],
        })
        .unwrap();
        let mut q = Queue::new(
            Limits {
                queue_bytes: 1 << 20,
                batch_events: 10,
                batch_bytes: 1 << 20,
                batch_age: Duration::ZERO,
            },
            "k".into(),
        );
        let ev =
            r#"{"type":"exec","@timestamp":"2026-01-02T03:04:05.000000007Z","seq":1,"a":"\"q\""}"#;
        q.push(Arc::from(ev.as_bytes()), Instant::now());
        q.push(
            Arc::from(
                &br#"{"type":"alert","@timestamp":"2026-01-02T03:04:05Z","severity":"high"}"#[..],
            ),
            Instant::now(),
        );
        let b = q.take_batch(Instant::now(), true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.body(&b)).unwrap();
        let rl = &v["resourceLogs"][0];
        assert_eq!(rl["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rl["resource"]["attributes"][0]["value"]["stringValue"],
            "linuxguard-agent"
        );
        assert_eq!(rl["scopeLogs"][0]["scope"]["name"], "linuxguard-agent");
        let r = &rl["scopeLogs"][0]["logRecords"];
        assert_eq!(r[0]["timeUnixNano"], "1767323045000000007");
        assert_eq!(r[0]["severityNumber"], 9);
        assert_eq!(r[0]["severityText"], "INFO");
        assert_eq!(r[0]["body"]["stringValue"], ev);
        assert_eq!(r[0]["attributes"][0]["key"], "event.name");
        assert_eq!(
            r[0]["attributes"][0]["value"]["stringValue"],
            "linuxguard.exec"
        );
        assert_eq!(r[1]["severityNumber"], 17);
        assert_eq!(r[1]["severityText"], "ERROR");
    }

    #[test]
    fn partial_success_counts_rejected_records() {
        assert_eq!(
            rejected(br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"bad"}}"#),
            (3, "bad".into())
        );
        assert_eq!(
            rejected(br#"{"partialSuccess":{"rejectedLogRecords":2}}"#).0,
            2
        );
        assert_eq!(rejected(b"{}").0, 0);
        assert_eq!(rejected(b"").0, 0);
    }
}
