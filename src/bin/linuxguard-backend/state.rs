//! The backend's in-memory state: tokens and API keys, enrolments, revocations, event batches,
//! injected faults, the request record and counters. One mutex; handlers hold it briefly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tenant: String,
    pub cert_lifetime: Duration,
    pub heartbeat_interval: u64,
    pub token_ttl: Duration,
    pub max_batch_bytes: usize,
}

/// Upper-case, dashes removed: the form tokens are stored and compared in.
pub fn normalize_token(t: &str) -> String {
    t.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// One issued identity (per credential + workload id).
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub agent_id: String,
    pub workload_id: String,
    /// The CSR last signed for this enrolment and the chain issued for it.
    pub csr_pem: String,
    pub chain_pem: String,
}

#[derive(Debug)]
struct Token {
    expires_at: Instant,
    /// The enrolment that consumed this token.
    consumed: Option<Enrolment>,
}

/// What the token rules say about an enrolment attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenDecision {
    /// Unknown token or the wrong tenant.
    Unknown,
    Expired,
    /// Consumed by another workload id.
    Conflict,
    /// Same token and workload id as an earlier success: replay this enrolment.
    Replay(String),
    /// First use.
    Fresh,
}

/// How a fault answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Read the request, hold the connection unanswered this long, then close it.
    Stall(Duration),
    /// Process the request for real, then close without a response.
    DropResponse,
}

#[derive(Debug, Clone)]
struct Fault {
    path: String,
    kind: FaultKind,
    remaining: Option<u64>,
    until: Option<Instant>,
}

/// Parses a `POST /admin/faults` body.
pub fn parse_fault(
    v: &Value,
    now: Instant,
) -> Result<(String, FaultKind, Option<u64>, Option<Instant>), String> {
    let obj = v.as_object().ok_or("fault must be a JSON object")?;
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| p.starts_with('/'))
        .ok_or("fault needs \"path\": a string starting with `/`")?
        .to_string();
    let uint = |k: &str| -> Result<Option<u64>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("fault \"{k}\" must be a non-negative integer")),
        }
    };
    let count = uint("count")?;
    let seconds = uint("seconds")?;
    if count.is_some() && seconds.is_some() {
        return Err("give either \"count\" or \"seconds\", not both".into());
    }
    let kind = if let Some(s) = uint("stallSeconds")? {
        FaultKind::Stall(Duration::from_secs(s))
    } else if obj.get("dropResponse").and_then(Value::as_bool) == Some(true) {
        FaultKind::DropResponse
    } else {
        let status = uint("status")?
            .ok_or("fault needs \"status\", \"stallSeconds\" or \"dropResponse\": true")?;
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (400..=599).contains(s))
            .ok_or("fault \"status\" must be 400..=599")?;
        FaultKind::Status {
            status,
            retry_after: uint("retryAfter")?,
        }
    };
    let until = seconds.map(|s| now + Duration::from_secs(s));
    let remaining = if until.is_some() {
        None
    } else {
        Some(count.unwrap_or(1))
    };
    Ok((path, kind, remaining, until))
}

/// One recorded request (for `GET /admin/requests`).
#[derive(Debug, Clone)]
pub struct Record {
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub agent_id: Option<String>,
    pub fault: Option<&'static str>,
}

/// Most requests kept in the record (oldest dropped first).
const MAX_RECORDS: usize = 10_000;
/// Most request-body bytes kept per record.
const MAX_RECORD_BODY: usize = 1024 * 1024;
/// Most request-body bytes kept over all records (oldest records dropped first).
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Most events kept for `GET /admin/events` (oldest dropped first).
const MAX_EVENTS: usize = 20_000;

#[derive(Debug, Default)]
pub struct Stats {
    pub enroll_calls: u64,
    pub heartbeats: u64,
    pub last_heartbeat: Option<Value>,
    pub duplicate_batches: u64,
    pub events_received: u64,
    pub renewals: u64,
}

