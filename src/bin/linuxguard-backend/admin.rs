//! The loopback-only admin API for tests and demos: faults, revocation, tokens, the request
//! record, counters and received events.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

use crate::http::{Request, Response};
use crate::state::State;

fn body_json(req: &Request) -> Result<Value, Response> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, &format!("body is not valid JSON: {e}")))
}

/// Handles `/admin/*`. Only loopback peers are served.
pub fn handle(state: &Mutex<State>, req: &Request, peer: IpAddr) -> Response {
    if !peer.is_loopback() {
        return Response::error(403, "the admin API is served to loopback clients only");
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/admin/requests") => Response::json(200, &st.requests_json()),
        ("GET", "/admin/stats") => Response::json(200, &st.stats_json()),
        ("GET", "/admin/events") => Response::json(200, &st.events_json()),
        ("POST", "/admin/faults") => match body_json(req) {
            Err(r) => r,
            Ok(v) => match st.add_fault(&v, now) {
                Ok(()) => Response::json(200, &json!({ "ok": true })),
                Err(e) => Response::error(400, &e),
            },
        },
        ("DELETE", "/admin/faults") => {
            st.clear_faults();
            Response::json(200, &json!({ "ok": true }))
        }
        ("POST", "/admin/revoke") => match body_json(req) {
            Err(r) => r,
            Ok(v) => match v.get("agentId") {
                None | Some(Value::Null) => {
                    let n = st.revoke(None);
                    Response::json(200, &json!({ "ok": true, "revoked": n }))
                }
                Some(Value::String(id)) => {
                    let n = st.revoke(Some(id));
                    Response::json(200, &json!({ "ok": true, "revoked": n }))
                }
                Some(_) => Response::error(400, "`agentId` must be a string"),
            },
        },
        ("POST", "/admin/tokens") => match body_json(req) {
            Err(r) => r,
            Ok(v) => {
                let token = v.get("token").and_then(Value::as_str).unwrap_or_default();
                let expired = v.get("expired").and_then(Value::as_bool).unwrap_or(false);
                if token.trim().is_empty() {
                    Response::error(400, "`token` (a non-empty string) is required")
                } else {
                    st.add_token(token, expired, now);
                    Response::json(200, &json!({ "ok": true }))
                }
            }
        },
        (
            _,
            "/admin/requests" | "/admin/stats" | "/admin/events" | "/admin/faults"
            | "/admin/revoke" | "/admin/tokens",
        ) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "no such admin endpoint"),
    }
}
