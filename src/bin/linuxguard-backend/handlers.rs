//! The agent endpoints of the pinned contract: `/agent/enroll` (TOTP token or API key),
//! and the mTLS endpoints `/agent/heartbeat`, `/agent/events`, `/agent/renew`.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::ca::{self, Ca};
use crate::http::{Request, Response};
use crate::mtls::Peer;
use crate::state::{Enrolment, State, TokenDecision};

/// The outcome of a handler: the response and the agent id it concerns (for the log line).
pub struct Handled {
    pub response: Response,
    pub agent_id: Option<String>,
}

fn reply(response: Response) -> Handled {
    Handled {
        response,
        agent_id: None,
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking handler thread must not take the whole backend down with it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Routes a request to `/agent/*`; `peer` is what the client certificate (if any) says.
pub fn handle(state: &Mutex<State>, ca: &Ca, req: &Request, peer: &Peer) -> Handled {
    let known = [
        "/agent/enroll",
        "/agent/heartbeat",
        "/agent/events",
        "/agent/renew",
    ];
    if !known.contains(&req.path.as_str()) {
        return reply(Response::error(404, "no such endpoint"));
    }
    if req.method != "POST" {
        return reply(Response::error(405, "use POST").with_header("Allow", "POST".into()));
    }
    if let Err(msg) = check_user_agent(req) {
        return reply(Response::error(400, &msg));
    }
    if req.path == "/agent/enroll" {
        return enroll(state, ca, req);
    }
    // mTLS endpoints.
    let agent_id = match peer {
        Peer::Agent(id) => id.as_str(),
        Peer::Anonymous => {
            return reply(Response::error(
                401,
                "client certificate required (enrol first, then present the issued identity)",
            ));
        }
        Peer::Rejected(why) => {
            return reply(Response::error(
                401,
                &format!("client certificate rejected: {why}"),
            ));
        }
    };
    if lock(state).is_revoked(agent_id) {
        return Handled {
            response: Response::error(401, "agent identity revoked"),
            agent_id: Some(agent_id.to_string()),
        };
    }
    let response = match req.path.as_str() {
        "/agent/heartbeat" => heartbeat(state, req, agent_id),
        "/agent/events" => events(state, req, agent_id),
        _ => renew(state, ca, req, agent_id),
    };
    Handled {
        response,
        agent_id: Some(agent_id.to_string()),
    }
}

fn check_user_agent(req: &Request) -> Result<(), String> {
    match req.header("user-agent") {
        Some(ua)
            if ua
                .strip_prefix("linuxguard-agent/")
                .is_some_and(|v| !v.is_empty()) =>
        {
            Ok(())
        }
        _ => Err("User-Agent must be `linuxguard-agent/<version>`".into()),
    }
}

fn check_content_type(req: &Request, want: &str) -> Result<(), String> {
    let ct = req.header("content-type").unwrap_or_default();
    let base = ct.split(';').next().unwrap_or_default().trim();
    if base.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!("Content-Type must be `{want}`"))
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("body must be a JSON object".into()),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

fn is_workload_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A required string field.
fn string_field<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, String> {
    match m.get(k) {
        Some(Value::String(s)) => Ok(s),
        None => Err(format!("`{k}` is required")),
        Some(_) => Err(format!("`{k}` must be a string")),
    }
}

/// An optional string field (absent or null → None).
fn opt_string_field<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{k}` must be a string or null")),
    }
}

/// The validated enrolment request.
struct EnrollBody<'a> {
    tenant: Option<&'a str>,
    code: Option<&'a str>,
    workload_id: &'a str,
    node_name: Option<&'a str>,
    pod_uid: Option<&'a str>,
    csr_pem: &'a str,
    /// v1.1 `attestation: {"type": "k8s_psat", "token": ...}`: the token.
    psat: Option<&'a str>,
}

fn parse_enroll<'a>(req: &Request, m: &'a Map<String, Value>) -> Result<EnrollBody<'a>, String> {
    check_content_type(req, "application/json")?;
    let tenant = opt_string_field(m, "tenantId")?;
    let code = opt_string_field(m, "enrollCode")?;
    let workload_id = string_field(m, "workloadId")?;
    if !is_workload_id(workload_id) {
        return Err("`workloadId` must be 64 lower-case hex characters".into());
    }
    match req.header("idempotency-key") {
        None => return Err("Idempotency-Key header is required (the workload id)".into()),
        Some(k) if k != workload_id => {
            return Err("Idempotency-Key must equal the body's `workloadId`".into());
        }
        Some(_) => {}
    }
    let node_name = opt_string_field(m, "nodeName")?;
    let pod_uid = opt_string_field(m, "podUid")?;
    string_field(m, "hostname")?;
    string_field(m, "agentVersion")?;
    let csr_pem = string_field(m, "csr")?;
    let psat = match m.get("attestation") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => {
            match a.get("type").and_then(Value::as_str) {
                Some("k8s_psat") => {}
                Some(t) => {
                    return Err(format!(
                        "unknown attestation type `{t}` (k8s_psat is known)"
                    ));
                }
                None => return Err("`attestation.type` is required".into()),
            }
            Some(string_field(a, "token").map_err(|e| format!("attestation: {e}"))?)
        }
        Some(_) => return Err("`attestation` must be an object or null".into()),
    };
    Ok(EnrollBody {
        tenant,
        code,
        workload_id,
        node_name,
        pod_uid,
        csr_pem,
        psat,
    })
}

fn success(state: &State, ca: &Ca, e: &Enrolment) -> Value {
    json!({
        "agentId": e.agent_id,
        "certificateChain": e.chain_pem,
        "caBundle": ca.cert_pem,
        "heartbeatIntervalSeconds": state.settings.heartbeat_interval,
    })
}

/// Signs `csr` for `agent_id` and returns the enrolment record (chain = leaf + CA).
fn issue(
    state: &State,
    ca: &Ca,
    csr: &ca::Csr,
    csr_pem: &str,
    agent_id: String,
    workload_id: &str,
) -> Result<Enrolment, String> {
    let leaf = ca.sign_agent(csr, &agent_id, state.settings.cert_lifetime)?;
    Ok(Enrolment {
        agent_id,
        workload_id: workload_id.to_string(),
        csr_pem: csr_pem.to_string(),
        chain_pem: format!("{leaf}{}", ca.cert_pem),
    })
}

fn internal(msg: &str) -> Handled {
    log::error!("{msg}");
    reply(Response::error(500, "internal error"))
}

fn enroll(state: &Mutex<State>, ca: &Ca, req: &Request) -> Handled {
    let m = match json_object(&req.body) {
        Ok(m) => m,
        Err(e) => return reply(Response::error(400, &e)),
    };
    let body = match parse_enroll(req, &m) {
        Ok(b) => b,
        Err(e) => return reply(Response::error(400, &e)),
    };
    let csr = match ca::parse_csr(body.csr_pem) {
        Ok(c) => c,
        Err(e) => return reply(Response::error(400, &e)),
    };
    let bearer = req.header("authorization").map(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
            .map(str::trim)
    });
    if let Some(token) = body.psat {
        if bearer.is_some() {
            return reply(Response::error(
                400,
                "no Authorization header with k8s_psat attestation (the token is in the body)",
            ));
        }
        return enroll_psat(state, ca, &body, &csr, token);
    }
    let mut st = lock(state);
    let now = Instant::now();
    match bearer {
        Some(None) => reply(Response::error(
            400,
            "Authorization must be `Bearer <api-key>`",
        )),
        Some(Some(key)) => {
            if body.code.is_some() {
                return reply(Response::error(
                    400,
                    "`enrollCode` must be null when an API key is used",
                ));
            }
            if !st.api_key_known(key) {
                return reply(Response::error(401, "unknown API key"));
            }
            if let Some(tenant) = body.tenant.filter(|t| !t.is_empty())
                && tenant != st.settings.tenant
            {
                return reply(Response::error(
                    403,
                    "API key does not belong to this tenant",
                ));
            }
            // An API key is a standing credential: after a revocation the same workload gets
            // a new identity.
            let (status, existing) = match st.key_enrolment(key, body.workload_id) {
                Some(e) if !st.is_revoked(&e.agent_id) => (200, Some(e.clone())),
                _ => (201, None),
            };
            let e = match existing {
                Some(e) if e.csr_pem == body.csr_pem => e,
                other => {
                    let id = match other.map(|e| e.agent_id).map_or_else(ca::new_agent_id, Ok) {
                        Ok(id) => id,
                        Err(e) => return internal(&e),
                    };
                    match issue(&st, ca, &csr, body.csr_pem, id, body.workload_id) {
                        Ok(e) => {
                            st.store_key_enrolment(key, e.clone());
                            e
                        }
                        Err(e) => return internal(&e),
                    }
                }
            };
            Handled {
                response: Response::json(status, &success(&st, ca, &e)),
                agent_id: Some(e.agent_id),
            }
        }
        None => {
            let tenant = body.tenant.unwrap_or_default();
            if tenant.is_empty() {
                return reply(Response::error(
                    400,
                    "tenantId required for TOTP enrollment",
                ));
            }
            let Some(code) = body.code.filter(|c| !c.is_empty()) else {
                return reply(Response::error(
                    400,
                    "`enrollCode` is required without an API key",
                ));
            };
            let (status, agent_id) = match st.check_token(code, tenant, body.workload_id, now) {
                TokenDecision::Unknown => {
                    return reply(Response::error(
                        401,
                        "unknown enrollment token for this tenant",
                    ));
                }
                TokenDecision::Expired => {
                    return reply(Response::error(400, "enrollment token expired"));
                }
                TokenDecision::Conflict => {
                    return reply(Response::error(
                        409,
                        "token already consumed by another workload",
                    ));
                }
                TokenDecision::Replay(id) if st.is_revoked(&id) => {
                    return reply(Response::error(
                        403,
                        "the identity enrolled with this token was revoked: enrol with a new token",
                    ));
                }
                TokenDecision::Replay(id) => (200, id),
                TokenDecision::Fresh => match ca::new_agent_id() {
                    Ok(id) => (201, id),
                    Err(e) => return internal(&e),
                },
            };
            let e = match st.token_enrolment(code) {
                Some(e) if status == 200 && e.csr_pem == body.csr_pem => e.clone(),
                _ => match issue(&st, ca, &csr, body.csr_pem, agent_id, body.workload_id) {
                    Ok(e) => {
                        st.consume_token(code, e.clone());
                        e
                    }
                    Err(e) => return internal(&e),
                },
            };
            Handled {
                response: Response::json(status, &success(&st, ca, &e)),
                agent_id: Some(e.agent_id),
            }
        }
    }
}

/// `k8s_psat`: the body's shape, then the token against the tenant's issuer keys, then the
/// pod and node claims against the body. Not single-use: a new enrolment of the same workload id
/// gets a certificate for its new CSR (201), never 409.
fn enroll_psat(
    state: &Mutex<State>,
    ca: &Ca,
    body: &EnrollBody<'_>,
    csr: &ca::Csr,
    token: &str,
) -> Handled {
    if body.code.is_some() {
        return reply(Response::error(
            400,
            "`enrollCode` must be null with k8s_psat attestation",
        ));
    }
    let Some(tenant) = body.tenant.filter(|t| !t.is_empty()) else {
        return reply(Response::error(
            400,
            "tenantId required for k8s_psat attestation",
        ));
    };
    let (Some(node), Some(pod)) = (body.node_name, body.pod_uid) else {
        return reply(Response::error(
            400,
            "nodeName and podUid are required with k8s_psat attestation",
        ));
    };
    let derived: String = {
        use sha2::Digest;
        sha2::Sha256::digest(format!("{node}:{pod}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    if body.workload_id != derived {
        return reply(Response::error(
            400,
            "with k8s_psat attestation workloadId must be hex(sha256(nodeName + \":\" + podUid))",
        ));
    }
    let rejected = |why: &str| {
        reply(Response::error(
            401,
            &format!("service account token rejected: {why}"),
        ))
    };
    let mut st = lock(state);
    let Some(jwks) = st.psat_issuer(tenant) else {
        return rejected(&format!(
            "tenant `{tenant}` trusts no service-account issuer"
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let v = match crate::psat::verify(jwks, token, now) {
        Ok(v) => v,
        Err(why) => return rejected(&why),
    };
    if v.pod_uid != pod {
        return rejected(&format!(
            "the token was issued to pod {}, not to podUid {pod}",
            v.pod_uid
        ));
    }
    if let Some(n) = v.node_name.as_deref().filter(|n| *n != node) {
        return rejected(&format!(
            "the token was issued on node {n}, not on nodeName {node}"
        ));
    }
    // The same request again (a lost response): the same certificate, 200. A new CSR (a
    // restart without a cache, or an expired leaf): a new certificate, same agent id, 201.
    // After a revocation the workload gets a new identity.
    let existing = st
        .psat_enrolment(tenant, body.workload_id)
        .filter(|e| !st.is_revoked(&e.agent_id))
        .cloned();
    let (status, e) = match existing {
        Some(e) if e.csr_pem == body.csr_pem => (200, e),
        other => {
            let id = match other.map(|e| e.agent_id).map_or_else(ca::new_agent_id, Ok) {
                Ok(id) => id,
                Err(e) => return internal(&e),
            };
            match issue(&st, ca, csr, body.csr_pem, id, body.workload_id) {
                Ok(e) => {
                    st.store_psat_enrolment(tenant, e.clone());
                    (201, e)
                }
                Err(e) => return internal(&e),
            }
        }
    };
    log::info!(
        "k8s_psat: {} on node {node} enrolled as {} ({status})",
        v.subject,
        e.agent_id
    );
    Handled {
        response: Response::json(status, &success(&st, ca, &e)),
        agent_id: Some(e.agent_id),
    }
}

fn heartbeat(state: &Mutex<State>, req: &Request, agent_id: &str) -> Response {
    let checked = (|| -> Result<Value, String> {
        check_content_type(req, "application/json")?;
        let m = json_object(&req.body)?;
        if string_field(&m, "agentId")? != agent_id {
            return Err("`agentId` does not match the client certificate".into());
        }
        if !is_workload_id(string_field(&m, "workloadId")?) {
            return Err("`workloadId` must be 64 lower-case hex characters".into());
        }
        string_field(&m, "agentVersion")?;
        if !m.get("uptimeSeconds").is_some_and(Value::is_u64) {
            return Err("`uptimeSeconds` must be a non-negative integer".into());
        }
        if !m.get("stats").is_some_and(Value::is_object) {
            return Err("`stats` must be an object".into());
        }
        Ok(Value::Object(m))
    })();
    match checked {
        Err(e) => Response::error(400, &e),
        Ok(body) => {
            let mut st = lock(state);
            st.stats.heartbeats += 1;
            st.stats.last_heartbeat = Some(body);
            Response::json(
                200,
                &json!({ "heartbeatIntervalSeconds": st.settings.heartbeat_interval }),
            )
        }
    }
}

fn events(state: &Mutex<State>, req: &Request, agent_id: &str) -> Response {
    let max = lock(state).settings.max_batch_bytes;
    if req.body.len() > max {
        return Response::error(413, &format!("batch over {max} bytes: split it"));
    }
    if let Err(e) = check_content_type(req, "application/x-ndjson") {
        return Response::error(400, &e);
    }
    let key = match req.header("idempotency-key") {
        Some(k) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        _ => {
            return Response::error(
                400,
                "Idempotency-Key header is required (1-200 visible ASCII characters)",
            );
        }
    };
    // A key seen before is answered without parsing the batch again.
    {
        let mut st = lock(state);
        if st.batch_seen(agent_id, key) {
            st.stats.duplicate_batches += 1;
            return Response::json(200, &json!({ "accepted": 0, "duplicate": true }));
        }
    }
    let Ok(text) = std::str::from_utf8(&req.body) else {
        return Response::error(400, "batch is not UTF-8");
    };
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // Checked to be one JSON object without building it (the window keeps the text).
        let object = line.trim_start().starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
        if !object {
            return Response::error(400, &format!("line {} is not a JSON object", i + 1));
        }
        events.push(Box::from(line));
    }
    let n = events.len();
    if lock(state).accept_batch(agent_id, key, events) {
        Response::json(202, &json!({ "accepted": n }))
    } else {
        Response::json(200, &json!({ "accepted": 0, "duplicate": true }))
    }
}

fn renew(state: &Mutex<State>, ca: &Ca, req: &Request, agent_id: &str) -> Response {
    let csr_pem = match check_content_type(req, "application/json")
        .and_then(|()| json_object(&req.body))
        .and_then(|m| string_field(&m, "csr").map(str::to_string))
    {
        Ok(c) => c,
        Err(e) => return Response::error(400, &e),
    };
    let csr = match ca::parse_csr(&csr_pem) {
        Ok(c) => c,
        Err(e) => return Response::error(400, &e),
    };
    let mut st = lock(state);
    match ca.sign_agent(&csr, agent_id, st.settings.cert_lifetime) {
        Ok(leaf) => {
            st.stats.renewals += 1;
            Response::json(
                200,
                &json!({
                    "agentId": agent_id,
                    "certificateChain": format!("{leaf}{}", ca.cert_pem),
                    "caBundle": ca.cert_pem,
                    "heartbeatIntervalSeconds": st.settings.heartbeat_interval,
                }),
            )
        }
        Err(e) => {
            log::error!("{e}");
            Response::error(500, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;
    use std::time::Duration;

    const W1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWX";

    fn setup(tag: &str) -> (Mutex<State>, Ca, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("lg-h-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::load_or_create(&dir).expect("ca");
        let mut st = State::new(Settings {
            tenant: "demo".into(),
            cert_lifetime: Duration::from_secs(60),
            heartbeat_interval: 30,
            token_ttl: Duration::from_secs(60),
            max_batch_bytes: 100,
        });
        st.add_token(TOKEN, false, Instant::now());
        (Mutex::new(st), ca, dir)
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn request(path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    const OK_HEADERS: &[(&str, &str)] = &[
        ("content-type", "application/json"),
        ("user-agent", "linuxguard-agent/0.1.0"),
        ("idempotency-key", W1),
    ];

    fn error_of(h: &Handled) -> String {
        let v: Value = serde_json::from_slice(&h.response.body).expect("json body");
        v["error"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn every_malformed_enrolment_is_a_400_with_a_message() {
        let (st, ca, dir) = setup("bad");
        let csr = csr();
        let good = json!({"tenantId": "demo", "enrollCode": TOKEN, "workloadId": W1,
            "nodeName": null, "podUid": null, "hostname": "h", "agentVersion": "0.1.0", "csr": csr});
        let mutations: Vec<(&str, Value)> = vec![
            ("tenantId", json!(7)),
            ("enrollCode", json!(["x"])),
            ("workloadId", json!("A".repeat(64))),
            ("workloadId", json!("abc")),
            ("workloadId", Value::Null),
            ("nodeName", json!(1)),
            ("podUid", json!({})),
            ("hostname", Value::Null),
            ("agentVersion", json!(1.5)),
            ("csr", json!(12)),
            (
                "csr",
                json!("-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----"),
            ),
            ("enrollCode", json!("")),
        ];
        for (field, value) in mutations {
            let mut body = good.clone();
            body[field] = value;
            let h = handle(
                &st,
                &ca,
                &request("/agent/enroll", OK_HEADERS, &body.to_string()),
                &Peer::Anonymous,
            );
            assert_eq!(h.response.status, 400, "{field}: {}", error_of(&h));
            assert!(!error_of(&h).is_empty());
        }
        for body in ["", "null", "[]", "{", "\u{0}", "{\"a\":1}"] {
            let h = handle(
                &st,
                &ca,
                &request("/agent/enroll", OK_HEADERS, body),
                &Peer::Anonymous,
            );
            assert_eq!(h.response.status, 400, "{body:?}");
        }
        let wrong_headers: [&[(&str, &str)]; 4] = [
            &[
                ("user-agent", "linuxguard-agent/0.1.0"),
                ("idempotency-key", W1),
            ],
            &[
                ("content-type", "text/plain"),
                ("user-agent", "linuxguard-agent/0.1.0"),
                ("idempotency-key", W1),
            ],
            &[
                ("content-type", "application/json"),
                ("user-agent", "curl/8"),
                ("idempotency-key", W1),
            ],
            &[
                ("content-type", "application/json"),
                ("user-agent", "linuxguard-agent/0.1.0"),
            ],
        ];
        for headers in wrong_headers {
            let h = handle(
                &st,
                &ca,
                &request("/agent/enroll", headers, &good.to_string()),
                &Peer::Anonymous,
            );
            assert_eq!(h.response.status, 400, "{headers:?}");
        }
        // The token is still unused: the well-formed request enrols.
        let h = handle(
            &st,
            &ca,
            &request("/agent/enroll", OK_HEADERS, &good.to_string()),
            &Peer::Anonymous,
        );
        assert_eq!(h.response.status, 201, "{}", error_of(&h));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn routing_and_mtls_gate() {
        let (st, ca, dir) = setup("route");
        let ua = [("user-agent", "linuxguard-agent/0.1.0")];
        assert_eq!(
            handle(&st, &ca, &request("/nope", &ua, ""), &Peer::Anonymous)
                .response
                .status,
            404
        );
        let mut get = request("/agent/heartbeat", &ua, "");
        get.method = "GET".into();
        assert_eq!(
            handle(&st, &ca, &get, &Peer::Anonymous).response.status,
            405
        );
        for path in ["/agent/heartbeat", "/agent/events", "/agent/renew"] {
            assert_eq!(
                handle(&st, &ca, &request(path, &ua, "{}"), &Peer::Anonymous)
                    .response
                    .status,
                401
            );
        }
        let hb = |body: Value| {
            let h = handle(
                &st,
                &ca,
                &request(
                    "/agent/heartbeat",
                    &[
                        ("user-agent", "linuxguard-agent/0.1.0"),
                        ("content-type", "application/json"),
                    ],
                    &body.to_string(),
                ),
                &Peer::Agent("agent-1".into()),
            );
            h.response.status
        };
        let ok = json!({"agentId": "agent-1", "workloadId": W1, "agentVersion": "0.1.0",
            "uptimeSeconds": 1, "stats": {}});
        assert_eq!(hb(ok.clone()), 200);
        let mut other = ok.clone();
        other["agentId"] = json!("agent-2");
        assert_eq!(hb(other), 400);
        let mut neg = ok;
        neg["uptimeSeconds"] = json!(-1);
        assert_eq!(hb(neg), 400);
        let rejected = handle(
            &st,
            &ca,
            &request("/agent/heartbeat", &ua, "{}"),
            &Peer::Rejected("certificate expired".into()),
        );
        assert_eq!(rejected.response.status, 401);
        assert_eq!(
            error_of(&rejected),
            "client certificate rejected: certificate expired"
        );
        lock(&st).revoke(Some("agent-1"));
        assert_eq!(hb(json!({})), 401);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn events_validation() {
        let (st, ca, dir) = setup("events");
        let post = |key: Option<&str>, ct: &str, body: &str| {
            let mut headers = vec![
                ("user-agent", "linuxguard-agent/0.1.0"),
                ("content-type", ct),
            ];
            if let Some(k) = key {
                headers.push(("idempotency-key", k));
            }
            handle(
                &st,
                &ca,
                &request("/agent/events", &headers, body),
                &Peer::Agent("agent-1".into()),
            )
            .response
            .status
        };
        let nd = "application/x-ndjson";
        assert_eq!(post(None, nd, "{}\n"), 400);
        assert_eq!(post(Some("k k"), nd, "{}\n"), 400);
        assert_eq!(post(Some("k"), "application/json", "{}\n"), 400);
        assert_eq!(post(Some("k"), nd, "[1]\n"), 400);
        assert_eq!(post(Some("k"), nd, &"{}\n".repeat(40)), 413);
        assert_eq!(post(Some("k"), nd, "{}\n\n{\"a\":1}"), 202);
        assert_eq!(post(Some("k"), nd, "{}\n"), 200);
        assert_eq!(lock(&st).stats.events_received, 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