/// Everything mutable.
#[derive(Debug)]
pub struct State {
    pub settings: Settings,
    tokens: HashMap<String, Token>,
    api_keys: HashSet<String>,
    /// API-key enrolments by (key, workload id).
    key_enrolments: HashMap<(String, String), Enrolment>,
    /// The service-account issuer keys each tenant trusts (`k8s_psat`), by tenant.
    psat_issuers: HashMap<String, crate::psat::Jwks>,
    /// `k8s_psat` enrolments by (tenant, workload id).
    psat_enrolments: HashMap<(String, String), Enrolment>,
    /// Every agent id issued.
    pub agents: HashSet<String>,
    revoked: HashSet<String>,
    /// (agent id, Idempotency-Key) of every accepted batch.
    batches: HashSet<(String, String)>,
    /// Each event's JSON text as received (parsed only when `/admin/events` asks).
    events: VecDeque<Box<str>>,
    faults: Vec<Fault>,
    records: VecDeque<(u64, Record)>,
    record_bytes: usize,
    next_seq: u64,
    pub stats: Stats,
}

impl State {
    pub fn new(settings: Settings) -> State {
        State {
            settings,
            tokens: HashMap::new(),
            api_keys: HashSet::new(),
            key_enrolments: HashMap::new(),
            psat_issuers: HashMap::new(),
            psat_enrolments: HashMap::new(),
            agents: HashSet::new(),
            revoked: HashSet::new(),
            batches: HashSet::new(),
            events: VecDeque::new(),
            faults: Vec::new(),
            records: VecDeque::new(),
            record_bytes: 0,
            next_seq: 1,
            stats: Stats::default(),
        }
    }

    /// Adds a token (normalized); `expired` tokens are expired from the start.
    pub fn add_token(&mut self, token: &str, expired: bool, now: Instant) {
        let expires_at = if expired {
            now
        } else {
            now + self.settings.token_ttl
        };
        self.tokens.insert(
            normalize_token(token),
            Token {
                expires_at,
                consumed: None,
            },
        );
    }

    pub fn add_api_key(&mut self, key: &str) {
        self.api_keys.insert(key.to_string());
    }

