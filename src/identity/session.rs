//! The running identity, driven by the uplink thread: enrolment in the background (the sensor
//! is already watching), heartbeats and renewal on deadlines, and what happens when the leaf
//! expires (offline past its lifetime): with an API key or `k8s_psat` it enrols again by itself;
//! with a single-use token it waits for a new one in `--enroll-token-file`. [`Session::tick`]
//! makes at most one blocking network call, bounded by its own deadline; there is no helper
//! thread. The state (`enrolling` / `enrolled` / `expired`) is published for `status`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::counters::HeartbeatStats;
use crate::error::{Error, Kind, Result};
use crate::identity::backend::{Backend, Failure};
use crate::identity::backoff::{self, Backoff};
use crate::identity::credential::Credential;
use crate::identity::credential::{self, Source};
use crate::identity::enroll::{self, Attempt, Identity, Request};
use crate::identity::plan::{self, Plan};
use crate::identity::tls::{self, ServerTrust};
use crate::identity::tls_cache::{self, Found, TlsCache};

/// While waiting for a credential, its file is looked at this often.
const WAIT_POLL: Duration = Duration::from_secs(2);
/// While waiting for a credential, what is needed is logged this often.
const WAIT_LOG: Duration = Duration::from_secs(60);

/// The enrolment state words `status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Obtaining an identity (first enrolment, or enrolling again after expiry).
    Enrolling,
    Enrolled,
    /// The identity expired and no credential can enrol again yet (a spent single-use token).
    Expired,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Enrolling => "enrolling",
            State::Enrolled => "enrolled",
            State::Expired => "expired",
        }
    }
}

/// What the loop shows in `status` (written by the uplink thread).
#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    /// `token`, `api_key`, `k8s_psat` or `none`.
    pub credential: &'static str,
    pub agent_id: Option<String>,
    pub valid_until: Option<SystemTime>,
    /// What the agent is waiting for (empty once enrolled).
    pub waiting_for: String,
    /// Attempts of the enrolment in progress, and its last failure.
    pub attempts: u64,
    pub last_error: Option<String>,
}

impl Status {
    pub fn new(credential: &'static str, waiting_for: String) -> Status {
        Status {
            state: State::Enrolling,
            credential,
            agent_id: None,
            valid_until: None,
            waiting_for,
            attempts: 0,
            last_error: None,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "state": self.state.word(),
            "credential": self.credential,
            "agentId": self.agent_id,
            "certificateValidUntil": self.valid_until.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "waitingFor": (!self.waiting_for.is_empty()).then_some(&self.waiting_for),
            "attempts": self.attempts,
            "lastError": self.last_error,
        })
    }
}

pub type SharedStatus = Arc<Mutex<Status>>;

pub fn lock(s: &SharedStatus) -> MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// An enrolment in progress: the request (key, CSR, body) kept across its retries.
struct Enrolling {
    req: Request,
    /// The TLS cache tag of its credential.
    tag: String,
    agent: ureq::Agent,
    backoff: Backoff,
    next_attempt: Instant,
    /// `--enroll-timeout` for the first enrolment of a process; none when enrolling again.
    deadline: Option<Instant>,
    attempts: u64,
    started: Instant,
}

/// An identity in use.
struct Live {
    identity: Identity,
    backend: Backend,
    next_heartbeat: Instant,
    hb_backoff: Backoff,
    renew_at: Instant,
    renew_backoff: Backoff,
}

/// An expired identity and no usable credential yet.
struct Waiting {
    agent_id: String,
    expired_at: SystemTime,
    next_check: Instant,
    next_log: Instant,
    /// Why the credential at hand cannot enrol (for the log line and `status`).
    why: String,
}

enum Phase {
    Enrolling(Box<Enrolling>),
    Enrolled(Box<Live>),
    Waiting(Waiting),
}

/// The identity of the running agent.
pub struct Session {
    server: String,
    trust: ServerTrust,
    source: Source,
    tenant_id: Option<String>,
    workload_id: String,
    node_name: Option<String>,
    pod_uid: Option<String>,
    hostname: String,
    enroll_timeout: Duration,
    cache: Option<TlsCache>,
    status: SharedStatus,
    phase: Phase,
    /// The tag of the single-use token that enrolled the current (or expired) identity: it is
    /// never presented again for a new certificate.
    spent: Option<String>,
    /// Whether this process has held an identity (a later enrolment has no timeout).
    had_identity: bool,
    started: Instant,
    heartbeats_ok: u64,
}

