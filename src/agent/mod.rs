//! The production agent behind `start`: watch first, enrol in the background. It binds the
//! socket (answering `status` from the first second, and attestation while the sensor
//! attaches), opens the outputs, attaches the sensor, starts the uplink thread (which obtains
//! the identity while events queue) when the backend is an output, and one thread per other
//! queued output, and runs the one poll(2) loop (ring buffer → decode → enrich → every output's
//! queue; socket; metrics; stop) until SIGTERM, a rejected enrolment or a revocation. Start-up
//! phases are logged with their durations.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde_json::{Value, json};

use crate::attest::attestor::{self, Attestor};
use crate::counters::{Counters, LoopTimings, OutputStats, Published};
use crate::error::{Error, Result};
use crate::events::event::Event;
use crate::identity::plan::Plan;
use crate::identity::session::{self, Session, SharedStatus, State};
use crate::output::queue::{Channel, Line};
use crate::output::{self, Kind, Worker};
use crate::pipeline::sink::{JsonLines, Sink};
use crate::pipeline::{self, POLL_INTERVAL, Pipeline};
use crate::serve::metrics::{self, Metrics, Page};
use crate::serve::socket;
use crate::stop::Stop;
use crate::uplink::uploader::{Shared, Uplink};

/// Kernel counters, ring fill and the socket's connection timeouts are refreshed this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// The longest one pass over the ring may take in the loop (whole batches): a flood of events
/// then delays a `status` or metrics request by about this much instead of until the ring is empty.
const DRAIN_BUDGET: Duration = Duration::from_millis(50);
/// After the grace period, the final heartbeat may take this much longer before we exit anyway
/// (its own timeout plus a second): the uplink has counted everything by then.
const FINAL_HEARTBEAT_ALLOWANCE: Duration =
    Duration::from_secs(crate::uplink::uploader::FINAL_HEARTBEAT_TIMEOUT.as_secs() + 1);
/// After the grace period, an output's last call (cut at the deadline) and the file's fsync may
/// take this much longer before we exit without it (counting what it did not deliver as
/// dropped): as long as the final heartbeat's allowance, so the longest stop is unchanged.
const OUTPUT_ALLOWANCE: Duration = Duration::from_secs(5);

/// The outputs as the loop sees them: where each event goes, and every output's counters.
struct Fanout {
    /// `--output`, in order.
    kinds: Vec<Kind>,
    primary: Kind,
    /// Stage counters the loop publishes (read by the uplink for heartbeats).
    published: Arc<Published>,
    /// The queued outputs (the backend and the output threads), each with its channel.
    chans: Vec<(Kind, Arc<Channel>)>,
}

impl Fanout {
    fn has(&self, k: Kind) -> bool {
        self.kinds.contains(&k)
    }

    fn stats(&self, k: Kind) -> OutputStats {
        if k == Kind::Stdout {
            return self.published.stdout_stats();
        }
        self.chans
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, c)| c.stats())
            .unwrap_or_default()
    }

    /// One snapshot of every counter: the primary output's at the top, every output's below.
    fn counters(&self) -> Counters {
        let all: Vec<OutputStats> = self.kinds.iter().map(|k| self.stats(*k)).collect();
        Counters::new(&self.published, &self.stats(self.primary), all)
    }

    /// The outputs other than stdout, for a log line (`the backend`, `file, otlp`).
    fn others_than_stdout(&self) -> String {
        let names: Vec<&str> = self
            .kinds
            .iter()
            .filter(|k| **k != Kind::Stdout)
            .map(|k| match k {
                Kind::Backend => "the backend",
                k => k.name(),
            })
            .collect();
        names.join(", ")
    }
}

/// Serializes drained events (once each) for every output's queue and/or stdout; the poll
/// loop's sink.
struct LoopSink<'a> {
    out: &'a Fanout,
    stdout: Option<JsonLines<io::StdoutLock<'static>>>,
    /// The event being sent, serialized (reused from event to event).
    line: Vec<u8>,
    /// The pass's events, each serialized once and shared by every queue.
    lines: Vec<Line>,
    /// Events that did not serialize (counted with the decode drops).
    unserializable: u64,
    /// Lines written to stdout, and lines that could not be (stdout closed or failed).
    stdout_sent: u64,
    stdout_lost: u64,
    /// Stdout ended during this pass: it was closed (`Ok`), or a write failed (`Err`).
    stdout_ended: Option<std::result::Result<(), String>>,
}

