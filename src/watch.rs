//! `watch`: the sensor's events as JSON lines on stdout. Also home of the reusable pipeline
//! (kernel → decode → enrich → sink) that `start` drives with its own sink and outer poll loop.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use libbpf_rs::{AsRawLibbpf, RingBuffer, RingBufferBuilder};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::cli::Args;
use crate::config::{Config, Key};
use crate::decode::{self, DecodeError, Record};
use crate::error::{Error, Result};
use crate::event::{Builder, Event};
use crate::proctable::{self, ProcTable};
use crate::sensor::{Options, Sensor};
use crate::stats::Stats;

/// Records consumed from the ring buffer per batch (bounds user-space memory).
const BATCH: usize = 512;
/// The longest a record waits in the ring buffer before it is read: the kernel wakes the reader
/// only once an eighth of the ring is full, so the loop polls at least this often.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Stats on stderr this often when `--stats-interval` is 0.
const DEFAULT_STATS_EVERY: Duration = Duration::from_secs(60);

/// Where events go. `watch` writes JSON lines to stdout; `start` queues them for upload.
pub trait Sink {
    /// Takes one event. `Ok(false)`: the sink is closed (a reader went away); stop cleanly.
    fn send(&mut self, ev: &Event) -> Result<bool>;
    /// End of a poll batch: push buffered events out. `Ok(false)`: closed.
    fn flush(&mut self) -> Result<bool>;
}

/// Lines are written out once this many bytes are waiting, else at the end of a poll batch.
const WRITE_AT: usize = 64 * 1024;

/// JSON lines serialized into one reused buffer and written with one `write` per poll batch
/// (stdout for `watch`).
pub struct JsonLines<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// Lines in `buf`, not written yet.
    pending: u64,
    /// Lines written, and lines lost in a failed write, since the last [`JsonLines::take_counts`].
    written: u64,
    lost: u64,
}

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        JsonLines {
            out: w,
            // Room for the threshold plus one large event: the buffer rarely regrows.
            buf: Vec::with_capacity(WRITE_AT + 16 * 1024),
            pending: 0,
            written: 0,
            lost: 0,
        }
    }

    /// Lines written out and lines lost (in a write that failed) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.written),
            std::mem::take(&mut self.lost),
        )
    }

    /// Takes one already serialized event (without its newline).
    pub fn send_line(&mut self, line: &[u8]) -> Result<bool> {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.pending += 1;
        self.write_if_full()
    }

    fn write_if_full(&mut self) -> Result<bool> {
        if self.buf.len() < WRITE_AT {
            return Ok(true);
        }
        self.write_out()
    }

    fn write_out(&mut self) -> Result<bool> {
        let res = self.out.write_all(&self.buf);
        self.buf.clear();
        let lines = std::mem::take(&mut self.pending);
        match res {
            Ok(()) => {
                self.written += lines;
                Ok(true)
            }
            Err(e) => {
                self.lost += lines;
                closed_or_err(e)
            }
        }
    }
}

fn closed_or_err(e: io::Error) -> Result<bool> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(Error::runtime(format!(
            "failed to write events to stdout: {e}"
        )))
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn send(&mut self, ev: &Event) -> Result<bool> {
        let start = self.buf.len();
        if let Err(e) = ev.write_json(&mut self.buf) {
            self.buf.truncate(start);
            return Err(Error::runtime(format!("failed to serialize an event: {e}")));
        }
        self.buf.push(b'\n');
        self.pending += 1;
        self.write_if_full()
    }
    fn flush(&mut self) -> Result<bool> {
        if !self.buf.is_empty() && !self.write_out()? {
            return Ok(false);
        }
        self.out.flush().map_or_else(closed_or_err, |()| Ok(true))
    }
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
    attestor: Option<crate::attest::Attestor>,
    pub stats: Stats,
}

impl Pipeline {
    /// Seeds the process table, loads and attaches the sensor, and sets up the ring buffer.
    pub fn new(cfg: &Config) -> Result<Pipeline> {
        let ring_buffer_mb = cfg.num(Key::RingBufferMb);
        let proc_root = cfg
            .path(Key::ProcRoot)
            .unwrap_or_else(|| std::path::PathBuf::from("/proc"));
        let mut procs = ProcTable::new(proctable::CAPACITY);
        match procs.seed(&proc_root) {
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
        let sensor = Sensor::start(&Options {
            ring_buffer_mb,
            own_tgid: std::process::id(),
            // An eighth of the ring: batches under load, far from filling it.
            wakeup_bytes: (ring_buffer_mb << 20) / 8,
            compat_syscalls: cfg.flag(Key::CompatSyscalls),
        })?;
        let missing: Vec<&str> = sensor
            .hooks
            .iter()
            .filter(|h| h.attached.is_none())
            .map(|h| h.event)
            .collect();
        if missing.is_empty() {
            log::debug!(
                "sensor ready: all {} event types attached",
                sensor.hooks.len()
            );
        } else {
            log::warn!(
                "sensor ready without: {} (those events will not be reported)",
                missing.join(", ")
            );
        }
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
            ring_size: ring_buffer_mb << 20,
            ..Stats::default()
        };
        Ok(Pipeline {
            ring,
            queue,
            sensor,
            procs,
            builder: Builder::new(&host),
            attestor: None,
            stats,
        })
    }

    /// Adds workload attribution: every event then carries `container`/`orchestrator` where known.
    pub fn set_attestor(&mut self, a: crate::attest::Attestor) {
        self.attestor = Some(a);
    }

