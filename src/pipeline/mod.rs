//! The pipeline: the sensor plus everything between the ring buffer and a sink (kernel → decode
//! → build → enrich → sink). `watch` drives it with stdout as its sink; the agent loop with the
//! upload queue.

pub mod sink;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::{AsRawLibbpf, RingBuffer, RingBufferBuilder};

use crate::counters::Stats;
use crate::error::{Error, Result};
use crate::events::alert::AlertInfo;
use crate::events::event::{Builder, Event};
use crate::events::proctable::{self, ProcTable};
use crate::events::redact::{self, Redactor};
use crate::rules::{self, Rules};
use crate::sensor::decode::{self, DecodeError, Record};
use crate::sensor::{self, Sensor};
use sink::Sink;

/// Records consumed from the ring buffer per batch (bounds user-space memory).
const BATCH: usize = 512;
/// The longest a record waits in the ring buffer before it is read: the kernel wakes the reader
/// only once an eighth of the ring is full, so the loop polls at least this often.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What the pipeline needs: the sensor's knobs and where to seed the process table from.
#[derive(Debug, Clone)]
pub struct Options {
    pub sensor: sensor::Options,
    /// `/proc` (or `--proc-root`): the process table is seeded from it.
    pub proc_root: PathBuf,
    /// Which flag values exec events redact (`--redact-flags`, the agent's own secrets).
    pub redact: redact::Options,
    /// The detection rules (`--rules`, the defaults unless `--no-default-rules`).
    pub rules: rules::Options,
}

/// The sensor plus everything between the ring buffer and a sink.
pub struct Pipeline {
    // Field order matters for drop: the ring buffer goes before the sensor that owns its map.
    ring: RingBuffer<'static>,
    queue: Rc<RefCell<VecDeque<std::result::Result<Record, DecodeError>>>>,
    sensor: Sensor,
    procs: ProcTable,
    builder: Builder,
    /// Workload attribution (container + pod fields); `None` when it could not be set up.
    attestor: Option<crate::attest::attestor::Attestor>,
    /// The detection rules; `None` when there are none to evaluate.
    rules: Option<Rules>,
    /// `--exclude`'s items (a reload merges the rule files' anew with these).
    cli_exclude: Vec<sensor::exclude::Exclusion>,
    /// The alerts of the event being handled (reused).
    alerts: Vec<AlertInfo>,
    pub stats: Stats,
}

impl Pipeline {
    /// Seeds the process table, loads and attaches the sensor, and sets up the ring buffer.
    pub fn new(opts: &Options) -> Result<Pipeline> {
        // The rules first: a bad rule file stops the start before the sensor attaches.
        let rules = if opts.rules.is_empty() {
            None
        } else {
            let r = Rules::new(opts.rules.clone()).map_err(|f| {
                Error::config(format!(
                    "the rules were refused (fix them, check with --check-rules FILE):\n{}",
                    rules::findings_text(&f)
                ))
            })?;
            log::info!("rules: {} in use", r.len());
            Some(r)
        };
        let proc_root = &opts.proc_root;
        let mut procs = ProcTable::new(proctable::CAPACITY);
        match procs.seed(proc_root) {
            Ok(n) => log::debug!(
                "process table seeded with {n} processes from {}",
                proc_root.display()
            ),
            Err(e) => log::warn!(
                "could not read {} to seed the process table ({e}): parents of processes started \
                 before the agent will have no executable",
                proc_root.display()
            ),
        }
        // The rule files' exclusions join --exclude's, in the kernel before anything attaches.
        let mut sensor_opts = opts.sensor.clone();
        let cli_exclude = opts.sensor.exclude.items.clone();
        if let Some(r) = &rules {
            for x in &r.exclude {
                if !sensor_opts.exclude.items.contains(x) {
                    sensor_opts.exclude.items.push(x.clone());
                }
            }
        }
        let sensor = Sensor::start(&sensor_opts)?;
        log::debug!("sensor ready: {}", sensor.event_types().line());
        let queue: Rc<RefCell<VecDeque<_>>> = Rc::new(RefCell::new(VecDeque::with_capacity(BATCH)));
        let q = queue.clone();
        let mut rb = RingBufferBuilder::new();
        rb.add(sensor.events_map(), move |bytes: &[u8]| {
            q.borrow_mut().push_back(decode::decode(bytes));
            0
        })
        .map_err(|e| Error::runtime(format!("failed to set up ring buffer `events`: {e}")))?;
        let ring = rb
            .build()
            .map_err(|e| Error::runtime(format!("failed to open ring buffer `events`: {e}")))?;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let stats = Stats {
            ring_size: opts.sensor.ring_buffer_mb << 20,
            rules: rules.as_ref().map(|r| r.counts).unwrap_or_default(),
            ..Stats::default()
        };
        let mut builder = Builder::new(&host);
        builder.set_redactor(Redactor::new(
            opts.redact.clone(),
            redact::Identity::this_process(),
        ));
        Ok(Pipeline {
            ring,
            queue,
            sensor,
            procs,
            builder,
            attestor: None,
            rules,
            cli_exclude,
            alerts: Vec::new(),
            stats,
        })
    }

