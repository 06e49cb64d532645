//! The production agent behind `start`: after the identity is established it attaches the
//! sensor, binds the socket and the metrics endpoint, starts the uplink thread, and runs the one
//! poll(2) loop (ring buffer → decode → enrich → queue; socket; metrics; stop) until SIGTERM or
//! revocation. Start-up phases are logged with their durations.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde_json::{Value, json};

use crate::attest::attestor::{self, Attestor};
use crate::config::{Config, Key};
use crate::counters::LoopTimings;
use crate::error::{Error, Result};
use crate::events::event::Event;
use crate::identity::plan::Plan;
use crate::identity::session::Session;
use crate::pipeline::sink::{JsonLines, Sink};
use crate::pipeline::{self, POLL_INTERVAL, Pipeline};
use crate::serve::metrics::Metrics;
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
    agent_id: String,
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
}

/// `start` after the plan is checked: identity, sensor, socket, uplink, loop.
pub fn run(cfg: Config, opts: Options, plan: Plan, t0: Instant) -> Result<()> {
    log::info!(
        "startup: identity derived in {} ms",
        t0.elapsed().as_millis()
    );
    let stop = Arc::new(Stop::install()?);
    let workload_id = plan.workload.hex.clone();
    let t = Instant::now();
    let Some(identity) = Session::start(plan, &stop)? else {
        log::info!("stopping on {} during enrolment", stop.signal_name());
        return Ok(());
    };
    log::info!(
        "startup: identity ready (enrolment or TLS cache) in {} ms ({} ms since start)",
        t.elapsed().as_millis(),
        t0.elapsed().as_millis()
    );
    let mut agent = Agent::new(&cfg, opts, identity, stop, workload_id, t0)?;
    drop(cfg);
    agent.run()
}

impl Agent {
    fn new(
        cfg: &Config,
        opts: Options,
        identity: Session,
        stop: Arc<Stop>,
        workload_id: String,
        t0: Instant,
    ) -> Result<Agent> {
        let output = cfg.get(Key::Output).unwrap_or("backend");
        let to_backend = output != "stdout";
        let to_stdout = output != "backend";
        let limits = Limits {
            queue_bytes: (cfg.num(Key::QueueMb).max(1) as usize) << 20,
            batch_events: cfg.num(Key::BatchMaxEvents).max(1) as usize,
            batch_bytes: cfg.num(Key::BatchMaxBytes).max(1024) as usize,
            batch_age: Duration::from_millis(cfg.num(Key::BatchMaxAgeMs).max(1)),
        };

        let t = Instant::now();
        let mut pipeline = Pipeline::new(&opts.pipeline)?;
        match Attestor::new(opts.attestor) {
            Ok(a) => pipeline.set_attestor(a),
            Err(e) => log::warn!("events will carry no container or pod fields: {e}"),
        }
        log::info!(
            "startup: sensors attached in {} ms ({} ms since start)",
            t.elapsed().as_millis(),
            t0.elapsed().as_millis()
        );

        let t = Instant::now();
        let socket = match &opts.socket {
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
        let metrics = match cfg.get(Key::MetricsAddr) {
            Some(addr) => Some(Metrics::bind(addr)?),
            None => None,
        };

        let shared = Arc::new(Shared::new(limits, batch_key_prefix(), to_backend));
        let agent_id = identity.agent_id().to_string();
        let (done_tx, uplink_done) = std::sync::mpsc::sync_channel(1);
        let uplink = {
            let up = Uplink::new(shared.clone(), identity, workload_id, t0);
            std::thread::Builder::new()
                .name("lg-uplink".into())
                .spawn(move || {
                    up.run();
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::runtime(format!("failed to start the upload thread: {e}")))?
        };
        let sink_stdout = to_stdout.then(|| JsonLines::new(io::stdout().lock()));
        log::info!(
            "agent {agent_id} running: events to {output}; queue {} MiB, batches of at most {} events / {} bytes / {} ms",
            limits.queue_bytes >> 20,
            limits.batch_events,
            limits.batch_bytes,
            limits.batch_age.as_millis()
        );
        Ok(Agent {
            cfg_grace: Duration::from_secs(cfg.num(Key::ShutdownGrace)),
            stop,
            shared,
            uplink: Some(uplink),
            uplink_done,
            socket,
            metrics,
            pipeline,
            sink_stdout,
            output_ended: None,
            agent_id,
            started: t0,
            loop_stats: LoopTimings::default(),
            stats_every: match cfg.num(Key::StatsInterval) {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
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
                let text = self.prometheus();
                if let Some(m) = &mut self.metrics {
                    m.serve(&text);
                }
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
        json!({
            "healthy": true,
            "agentId": self.agent_id,
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

    fn prometheus(&mut self) -> String {
        let mut c = self.shared.counters();
        c.loop_body_max = self.loop_stats.max_body;
        c.prometheus(self.started.elapsed().as_secs())
    }

    fn fatal(&self) -> Error {
        self.shared
            .take_fatal()
            .unwrap_or_else(|| Error::runtime("the upload thread stopped unexpectedly"))
    }

    /// SIGTERM: stop reading (after taking what the kernel already handed over), flush within
    /// the grace period, final heartbeat, exit 0.
    fn shutdown(&mut self) -> Result<()> {
        let why = if self.output_ended.is_some() {
            "the end of stdout".to_string()
        } else {
            self.stop.signal_name()
        };
        log::info!(
            "stopping on {why}: flushing queued events (up to {} s), then a final heartbeat",
            self.cfg_grace.as_secs()
        );
        let t = Instant::now();
        self.drain()?;
        self.pipeline.refresh_stats();
        self.publish_counters();
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
        let c = self.shared.counters();
        let _ = writeln!(
            io::stderr(),
            "linuxguard-agent: final counters: {}",
            serde_json::to_string(&c.heartbeat_stats()).unwrap_or_default()
        );
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
