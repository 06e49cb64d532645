//! The outputs besides stdout and the backend (whose thread is the uplink) — OTLP, the rotating
//! file, syslog: each has its own
//! byte-bounded queue ([`queue::Channel`]), its own counters and its own thread, so a slow or
//! broken output never stalls another or the poll loop. The thread ([`Worker`]) takes batches
//! from the queue and hands them to the output's [`Deliver`] (the rotating file, syslog, OTLP),
//! retries with full-jitter backoff (a server's `Retry-After` as a floor) keeping what was
//! already delivered, and on shutdown delivers until the grace deadline, then counts what is
//! left as dropped.

pub mod file;
pub mod otlp;
pub mod queue;
pub mod syslog;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::identity::backoff::Backoff;
use queue::{Batch, Channel, Limits};

/// First retry of a failed batch after up to this long (full jitter), doubling per attempt.
pub const RETRY_BASE: Duration = Duration::from_millis(500);
/// Retries of a batch never wait longer than this, so delivery resumes promptly after an outage.
pub const RETRY_CAP: Duration = Duration::from_secs(10);
/// One delivery attempt may take this long at most (network outputs bound their calls by it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `start` sends events (`--output`, a comma-separated list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backend,
    Otlp,
    File,
    Syslog,
    Stdout,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Backend,
        Kind::Otlp,
        Kind::File,
        Kind::Syslog,
        Kind::Stdout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Backend => "backend",
            Kind::Otlp => "otlp",
            Kind::File => "file",
            Kind::Syslog => "syslog",
            Kind::Stdout => "stdout",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// `--output` as a list: `both` is `stdout,backend`; each output once, in the order given.
pub fn parse_list(v: &str) -> std::result::Result<Vec<Kind>, String> {
    let mut out = Vec::new();
    for word in v.split(',').map(str::trim) {
        let kinds = match word {
            "both" => vec![Kind::Stdout, Kind::Backend],
            w => vec![Kind::from_name(w).ok_or_else(|| {
                format!(
                    "expected a comma-separated list of backend, otlp, file, syslog, stdout (or \
                     both = stdout,backend), got {word:?} in {v:?}"
                )
            })?],
        };
        for k in kinds {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// What `start`'s outputs need: the list, each queue's bounds, and each output's own options.
#[derive(Debug, Clone)]
pub struct Options {
    /// In `--output` order, `both` expanded.
    pub kinds: Vec<Kind>,
    /// Each output's queue bound and batch cuts (every output has a queue of its own).
    pub limits: Limits,
    pub file: Option<file::Options>,
    pub syslog: Option<syslog::Options>,
    pub otlp: Option<otlp::Options>,
}

impl Options {
    pub fn has(&self, k: Kind) -> bool {
        self.kinds.contains(&k)
    }

    /// The output whose counters are the top-level ones (heartbeat, `status`, the unlabelled
    /// metrics): the backend when it is among the outputs, else the first one named.
    pub fn primary(&self) -> Kind {
        if self.has(Kind::Backend) {
            Kind::Backend
        } else {
            self.kinds.first().copied().unwrap_or(Kind::Stdout)
        }
    }
}

/// Opens the queued output `k` (its file, socket or client), at start-up; `None` for the outputs
/// without a thread of their own here (the backend's is the uplink; stdout is written by the
/// loop).
pub fn open(k: Kind, o: &Options) -> Result<Option<Box<dyn Deliver>>> {
    let missing = |what: &str| Error::config(format!("--output {} needs {what}", k.name()));
    Ok(match k {
        Kind::Backend | Kind::Stdout => None,
        Kind::File => {
            let opts = o.file.clone().ok_or_else(|| missing("--file-path"))?;
            Some(Box::new(file::FileOut::open(opts)?))
        }
        Kind::Syslog => {
            let opts = o.syslog.clone().ok_or_else(|| missing("--syslog-addr"))?;
            Some(Box::new(syslog::Syslog::open(opts)?))
        }
        Kind::Otlp => {
            let opts = o.otlp.clone().ok_or_else(|| missing("--otlp-endpoint"))?;
            Some(Box::new(otlp::Otlp::open(opts)?))
        }
    })
}

/// The fields of a serialized event that outputs put in their headers.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "@timestamp", borrow, default)]
    pub time: Option<std::borrow::Cow<'a, str>>,
    /// Alerts carry a severity; ordinary events do not (they are `info`).
    #[serde(borrow, default)]
    pub severity: Option<std::borrow::Cow<'a, str>>,
}

/// An event's header fields (defaults when the line does not parse, which the loop's writer
/// never produces).
pub fn head(line: &[u8]) -> Head<'_> {
    serde_json::from_slice(line).unwrap_or_default()
}

/// Severity levels, as syslog and OpenTelemetry name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warn,
    Error,
    Critical,
}

