//! Enrolment: the node-generated P-256 key and CSR, the request built once and resent
//! byte-for-byte (with `k8s_psat`, the service-account token read again per attempt), one
//! attempt's answer classified as the pinned contract says, and the issued identity (agent id,
//! chain, CA bundle, key) checked against our own key.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Kind, Result};
use crate::identity::credential::{Credential, read_sa_token};
use crate::identity::tls::{self, CallError, Reply, ServerTrust};

/// Bounds for a server-sent heartbeat interval.
pub const MIN_HEARTBEAT: u64 = 1;
pub const MAX_HEARTBEAT: u64 = 86_400;

/// A fresh ECDSA P-256 key, generated on this node; it never leaves the node.
pub fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::runtime(format!("failed to generate a P-256 key: {e}")))
}

/// A PKCS#10 CSR (PEM) for `key`, CN = the workload id.
pub fn csr_pem(key: &KeyPair, workload_id: &str) -> Result<String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, workload_id);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::runtime(format!("failed to build the CSR: {e}")))
}

/// What the agent tells the backend about itself.
pub struct Params<'a> {
    pub tenant_id: Option<&'a str>,
    pub credential: &'a Credential,
    pub workload_id: &'a str,
    pub node_name: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub hostname: &'a str,
}

/// The body's fields in the contract's order (serde keeps declaration order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    tenant_id: Option<&'a str>,
    enroll_code: Option<&'a str>,
    workload_id: &'a str,
    node_name: Option<&'a str>,
    pod_uid: Option<&'a str>,
    hostname: &'a str,
    agent_version: &'a str,
    csr: &'a str,
    /// v1.1: only with `k8s_psat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    attestation: Option<Attestation<'a>>,
}

#[derive(Serialize)]
struct Attestation<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    token: &'a str,
}

/// The body's fields other than the credential, kept to rebuild the body with a newer
/// service-account token.
struct Fields {
    tenant_id: Option<String>,
    workload_id: String,
    node_name: Option<String>,
    pod_uid: Option<String>,
    hostname: String,
}

/// One enrolment: key, CSR, headers and body fixed at creation and resent unchanged on
/// retries; with `k8s_psat` the token is read again before each attempt (the only byte
/// difference the contract allows).
pub struct Request {
    key: KeyPair,
    csr: String,
    fields: Fields,
    /// The service-account token file (`k8s_psat` only).
    sa_token_file: Option<PathBuf>,
    body: Zeroizing<Vec<u8>>,
    idempotency_key: String,
    authorization: Option<Zeroizing<String>>,
}

impl Request {
    pub fn new(p: &Params<'_>) -> Result<Request> {
        let key = new_key()?;
        let csr = csr_pem(&key, p.workload_id)?;
        let authorization = match p.credential {
            Credential::ApiKey(k) => {
                let mut h = Zeroizing::new(String::with_capacity(k.expose().len() + 7));
                h.push_str("Bearer ");
                h.push_str(k.expose());
                Some(h)
            }
            Credential::Token(_) | Credential::ServiceAccount(_) => None,
        };
        let mut req = Request {
            key,
            csr,
            fields: Fields {
                tenant_id: p.tenant_id.map(str::to_string),
                workload_id: p.workload_id.to_string(),
                node_name: p.node_name.map(str::to_string),
                pod_uid: p.pod_uid.map(str::to_string),
                hostname: p.hostname.to_string(),
            },
            sa_token_file: match p.credential {
                Credential::ServiceAccount(f) => Some(f.clone()),
                _ => None,
            },
            body: Zeroizing::new(Vec::new()),
            idempotency_key: p.workload_id.to_string(),
            authorization,
        };
        match p.credential {
            Credential::Token(t) => req.encode(Some(t.expose()), None)?,
            Credential::ApiKey(_) => req.encode(None, None)?,
            // Encoded by `prepare`, with the token as it is at each attempt.
            Credential::ServiceAccount(_) => {}
        }
        Ok(req)
    }