    /// Adds workload attribution: every event then carries `container`/`orchestrator` where known.
    pub fn set_attestor(&mut self, a: crate::attest::attestor::Attestor) {
        self.attestor = Some(a);
    }

    /// The attestor (the socket server answers through it).
    pub fn attestor_mut(&mut self) -> Option<&mut crate::attest::attestor::Attestor> {
        self.attestor.as_mut()
    }

    /// The ring buffer's epoll fd, for an outer poll loop: readable when enough records are
    /// waiting; the loop must also call [`Pipeline::drain`] at least every [`POLL_INTERVAL`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the epoll fd is owned by `self.ring` and stays open as long as it lives,
        // which the returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }

    /// Moves every waiting record to `sink`, in batches, flushing after each batch.
    /// Returns `Ok(false)` when the sink closed.
    pub fn drain(&mut self, sink: &mut dyn Sink) -> Result<bool> {
        self.drain_within(sink, None)
    }

    /// As `drain`, but returns after the batch that ends past `budget` (the rest stays in the
    /// ring for the next pass), so a loop serving other descriptors is not held by a flood.
    pub fn drain_within(
        &mut self,
        sink: &mut dyn Sink,
        budget: Option<std::time::Duration>,
    ) -> Result<bool> {
        let started = std::time::Instant::now();
        let fill = self.ring_fill();
        self.stats.observe_fill(fill);
        loop {
            let n = self.ring.consume_raw_n(BATCH);
            if n < 0 {
                return Err(Error::runtime(format!(
                    "failed to read ring buffer `events`: {}",
                    io::Error::from_raw_os_error(-n)
                )));
            }
            let mut open = true;
            while let Some(item) = self.queue.borrow_mut().pop_front() {
                match item {
                    Ok(rec) => {
                        let mut ev = self.builder.build(rec, &mut self.procs);
                        if let Some(a) = &mut self.attestor {
                            enrich(&mut ev, a);
                        }
                        self.stats.count(ev.kind);
                        if ev.dns.as_ref().is_some_and(|d| d.malformed.is_some()) {
                            self.stats.dns_malformed += 1;
                        }
                        if open && !sink.send(&ev)? {
                            open = false;
                        }
                        if let Some(r) = &self.rules {
                            r.evaluate(&ev, &mut self.alerts);
                            for info in self.alerts.drain(..) {
                                let alert = self.builder.alert(&ev, info);
                                self.stats.count(alert.kind);
                                if open && !sink.send(&alert)? {
                                    open = false;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.stats.user_drops += 1;
                        log::debug!("dropped an undecodable record: {e}");
                    }
                }
            }
            if !open || !sink.flush()? {
                return Ok(false);
            }
            if (n as usize) < BATCH || budget.is_some_and(|b| started.elapsed() >= b) {
                return Ok(true);
            }
        }
    }

    /// Re-reads the rule files (`SIGHUP`): a bad file keeps the rules in use (logged, counted).
    pub fn reload_rules(&mut self) {
        match &mut self.rules {
            Some(r) => {
                if r.reload() {
                    let mut items = self.cli_exclude.clone();
                    for x in &r.exclude {
                        if !items.contains(x) {
                            items.push(x.clone());
                        }
                    }
                    for why in self.sensor.set_exclusions(&items) {
                        log::warn!("SIGHUP: exclusion not applied: {why}");
                    }
                }
                self.stats.rules = r.counts;
            }
            None => log::info!("SIGHUP: no rules to reload (--no-default-rules and no --rules)"),
        }
    }

    /// Refreshes the kernel counters and ring-buffer fill, and re-syncs the clock.
    pub fn refresh_stats(&mut self) {
        self.stats.kernel_drops = self.sensor.kernel_drops();
        self.stats.kernel_filtered = self.sensor.kernel_filtered();
        self.stats.observe_fill(self.ring_fill());
        self.builder.clock = crate::events::event::Clock::now();
    }

    fn ring_fill(&self) -> u64 {
        let rb = self.ring.as_libbpf_object().as_ptr();
        // SAFETY: `rb` is the live ring_buffer owned by `self.ring`; ring index 0 exists (one
        // map was added); both calls only read the producer/consumer positions.
        unsafe {
            let r = libbpf_rs::libbpf_sys::ring_buffer__ring(rb, 0);
            if r.is_null() {
                0
            } else {
                libbpf_rs::libbpf_sys::ring__avail_data_size(r) as u64
            }
        }
    }

    /// How well each event type is watched on this kernel (decided when the sensor started).
    pub fn event_types(&self) -> crate::sensor::EventTypes {
        self.sensor.event_types()
    }

    /// Processes in the process table.
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    pub fn stats_event(&mut self) -> Event {
        let snap = self.stats.snapshot();
        self.builder.stats(snap)
    }
}

/// Fills the event's `container`/`orchestrator` from the attestor (never blocks on the kubelet).
fn enrich(ev: &mut Event, a: &mut crate::attest::attestor::Attestor) {
    let Some(p) = &ev.process else { return };
    let e = a.enrich(p.pid, p.cgroup.id, p.cgroup.memcg_v1_id);
    ev.container = e.container.and_then(|c| serde_json::to_value(c).ok());
    ev.orchestrator = e.kubernetes.and_then(|k| serde_json::to_value(k).ok());
}
