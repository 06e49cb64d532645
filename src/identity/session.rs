//! The running identity: brings up the mTLS identity (TLS cache or enrolment), then heartbeats and
//! renews on deadlines until revocation. [`Session`] is driven by a non-blocking `tick` and
//! `next_deadline`, so the uplink thread can also serve the upload queue.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use crate::counters::HeartbeatStats;
use crate::error::{Context, Error, Kind, Result};
use crate::identity::enroll::{self, Identity};
use crate::identity::plan::Plan;
use crate::identity::tls_cache::TlsCache;
use crate::net::backend::{Backend, Failure};
use crate::net::backoff::{self, Backoff};
use crate::net::tls::{self, ServerTrust};
use crate::stop::Stop;

/// The running identity: heartbeats and renewal on deadlines.
pub struct Session {
    server: String,
    trust: ServerTrust,
    workload_id: String,
    cache: Option<TlsCache>,
    identity: Identity,
    backend: Backend,
    started: Instant,
    /// Counters sent with each heartbeat (the sensor and uploader add to them).
    pub stats: HeartbeatStats,
    next_heartbeat: Instant,
    heartbeats_ok: u64,
    hb_backoff: Backoff,
    renew_at: Instant,
    renew_backoff: Backoff,
    /// The heartbeat or renewal call in flight, if any.
    pending: Option<Pending>,
}

impl Session {
    /// Reuses the cached identity or enrols. `Ok(None)`: a stop was requested meanwhile.
    pub fn start(plan: Plan, stop: &Stop) -> Result<Option<Session>> {
        let started = Instant::now();
        log::info!(
            "workload id {} ({}); backend {}",
            plan.workload.hex,
            plan.workload.derivation.describe(),
            plan.server
        );
        let cached = match &plan.cache {
            Some(c) => c.load(),
            None => {
                log::info!(
                    "TLS cache off (--tls-cache not set): the identity is kept in memory only"
                );
                None
            }
        };
        let identity = match cached {
            Some(id) => id,
            None => {
                let req = enroll::Request::new(&enroll::Params {
                    tenant_id: plan.tenant_id.as_deref(),
                    credential: &plan.credential,
                    workload_id: &plan.workload.hex,
                    node_name: plan.node_name.as_deref(),
                    pod_uid: plan.pod_uid.as_deref(),
                    hostname: &plan.hostname,
                })?;
                let agent = tls::agent(&plan.trust, None);
                let Some(id) = enroll::enroll(
                    &agent,
                    &plan.server,
                    &plan.trust,
                    req,
                    started + plan.enroll_timeout,
                    plan.enroll_timeout.as_secs(),
                    stop,
                )?
                else {
                    return Ok(None);
                };
                // Persist first, so "enrolled" means the cache (if any) holds the identity.
                if let Some(c) = &plan.cache {
                    if let Err(e) = c.store(&id) {
                        log::warn!("{e}; the identity is kept in memory only");
                    }
                }
                log::info!(
                    "enrolled as agent {} in {} ms (certificate valid until {})",
                    id.agent_id,
                    started.elapsed().as_millis(),
                    humantime::format_rfc3339_seconds(id.not_after)
                );
                id
            }
        };
        let backend = Backend::new(&plan.server, &plan.trust, &identity)?;
        let renew_at = instant_at(identity.renew_at(backoff::random_unit()));
        Ok(Some(Session {
            server: plan.server,
            trust: plan.trust,
            workload_id: plan.workload.hex,
            cache: plan.cache,
            identity,
            backend,
            started,
            stats: HeartbeatStats::default(),
            next_heartbeat: Instant::now(),
            heartbeats_ok: 0,
            hb_backoff: Backoff::default(),
            renew_at,
            renew_backoff: Backoff::default(),
            pending: None,
        }))
    }

    pub fn agent_id(&self) -> &str {
        &self.identity.agent_id
    }

    #[allow(dead_code)] // used by the uploader (issue 6)
    /// The mTLS client (the uploader sends event batches through it).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// When `tick` next has work to do (soon while a call is in flight, to collect its answer).
    pub fn next_deadline(&self) -> Instant {
        if self.pending.is_some() {
            return Instant::now() + PENDING_POLL;
        }
        self.next_heartbeat.min(self.renew_at)
    }