/// An event's level: from its `severity` (syslog words, or low/medium/high/critical), `info`
/// without one.
pub fn level(severity: Option<&str>) -> Level {
    match severity.map(str::to_ascii_lowercase).as_deref() {
        Some("debug" | "trace") => Level::Debug,
        Some("notice") => Level::Notice,
        Some("warn" | "warning" | "medium") => Level::Warn,
        Some("err" | "error" | "high") => Level::Error,
        Some("crit" | "critical" | "alert" | "emerg" | "emergency" | "fatal") => Level::Critical,
        _ => Level::Info,
    }
}

impl Level {
    /// The RFC 5424 severity code.
    pub fn syslog(self) -> u8 {
        match self {
            Level::Debug => 7,
            Level::Info => 6,
            Level::Notice => 5,
            Level::Warn => 4,
            Level::Error => 3,
            Level::Critical => 2,
        }
    }

    /// The OpenTelemetry SeverityNumber and SeverityText.
    pub fn otlp(self) -> (u8, &'static str) {
        match self {
            Level::Debug => (5, "DEBUG"),
            Level::Info => (9, "INFO"),
            Level::Notice => (10, "INFO2"),
            Level::Warn => (13, "WARN"),
            Level::Error => (17, "ERROR"),
            Level::Critical => (21, "FATAL"),
        }
    }
}

/// What one delivery attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every event of the batch went out; `rejected` of them were refused by the receiver for
    /// good (counted as output drops).
    Done { rejected: u64 },
    /// The first `delivered` events were dealt with (`rejected` of them refused for good); the
    /// rest is retried after a backoff (at least `after`, a server's `Retry-After`).
    Retry {
        delivered: usize,
        rejected: u64,
        why: String,
        after: Option<Duration>,
    },
    /// The receiver refused the batch as too large: it is split in two (a single event is
    /// dropped and counted).
    TooLarge,
    /// The receiver refused the batch for good: dropped and counted.
    Rejected(String),
}

/// One output's delivery (runs on the output's own thread).
pub trait Deliver: Send {
    /// Whether batches wait for their size or age (`--batch-max-*`, for network receivers) or
    /// go out as soon as there are events (a file, syslog).
    fn batched(&self) -> bool;
    /// Delivers `batch`, taking at most about `timeout`.
    fn deliver(&mut self, batch: &Batch, timeout: Duration) -> Outcome;
    /// At shutdown, after the last delivery (the file: fsync).
    fn finish(&mut self) {}
}

/// An output's running thread, as the loop holds it.
pub struct Worker {
    pub chan: Arc<Channel>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Worker {
    /// Starts the thread `lg-out-<name>` delivering from `chan` through `d`.
    pub fn start(chan: Arc<Channel>, d: Box<dyn Deliver>) -> Result<Worker> {
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let mut run = Run {
            chan: chan.clone(),
            d,
            pending: VecDeque::new(),
            retry_at: None,
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
        };
        let thread = std::thread::Builder::new()
            .name(format!("lg-out-{}", chan.name))
            .spawn(move || {
                run.run();
                let _ = tx.send(());
            })
            .map_err(|e| {
                Error::runtime(format!(
                    "failed to start the thread of output {}: {e}",
                    chan.name
                ))
            })?;
        Ok(Worker {
            chan,
            thread: Some(thread),
            done,
        })
    }

    /// Waits for the thread (flushing since `begin_flush`) until `until`; past it, what the
    /// output did not deliver is counted as dropped and the thread is left behind. Returns
    /// whether it finished in time.
    pub fn wait(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(left) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                true
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let left = self.chan.abandon();
                log::warn!(
                    "output {}: still busy at the end of the grace period; exiting without \
                     waiting; {left} events not delivered are counted as dropped",
                    self.chan.name
                );
                false
            }
        }
    }
}