    /// Serializes the body once into a zeroizing buffer sized up front, so the buffer holding
    /// a secret is never reallocated (a reallocation would leave an unzeroized copy behind).
    fn encode(&mut self, code: Option<&str>, sa_token: Option<&str>) -> Result<()> {
        let f = &self.fields;
        let body = Body {
            tenant_id: f.tenant_id.as_deref(),
            enroll_code: code,
            workload_id: &f.workload_id,
            node_name: f.node_name.as_deref(),
            pod_uid: f.pod_uid.as_deref(),
            hostname: &f.hostname,
            agent_version: env!("CARGO_PKG_VERSION"),
            csr: &self.csr,
            attestation: sa_token.map(|token| Attestation {
                kind: "k8s_psat",
                token,
            }),
        };
        // Every field but the hostname is ASCII without escapes; JSON escapes take at most
        // six bytes per input byte.
        let cap = 1024
            + self.csr.len() * 2
            + code.map_or(0, str::len)
            + sa_token.map_or(0, str::len)
            + 6 * (f.hostname.len()
                + f.tenant_id.as_deref().map_or(0, str::len)
                + f.node_name.as_deref().map_or(0, str::len)
                + f.pod_uid.as_deref().map_or(0, str::len)
                + f.workload_id.len());
        let mut buf = Zeroizing::new(Vec::with_capacity(cap));
        serde_json::to_writer(&mut *buf, &body)
            .map_err(|e| Error::runtime(format!("failed to encode the enrolment request: {e}")))?;
        self.body = buf;
        Ok(())
    }

    /// Before each attempt: with `k8s_psat`, reads the service-account token again (the
    /// kubelet rotates it) and re-encodes the body around the same CSR. Other credentials: the
    /// body built at creation, unchanged.
    pub fn prepare(&mut self) -> Result<()> {
        let Some(file) = self.sa_token_file.clone() else {
            return Ok(());
        };
        let token = read_sa_token(&file)?;
        self.encode(None, Some(token.expose()))
    }

    /// After an attempt: with `k8s_psat`, drops (zeroizes) the body holding the
    /// service-account token, so the token is not kept while waiting to retry; `prepare` reads
    /// it again. Other bodies are kept (they are resent byte for byte).
    pub fn release(&mut self) {
        if self.sa_token_file.is_some() {
            self.body = Zeroizing::new(Vec::new());
        }
    }

    /// The headers sent on every attempt.
    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Idempotency-Key", self.idempotency_key.as_str()),
        ];
        if let Some(a) = &self.authorization {
            h.push(("Authorization", a.as_str()));
        }
        h
    }

    /// The bytes sent by the last (or next) attempt.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether this is a `k8s_psat` enrolment.
    pub fn is_service_account(&self) -> bool {
        self.sa_token_file.is_some()
    }
}

/// The mTLS identity issued by the backend, with our key.
pub struct Identity {
    pub agent_id: String,
    pub chain_pem: String,
    pub ca_pem: String,
    pub heartbeat_interval: Duration,
    pub key: KeyPair,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field("key", &"<P-256 private key>")
            .finish()
    }
}

/// The success body of `/agent/enroll` and `/agent/renew`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Success {
    agent_id: String,
    certificate_chain: String,
    ca_bundle: String,
    heartbeat_interval_seconds: u64,
}

impl Identity {
    /// Checks and assembles an identity: agent id sane, chain parses, the leaf's public key is
    /// `key`'s, the heartbeat interval is in range.
    pub fn assemble(
        agent_id: String,
        chain_pem: String,
        ca_pem: String,
        heartbeat_secs: u64,
        key: KeyPair,
    ) -> std::result::Result<Identity, String> {
        if agent_id.is_empty()
            || agent_id.len() > 256
            || !agent_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(
                "agentId is empty, too long or has characters outside A-Z a-z 0-9 - _ . :".into(),
            );
        }
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&heartbeat_secs) {
            return Err(format!(
                "heartbeatIntervalSeconds {heartbeat_secs} is outside {MIN_HEARTBEAT}..={MAX_HEARTBEAT}"
            ));
        }
        let certs = tls::parse_certs(chain_pem.as_bytes())
            .map_err(|why| format!("certificateChain: {why}"))?;
        tls::parse_certs(ca_pem.as_bytes()).map_err(|why| format!("caBundle: {why}"))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].der())
            .map_err(|e| format!("certificateChain: the leaf certificate does not parse: {e}"))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(
                "the leaf certificate's public key is not this agent's key (the backend answered with someone else's certificate)"
                    .into(),
            );
        }
        let v = leaf.validity();
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let (not_before, not_after) = (at(v.not_before.timestamp()), at(v.not_after.timestamp()));
        if not_after <= not_before {
            return Err("the leaf certificate's validity period is empty".into());
        }
        Ok(Identity {
            agent_id,
            chain_pem,
            ca_pem,
            heartbeat_interval: Duration::from_secs(heartbeat_secs),
            key,
            not_before,
            not_after,
        })
    }

    /// Parses a 200/201 body from enrol or renew for `key`.
    pub fn from_success(body: &[u8], key: KeyPair) -> std::result::Result<Identity, String> {
        let s: Success = serde_json::from_slice(body)
            .map_err(|e| format!("the success body is not the expected JSON: {e}"))?;
        Identity::assemble(
            s.agent_id,
            s.certificate_chain,
            s.ca_bundle,
            s.heartbeat_interval_seconds,
            key,
        )
    }

    /// The PKCS#8 PEM of our key (zeroized when dropped).
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        self.not_before <= t + Duration::from_secs(300) && t < self.not_after
    }

    /// When to renew: 2/3 of the lifetime minus up to a tenth of it (jitter spreads a fleet).
    pub fn renew_at(&self, jitter_unit: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let f = 2.0 / 3.0 - 0.1 * jitter_unit.clamp(0.0, 1.0);
        self.not_before + life.mul_f64(f)
    }
}