    /// The attestor (the socket server answers through it).
    pub fn attestor_mut(&mut self) -> Option<&mut crate::attest::Attestor> {
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
                        if open && !sink.send(&ev)? {
                            open = false;
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
            if (n as usize) < BATCH {
                return Ok(true);
            }
        }
    }

    /// Refreshes the kernel counters and ring-buffer fill, and re-syncs the clock.
    pub fn refresh_stats(&mut self) {
        self.stats.kernel_drops = self.sensor.kernel_drops();
        self.stats.observe_fill(self.ring_fill());
        self.builder.clock = crate::event::Clock::now();
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
fn enrich(ev: &mut Event, a: &mut crate::attest::Attestor) {
    let Some(p) = &ev.process else { return };
    let e = a.enrich(p.pid, p.cgroup.id, p.cgroup.memcg_v1_id);
    ev.container = e.container.and_then(|c| serde_json::to_value(c).ok());
    ev.orchestrator = e.kubernetes.and_then(|k| serde_json::to_value(k).ok());
}

pub fn run(cfg: Config, _args: &Args) -> Result<()> {
    let stop = crate::stop::Stop::install()?;
    let mut p = Pipeline::new(&cfg)?;
    match crate::attest::Attestor::new(&cfg) {
        Ok(a) => p.set_attestor(a),
        Err(e) => log::warn!("events will carry no container or pod fields: {e}"),
    }
    let interval = cfg.num(Key::StatsInterval);
    let (every, as_events) = if interval == 0 {
        (DEFAULT_STATS_EVERY, false)
    } else {
        (Duration::from_secs(interval), true)
    };
    let stdout = io::stdout().lock();
    let mut sink = JsonLines::new(stdout);
    log::info!("watching: events on stdout as JSON lines; Ctrl-C to stop");
    let mut next_stats = Instant::now() + every;
    let mut open = true;
    while open && !stop.requested() {
        let wait = next_stats.saturating_duration_since(Instant::now());
        let timeout =
            PollTimeout::try_from(wait.min(POLL_INTERVAL)).unwrap_or(PollTimeout::from(100u16));
        let mut fds = [
            PollFd::new(p.fd(), PollFlags::POLLIN),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::runtime(format!(
                    "failed to poll the ring buffer: {e}"
                )));
            }
        }
        open = p.drain(&mut sink)?;
        if Instant::now() >= next_stats {
            p.refresh_stats();
            if as_events {
                let ev = p.stats_event();
                open = open && sink.send(&ev)? && sink.flush()?;
            } else {
                log::info!("{}", p.stats.line());
            }
            // The next deadline counts from the previous one, not from when this body ended.
            next_stats += every;
            if next_stats < Instant::now() {
                next_stats = Instant::now() + every;
            }
        }
    }
    if stop.requested() {
        log::info!("stopping on {}", stop.signal_name());
    }
    if open {
        open = p.drain(&mut sink)?;
    } else {
        log::info!("stdout was closed: stopping");
    }
    p.refresh_stats();
    if as_events && open {
        let ev = p.stats_event();
        let _ = sink.send(&ev)? && sink.flush()?;
    }
    // Final counters always go to stderr.
    let _ = writeln!(io::stderr(), "linuxguard-agent: final {}", p.stats.line());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each `write` call.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn event(b: &mut Builder) -> Event {
        b.stats(Stats::default().snapshot())
    }

    #[test]
    fn lines_go_out_in_one_write_per_batch() {
        let mut b = Builder::new("h");
        let mut sink = JsonLines::new(Writes::default());
        for _ in 0..3 {
            assert!(sink.send(&event(&mut b)).expect("send"));
        }
        assert!(sink.send_line(b"{\"x\":1}").expect("send"));
        assert!(
            sink.out.0.is_empty(),
            "nothing written before the batch ends"
        );
        assert!(sink.flush().expect("flush"));
        assert_eq!(sink.out.0.len(), 1, "one write for the whole batch");
        let text = String::from_utf8(sink.out.0[0].clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(text.ends_with("{\"x\":1}\n"));
        for (i, l) in lines[..3].iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["seq"], i as u64 + 1);
        }
        assert!(sink.flush().expect("flush"));
        assert_eq!(sink.out.0.len(), 1, "an empty batch writes nothing");
    }

    #[test]
    fn a_full_buffer_is_written_before_the_batch_ends() {
        let mut b = Builder::new("h");
        let mut sink = JsonLines::new(Writes::default());
        let mut sent = 0;
        while sink.out.0.is_empty() {
            assert!(sink.send(&event(&mut b)).expect("send"));
            sent += 1;
        }
        assert!(sink.out.0[0].len() >= WRITE_AT);
        assert!(
            sink.out.0[0].ends_with(b"\n"),
            "only whole lines are written"
        );
        assert!(sink.flush().expect("flush"));
        let lines: usize = sink
            .out
            .0
            .iter()
            .map(|w| w.split(|&c| c == b'\n').count() - 1)
            .sum();
        assert_eq!(lines, sent);
    }

    #[test]
    fn a_closed_reader_stops_the_sink_without_an_error() {
        let mut b = Builder::new("h");
        let mut sink = JsonLines::new(Closed);
        assert!(sink.send(&event(&mut b)).expect("send"));
        assert!(!sink.flush().expect("flush"));
    }
}