/// The output thread's state.
struct Run {
    chan: Arc<Channel>,
    d: Box<dyn Deliver>,
    /// Batches taken from the queue and not yet delivered (the one being retried, split halves).
    pending: VecDeque<Batch>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Run {
    fn run(&mut self) {
        let batched = self.d.batched();
        loop {
            if let Some(deadline) = self.chan.flush_deadline() {
                self.flush(deadline);
                self.d.finish();
                return;
            }
            let now = Instant::now();
            if self.retry_at.is_none_or(|t| now >= t) {
                if self.pending.is_empty() {
                    if let Some(b) = self.chan.lock().take_batch(now, !batched) {
                        self.pending.push_back(b);
                    }
                }
                if !self.pending.is_empty() {
                    self.send_front(CALL_TIMEOUT);
                    continue;
                }
            }
            // Nothing to do now: sleep until a push, the retry time or the next batch's age.
            let q = self.chan.lock();
            let mut wake = now + Duration::from_secs(1);
            match self.retry_at {
                Some(t) if !self.pending.is_empty() => wake = wake.min(t),
                _ => {
                    if let Some(d) = q.due() {
                        wake = wake.min(if batched { d } else { now });
                    }
                }
            }
            let left = wake.saturating_duration_since(Instant::now());
            if !left.is_zero() && self.chan.flush_deadline().is_none() {
                drop(self.chan.wait(q, left));
            }
        }
    }

    /// Delivers the oldest pending batch once and counts the outcome.
    fn send_front(&mut self, timeout: Duration) {
        let Some(b) = self.pending.pop_front() else {
            return;
        };
        let t = Instant::now();
        let outcome = self.d.deliver(&b, timeout);
        let name = self.chan.name;
        let counts = &self.chan.counts;
        // Counted under the queue lock, after a look at `abandoned` (see `Channel::abandon`).
        let mut q = self.chan.lock();
        if self.chan.is_abandoned() {
            return;
        }
        if t.elapsed() > Duration::from_secs(1) {
            log::info!(
                "output {name}: delivering {} events took {:.1} s",
                b.events,
                t.elapsed().as_secs_f64()
            );
        }
        match outcome {
            Outcome::Done { rejected } => {
                let rejected = rejected.min(b.events as u64);
                counts
                    .sent
                    .fetch_add(b.events as u64 - rejected, Ordering::Relaxed);
                counts.dropped.fetch_add(rejected, Ordering::Relaxed);
                counts.batches.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.retry_at = None;
            }
            Outcome::Retry {
                delivered,
                rejected,
                why,
                after,
            } => {
                let delivered = delivered.min(b.events);
                let rejected = rejected.min(delivered as u64);
                counts
                    .sent
                    .fetch_add(delivered as u64 - rejected, Ordering::Relaxed);
                counts.dropped.fetch_add(rejected, Ordering::Relaxed);
                counts.failures.fetch_add(1, Ordering::Relaxed);
                let mut rest = b.skip(delivered);
                rest.attempts += 1;
                let d = self.backoff.next(after);
                if rest.attempts == 1 || rest.attempts % 10 == 0 {
                    log::warn!(
                        "output {name}: {why}; retrying {} events in {:.1} s (attempt {}); new \
                         events queue up to --queue-mb, oldest dropped first and counted",
                        rest.events,
                        d.as_secs_f64(),
                        rest.attempts
                    );
                }
                self.retry_at = Some(Instant::now() + d);
                if rest.events > 0 {
                    self.pending.push_front(rest);
                }
            }
            Outcome::TooLarge => {
                if b.events < 2 {
                    counts.dropped.fetch_add(b.events as u64, Ordering::Relaxed);
                    log::warn!(
                        "output {name}: the receiver refused a single event of {} bytes as too \
                         large; dropped and counted",
                        b.body.len()
                    );
                } else if let Some((x, y)) = q.split(b) {
                    self.pending.push_front(y);
                    self.pending.push_front(x);
                }
            }
            Outcome::Rejected(why) => {
                counts.dropped.fetch_add(b.events as u64, Ordering::Relaxed);
                log::warn!(
                    "output {name}: the receiver refused {} events: {why}; dropped and counted",
                    b.events
                );
            }
        }
    }

    /// Shutdown: deliver everything queued until `deadline` (no backoff waits past it); what is
    /// left then is counted as queue drops.
    fn flush(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.pending.is_empty() {
                match self.chan.lock().take_batch(now, true) {
                    Some(b) => self.pending.push_back(b),
                    None => break,
                }
            }
            if let Some(t) = self.retry_at.filter(|t| *t > now) {
                std::thread::sleep(t.min(deadline).saturating_duration_since(now));
                self.retry_at = None;
                continue;
            }
            self.send_front(deadline - now);
        }
        let pending = self.pending.iter().map(|b| b.events as u64).sum::<u64>();
        self.pending.clear();
        let left = self.chan.drop_leftover(pending);
        if left > 0 {
            log::warn!(
                "output {}: {left} queued events could not be delivered within \
                 --shutdown-grace; counted as dropped",
                self.chan.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn output_lists_expand_both_and_keep_each_output_once() {
        assert_eq!(parse_list("both").unwrap(), [Kind::Stdout, Kind::Backend]);
        assert_eq!(
            parse_list("backend, otlp,file,backend,both").unwrap(),
            [Kind::Backend, Kind::Otlp, Kind::File, Kind::Stdout]
        );
        let e = parse_list("file,kafka").unwrap_err();
        assert!(e.contains("\"kafka\"") && e.contains("syslog"), "{e}");
        assert!(parse_list("").is_err());
    }

    /// Records what it was given; fails the first `fail` attempts after delivering `partial`.
    struct Flaky {
        got: Arc<Mutex<Vec<String>>>,
        fail: u32,
        partial: usize,
    }

    impl Deliver for Flaky {
        fn batched(&self) -> bool {
            false
        }
        fn deliver(&mut self, b: &Batch, _: Duration) -> Outcome {
            let mut got = self.got.lock().unwrap();
            if self.fail > 0 {
                self.fail -= 1;
                for l in b.lines().take(self.partial) {
                    got.push(String::from_utf8_lossy(l).into_owned());
                }
                return Outcome::Retry {
                    delivered: self.partial,
                    rejected: 0,
                    why: "down".into(),
                    after: Some(Duration::from_millis(1)),
                };
            }
            for l in b.lines() {
                got.push(String::from_utf8_lossy(l).into_owned());
            }
            Outcome::Done { rejected: 0 }
        }
    }

    #[test]
    fn a_worker_delivers_each_event_once_through_failures_and_flushes() {
        let limits = Limits {
            queue_bytes: 1 << 20,
            batch_events: 4,
            batch_bytes: 1 << 16,
            batch_age: Duration::from_secs(60),
        };
        let chan = Arc::new(Channel::new("test", limits, "k".into()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let d = Flaky {
            got: got.clone(),
            fail: 3,
            partial: 1,
        };
        let mut w = Worker::start(chan.clone(), Box::new(d)).unwrap();
        let lines: Vec<queue::Line> = (0..10)
            .map(|i| Arc::from(format!("{i}").as_bytes()))
            .collect();
        chan.push_all(&lines);
        let t = Instant::now();
        while chan.stats().events_sent < 10 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        chan.begin_flush(Instant::now() + Duration::from_secs(2));
        assert!(w.wait(Instant::now() + Duration::from_secs(5)));
        let got = got.lock().unwrap().clone();
        let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "in order, each once");
        let s = chan.stats();
        assert_eq!((s.events_sent, s.failures, s.dropped_queue), (10, 3, 0));
    }
}