impl Session {
    /// Decides how the identity is obtained — the TLS cache, an enrolment, or waiting for a
    /// credential — without any network call. Errors (exit 3) when nothing could ever work: no
    /// credential and no usable cache.
    pub fn new(plan: Plan, started: Instant) -> Result<Session> {
        let Plan {
            server,
            trust,
            source,
            credential,
            tenant_id,
            workload,
            node_name,
            pod_uid,
            hostname,
            enroll_timeout,
            mut cache,
        } = plan;
        log::info!(
            "workload id {} ({}); backend {server}; credential: {}",
            workload.hex,
            workload.describe(),
            source.describe()
        );
        let kind = source.kind();
        let found = match &mut cache {
            Some(c) => c.load(kind == credential::Kind::Token),
            None => {
                log::info!(
                    "TLS cache off (--tls-cache not set): the identity is kept in memory only"
                );
                Found::Nothing
            }
        };
        let status = Arc::new(Mutex::new(Status::new(kind.name(), String::new())));
        let mut s = Session {
            server,
            trust,
            source,
            tenant_id,
            workload_id: workload.hex,
            node_name,
            pod_uid,
            hostname,
            enroll_timeout,
            cache,
            status,
            phase: Phase::Waiting(Waiting {
                agent_id: String::new(),
                expired_at: SystemTime::now(),
                next_check: Instant::now(),
                next_log: Instant::now(),
                why: String::new(),
            }),
            spent: None,
            had_identity: false,
            started,
            heartbeats_ok: 0,
        };
        match found {
            Found::Valid(id) => {
                log::info!(
                    "startup: identity ready (TLS cache) ({} ms since start)",
                    started.elapsed().as_millis()
                );
                if kind == credential::Kind::Token {
                    s.spent = s.cache.as_ref().and_then(|c| c.tag().map(str::to_string));
                }
                s.go_live(id)?;
            }
            Found::Expired(id) => {
                s.had_identity = true;
                if kind == credential::Kind::Token {
                    s.spent = s.cache.as_ref().and_then(|c| c.tag().map(str::to_string));
                }
                if kind == credential::Kind::None {
                    return Err(plan::no_credential(
                        &s.source,
                        "the cached certificate has expired",
                    ));
                }
                s.after_expiry(id.agent_id.clone(), id.not_after);
            }
            Found::Nothing => match credential {
                Some(c) => s.begin_enrolment(&c, Some(started + enroll_timeout))?,
                None => return Err(plan::no_credential(&s.source, "the TLS cache is empty")),
            },
            Found::Unmatched(why) => return Err(plan::no_credential(&s.source, &why)),
        }
        s.publish();
        Ok(s)
    }

