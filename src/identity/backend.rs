//! The mTLS client for the agent endpoints: heartbeat, renew and event batches, each answer
//! classified as the pinned contract says (accepted / retry / revoked / rejected).

use std::time::Duration;

use serde::Serialize;

use crate::counters::HeartbeatStats;
use crate::error::Result;
use crate::identity::enroll::{self, Identity};
use crate::identity::tls::{self, CallError, ServerTrust};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Heartbeat<'a> {
    agent_id: &'a str,
    workload_id: &'a str,
    agent_version: &'a str,
    uptime_seconds: u64,
    stats: &'a HeartbeatStats,
}

/// Why a call did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// 401/403: the identity was revoked (or is no longer accepted).
    Revoked(String),
    /// 408/429/5xx or a transport failure: try again later (after `retry_after` if given).
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    /// Any other answer: retrying the same request will not help.
    Rejected(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Revoked(m) | Failure::Rejected(m) => f.write_str(m),
            Failure::Retry { why, .. } => f.write_str(why),
        }
    }
}

/// The answer to one event batch.
#[allow(dead_code)] // used by the uploader (issue 6)
#[derive(Debug)]
pub enum Events {
    /// 200/202: accepted (200 also for a batch key seen before).
    Accepted,
    /// 413: the batch is too large; split it and send the halves under new keys.
    Split,
    Failed(Failure),
}

/// An mTLS session with the backend for one identity (rebuilt after renewal). Cheap to clone
/// (the connection pool is shared), so a call can run on a helper thread.
#[derive(Clone)]
pub struct Backend {
    agent: ureq::Agent,
    base: String,
}

impl Backend {
    pub fn new(base: &str, trust: &ServerTrust, id: &Identity) -> Result<Backend> {
        let client = tls::client_cert(&id.chain_pem, &id.key_pem())?;
        Ok(Backend {
            agent: tls::agent(trust, Some(client)),
            base: base.to_string(),
        })
    }

    /// One POST, given at most `timeout` in all (capped at `tls::CALL_TIMEOUT`).
    fn call(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::result::Result<tls::Reply, Failure> {
        let url = format!("{}{path}", self.base);
        // Every failure to get an answer is retried with backoff, the batch kept. That includes
        // a server certificate that does not verify: for an enrolled agent it is a transport
        // failure that ends (the backend's certificate expired or was rotated, this node's
        // clock is not set yet), and dropping batches would throw away the whole queue at
        // handshake speed. Only enrolment, with a user watching, treats it as fatal.
        tls::post(&self.agent, &url, headers, body, timeout).map_err(|e| Failure::Retry {
            why: match e {
                CallError::Transport(why) => why,
                e => e.to_string(),
            },
            retry_after: None,
        })
    }

    /// Sends a heartbeat within `timeout`; returns the interval the server asks for, if any.
    pub fn heartbeat(
        &self,
        agent_id: &str,
        workload_id: &str,
        uptime: Duration,
        stats: &HeartbeatStats,
        timeout: Duration,
    ) -> std::result::Result<Option<Duration>, Failure> {
        let body = serde_json::to_vec(&Heartbeat {
            agent_id,
            workload_id,
            agent_version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: uptime.as_secs(),
            stats,
        })
        .map_err(|e| Failure::Rejected(format!("failed to encode the heartbeat: {e}")))?;
        let r = self.call(
            "/agent/heartbeat",
            &[("Content-Type", "application/json")],
            &body,
            timeout,
        )?;
        match r.status {
            200..=299 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                Ok(v.get("heartbeatIntervalSeconds")
                    .and_then(|n| n.as_u64())
                    .filter(|n| (enroll::MIN_HEARTBEAT..=enroll::MAX_HEARTBEAT).contains(n))
                    .map(Duration::from_secs))
            }
            s => Err(classify(s, &r)),
        }
    }

    /// Asks for a new certificate for `key` (a fresh node key); the answer is checked like
    /// enrolment's.
    pub fn renew(
        &self,
        key: rcgen::KeyPair,
        workload_id: &str,
    ) -> std::result::Result<Identity, Failure> {
        let csr =
            enroll::csr_pem(&key, workload_id).map_err(|e| Failure::Rejected(e.to_string()))?;
        let body = serde_json::to_vec(&serde_json::json!({ "csr": csr }))
            .map_err(|e| Failure::Rejected(format!("failed to encode the renewal: {e}")))?;
        let r = self.call(
            "/agent/renew",
            &[("Content-Type", "application/json")],
            &body,
            tls::CALL_TIMEOUT,
        )?;
        match r.status {
            200 | 201 => Identity::from_success(&r.body, key)
                .map_err(|why| Failure::Rejected(format!("renewal answer is unusable: {why}"))),
            s => Err(classify(s, &r)),
        }
    }

    #[allow(dead_code)] // used by the uploader (issue 6)
    /// Sends one batch of NDJSON events under `batch_key` (stable across retries of the batch)
    /// within `timeout`.
    pub fn post_events(&self, batch_key: &str, ndjson: &[u8], timeout: Duration) -> Events {
        let r = match self.call(
            "/agent/events",
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Idempotency-Key", batch_key),
            ],
            ndjson,
            timeout,
        ) {
            Ok(r) => r,
            Err(f) => return Events::Failed(f),
        };
        match r.status {
            200 | 202 => Events::Accepted,
            413 => Events::Split,
            s => Events::Failed(classify(s, &r)),
        }
    }
}

fn classify(status: u16, r: &tls::Reply) -> Failure {
    let msg = format!("{status} {}", r.error_message());
    match status {
        401 | 403 => Failure::Revoked(msg),
        408 | 429 | 500..=599 => Failure::Retry {
            why: msg,
            retry_after: r.retry_after,
        },
        _ => Failure::Rejected(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        let r = |s| tls::Reply {
            status: s,
            retry_after: Some(Duration::from_secs(2)),
            body: br#"{"error":"x"}"#.to_vec(),
        };
        assert!(matches!(classify(401, &r(401)), Failure::Revoked(_)));
        assert!(matches!(classify(403, &r(403)), Failure::Revoked(_)));
        assert!(matches!(
            classify(503, &r(503)),
            Failure::Retry {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(classify(429, &r(429)), Failure::Retry { .. }));
        assert!(matches!(classify(400, &r(400)), Failure::Rejected(_)));
    }

    #[test]
    fn heartbeat_body_shape() {
        let s = HeartbeatStats::default();
        let v = serde_json::to_value(Heartbeat {
            agent_id: "a",
            workload_id: "w",
            agent_version: "0",
            uptime_seconds: 3,
            stats: &s,
        })
        .unwrap();
        assert_eq!(v["stats"]["eventsDropped"]["upload"], 0);
        assert_eq!(v["uptimeSeconds"], 3);
        assert!(v["stats"]["kubeletMisses"].is_u64());
    }
}