impl<'a> LoopSink<'a> {
    fn new(out: &'a Fanout, stdout: Option<JsonLines<io::StdoutLock<'static>>>) -> Self {
        LoopSink {
            out,
            stdout,
            line: Vec::with_capacity(4096),
            lines: Vec::new(),
            unserializable: 0,
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
            self.unserializable += 1;
            return Ok(true);
        }
        match &mut self.stdout {
            Some(out) => {
                let res = out.send_line(&self.line);
                self.settle_stdout(res);
            }
            // Stdout is an output and it is gone: this event cannot go there.
            None if self.out.has(Kind::Stdout) => self.stdout_lost += 1,
            None => {}
        }
        if !self.out.chans.is_empty() {
            // One exact-size copy shared by every queue; `line` keeps its capacity.
            self.lines.push(Line::from(&self.line[..]));
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<bool> {
        for (_, c) in &self.out.chans {
            c.push_all(&self.lines);
        }
        self.lines.clear();
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
    out: Arc<Fanout>,
    /// The uplink (the backend output) when the backend is among the outputs.
    up: Option<UplinkThread>,
    /// The other queued outputs' threads.
    workers: Vec<Worker>,
    // Drop order: the socket and metrics before the pipeline (which owns BPF objects).
    socket: Option<socket::Server>,
    metrics: Option<Metrics>,
    pipeline: Pipeline,
    sink_stdout: Option<JsonLines<io::StdoutLock<'static>>>,
    /// Stdout was the only output and it ended (closed, or the write error): the loop stops.
    output_ended: Option<std::result::Result<(), String>>,
    started: Instant,
    pub loop_stats: LoopTimings,
    /// `--stats-interval`: a `{"type":"stats"}` event this often (None: off).
    stats_every: Option<Duration>,
    /// Stats events emitted (counted as observed, so sent + dropped still adds up).
    stats_events: u64,
    /// Open socket connections, as of the last socket pass (for the `status` answer).
    socket_conns: usize,
    /// Events that did not serialize (counted with the decode drops).
    unserializable: u64,
}

/// The uplink thread and what the loop shares with it.
struct UplinkThread {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
    /// The identity's state, written by the uplink thread.
    identity: SharedStatus,
}

/// The enrolment state word for `status` and `/healthz`: `off` without the backend.
fn enrolment_word(identity: Option<&SharedStatus>) -> &'static str {
    identity.map_or("off", |i| session::lock(i).state.word())
}

/// The components' options (the rest still comes from the configuration).
pub struct Options {
    pub pipeline: pipeline::Options,
    pub attestor: attestor::Options,
    /// `--socket` path and mode.
    pub socket: Option<(PathBuf, u32)>,
    /// `--output` (the list, each queue's limits, each output's own options).
    pub outputs: output::Options,
    /// `--metrics-addr` and `--metrics-allow-remote`.
    pub metrics: Option<metrics::Options>,
    /// `--shutdown-grace`.
    pub grace: Duration,
    /// `--stats-interval`: a `{"type":"stats"}` event this often (None: off).
    pub stats_every: Option<Duration>,
}

/// `start` after the plan is checked: socket, outputs, sensor, then the uplink (identity in the
/// background, when the backend is an output), the output threads and the loop. `plan` is
/// `None` when the backend is not among the outputs: no enrolment at all.
pub fn run(opts: Options, plan: Option<Plan>, t0: Instant) -> Result<()> {
    log::info!(
        "startup: identity derived in {} ms",
        t0.elapsed().as_millis()
    );
    let stop = Arc::new(Stop::install()?);
    // No network call: the TLS cache is read, and a start that could never obtain an identity
    // (no credential, no usable cache) ends here with exit 3, before the sensor is loaded.
    let session = match plan {
        Some(p) => Some(Session::new(p, t0)?),
        None => None,
    };
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
    identity: Option<&SharedStatus>,
    out: &Fanout,
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
                Page::Health => health_json(enrolment_word(identity), "attaching", t0.elapsed()),
                Page::Metrics => out.counters().prometheus(t0.elapsed().as_secs()),
            });
        }
        let Some(server) = server.as_deref_mut() else {
            continue;
        };
        let mut answer = |req: socket::Request, peer: &socket::Peer| -> Value {
            match req {
                socket::Request::Status => {
                    let id = identity.map(|i| session::lock(i).clone());
                    let c = out.counters();
                    socket::ok_reply(json!({
                        "healthy": true,
                        "enrolment": enrolment_word(identity),
                        "agentId": id.as_ref().and_then(|i| i.agent_id.clone()),
                        "identity": id.as_ref().map(|i| i.json()),
                        "sensor": "attaching",
                        "uptimeSeconds": t0.elapsed().as_secs(),
                        "stats": c.heartbeat_stats(),
                        "outputs": c.outputs_json(),
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
    fn new(opts: Options, session: Option<Session>, stop: Arc<Stop>, t0: Instant) -> Result<Agent> {
        let limits = opts.outputs.limits;
        let kinds = opts.outputs.kinds.clone();
        let identity = session.as_ref().map(Session::status);
        let published = Arc::new(Published::default());
        let prefix = batch_key_prefix();
        let chan = |k: Kind| Arc::new(Channel::new(k.name(), limits, prefix.clone()));
        let mut chans = Vec::new();
        let shared = match &session {
            Some(_) => {
                let c = chan(Kind::Backend);
                chans.push((Kind::Backend, c.clone()));
                Some(Arc::new(Shared::new(c, published.clone())))
            }
            None => None,
        };
        // The other queued outputs open now (a file that cannot be written fails the start
        // before the sensor loads); their threads start once the sensor is attached.
        let mut delivers = Vec::new();
        for k in &kinds {
            if let Some(d) = output::open(*k, &opts.outputs)? {
                let c = chan(*k);
                chans.push((*k, c.clone()));
                delivers.push((c, d));
            }
        }
        let out = Arc::new(Fanout {
            primary: opts.outputs.primary(),
            kinds,
            published,
            chans,
        });

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
                    let (a, id, o, done) = (attestor.as_mut(), identity.as_ref(), &*out, &done);
                    std::thread::Builder::new()
                        .name("lg-early-socket".into())
                        .spawn_scoped(scope, move || {
                            serve_while_attaching(server, m, a, id, o, done, t0)
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

        let _ = out.published.event_types.set(pipeline.event_types());
        log::info!("sensor: {}", pipeline.event_types().line());
        let mut workers = Vec::new();
        for (c, d) in delivers {
            workers.push(Worker::start(c, d)?);
        }
        let names: Vec<&str> = out.kinds.iter().map(|k| k.name()).collect();
        log::info!(
            "running: events to {}; each queue {} MiB, batches of at most {} events / {} bytes / {} ms",
            names.join(", "),
            limits.queue_bytes >> 20,
            limits.batch_events,
            limits.batch_bytes,
            limits.batch_age.as_millis()
        );
        let up = match (session, shared, identity) {
            (Some(session), Some(shared), Some(identity)) => {
                let state = session.state();
                let (done_tx, done) = std::sync::mpsc::sync_channel(1);
                let up = Uplink::new(shared.clone(), session, t0);
                let thread = std::thread::Builder::new()
                    .name("lg-uplink".into())
                    .spawn(move || {
                        up.run();
                        let _ = done_tx.send(());
                    })
                    .map_err(|e| {
                        Error::runtime(format!("failed to start the upload thread: {e}"))
                    })?;
                let id = session::lock(&identity).clone();
                match state {
                    State::Enrolled => log::info!(
                        "startup: agent {} watching and uploading",
                        id.agent_id.as_deref().unwrap_or_default()
                    ),
                    State::Enrolling | State::Expired => log::info!(
                        "startup: watching before the identity is ready: events queue (up to {} \
                         MiB, oldest dropped first and counted) while waiting for {}",
                        limits.queue_bytes >> 20,
                        id.waiting_for
                    ),
                }
                Some(UplinkThread {
                    shared,
                    thread: Some(thread),
                    done,
                    identity,
                })
            }
            _ => {
                log::info!("startup: watching; no backend among the outputs, so no enrolment");
                None
            }
        };
        let sink_stdout = out
            .has(Kind::Stdout)
            .then(|| JsonLines::new(io::stdout().lock()));
        Ok(Agent {
            cfg_grace: opts.grace,
            stop,
            out,
            up,
            workers,
            socket,
            metrics,
            pipeline,
            sink_stdout,
            output_ended: None,
            started: t0,
            loop_stats: LoopTimings::default(),
            stats_every: opts.stats_every,
            stats_events: 0,
            socket_conns: 0,
            unserializable: 0,
        })
    }

    /// The poll loop. Returns on SIGINT/SIGTERM (after the flush) or with the uplink's error.
    pub fn run(&mut self) -> Result<()> {
        let mut next_housekeeping = Instant::now();
        // The ring buffer wakes us only when it is partly full: drain at least this often.
        let mut next_drain = Instant::now() + POLL_INTERVAL;
        let mut next_stats = self.stats_every.map(|d| Instant::now() + d);
        loop {
            if self
                .up
                .as_ref()
                .is_some_and(|u| u.shared.failed.load(Ordering::SeqCst))
            {
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
            if self.stop.take_reload() {
                self.pipeline.reload_rules();
            }
            if ring_ready || body >= next_drain {
                // Bounded: under a flood the socket and the metrics are served between passes.
                self.drain_within(Some(DRAIN_BUDGET))?;
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

    /// Everything in the ring (at shutdown and before the final counts).
    fn drain(&mut self) -> Result<()> {
        self.drain_within(None)
    }

    fn drain_within(&mut self, budget: Option<Duration>) -> Result<()> {
        let out = self.out.clone();
        let mut sink = LoopSink::new(&out, self.sink_stdout.take());
        let res = self.pipeline.drain_within(&mut sink, budget);
        self.settle_sink(sink);
        self.publish_counters();
        res.map(|_| ())
    }

    /// Takes back stdout and its counts after a pass. A line stdout could not take is a drop at
    /// stdout's output stage; when stdout ends and it was the only output, the agent stops, as
    /// `watch` does; otherwise the other outputs go on with every event.
    fn settle_sink(&mut self, mut sink: LoopSink<'_>) {
        self.sink_stdout = sink.stdout.take();
        self.unserializable += sink.unserializable;
        let c = &self.out.published;
        c.stdout_sent.fetch_add(sink.stdout_sent, Ordering::Relaxed);
        c.stdout_lost.fetch_add(sink.stdout_lost, Ordering::Relaxed);
        if let Some(ended) = sink.stdout_ended {
            let why = match &ended {
                Ok(()) => "was closed".to_string(),
                Err(e) => format!("failed ({e})"),
            };
            if self.out.kinds.len() > 1 {
                log::warn!(
                    "stdout {why}: events now go to {} only",
                    self.out.others_than_stdout()
                );
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
        let out = self.out.clone();
        let mut sink = LoopSink::new(&out, self.sink_stdout.take());
        let res = sink.send(&ev).and_then(|_| sink.flush());
        self.settle_sink(sink);
        res.map(|_| ())
    }

    /// Copies the pipeline's and attestor's counters where the uplink reads them.
    fn publish_counters(&mut self) {
        let s = &self.pipeline.stats;
        let c = &self.out.published;
        let seen: u64 = s.seen.iter().sum();
        c.observed
            .store(seen + s.user_drops + self.stats_events, Ordering::Relaxed);
        c.dropped_kernel
            .store(s.kernel_drops_total(), Ordering::Relaxed);
        c.dropped_decode
            .store(s.user_drops + self.unserializable, Ordering::Relaxed);
        for (to, n) in c.filtered_kernel.iter().zip(s.kernel_filtered) {
            to.store(n, Ordering::Relaxed);
        }
        let misses = self
            .pipeline
            .attestor_mut()
            .map_or(0, |a| a.stats.kubelet_misses);
        c.kubelet_misses.store(misses, Ordering::Relaxed);
    }

    fn identity(&self) -> Option<&SharedStatus> {
        self.up.as_ref().map(|u| &u.identity)
    }

    /// Every counter, for the `status` answer.
    fn status_json(&mut self) -> Value {
        let c = self.out.counters();
        let ls = self.loop_stats;
        let mean_us = ls.mean_body().as_micros() as u64;
        let attestor = self
            .pipeline
            .attestor_mut()
            .map_or(Value::Null, |a| a.status_json());
        let id = self.identity().map(|i| session::lock(i).clone());
        let queued_bytes = self
            .out
            .chans
            .iter()
            .find(|(k, _)| *k == self.out.primary)
            .map_or(0, |(_, c)| c.queued_bytes());
        json!({
            // Healthy in every enrolment state: a restart would not obtain the identity any
            // sooner, and would lose the queued events (the liveness probe passes).
            "healthy": true,
            "enrolment": enrolment_word(self.identity()),
            "agentId": id.as_ref().and_then(|i| i.agent_id.clone()),
            "identity": id.as_ref().map(|i| i.json()),
            "sensor": "attached",
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "stats": c.heartbeat_stats(),
            "outputs": c.outputs_json(),
            "pipeline": {
                "droppedDecode": c.dropped_decode,
                "queuedEvents": c.queued,
                "queuedBytes": queued_bytes,
                "socketConnections": self.socket_conns,
                "processTable": self.pipeline.processes(),
                "batchesAccepted": c.batches_accepted,
                "uploadFailures": c.upload_failures,
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
                enrolment_word(self.identity()),
                "attached",
                self.started.elapsed(),
            ),
        });
        self.metrics = Some(m);
    }

    fn prometheus(&mut self) -> String {
        let mut c = self.out.counters();
        c.loop_body_max = self.loop_stats.max_body;
        c.prometheus(self.started.elapsed().as_secs())
    }

    /// The uplink ended with an error (rejected enrolment, revocation, enrolment timeout):
    /// what the backend did not get is counted as dropped, the other outputs flush within the
    /// grace period, the final counters are printed and the error returned (main prints it,
    /// once).
    fn fatal(&mut self) -> Error {
        let e = self
            .up
            .as_ref()
            .and_then(|u| u.shared.take_fatal())
            .unwrap_or_else(|| Error::runtime("the upload thread stopped unexpectedly"));
        let _ = self.drain();
        self.pipeline.refresh_stats();
        self.publish_counters();
        if let Some(u) = &self.up {
            u.shared.chan.abandon();
        }
        self.flush_outputs(Instant::now() + self.cfg_grace);
        self.final_counters();
        e
    }

    /// Asks every output thread to deliver what it holds until `deadline` and waits for them
    /// (a little longer for a last call); an output still busy then is left behind, what it did
    /// not deliver counted as dropped.
    fn flush_outputs(&mut self, deadline: Instant) {
        for w in &self.workers {
            w.chan.begin_flush(deadline);
        }
        for w in &mut self.workers {
            w.wait(deadline + OUTPUT_ALLOWANCE);
        }
    }

    fn final_counters(&self) {
        let c = self.out.counters();
        let mut v = serde_json::to_value(c.heartbeat_stats()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("outputs".into(), c.outputs_json());
        }
        let _ = writeln!(io::stderr(), "linuxguard-agent: final counters: {v}");
    }

    /// SIGTERM: stop reading (after taking what the kernel already handed over); every output
    /// delivers what it holds within the grace period; the backend's final heartbeat; exit 0.
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
        let deadline = Instant::now() + self.cfg_grace;
        let mut uplink_running = false;
        if let Some(u) = &self.up {
            let state = session::lock(&u.identity).state;
            if state == State::Enrolled {
                log::info!(
                    "stopping on {why}: flushing queued events (up to {} s), then a final \
                     heartbeat",
                    self.cfg_grace.as_secs()
                );
                u.shared.chan.begin_flush(deadline);
                uplink_running = true;
            } else {
                // No identity: nothing can reach the backend, and the uplink may be blocked in
                // an enrolment call; it is not waited for.
                let left = u.shared.chan.abandon();
                log::info!(
                    "stopping on {why} while {}: {left} events observed and not delivered to \
                     the backend are counted as dropped",
                    state.word()
                );
            }
        } else {
            log::info!(
                "stopping on {why}: flushing queued events (up to {} s)",
                self.cfg_grace.as_secs()
            );
        }
        self.flush_outputs(deadline);
        if uplink_running {
            if let Some(u) = &mut self.up {
                let wait = (deadline + FINAL_HEARTBEAT_ALLOWANCE)
                    .saturating_duration_since(Instant::now());
                match u.done.recv_timeout(wait) {
                    Ok(()) => {
                        if let Some(t) = u.thread.take() {
                            let _ = t.join();
                        }
                    }
                    Err(_) => {
                        let left = u.shared.chan.abandon();
                        log::warn!(
                            "the backend did not answer in time: exiting without waiting and \
                             without a final heartbeat; {left} events not delivered are counted \
                             as dropped"
                        );
                    }
                }
                if let Some(e) = u.shared.take_fatal() {
                    return Err(e);
                }
            }
        }
        log::debug!(
            "shutdown: outputs done {} ms after the signal was seen",
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
        // The output threads may be blocked in a call: they are not joined here (the process
        // exits right after); they stop at their next check of the flush deadline.
        for (_, c) in &self.out.chans {
            c.begin_flush(Instant::now());
        }
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