    /// The state shared with the loop for `status`.
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Enrolling(_) => State::Enrolling,
            Phase::Enrolled(_) => State::Enrolled,
            Phase::Waiting(_) => State::Expired,
        }
    }

    pub fn workload_id(&self) -> &str {
        &self.workload_id
    }

    /// The agent id while an identity is in use.
    pub fn agent_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Enrolled(l) => Some(&l.identity.agent_id),
            _ => None,
        }
    }

    /// The mTLS client, while the identity is in use and its certificate has not expired (an
    /// expired client certificate would be answered 401, which means revocation).
    pub fn backend(&self) -> Option<&Backend> {
        match &self.phase {
            Phase::Enrolled(l) if SystemTime::now() < l.identity.not_after => Some(&l.backend),
            _ => None,
        }
    }

    /// When `tick` next has work to do.
    pub fn next_deadline(&self) -> Instant {
        match &self.phase {
            Phase::Enrolling(e) => e.next_attempt,
            Phase::Enrolled(l) => l
                .next_heartbeat
                .min(l.renew_at)
                .min(instant_at(l.identity.not_after)),
            Phase::Waiting(w) => w.next_check,
        }
    }

    /// Does what is due at `now`, making at most one blocking network call (bounded by its
    /// own timeout). Errors end the agent: a rejected enrolment (exit 4), a revocation (5),
    /// the first enrolment's `--enroll-timeout` (1). An expired identity or an unreachable
    /// backend never does.
    pub fn tick(&mut self, now: Instant, stats: &HeartbeatStats) -> Result<()> {
        let res = match &self.phase {
            Phase::Enrolling(e) if now >= e.next_attempt => self.enrol_attempt(now),
            Phase::Enrolled(l) if SystemTime::now() >= l.identity.not_after => {
                let (id, at) = (l.identity.agent_id.clone(), l.identity.not_after);
                log::warn!(
                    "the certificate of agent {id} expired at {} before it could be renewed (the \
                     backend was unreachable); events keep queueing",
                    humantime::format_rfc3339_seconds(at)
                );
                self.after_expiry(id, at);
                Ok(())
            }
            Phase::Enrolled(l) if now >= l.renew_at => self.renew(),
            Phase::Enrolled(l) if now >= l.next_heartbeat => self.heartbeat(stats),
            Phase::Waiting(w) if now >= w.next_check => self.look_for_credential(now),
            _ => Ok(()),
        };
        self.publish();
        res
    }

    /// Starts an enrolment with `c` (a fresh key and CSR).
    fn begin_enrolment(&mut self, c: &Credential, deadline: Option<Instant>) -> Result<()> {
        let req = enroll::Request::new(&enroll::Params {
            tenant_id: self.tenant_id.as_deref(),
            credential: c,
            workload_id: &self.workload_id,
            node_name: self.node_name.as_deref(),
            pod_uid: self.pod_uid.as_deref(),
            hostname: &self.hostname,
        })?;
        let tag = tls_cache::tag(&credential::tag_secret(c), &self.workload_id);
        let now = Instant::now();
        self.phase = Phase::Enrolling(Box::new(Enrolling {
            req,
            tag,
            agent: tls::agent(&self.trust, None),
            backoff: Backoff::default(),
            next_attempt: now,
            deadline,
            attempts: 0,
            started: now,
        }));
        Ok(())
    }

    fn enrol_attempt(&mut self, now: Instant) -> Result<()> {
        let Phase::Enrolling(e) = &mut self.phase else {
            return Ok(());
        };
        e.attempts += 1;
        let attempt = e.attempts;
        let timeout = match e.deadline {
            Some(d) => d.saturating_duration_since(now).min(tls::CALL_TIMEOUT),
            None => tls::CALL_TIMEOUT,
        };
        log::debug!(
            "enrolment attempt {attempt} to {}/agent/enroll ({} s allowed)",
            self.server,
            timeout.as_secs()
        );
        // The service-account token is read again for each attempt; a file that cannot be read
        // now is retried like a failed call (the kubelet may be rewriting it).
        let outcome = match e.req.prepare() {
            Ok(()) => {
                let res = enroll::attempt(&e.agent, &self.server, &self.trust, &e.req, timeout);
                e.req.release();
                res?
            }
            Err(err) => Attempt::Retry {
                why: err.to_string(),
                retry_after: None,
            },
        };
        match outcome {
            Attempt::Enrolled(id) => {
                let (tag, took) = (e.tag.clone(), e.started.elapsed());
                self.enrolled(*id, tag, took)
            }
            Attempt::Retry { why, retry_after } => {
                let delay = e.backoff.next(retry_after);
                if e.deadline.is_some_and(|d| Instant::now() + delay >= d) {
                    return Err(Error::runtime(format!(
                        "enrolment with {} did not succeed within --enroll-timeout {} s \
                         ({attempt} attempts); last error: {why}",
                        self.server,
                        self.enroll_timeout.as_secs()
                    )));
                }
                log::warn!(
                    "enrolment attempt {attempt} failed: {why}; retrying in {:.1} s (events \
                     keep queueing meanwhile)",
                    delay.as_secs_f64()
                );
                e.next_attempt = Instant::now() + delay;
                lock(&self.status).last_error = Some(why);
                Ok(())
            }
        }
    }

    fn enrolled(&mut self, id: Identity, tag: String, took: Duration) -> Result<()> {
        if self.source.kind() == credential::Kind::Token {
            self.spent = Some(tag.clone());
        }
        // Persist first, so "enrolled" means the cache (if any) holds the identity.
        if let Some(c) = &mut self.cache {
            c.set_tag(tag);
            if let Err(e) = c.store(&id) {
                log::warn!("{e}; the identity is kept in memory only");
            }
        }
        log::info!(
            "enrolled as agent {} in {} ms (certificate valid until {})",
            id.agent_id,
            took.as_millis(),
            humantime::format_rfc3339_seconds(id.not_after)
        );
        if !self.had_identity {
            log::info!(
                "startup: identity ready (enrolment) in {} ms ({} ms since start)",
                took.as_millis(),
                self.started.elapsed().as_millis()
            );
        }
        lock(&self.status).last_error = None;
        self.go_live(id)
    }

    fn go_live(&mut self, identity: Identity) -> Result<()> {
        let backend = Backend::new(&self.server, &self.trust, &identity)?;
        let renew_at = instant_at(identity.renew_at(backoff::random_unit()));
        self.had_identity = true;
        self.heartbeats_ok = 0;
        self.phase = Phase::Enrolled(Box::new(Live {
            identity,
            backend,
            next_heartbeat: Instant::now(),
            hb_backoff: Backoff::default(),
            renew_at,
            renew_backoff: Backoff::default(),
        }));
        Ok(())
    }

    /// The identity expired: enrol again with a standing credential, else wait for a new one.
    fn after_expiry(&mut self, agent_id: String, expired_at: SystemTime) {
        let now = Instant::now();
        let mut w = Waiting {
            agent_id,
            expired_at,
            next_check: now,
            next_log: now,
            why: String::new(),
        };
        if self.source.kind().reenrols() {
            match self.source.current() {
                Ok(Some(c)) => match self.begin_enrolment(&c, None) {
                    Ok(()) => {
                        log::info!(
                            "enrolling again with {} (the identity of agent {} expired)",
                            self.source.describe(),
                            w.agent_id
                        );
                        return;
                    }
                    Err(e) => w.why = e.to_string(),
                },
                Ok(None) => w.why = format!("{} is missing", self.source.describe()),
                Err(e) => w.why = e.to_string(),
            }
        } else {
            w.why = self.spent_token_why();
        }
        self.phase = Phase::Waiting(w);
    }

    /// Why a single-use token cannot enrol again, and what to do.
    fn spent_token_why(&self) -> String {
        match &self.source {
            Source::TokenFile(p) => format!(
                "a new single-use token in --enroll-token-file `{}` (the token that enrolled this \
                 agent is spent); it is picked up without a restart",
                p.display()
            ),
            Source::Token(_) => "a new single-use token (the one in LINUXGUARD_ENROLL_TOKEN is \
                 spent): restart with a new LINUXGUARD_ENROLL_TOKEN, or set \
                 LINUXGUARD_ENROLL_TOKEN_FILE so a new token is picked up without a restart"
                .into(),
            _ => "an enrolment credential".into(),
        }
    }

    /// Waiting: is there a credential that can enrol now? Logs what is needed once a minute.
    fn look_for_credential(&mut self, now: Instant) -> Result<()> {
        let found = self.source.current();
        let kind = self.source.kind();
        let spent_why = self.spent_token_why();
        let Phase::Waiting(w) = &mut self.phase else {
            return Ok(());
        };
        w.next_check = now + WAIT_POLL;
        match found {
            Ok(Some(c)) => {
                let tag = tls_cache::tag(&credential::tag_secret(&c), &self.workload_id);
                if kind != credential::Kind::Token || self.spent.as_deref() != Some(&tag) {
                    log::info!(
                        "a new credential is available ({}): enrolling again",
                        self.source.describe()
                    );
                    return self.begin_enrolment(&c, None);
                }
            }
            Ok(None) => {}
            Err(e) => {
                if kind.reenrols() {
                    w.why = e.to_string();
                } else {
                    w.why = format!("{spent_why}; {e}");
                }
            }
        }
        if now >= w.next_log {
            w.next_log = now + WAIT_LOG;
            log::warn!(
                "the identity of agent {} expired at {}; waiting for {}; events keep queueing \
                 (up to --queue-mb, oldest dropped first)",
                w.agent_id,
                humantime::format_rfc3339_seconds(w.expired_at),
                w.why
            );
        }
        Ok(())
    }

    fn heartbeat(&mut self, stats: &HeartbeatStats) -> Result<()> {
        let uptime = self.started.elapsed();
        let Phase::Enrolled(l) = &mut self.phase else {
            return Ok(());
        };
        let res = l.backend.heartbeat(
            &l.identity.agent_id,
            &self.workload_id,
            uptime,
            stats,
            tls::CALL_TIMEOUT,
        );
        let interval = l.identity.heartbeat_interval;
        match res {
            Ok(asked) => {
                if let Some(i) = asked.filter(|i| *i != interval) {
                    log::info!(
                        "heartbeat interval is now {} s (asked by the backend)",
                        i.as_secs()
                    );
                    l.identity.heartbeat_interval = i;
                }
                let interval = l.identity.heartbeat_interval;
                self.heartbeats_ok += 1;
                if self.heartbeats_ok == 1 {
                    log::info!(
                        "first heartbeat accepted for agent {}; next every {} s",
                        l.identity.agent_id,
                        interval.as_secs()
                    );
                } else {
                    log::debug!("heartbeat accepted");
                }
                l.hb_backoff.reset();
                l.next_heartbeat = Instant::now() + interval;
                Ok(())
            }
            Err(Failure::Revoked(why)) => Err(self.revoked("heartbeat", &why)),
            Err(Failure::Retry { why, retry_after }) => {
                let d = l.hb_backoff.next(retry_after).min(interval);
                log::warn!(
                    "heartbeat failed: {why}; retrying in {:.1} s",
                    d.as_secs_f64()
                );
                l.next_heartbeat = Instant::now() + d;
                Ok(())
            }
            Err(Failure::Rejected(why)) => {
                log::warn!(
                    "heartbeat rejected: {why}; next attempt in {} s",
                    interval.as_secs()
                );
                l.next_heartbeat = Instant::now() + interval;
                Ok(())
            }
        }
    }

    fn renew(&mut self) -> Result<()> {
        let key = enroll::new_key()?;
        let Phase::Enrolled(l) = &mut self.phase else {
            return Ok(());
        };
        match l.backend.renew(key, &self.workload_id) {
            Ok(id) => {
                if id.agent_id != l.identity.agent_id {
                    log::warn!(
                        "renewal changed the agent id from {} to {}",
                        l.identity.agent_id,
                        id.agent_id
                    );
                }
                l.backend = Backend::new(&self.server, &self.trust, &id)?;
                if let Some(c) = &self.cache {
                    if let Err(e) = c.store(&id) {
                        log::warn!("{e}; the renewed identity is kept in memory only");
                    }
                }
                log::info!(
                    "renewed the certificate of agent {} (valid until {})",
                    id.agent_id,
                    humantime::format_rfc3339_seconds(id.not_after)
                );
                l.identity = id;
                l.renew_backoff.reset();
                l.renew_at = instant_at(l.identity.renew_at(backoff::random_unit()));
                Ok(())
            }
            Err(Failure::Revoked(why)) => Err(self.revoked("renewal", &why)),
            Err(f) => {
                // Retried until the certificate expires; then `tick` enrols again or waits.
                let d = l.renew_backoff.next(None);
                log::warn!(
                    "certificate renewal failed: {f}; retrying in {:.1} s",
                    d.as_secs_f64()
                );
                l.renew_at = Instant::now() + d;
                Ok(())
            }
        }
    }

    /// 401/403 after enrolment: the identity is gone. Clears the cache and builds the error.
    pub fn revoked(&self, what: &str, why: &str) -> Error {
        let cleared = match &self.cache {
            Some(c) => match c.clear() {
                Ok(()) => format!("cleared the TLS cache `{}`", c.dir().display()),
                Err(e) => format!("could not clear the TLS cache: {e}"),
            },
            None => "no TLS cache to clear".into(),
        };
        let msg = format!(
            "the backend revoked the identity of agent {} ({what} answered {why}); {cleared}; \
             enrol again with a fresh token or API key",
            self.agent_id().unwrap_or("(unknown)")
        );
        Error::new(Kind::Revoked, msg)
    }

    /// Writes the state for `status`.
    fn publish(&self) {
        let mut st = lock(&self.status);
        st.state = self.state();
        match &self.phase {
            Phase::Enrolling(e) => {
                st.agent_id = None;
                st.valid_until = None;
                st.attempts = e.attempts;
                st.waiting_for = format!(
                    "enrolment at {} with {}",
                    self.server,
                    self.source.describe()
                );
            }
            Phase::Enrolled(l) => {
                st.agent_id = Some(l.identity.agent_id.clone());
                st.valid_until = Some(l.identity.not_after);
                st.waiting_for.clear();
                st.attempts = 0;
            }
            Phase::Waiting(w) => {
                st.agent_id = Some(w.agent_id.clone());
                st.valid_until = Some(w.expired_at);
                st.waiting_for = w.why.clone();
            }
        }
    }
}

/// The monotonic instant matching wall-clock time `t` (now if `t` has passed).
fn instant_at(t: SystemTime) -> Instant {
    let now = Instant::now();
    match t.duration_since(SystemTime::now()) {
        Ok(d) => now + d,
        Err(_) => now,
    }
}
