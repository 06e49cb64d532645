//! The production agent behind `start`: watch first, enrol in the background. It binds the
//! socket (answering `status` from the first second, and attestation while the sensor
//! attaches), attaches the sensor, starts the uplink thread (which obtains the identity while
//! events queue), and runs the one poll(2) loop (ring buffer → decode → enrich → queue; socket;
//! metrics; stop) until SIGTERM, a rejected enrolment or a revocation. Start-up phases are
//! logged with their durations.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde_json::{Value, json};

use crate::attest::attestor::{self, Attestor};
use crate::counters::LoopTimings;
use crate::error::{Error, Result};
use crate::events::event::Event;
use crate::identity::plan::Plan;
use crate::identity::session::{self, Session, SharedStatus, State};
use crate::pipeline::sink::{JsonLines, Sink};
use crate::pipeline::{self, POLL_INTERVAL, Pipeline};
use crate::serve::metrics::{self, Metrics, Page};
use crate::serve::socket;
use crate::stop::Stop;
use crate::uplink::queue::Limits;
use crate::uplink::uploader::{Shared, Uplink};

/// Kernel counters, ring fill and the socket's connection timeouts are refreshed this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// After the grace period, the final heartbeat may take this much longer before we exit anyway
/// (its own timeout plus a second): the uplink has counted everything by then.
const FINAL_HEARTBEAT_ALLOWANCE: Duration =
    Duration::from_secs(crate::uplink::uploader::FINAL_HEARTBEAT_TIMEOUT.as_secs() + 1);

/// Serializes drained events (once each) for the queue and/or stdout; the poll loop's sink.
struct LoopSink<'a> {
    shared: &'a Shared,
    stdout: Option<JsonLines<io::StdoutLock<'static>>>,
    /// The event being sent, serialized (reused from event to event).
    line: Vec<u8>,
    lines: Vec<Vec<u8>>,
    /// Lines written to stdout, and lines that could not be (stdout closed or failed).
    stdout_sent: u64,
    stdout_lost: u64,
    /// Stdout ended during this pass: it was closed (`Ok`), or a write failed (`Err`).
    stdout_ended: Option<std::result::Result<(), String>>,
}

impl<'a> LoopSink<'a> {
    fn new(shared: &'a Shared, stdout: Option<JsonLines<io::StdoutLock<'static>>>) -> Self {
        LoopSink {
            shared,
            stdout,
            line: Vec::with_capacity(4096),
            lines: Vec::new(),
            stdout_sent: 0,
            stdout_lost: 0,
            stdout_ended: None,
        }
    }