/// `enrolment failed: ...` for 400/401/403/409 and other final answers.
fn rejected(reply: &Reply, service_account: bool) -> Error {
    let msg = reply.error_message();
    let line = if reply.status == 409 {
        format!("enrolment failed: 409 conflict: {msg}")
    } else {
        format!("enrolment failed: {} {msg}", reply.status)
    };
    let hint = match reply.status {
        409 => {
            "the token is single-use and was already used by another workload: rotate the Secret \
             holding LINUXGUARD_ENROLL_TOKEN with a fresh token from the LinuxGuard console"
        }
        401 | 403 if service_account => {
            "the backend did not accept the service-account token: project it with audience: \
             linuxguard, and make sure the backend trusts this cluster's service-account issuer \
             for LINUXGUARD_TENANT_ID"
        }
        401 | 403 => {
            "the backend does not accept this token or API key: check LINUXGUARD_ENROLL_TOKEN / \
             LINUXGUARD_API_KEY (or their _FILE settings) and LINUXGUARD_TENANT_ID"
        }
        _ => "fix the request as the message says; retrying will not help",
    };
    // Printed once, by main, as the exit error.
    Error::new(Kind::EnrollRejected, format!("{line} ({hint})"))
}

/// The answer to one enrolment attempt that is not final.
pub enum Attempt {
    Enrolled(Box<Identity>),
    /// 408/429/5xx or a transport failure: try again after a backoff (at least `retry_after`).
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// One enrolment attempt, a blocking call of at most `timeout`, with the body as the last
/// [`Request::prepare`] left it. Errors are final: a rejection (exit 4), a server certificate
/// that does not verify (exit 3), an unusable answer (exit 1).
pub fn attempt(
    agent: &ureq::Agent,
    server: &str,
    trust: &ServerTrust,
    req: &Request,
    timeout: Duration,
) -> Result<Attempt> {
    let url = format!("{server}/agent/enroll");
    let result = tls::post(agent, &url, &req.headers(), req.body(), timeout);
    match result {
        Ok(reply) => match reply.status {
            200 | 201 => {
                // Rebuild our key from its DER: `KeyPair` is not Clone, and the request keeps
                // its copy until it is dropped (zeroized).
                let der = Zeroizing::new(req.key.serialize_der());
                let mine = KeyPair::try_from(der.as_slice())
                    .map_err(|e| Error::runtime(format!("failed to reload the node key: {e}")))?;
                Identity::from_success(&reply.body, mine)
                    .map(|id| Attempt::Enrolled(Box::new(id)))
                    .map_err(|why| {
                        Error::runtime(format!(
                            "enrolment answer from {server} is unusable ({} status): {why}",
                            reply.status
                        ))
                    })
            }
            408 | 429 | 500..=599 => Ok(Attempt::Retry {
                why: format!("{} {}", reply.status, reply.error_message()),
                retry_after: reply.retry_after,
            }),
            _ => Err(rejected(&reply, req.is_service_account())),
        },
        Err(CallError::Certificate(m)) => Err(Error::config(format!(
            "cannot enrol with {server}: the server certificate did not verify against {}: {m}; \
             give the backend's CA bundle with --server-ca / LINUXGUARD_SERVER_CA",
            trust.describe
        ))),
        Err(CallError::TooLarge) => Err(Error::runtime(format!(
            "enrolment answer from {server} is larger than 1 MiB; is --server the LinuxGuard backend?"
        ))),
        Err(CallError::Transport(m)) => Ok(Attempt::Retry {
            why: m,
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn params<'a>(c: &'a Credential) -> Params<'a> {
        Params {
            tenant_id: Some("acme"),
            credential: c,
            workload_id: "ab",
            node_name: None,
            pod_uid: Some("uid-1"),
            hostname: "h1",
        }
    }

    #[test]
    fn body_has_the_contract_field_order() {
        let c = Credential::Token(Secret::new("ABCDEFGHIJKLMNOPQRSTUVWX".into()));
        let r = Request::new(&params(&c)).unwrap();
        let s = std::str::from_utf8(r.body()).unwrap();
        let order = [
            "\"tenantId\":\"acme\"",
            "\"enrollCode\":\"ABCDEFGHIJKLMNOPQRSTUVWX\"",
            "\"workloadId\":\"ab\"",
            "\"nodeName\":null",
            "\"podUid\":\"uid-1\"",
            "\"hostname\":\"h1\"",
            "\"agentVersion\":",
            "\"csr\":\"-----BEGIN CERTIFICATE REQUEST-----",
        ];
        let pos: Vec<usize> = order.iter().map(|f| s.find(f).expect(f)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{s}");
        assert!(r.authorization.is_none());
        let k = Credential::ApiKey(Secret::new("lg_0123456789abcdef".into()));
        let r = Request::new(&params(&k)).unwrap();
        assert!(
            std::str::from_utf8(r.body())
                .unwrap()
                .contains("\"enrollCode\":null")
        );
        assert_eq!(
            r.authorization.as_deref().map(String::as_str),
            Some("Bearer lg_0123456789abcdef")
        );
    }

    #[test]
    fn psat_body_rereads_the_token_and_keeps_everything_else() {
        let dir = std::env::temp_dir().join(format!("lg-enroll-psat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "aaaa.bbbb.cccc").unwrap();
        let c = Credential::ServiceAccount(f.clone());
        let mut r = Request::new(&params(&c)).unwrap();
        r.prepare().unwrap();
        let first = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(first.contains("\"enrollCode\":null"), "{first}");
        assert!(
            first.ends_with(
                ",\"attestation\":{\"type\":\"k8s_psat\",\"token\":\"aaaa.bbbb.cccc\"}}"
            ),
            "{first}"
        );
        assert!(r.authorization.is_none());
        r.release();
        assert!(
            r.body().is_empty(),
            "the token is not kept between attempts"
        );
        // The kubelet rotated the token: only the token differs.
        std::fs::write(&f, "dddd.eeee.ffff\n").unwrap();
        r.prepare().unwrap();
        let second = String::from_utf8(r.body().to_vec()).unwrap();
        assert_eq!(
            second.replace("dddd.eeee.ffff", "aaaa.bbbb.cccc"),
            first,
            "same CSR and fields"
        );
        std::fs::remove_file(&f).unwrap();
        assert_eq!(r.prepare().unwrap_err().kind(), Kind::Config);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn issue(key: &KeyPair) -> (String, String) {
        let ca_key = new_key().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf = CertificateParams::new(vec!["agent".into()])
            .unwrap()
            .signed_by(key, &issuer)
            .unwrap();
        (format!("{}{}", leaf.pem(), ca.pem()), ca.pem())
    }

    #[test]
    fn success_body_is_checked_against_our_key() {
        let key = new_key().unwrap();
        let (chain, ca) = issue(&key);
        let body = serde_json::json!({"agentId": "a-1", "certificateChain": chain, "caBundle": ca,
            "heartbeatIntervalSeconds": 30});
        let bytes = serde_json::to_vec(&body).unwrap();
        let id = Identity::from_success(&bytes, key).unwrap();
        assert_eq!(id.agent_id, "a-1");
        assert!(id.is_valid_at(SystemTime::now()));
        let r = id.renew_at(0.0);
        assert!(r > id.not_before && r < id.not_after);
        assert!(!format!("{id:?}").contains("PRIVATE"));
        let other = new_key().unwrap();
        let e = Identity::from_success(&bytes, other).unwrap_err();
        assert!(e.contains("not this agent's key"), "{e}");
    }

    #[test]
    fn malformed_success_bodies_are_errors() {
        for b in [&b"not json"[..], b"{}", br#"{"agentId":"a","certificateChain":"x","caBundle":"y","heartbeatIntervalSeconds":30}"#] {
            assert!(Identity::from_success(b, new_key().unwrap()).is_err());
        }
    }

    #[test]
    fn rejected_lines_have_the_documented_form() {
        let r = Reply {
            status: 409,
            retry_after: None,
            body: br#"{"error":"token already consumed by another workload"}"#.to_vec(),
        };
        let e = rejected(&r, false);
        assert_eq!(e.kind(), Kind::EnrollRejected);
        assert!(e.to_string().starts_with(
            "enrolment failed: 409 conflict: token already consumed by another workload"
        ));
        assert!(e.to_string().contains("rotate the Secret"));
        let r = Reply {
            status: 400,
            retry_after: None,
            body: br#"{"error":"enrollment token expired"}"#.to_vec(),
        };
        assert!(
            rejected(&r, false)
                .to_string()
                .starts_with("enrolment failed: 400 enrollment token expired")
        );
        let r = Reply {
            status: 400,
            retry_after: None,
            body: br#"{"error":"tenantId required for TOTP enrollment"}"#.to_vec(),
        };
        let e = rejected(&r, false).to_string();
        assert!(e.starts_with("enrolment failed: 400 tenantId required for TOTP enrollment"));
    }
}
