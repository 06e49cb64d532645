//! The agent endpoints of the pinned contract: `/agent/enroll` (TOTP token or API key),
//! and the mTLS endpoints `/agent/heartbeat`, `/agent/events`, `/agent/renew`.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::ca::{self, Ca};
use crate::http::{Request, Response};
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

/// Routes a request to `/agent/*`. `peer_agent` is the agent id of a verified client cert.
pub fn handle(state: &Mutex<State>, ca: &Ca, req: &Request, peer_agent: Option<&str>) -> Handled {
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
    let Some(agent_id) = peer_agent else {
        return reply(Response::error(
            401,
            "client certificate required (enrol first, then present the issued identity)",
        ));
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
    csr_pem: &'a str,
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
    opt_string_field(m, "nodeName")?;
    opt_string_field(m, "podUid")?;
    string_field(m, "hostname")?;
    string_field(m, "agentVersion")?;
    let csr_pem = string_field(m, "csr")?;
    Ok(EnrollBody {
        tenant,
        code,
        workload_id,
        csr_pem,
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
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => events.push(v),
            _ => {
                return Response::error(400, &format!("line {} is not a JSON object", i + 1));
            }
        }
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