    /// Takes stdout's counts after a write or flush, and lets stdout go if it ended.
    fn settle_stdout(&mut self, res: Result<bool>) {
        let Some(out) = &mut self.stdout else { return };
        let (written, lost) = out.take_counts();
        self.stdout_sent += written;
        self.stdout_lost += lost;
        let ended = match res {
            Ok(true) => return,
            Ok(false) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        self.stdout = None;
        self.stdout_ended = Some(ended);
    }
}

impl Sink for LoopSink<'_> {
    fn send(&mut self, ev: &Event) -> Result<bool> {
        self.line.clear();
        if let Err(e) = ev.write_json(&mut self.line) {
            log::debug!("dropped an event that does not serialize: {e}");
            return Ok(true);
        }
        match &mut self.stdout {
            Some(out) => {
                let res = out.send_line(&self.line);
                self.settle_stdout(res);
            }
            // `--output stdout` and stdout is gone: this event has nowhere to go.
            None if !self.shared.to_backend => self.stdout_lost += 1,
            None => {}
        }
        if self.shared.to_backend {
            // An exact-size copy for the queue; `line` keeps its capacity for the next event.
            self.lines.push(self.line.clone());
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<bool> {
        self.shared.push_all(&mut self.lines);
        if let Some(out) = &mut self.stdout {
            let res = out.flush();
            self.settle_stdout(res);
        }
        Ok(true)
    }
}

/// Everything the loop owns. Dropping it removes the socket file and detaches the sensor.
pub struct Agent {
    cfg_grace: Duration,
    stop: Arc<Stop>,
    shared: Arc<Shared>,
    uplink: Option<std::thread::JoinHandle<()>>,
    uplink_done: std::sync::mpsc::Receiver<()>,
    // Drop order: the socket and metrics before the pipeline (which owns BPF objects).
    socket: Option<socket::Server>,
    metrics: Option<Metrics>,
    pipeline: Pipeline,
    sink_stdout: Option<JsonLines<io::StdoutLock<'static>>>,
    /// `--output stdout` and stdout ended (closed, or the write error): the loop stops.
    output_ended: Option<std::result::Result<(), String>>,
    /// The identity's state, written by the uplink thread.
    identity: SharedStatus,
    started: Instant,
    pub loop_stats: LoopTimings,
    /// `--stats-interval`: a `{"type":"stats"}` event this often (None: off).
    stats_every: Option<Duration>,
    /// Stats events emitted (counted as observed, so sent + dropped still adds up).
    stats_events: u64,
    /// Open socket connections, as of the last socket pass (for the `status` answer).
    socket_conns: usize,
}

/// The components' options (the rest still comes from the configuration).
pub struct Options {
    pub pipeline: pipeline::Options,
    pub attestor: attestor::Options,
    /// `--socket` path and mode.
    pub socket: Option<(PathBuf, u32)>,
    /// `--output`: `backend`, `stdout` or `both`.
    pub output: String,
    /// The upload queue's bound and batch cuts.
    pub limits: Limits,
    /// `--metrics-addr` and `--metrics-allow-remote`.
    pub metrics: Option<metrics::Options>,
    /// `--shutdown-grace`.
    pub grace: Duration,
    /// `--stats-interval`: a `{"type":"stats"}` event this often (None: off).
    pub stats_every: Option<Duration>,
}

/// `start` after the plan is checked: socket, sensor, then the uplink (identity in the
/// background) and the loop.
pub fn run(opts: Options, plan: Plan, t0: Instant) -> Result<()> {
    log::info!(
        "startup: identity derived in {} ms",
        t0.elapsed().as_millis()
    );
    let stop = Arc::new(Stop::install()?);
    // No network call: the TLS cache is read, and a start that could never obtain an identity
    // (no credential, no usable cache) ends here with exit 3, before the sensor is loaded.
    let session = Session::new(plan, t0)?;
    let mut agent = Agent::new(opts, session, stop, t0)?;
    agent.run()
}

/// The `/healthz` answer: healthy in every enrolment state (as `status`), with the state.
fn health_json(enrolment: &str, sensor: &str, uptime: Duration) -> String {
    json!({
        "status": "ok",
        "enrolment": enrolment,
        "sensor": sensor,
        "uptimeSeconds": uptime.as_secs(),
    })
    .to_string()
}

/// While the sensor attaches on the calling thread, `status`, attestation and `/healthz` are
/// answered here.
fn serve_while_attaching(
    mut server: Option<&mut socket::Server>,
    mut metrics: Option<&mut Metrics>,
    mut attestor: Option<&mut Attestor>,
    identity: &SharedStatus,
    shared: &Shared,
    done: &std::sync::atomic::AtomicBool,
    t0: Instant,
) {
    while !done.load(Ordering::SeqCst) {
        let mut fds = Vec::with_capacity(2);
        if let Some(s) = &server {
            fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
        }
        if let Some(m) = &metrics {
            fds.push(PollFd::new(m.fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        drop(fds);
        if let Some(m) = metrics.as_deref_mut() {
            m.serve(&mut |page| match page {
                Page::Health => health_json(
                    session::lock(identity).state.word(),
                    "attaching",
                    t0.elapsed(),
                ),
                Page::Metrics => shared.counters().prometheus(t0.elapsed().as_secs()),
            });
        }
        let Some(server) = server.as_deref_mut() else {
            continue;
        };
        let mut answer = |req: socket::Request, peer: &socket::Peer| -> Value {
            match req {
                socket::Request::Status => {
                    let id = session::lock(identity).clone();
                    let c = shared.counters();
                    socket::ok_reply(json!({
                        "healthy": true,
                        "enrolment": id.state.word(),
                        "agentId": id.agent_id,
                        "identity": id.json(),
                        "sensor": "attaching",
                        "uptimeSeconds": t0.elapsed().as_secs(),
                        "stats": c.heartbeat_stats(),
                        "pipeline": {"queuedEvents": c.queued},
                    }))
                }
                _ => match attestor.as_deref_mut() {
                    Some(a) => a.answer(req, peer),
                    None => socket::error_reply("workload attestation is not available"),
                },
            }
        };
        server.handle_ready(&mut answer);
    }
}

impl Agent {
    fn new(opts: Options, session: Session, stop: Arc<Stop>, t0: Instant) -> Result<Agent> {
        let output = opts.output.as_str();
        let to_backend = output != "stdout";
        let to_stdout = output != "backend";
        let limits = opts.limits;
        let identity = session.status();
        let shared = Arc::new(Shared::new(limits, batch_key_prefix(), to_backend));

        // The socket first: `status` answers from the first second (issue: the workload
        // endpoint is up before anything else).
        let t = Instant::now();
        let mut socket = match &opts.socket {
            None => None,
            Some((path, mode)) => match socket::Server::bind(path, *mode) {
                Ok(s) => {
                    log::info!(
                        "startup: socket `{}` listening in {} ms ({} ms since start)",
                        path.display(),
                        t.elapsed().as_millis(),
                        t0.elapsed().as_millis()
                    );
                    Some(s)
                }
                Err(e) => {
                    log::warn!(
                        "running without the local socket (no `status`, no `attest --self`): {e}"
                    );
                    None
                }
            },
        };
        // The metrics listener too (a taken port fails the start before the sensor loads), so
        // that `/healthz` answers while the sensor attaches.
        let mut metrics = match &opts.metrics {
            Some(m) => Some(Metrics::bind(m)?),
            None => None,
        };
        let mut attestor = match Attestor::new(opts.attestor) {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!("events will carry no container or pod fields: {e}");
                None
            }
        };

        // Then the sensor, before any enrolment call: a start that cannot watch (no BPF
        // rights) ends here, before it spends a single-use token.
        let t = Instant::now();
        let attached = {
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                let serving = (socket.is_some() || metrics.is_some()).then(|| {
                    let (server, m) = (socket.as_mut(), metrics.as_mut());
                    let (a, id, sh, done) = (attestor.as_mut(), &identity, &*shared, &done);
                    std::thread::Builder::new()
                        .name("lg-early-socket".into())
                        .spawn_scoped(scope, move || {
                            serve_while_attaching(server, m, a, id, sh, done, t0)
                        })
                });
                let p = Pipeline::new(&opts.pipeline);
                done.store(true, Ordering::SeqCst);
                if let Some(Ok(h)) = serving {
                    let _ = h.join();
                }
                p
            })
        };
        let mut pipeline = attached?;
        if let Some(a) = attestor {
            pipeline.set_attestor(a);
        }
        log::info!(
            "startup: sensors attached in {} ms ({} ms since start)",
            t.elapsed().as_millis(),
            t0.elapsed().as_millis()
        );

        let state = session.state();
        let (done_tx, uplink_done) = std::sync::mpsc::sync_channel(1);
        let uplink = {
            let up = Uplink::new(shared.clone(), session, t0);
            std::thread::Builder::new()
                .name("lg-uplink".into())
                .spawn(move || {
                    up.run();
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::runtime(format!("failed to start the upload thread: {e}")))?
        };
        let sink_stdout = to_stdout.then(|| JsonLines::new(io::stdout().lock()));
        let id = session::lock(&identity).clone();
        log::info!(
            "running: events to {output}; queue {} MiB, batches of at most {} events / {} bytes / {} ms",
            limits.queue_bytes >> 20,
            limits.batch_events,
            limits.batch_bytes,
            limits.batch_age.as_millis()
        );
        match state {
            State::Enrolled => log::info!(
                "startup: agent {} watching and uploading",
                id.agent_id.as_deref().unwrap_or_default()
            ),
            State::Enrolling | State::Expired => log::info!(
                "startup: watching before the identity is ready: events queue (up to {} MiB, \
                 oldest dropped first and counted) while waiting for {}",
                limits.queue_bytes >> 20,
                id.waiting_for
            ),
        }
        Ok(Agent {
            cfg_grace: opts.grace,
            stop,
            shared,
            uplink: Some(uplink),
            uplink_done,
            socket,
            metrics,
            pipeline,
            sink_stdout,
            output_ended: None,
            identity,
            started: t0,
            loop_stats: LoopTimings::default(),
            stats_every: opts.stats_every,
            stats_events: 0,
            socket_conns: 0,
        })
    }

    /// The poll loop. Returns on SIGINT/SIGTERM (after the flush) or with the uplink's error.
    pub fn run(&mut self) -> Result<()> {
        let mut next_housekeeping = Instant::now();
        // The ring buffer wakes us only when it is partly full: drain at least this often.
        let mut next_drain = Instant::now() + POLL_INTERVAL;
        let mut next_stats = self.stats_every.map(|d| Instant::now() + d);
        loop {
            if self.shared.failed.load(Ordering::SeqCst) {
                return Err(self.fatal());
            }
            if self.stop.requested() || self.output_ended.is_some() {
                break;
            }
            let wait = next_housekeeping
                .min(next_drain)
                .saturating_duration_since(Instant::now());
            let timeout =
                PollTimeout::try_from(wait.min(POLL_INTERVAL)).unwrap_or(PollTimeout::from(100u16));
            let (ring_ready, socket_ready, metrics_ready) = {
                let mut fds = vec![
                    PollFd::new(self.pipeline.fd(), PollFlags::POLLIN),
                    PollFd::new(self.stop.fd(), PollFlags::POLLIN),
                ];
                let si = self.socket.as_ref().map(|s| {
                    fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let mi = self.metrics.as_ref().map(|m| {
                    fds.push(PollFd::new(m.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(Error::runtime(format!("failed to poll: {e}")));
                    }
                }
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(Some(0)), ready(si), ready(mi))
            };
            let body = Instant::now();
            if ring_ready || body >= next_drain {
                self.drain()?;
                next_drain = Instant::now() + POLL_INTERVAL;
            }
            let now = Instant::now();
            if socket_ready || now >= next_housekeeping {
                self.serve_socket();
            }
            if metrics_ready {
                self.serve_metrics();
            }
            if let (Some(at), Some(every)) = (next_stats, self.stats_every) {
                if now >= at {
                    self.pipeline.refresh_stats();
                    self.send_stats_event()?;
                    next_stats = Some(at.max(now - every) + every);
                }
            }
            if now >= next_housekeeping {
                self.pipeline.refresh_stats();
                self.publish_counters();
                next_housekeeping += HOUSEKEEPING;
                if next_housekeeping < now {
                    next_housekeeping = now + HOUSEKEEPING;
                }
            }
            let took = body.elapsed();
            self.loop_stats.record(took);
        }
        self.shutdown()?;
        match self.output_ended.take() {
            Some(Err(e)) => Err(Error::runtime(format!(
                "{e}; it was the only output (--output stdout)"
            ))),
            _ => Ok(()),
        }
    }

    fn drain(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let mut sink = LoopSink::new(&shared, self.sink_stdout.take());
        let res = self.pipeline.drain(&mut sink);
        self.settle_sink(sink);
        self.publish_counters();
        res.map(|_| ())
    }

    /// Takes back stdout and its counts after a pass. With `--output stdout` a line that could
    /// not be written is a drop at the output stage (`upload`); when stdout ends there, the agent
    /// stops, as `watch` does. With `--output both` the backend still gets every event.
    fn settle_sink(&mut self, mut sink: LoopSink<'_>) {
        self.sink_stdout = sink.stdout.take();
        let c = &self.shared.published;
        c.stdout_sent.fetch_add(sink.stdout_sent, Ordering::Relaxed);
        if !self.shared.to_backend {
            self.shared
                .dropped_upload
                .fetch_add(sink.stdout_lost, Ordering::Relaxed);
        }
        if let Some(ended) = sink.stdout_ended {
            let why = match &ended {
                Ok(()) => "was closed".to_string(),
                Err(e) => format!("failed ({e})"),
            };
            if self.shared.to_backend {
                log::warn!("stdout {why}: events now go to the backend only");
            } else {
                log::warn!(
                    "stdout {why}, and it is the only output (--output stdout): stopping; \
                     events it could not take are counted as dropped"
                );
                self.output_ended = Some(ended);
            }
        }
    }

    /// A `{"type":"stats"}` event into the same outputs as the kernel's events.
    fn send_stats_event(&mut self) -> Result<()> {
        let ev = self.pipeline.stats_event();
        self.stats_events += 1;
        let shared = self.shared.clone();
        let mut sink = LoopSink::new(&shared, self.sink_stdout.take());
        let res = sink.send(&ev).and_then(|_| sink.flush());
        self.settle_sink(sink);
        res.map(|_| ())
    }

    /// Copies the pipeline's and attestor's counters where the uplink reads them.
    fn publish_counters(&mut self) {
        let s = &self.pipeline.stats;
        let c = &self.shared.published;
        let seen: u64 = s.seen.iter().sum();
        c.observed
            .store(seen + s.user_drops + self.stats_events, Ordering::Relaxed);
        c.dropped_kernel
            .store(s.kernel_drops_total(), Ordering::Relaxed);
        c.dropped_decode.store(s.user_drops, Ordering::Relaxed);
        let misses = self
            .pipeline
            .attestor_mut()
            .map_or(0, |a| a.stats.kubelet_misses);
        c.kubelet_misses.store(misses, Ordering::Relaxed);
    }

    /// Every counter, for the `status` answer.
    fn status_json(&mut self) -> Value {
        let c = self.shared.counters();
        let ls = self.loop_stats;
        let mean_us = ls.mean_body().as_micros() as u64;
        let attestor = self
            .pipeline
            .attestor_mut()
            .map_or(Value::Null, |a| a.status_json());
        let id = session::lock(&self.identity).clone();
        json!({
            // Healthy in every enrolment state: a restart would not obtain the identity any
            // sooner, and would lose the queued events (the liveness probe passes).
            "healthy": true,
            "enrolment": id.state.word(),
            "agentId": id.agent_id,
            "identity": id.json(),
            "sensor": "attached",
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "stats": c.heartbeat_stats(),
            "pipeline": {
                "droppedDecode": c.dropped_decode,
                "queuedEvents": c.queued,
                "queuedBytes": self.shared.queued_bytes(),
                "socketConnections": self.socket_conns,
                "processTable": self.pipeline.processes(),
                "batchesAccepted": self.shared.batches_ok.load(Ordering::Relaxed),
                "uploadFailures": self.shared.upload_failures.load(Ordering::Relaxed),
                "ringBuffer": {
                    "sizeBytes": self.pipeline.stats.ring_size,
                    "fillBytes": self.pipeline.stats.ring_fill,
                    "maxFillBytes": self.pipeline.stats.ring_fill_max,
                },
                "loop": {"iterations": ls.iterations, "maxBodyMicros": ls.max_body.as_micros() as u64,
                         "meanBodyMicros": mean_us},
            },
            "attestor": attestor,
        })
    }

    fn serve_socket(&mut self) {
        let Some(mut server) = self.socket.take() else {
            return;
        };
        self.socket_conns = server.connections();
        let mut answer = |req: socket::Request, peer: &socket::Peer| -> Value {
            match req {
                socket::Request::Status => socket::ok_reply(self.status_json()),
                _ => match self.pipeline.attestor_mut() {
                    Some(a) => a.answer(req, peer),
                    None => socket::error_reply("workload attestation is not available"),
                },
            }
        };
        server.handle_ready(&mut answer);
        self.socket = Some(server);
    }

    /// Answers the waiting `/metrics` and `/healthz` requests.
    fn serve_metrics(&mut self) {
        let Some(mut m) = self.metrics.take() else {
            return;
        };
        m.serve(&mut |page| match page {
            Page::Metrics => self.prometheus(),
            Page::Health => health_json(
                session::lock(&self.identity).state.word(),
                "attached",
                self.started.elapsed(),
            ),
        });
        self.metrics = Some(m);
    }

    fn prometheus(&mut self) -> String {
        let mut c = self.shared.counters();
        c.loop_body_max = self.loop_stats.max_body;
        c.prometheus(self.started.elapsed().as_secs())
    }

    /// The uplink ended with an error (rejected enrolment, revocation, enrolment timeout):
    /// what was not delivered is counted as dropped, the final counters printed, the error
    /// returned (main prints it, once).
    fn fatal(&mut self) -> Error {
        let e = self
            .shared
            .take_fatal()
            .unwrap_or_else(|| Error::runtime("the upload thread stopped unexpectedly"));
        let _ = self.drain();
        self.pipeline.refresh_stats();
        self.publish_counters();
        self.shared.count_undelivered_as_dropped();
        self.final_counters();
        e
    }

    fn final_counters(&self) {
        let c = self.shared.counters();
        let _ = writeln!(
            io::stderr(),
            "linuxguard-agent: final counters: {}",
            serde_json::to_string(&c.heartbeat_stats()).unwrap_or_default()
        );
    }

    /// SIGTERM: stop reading (after taking what the kernel already handed over), flush within
    /// the grace period, final heartbeat, exit 0.
    fn shutdown(&mut self) -> Result<()> {
        let why = if self.output_ended.is_some() {
            "the end of stdout".to_string()
        } else {
            self.stop.signal_name()
        };
        let t = Instant::now();
        self.drain()?;
        self.pipeline.refresh_stats();
        self.publish_counters();
        let state = session::lock(&self.identity).state;
        if state != State::Enrolled {
            // No identity: nothing can be delivered, and the uplink may be blocked in an
            // enrolment call; it is not waited for.
            let left = self.shared.count_undelivered_as_dropped();
            log::info!(
                "stopping on {why} while {}: {left} events observed and not delivered are \
                 counted as dropped",
                state.word()
            );
            self.final_counters();
            return Ok(());
        }
        log::info!(
            "stopping on {why}: flushing queued events (up to {} s), then a final heartbeat",
            self.cfg_grace.as_secs()
        );
        let deadline = Instant::now() + self.cfg_grace;
        self.shared.begin_flush(deadline);
        let wait = (deadline + FINAL_HEARTBEAT_ALLOWANCE).saturating_duration_since(Instant::now());
        match self.uplink_done.recv_timeout(wait) {
            Ok(()) => {
                if let Some(t) = self.uplink.take() {
                    let _ = t.join();
                }
            }
            Err(_) => {
                let left = self.shared.count_undelivered_as_dropped();
                log::warn!(
                    "the backend did not answer in time: exiting without waiting and without a \
                     final heartbeat; {left} events not delivered are counted as dropped"
                );
            }
        }
        if let Some(e) = self.shared.take_fatal() {
            return Err(e);
        }
        log::debug!(
            "shutdown: uplink done {} ms after the signal was seen",
            t.elapsed().as_millis()
        );
        self.final_counters();
        Ok(())
    }
}

/// A per-process random prefix for batch keys: unique across restarts, stable across retries.
fn batch_key_prefix() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The uplink may be blocked in a network call: it is not joined here (the process
        // exits right after); it stops at its next check of the flush deadline.
        self.shared.begin_flush(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_key_prefix_is_random_hex() {
        let (a, b) = (batch_key_prefix(), batch_key_prefix());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