    pub fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || !self.api_keys.is_empty() || !self.psat_issuers.is_empty()
    }

    /// The token rules. A replay by the same workload id is honoured even after expiry (the
    /// enrolment already happened; only its response was lost).
    pub fn check_token(
        &self,
        token: &str,
        tenant: &str,
        workload_id: &str,
        now: Instant,
    ) -> TokenDecision {
        if tenant != self.settings.tenant {
            return TokenDecision::Unknown;
        }
        let Some(t) = self.tokens.get(&normalize_token(token)) else {
            return TokenDecision::Unknown;
        };
        match &t.consumed {
            Some(e) if e.workload_id == workload_id => TokenDecision::Replay(e.agent_id.clone()),
            Some(_) => TokenDecision::Conflict,
            None if now >= t.expires_at => TokenDecision::Expired,
            None => TokenDecision::Fresh,
        }
    }

    /// The enrolment that consumed `token`, if any.
    pub fn token_enrolment(&self, token: &str) -> Option<&Enrolment> {
        self.tokens.get(&normalize_token(token))?.consumed.as_ref()
    }

    /// Binds `token` to this enrolment (first use, or a replay with a new CSR).
    pub fn consume_token(&mut self, token: &str, e: Enrolment) {
        self.agents.insert(e.agent_id.clone());
        if let Some(t) = self.tokens.get_mut(&normalize_token(token)) {
            t.consumed = Some(e);
        }
    }

    pub fn api_key_known(&self, key: &str) -> bool {
        self.api_keys.contains(key)
    }

    pub fn key_enrolment(&self, key: &str, workload_id: &str) -> Option<&Enrolment> {
        self.key_enrolments
            .get(&(key.to_string(), workload_id.to_string()))
    }

    pub fn store_key_enrolment(&mut self, key: &str, e: Enrolment) {
        self.agents.insert(e.agent_id.clone());
        self.key_enrolments
            .insert((key.to_string(), e.workload_id.clone()), e);
    }

    /// Trusts `jwks` for `k8s_psat` enrolments into `tenant`.
    pub fn add_psat_issuer(&mut self, tenant: &str, jwks: crate::psat::Jwks) {
        self.psat_issuers.insert(tenant.to_string(), jwks);
    }

    pub fn psat_issuer(&self, tenant: &str) -> Option<&crate::psat::Jwks> {
        self.psat_issuers.get(tenant)
    }

    pub fn psat_enrolment(&self, tenant: &str, workload_id: &str) -> Option<&Enrolment> {
        self.psat_enrolments
            .get(&(tenant.to_string(), workload_id.to_string()))
    }

    pub fn store_psat_enrolment(&mut self, tenant: &str, e: Enrolment) {
        self.agents.insert(e.agent_id.clone());
        self.psat_enrolments
            .insert((tenant.to_string(), e.workload_id.clone()), e);
    }

    /// Revokes one agent, or every known agent when `None`. Returns how many.
    pub fn revoke(&mut self, agent_id: Option<&str>) -> usize {
        match agent_id {
            Some(id) => usize::from(self.revoked.insert(id.to_string())),
            None => {
                let before = self.revoked.len();
                self.revoked.extend(self.agents.iter().cloned());
                self.revoked.len() - before
            }
        }
    }

    pub fn is_revoked(&self, agent_id: &str) -> bool {
        self.revoked.contains(agent_id)
    }

    /// Whether this agent already sent a batch under this key.
    pub fn batch_seen(&self, agent_id: &str, key: &str) -> bool {
        self.batches
            .contains(&(agent_id.to_string(), key.to_string()))
    }

    /// Records a batch; false when this agent already sent this key (a duplicate).
    pub fn accept_batch(&mut self, agent_id: &str, key: &str, events: Vec<Box<str>>) -> bool {
        if !self.batches.insert((agent_id.to_string(), key.to_string())) {
            self.stats.duplicate_batches += 1;
            return false;
        }
        self.stats.events_received += events.len() as u64;
        for e in events {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
        true
    }

    pub fn add_fault(&mut self, v: &Value, now: Instant) -> Result<(), String> {
        let (path, kind, remaining, until) = parse_fault(v, now)?;
        self.faults.push(Fault {
            path,
            kind,
            remaining,
            until,
        });
        Ok(())
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The fault that applies to this request to `path`, if any (oldest first), used up.
    pub fn take_fault(&mut self, path: &str, now: Instant) -> Option<FaultKind> {
        self.faults
            .retain(|f| f.until.is_none_or(|u| now < u) && f.remaining != Some(0));
        let i = self.faults.iter().position(|f| f.path == path)?;
        let f = &mut self.faults[i];
        let kind = f.kind.clone();
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.faults.remove(i);
            }
        }
        Some(kind)
    }

    pub fn record(&mut self, mut r: Record) {
        r.body.truncate(MAX_RECORD_BODY);
        self.record_bytes += r.body.len();
        self.records.push_back((self.next_seq, r));
        while self.records.len() > MAX_RECORDS || self.record_bytes > MAX_RECORD_BYTES {
            match self.records.pop_front() {
                Some((_, old)) => self.record_bytes -= old.body.len(),
                None => break,
            }
        }
        self.next_seq += 1;
    }

    pub fn requests_json(&self) -> Value {
        Value::Array(
            self.records
                .iter()
                .map(|(seq, r)| {
                    let headers: serde_json::Map<String, Value> = r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect();
                    json!({
                        "seq": seq,
                        "method": r.method,
                        "path": r.path,
                        "status": r.status,
                        "headers": headers,
                        "body": String::from_utf8_lossy(&r.body),
                        "agentId": r.agent_id,
                        "fault": r.fault,
                    })
                })
                .collect(),
        )
    }

    pub fn stats_json(&self) -> Value {
        let s = &self.stats;
        json!({
            "enrollCalls": s.enroll_calls,
            "enrolled": self.agents.len(),
            "heartbeats": s.heartbeats,
            "lastHeartbeat": s.last_heartbeat,
            "batches": self.batches.len(),
            "duplicateBatches": s.duplicate_batches,
            "eventsReceived": s.events_received,
            "renewals": s.renewals,
            "revoked": self.revoked.len(),
        })
    }

    pub fn events_json(&self) -> Value {
        Value::Array(
            self.events
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const W2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn state() -> State {
        State::new(Settings {
            tenant: "demo".into(),
            cert_lifetime: Duration::from_secs(60),
            heartbeat_interval: 30,
            token_ttl: Duration::from_secs(100),
            max_batch_bytes: 1024,
        })
    }

    fn enrolment(w: &str) -> Enrolment {
        Enrolment {
            agent_id: format!("agent-{}", &w[..4]),
            workload_id: w.into(),
            csr_pem: String::new(),
            chain_pem: String::new(),
        }
    }

    #[test]
    fn token_is_single_use_and_bound_to_the_first_workload() {
        let mut s = state();
        let now = Instant::now();
        s.add_token("abcd-efgh-ijkl-mnop-qrst-uvwx", false, now);
        let t = "ABCDEFGHIJKLMNOPQRSTUVWX";
        assert_eq!(s.check_token(t, "demo", W1, now), TokenDecision::Fresh);
        assert_eq!(s.check_token(t, "other", W1, now), TokenDecision::Unknown);
        assert_eq!(
            s.check_token("ZZZZ", "demo", W1, now),
            TokenDecision::Unknown
        );
        s.consume_token(t, enrolment(W1));
        assert_eq!(
            s.check_token("abcd-efghijklmnopqrstuvwx", "demo", W1, now),
            TokenDecision::Replay("agent-1111".into())
        );
        assert_eq!(s.check_token(t, "demo", W2, now), TokenDecision::Conflict);
        // After the TTL: a replay still works, a new workload still conflicts.
        let later = now + Duration::from_secs(200);
        assert_eq!(
            s.check_token(t, "demo", W1, later),
            TokenDecision::Replay("agent-1111".into())
        );
        assert_eq!(s.check_token(t, "demo", W2, later), TokenDecision::Conflict);
    }

    #[test]
    fn expiry() {
        let mut s = state();
        let now = Instant::now();
        s.add_token("AAAAAAAAAAAAAAAAAAAAAAAA", true, now);
        s.add_token("BBBBBBBBBBBBBBBBBBBBBBBB", false, now);
        assert_eq!(
            s.check_token("AAAAAAAAAAAAAAAAAAAAAAAA", "demo", W1, now),
            TokenDecision::Expired
        );
        assert_eq!(
            s.check_token(
                "BBBBBBBBBBBBBBBBBBBBBBBB",
                "demo",
                W1,
                now + Duration::from_secs(99)
            ),
            TokenDecision::Fresh
        );
        assert_eq!(
            s.check_token(
                "BBBBBBBBBBBBBBBBBBBBBBBB",
                "demo",
                W1,
                now + Duration::from_secs(100)
            ),
            TokenDecision::Expired
        );
    }

    #[test]
    fn fault_queue_counts_and_durations() {
        let mut s = state();
        let now = Instant::now();
        s.add_fault(
            &json!({"path": "/agent/enroll", "status": 503, "count": 2, "retryAfter": 1}),
            now,
        )
        .expect("fault");
        s.add_fault(&json!({"path": "/agent/enroll", "dropResponse": true}), now)
            .expect("fault");
        let f503 = FaultKind::Status {
            status: 503,
            retry_after: Some(1),
        };
        assert_eq!(s.take_fault("/agent/heartbeat", now), None);
        assert_eq!(s.take_fault("/agent/enroll", now), Some(f503.clone()));
        assert_eq!(s.take_fault("/agent/enroll", now), Some(f503));
        assert_eq!(
            s.take_fault("/agent/enroll", now),
            Some(FaultKind::DropResponse)
        );
        assert_eq!(s.take_fault("/agent/enroll", now), None);

        s.add_fault(
            &json!({"path": "/agent/events", "status": 429, "seconds": 5}),
            now,
        )
        .expect("fault");
        for _ in 0..10 {
            assert!(
                s.take_fault("/agent/events", now + Duration::from_secs(4))
                    .is_some()
            );
        }
        assert_eq!(
            s.take_fault("/agent/events", now + Duration::from_secs(5)),
            None
        );

        s.add_fault(&json!({"path": "/x", "stallSeconds": 7}), now)
            .expect("fault");
        assert_eq!(
            s.take_fault("/x", now),
            Some(FaultKind::Stall(Duration::from_secs(7)))
        );
        s.add_fault(&json!({"path": "/x", "status": 503, "count": 9}), now)
            .expect("fault");
        s.clear_faults();
        assert_eq!(s.take_fault("/x", now), None);
    }

    #[test]
    fn bad_faults_are_rejected() {
        let now = Instant::now();
        for bad in [
            json!([]),
            json!({"status": 503}),
            json!({"path": "x", "status": 503}),
            json!({"path": "/x"}),
            json!({"path": "/x", "status": 200}),
            json!({"path": "/x", "status": 70000}),
            json!({"path": "/x", "status": "503"}),
            json!({"path": "/x", "status": 503, "count": -1}),
            json!({"path": "/x", "status": 503, "count": 1, "seconds": 1}),
        ] {
            assert!(parse_fault(&bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_are_deduplicated_per_agent_and_key() {
        let mut s = state();
        let ev = || Box::<str>::from("{}");
        assert!(s.accept_batch("a", "k1", vec![ev(), ev()]));
        assert!(!s.accept_batch("a", "k1", vec![ev(), ev()]));
        assert!(s.accept_batch("b", "k1", vec![ev()]));
        assert_eq!(s.stats.events_received, 3);
        assert_eq!(s.stats.duplicate_batches, 1);
        assert_eq!(s.stats_json()["batches"], 2);
    }

    #[test]
    fn record_is_bounded_by_count_and_bytes() {
        let mut s = state();
        let rec = |n: usize| Record {
            method: "POST".into(),
            path: "/agent/events".into(),
            status: Some(202),
            headers: vec![],
            body: vec![b'x'; n],
            agent_id: None,
            fault: None,
        };
        for _ in 0..100 {
            s.record(rec(MAX_RECORD_BODY + 5));
        }
        assert_eq!(s.records.len(), MAX_RECORD_BYTES / MAX_RECORD_BODY);
        assert!(s.record_bytes <= MAX_RECORD_BYTES);
        for _ in 0..(MAX_RECORDS + 5) {
            s.record(rec(0));
        }
        assert_eq!(s.records.len(), MAX_RECORDS);
        // Sequence numbers keep counting.
        assert_eq!(
            s.records.back().map(|r| r.0),
            Some(100 + MAX_RECORDS as u64 + 5)
        );
    }

    #[test]
    fn revoke_one_or_all() {
        let mut s = state();
        s.consume_token("X", enrolment(W1));
        s.store_key_enrolment("k", enrolment(W2));
        assert_eq!(s.revoke(Some("agent-1111")), 1);
        assert!(s.is_revoked("agent-1111") && !s.is_revoked("agent-2222"));
        assert_eq!(s.revoke(None), 1);
        assert!(s.is_revoked("agent-2222"));
    }
}