    /// Never blocks: collects the answer of the call in flight, if any, and starts whatever is
    /// due at `now` (renewal first, then the heartbeat; one call at a time, each on a helper
    /// thread, so a stalled server holds up neither the caller's loop nor a stop request).
    /// Errors end the agent (revocation: [`Kind::Revoked`]; a certificate that expired before
    /// renewal succeeded).
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        if let Some(p) = self.pending.take() {
            match p {
                Pending::Heartbeat(rx) => match rx.try_recv() {
                    Ok(res) => self.heartbeat_done(res)?,
                    Err(TryRecvError::Empty) => {
                        self.pending = Some(Pending::Heartbeat(rx));
                        return Ok(());
                    }
                    Err(TryRecvError::Disconnected) => self.heartbeat_done(Err(helper_died()))?,
                },
                Pending::Renew(rx) => match rx.try_recv() {
                    Ok(res) => self.renew_done(res)?,
                    Err(TryRecvError::Empty) => {
                        self.pending = Some(Pending::Renew(rx));
                        return Ok(());
                    }
                    Err(TryRecvError::Disconnected) => self.renew_done(Err(helper_died()))?,
                },
            }
        }
        if now >= self.renew_at {
            let key = enroll::new_key()?;
            let (backend, workload_id) = (self.backend.clone(), self.workload_id.clone());
            self.pending = Some(Pending::Renew(spawn_call(move || {
                backend.renew(key, &workload_id)
            })?));
        } else if now >= self.next_heartbeat {
            let backend = self.backend.clone();
            let (agent_id, workload_id) =
                (self.identity.agent_id.clone(), self.workload_id.clone());
            let (uptime, stats) = (self.started.elapsed(), self.stats.clone());
            self.pending = Some(Pending::Heartbeat(spawn_call(move || {
                backend.heartbeat(&agent_id, &workload_id, uptime, &stats, tls::CALL_TIMEOUT)
            })?));
        }
        Ok(())
    }

    fn heartbeat_done(
        &mut self,
        res: std::result::Result<Option<Duration>, Failure>,
    ) -> Result<()> {
        let interval = self.identity.heartbeat_interval;
        match res {
            Ok(asked) => {
                if let Some(i) = asked.filter(|i| *i != interval) {
                    log::info!(
                        "heartbeat interval is now {} s (asked by the backend)",
                        i.as_secs()
                    );
                    self.identity.heartbeat_interval = i;
                }
                let interval = self.identity.heartbeat_interval;
                self.heartbeats_ok += 1;
                if self.heartbeats_ok == 1 {
                    log::info!(
                        "first heartbeat accepted for agent {}; next every {} s",
                        self.identity.agent_id,
                        interval.as_secs()
                    );
                } else {
                    log::debug!("heartbeat accepted");
                }
                self.hb_backoff.reset();
                self.next_heartbeat = Instant::now() + interval;
                Ok(())
            }
            Err(Failure::Revoked(why)) => Err(self.revoked("heartbeat", &why)),
            Err(Failure::Retry { why, retry_after }) => {
                let d = self.hb_backoff.next(retry_after).min(interval);
                log::warn!(
                    "heartbeat failed: {why}; retrying in {:.1} s",
                    d.as_secs_f64()
                );
                self.next_heartbeat = Instant::now() + d;
                Ok(())
            }
            Err(Failure::Rejected(why)) => {
                log::warn!(
                    "heartbeat rejected: {why}; next attempt in {} s",
                    interval.as_secs()
                );
                self.next_heartbeat = Instant::now() + interval;
                Ok(())
            }
        }
    }

    fn renew_done(&mut self, res: std::result::Result<Identity, Failure>) -> Result<()> {
        match res {
            Ok(id) => {
                if id.agent_id != self.identity.agent_id {
                    log::warn!(
                        "renewal changed the agent id from {} to {}",
                        self.identity.agent_id,
                        id.agent_id
                    );
                }
                self.backend = Backend::new(&self.server, &self.trust, &id)?;
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
                self.identity = id;
                self.renew_backoff.reset();
                self.renew_at = instant_at(self.identity.renew_at(backoff::random_unit()));
                Ok(())
            }
            Err(Failure::Revoked(why)) => Err(self.revoked("renewal", &why)),
            Err(f) => {
                if SystemTime::now() >= self.identity.not_after {
                    return Err(Error::runtime(format!(
                        "the certificate of agent {} expired before renewal succeeded (last error: {f}); \
                         restart the agent to enrol again",
                        self.identity.agent_id
                    )));
                }
                let d = self.renew_backoff.next(None);
                log::warn!(
                    "certificate renewal failed: {f}; retrying in {:.1} s",
                    d.as_secs_f64()
                );
                self.renew_at = Instant::now() + d;
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
            self.identity.agent_id
        );
        Error::new(Kind::Revoked, msg)
    }
}

/// How often `tick` looks for the answer of a call in flight.
const PENDING_POLL: Duration = Duration::from_millis(20);

/// The call in flight and where its answer arrives.
enum Pending {
    Heartbeat(Receiver<std::result::Result<Option<Duration>, Failure>>),
    Renew(Receiver<std::result::Result<Identity, Failure>>),
}

/// Runs `f` on a helper thread; its result arrives on the returned channel.
fn spawn_call<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<Receiver<T>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("lg-call".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context(Kind::Runtime, "failed to start a network helper thread")?;
    Ok(rx)
}

fn helper_died() -> Failure {
    Failure::Retry {
        why: "the network helper thread ended without an answer".into(),
        retry_after: None,
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
