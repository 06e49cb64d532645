//! The uplink thread: obtains the identity (enrolment in the background, while the sensor
//! already watches and events queue), takes NDJSON batches from the shared byte-bounded queue
//! and posts them (same key on every retry, 413 split, backoff on 429/5xx/transport),
//! heartbeats and renews on their deadlines, and on shutdown flushes within the grace period
//! then sends a final heartbeat. One level of concurrency: every network call is a blocking
//! call on this thread, bounded by its own timeout. The poll loop only ever pushes into the
//! queue, so a slow backend never stalls it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::counters::{Counters, Published};
use crate::error::{Error, Result};
use crate::identity::backend::{Events, Failure};
use crate::identity::backoff::Backoff;
use crate::identity::session::Session;
use crate::uplink::queue::{Batch, Limits, Queue};

/// First retry of a failed batch after up to this long (full jitter), doubling per attempt.
const RETRY_BASE: Duration = Duration::from_millis(500);
/// Retries of a batch never wait longer than this, so delivery resumes promptly after an outage.
const RETRY_CAP: Duration = Duration::from_secs(10);
/// At shutdown the final heartbeat gets this long (the loop waits a second more for it).
pub const FINAL_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);

/// What the poll loop and the uplink thread share.
pub struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Shutdown requested: flush until this deadline, then the final heartbeat.
    flush_until: Mutex<Option<Instant>>,
    /// Stage counters the poll loop publishes.
    pub published: Published,
    /// Events accepted by the backend.
    pub sent: AtomicU64,
    /// Events given up on (rejected batch, or a single event over the server's size limit).
    pub dropped_upload: AtomicU64,
    /// Batches accepted / upload attempts that failed and will be retried.
    pub batches_ok: AtomicU64,
    pub upload_failures: AtomicU64,
    /// Set when the uplink thread ended with an error (revocation): the loop must stop.
    pub failed: AtomicBool,
    /// Set (under the queue lock) when the loop exits without waiting for the uplink (a call
    /// still hanging): it counted everything undelivered, so the uplink counts nothing more.
    abandoned: AtomicBool,
    fatal: Mutex<Option<Error>>,
    /// Whether events go to the backend at all (`--output backend|both`).
    pub to_backend: bool,
}

impl Shared {
    pub fn new(limits: Limits, key_prefix: String, to_backend: bool) -> Shared {
        Shared {
            queue: Mutex::new(Queue::new(limits, key_prefix)),
            wake: Condvar::new(),
            flush_until: Mutex::new(None),
            published: Published::default(),
            sent: AtomicU64::new(0),
            dropped_upload: AtomicU64::new(0),
            batches_ok: AtomicU64::new(0),
            upload_failures: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            fatal: Mutex::new(None),
            to_backend,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends serialized events (the poll loop, once per drained batch); wakes the uplink.
    pub fn push_all(&self, lines: &mut Vec<Vec<u8>>) {
        if lines.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut q = self.queue();
        for l in lines.drain(..) {
            q.push(l, now);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Asks the uplink to flush what is queued until `deadline`, then send a final heartbeat.
    pub fn begin_flush(&self, deadline: Instant) {
        *self.flush_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let _q = self.queue();
        self.wake.notify_all();
    }

    fn flush_deadline(&self) -> Option<Instant> {
        *self.flush_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At an exit that cannot wait for the uplink (a call still hanging after the grace period):
    /// every event observed but neither sent nor dropped — queued, or in the hanging batch — is
    /// counted as a queue drop, so the final counters still add up. Returns how many.
    pub fn count_undelivered_as_dropped(&self) -> u64 {
        // Under the queue lock, which the uplink also holds while it counts an answer: what it
        // counted before is included here, and after the flag it counts nothing.
        let mut q = self.queue();
        self.abandoned.store(true, Ordering::SeqCst);
        let l = &self.published;
        let sent = if self.to_backend {
            self.sent.load(Ordering::SeqCst)
        } else {
            l.stdout_sent.load(Ordering::SeqCst)
        };
        let accounted = sent
            + l.dropped_decode.load(Ordering::SeqCst)
            + q.dropped
            + self.dropped_upload.load(Ordering::SeqCst);
        let left = l.observed.load(Ordering::SeqCst).saturating_sub(accounted);
        while q.take_batch(Instant::now(), true).is_some() {}
        q.dropped += left;
        left
    }

    /// Bytes waiting in the queue (0 when it is empty).
    pub fn queued_bytes(&self) -> usize {
        let q = self.queue();
        if q.is_empty() { 0 } else { q.bytes() }
    }

    /// The error that ended the uplink, if any (taken once).
    pub fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// One snapshot of every stage counter.
    pub fn counters(&self) -> Counters {
        let (dropped_queue, queued) = {
            let q = self.queue();
            (q.dropped, q.len() as u64)
        };
        let l = &self.published;
        let sent = if self.to_backend {
            self.sent.load(Ordering::Relaxed)
        } else {
            l.stdout_sent.load(Ordering::Relaxed)
        };
        Counters {
            events_observed: l.observed.load(Ordering::Relaxed),
            events_sent: sent,
            dropped_kernel: l.dropped_kernel.load(Ordering::Relaxed),
            dropped_decode: l.dropped_decode.load(Ordering::Relaxed),
            dropped_queue,
            dropped_upload: self.dropped_upload.load(Ordering::Relaxed),
            kubelet_misses: l.kubelet_misses.load(Ordering::Relaxed),
            queued,
            batches_accepted: self.batches_ok.load(Ordering::Relaxed),
            upload_failures: self.upload_failures.load(Ordering::Relaxed),
            loop_body_max: Duration::ZERO,
            event_types: l.event_types.get().copied().unwrap_or_default(),
        }
    }
}

/// The uplink thread's state.
pub struct Uplink {
    shared: Arc<Shared>,
    session: Session,
    started: Instant,
    /// Batches taken from the queue and not yet accepted (the one being retried, split halves).
    pending: VecDeque<Batch>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    first_upload_logged: bool,
}

impl Uplink {
    pub fn new(shared: Arc<Shared>, session: Session, started: Instant) -> Uplink {
        Uplink {
            shared,
            session,
            started,
            pending: VecDeque::new(),
            retry_at: None,
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
            first_upload_logged: false,
        }
    }

    /// Runs until shutdown (after the flush and final heartbeat) or a fatal error, which is
    /// stored in `Shared` for the loop to return.
    pub fn run(mut self) {
        if let Err(e) = self.serve() {
            *self.shared.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            self.shared.failed.store(true, Ordering::SeqCst);
        }
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            if let Some(deadline) = self.shared.flush_deadline() {
                return self.flush(deadline);
            }
            let now = Instant::now();
            if now >= self.session.next_deadline() {
                // At most one blocking call (enrolment attempt, heartbeat or renewal), bounded
                // by its own timeout; the queue keeps filling meanwhile.
                let stats = self.shared.counters().heartbeat_stats();
                self.session.tick(now, &stats)?;
                continue;
            }
            let up = self.session.backend().is_some();
            if up && self.retry_at.is_none_or(|t| now >= t) {
                if self.pending.is_empty() {
                    // The first batch goes out at once (start-up proof that events arrive,
                    // including those queued before enrolment); later ones wait for their size
                    // or age.
                    let force = !self.first_upload_logged;
                    if let Some(b) = self.shared.queue().take_batch(now, force) {
                        self.pending.push_back(b);
                    }
                }
                if !self.pending.is_empty() {
                    self.send_front(crate::identity::tls::CALL_TIMEOUT)?;
                    continue;
                }
            }
            // Nothing to do now: sleep until the next deadline or a push.
            let q = self.shared.queue();
            let mut wake = self.session.next_deadline();
            if up {
                match self.retry_at {
                    Some(t) if !self.pending.is_empty() => wake = wake.min(t),
                    _ => {
                        if let Some(d) = q.due() {
                            wake = wake.min(if self.first_upload_logged { d } else { now });
                        }
                    }
                }
            }
            let left = wake.saturating_duration_since(Instant::now());
            if !left.is_zero() && self.shared.flush_deadline().is_none() {
                let _ = self
                    .shared
                    .wake
                    .wait_timeout(q, left.min(Duration::from_secs(1)));
            }
        }
    }

    /// Posts the oldest batch once, given at most `timeout` (a failure past it is retried
    /// later), and handles the answer.
    fn send_front(&mut self, timeout: Duration) -> Result<()> {
        let Some(backend) = self.session.backend().cloned() else {
            return Ok(());
        };
        let Some(b) = self.pending.pop_front() else {
            return Ok(());
        };
        let t = Instant::now();
        let answer = backend.post_events(&b.key, &b.body, timeout);
        // Counting happens under the queue lock, after a look at `abandoned` (see
        // `count_undelivered_as_dropped`).
        let mut q = self.shared.queue();
        if self.shared.abandoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(1) {
            // Only this thread waited: the poll loop kept draining the ring buffer meanwhile.
            log::info!(
                "event upload of batch {} took {:.1} s",
                b.key,
                t.elapsed().as_secs_f64()
            );
        }
        match answer {
            Events::Accepted => {
                self.shared
                    .sent
                    .fetch_add(b.events as u64, Ordering::Relaxed);
                self.shared.batches_ok.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.retry_at = None;
                if !self.first_upload_logged {
                    self.first_upload_logged = true;
                    log::info!(
                        "startup: first upload accepted ({} events) {} ms after start",
                        b.events,
                        self.started.elapsed().as_millis()
                    );
                }
                log::debug!("batch {} accepted ({} events)", b.key, b.events);
            }
            Events::Split => {
                if b.events < 2 {
                    self.shared.dropped_upload.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "the backend refused a single event of {} bytes as too large (413); dropped and counted",
                        b.body.len()
                    );
                } else {
                    let halves = q.split(b);
                    if let Some((x, y)) = halves {
                        log::debug!("413: split into {} + {} events", x.events, y.events);
                        self.pending.push_front(y);
                        self.pending.push_front(x);
                    }
                }
            }
            Events::Failed(Failure::Revoked(why)) => {
                return Err(self.session.revoked("event upload", &why));
            }
            Events::Failed(Failure::Retry { why, retry_after }) => {
                let mut b = b;
                b.attempts += 1;
                self.shared.upload_failures.fetch_add(1, Ordering::Relaxed);
                let d = self.backoff.next(retry_after);
                if b.attempts == 1 || b.attempts % 10 == 0 {
                    log::warn!(
                        "event upload failed: {why}; retrying batch {} ({} events) in {:.1} s \
                         (attempt {}); new events queue up to --queue-mb",
                        b.key,
                        b.events,
                        d.as_secs_f64(),
                        b.attempts
                    );
                }
                self.retry_at = Some(Instant::now() + d);
                self.pending.push_front(b);
            }
            Events::Failed(Failure::Rejected(why)) => {
                self.shared
                    .dropped_upload
                    .fetch_add(b.events as u64, Ordering::Relaxed);
                log::warn!(
                    "the backend rejected batch {} ({} events): {why}; dropped and counted",
                    b.key,
                    b.events
                );
            }
        }
        Ok(())
    }

    /// Shutdown: post everything queued until `deadline` (no backoff waits past it), then one
    /// final heartbeat with the final counters.
    fn flush(&mut self, deadline: Instant) -> Result<()> {
        let Some(backend) = self.session.backend().cloned() else {
            // No identity (enrolling, or expired): nothing can be delivered or reported.
            let mut q = self.shared.queue();
            if !self.shared.abandoned.load(Ordering::SeqCst) {
                let left =
                    self.pending.iter().map(|b| b.events as u64).sum::<u64>() + q.len() as u64;
                while q.take_batch(Instant::now(), true).is_some() {}
                q.dropped += left;
                self.pending.clear();
            }
            return Ok(());
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.pending.is_empty() {
                match self.shared.queue().take_batch(now, true) {
                    Some(b) => self.pending.push_back(b),
                    None => break,
                }
            }
            if let Some(t) = self.retry_at.filter(|t| *t > now) {
                std::thread::sleep(t.min(deadline).saturating_duration_since(now));
                self.retry_at = None;
                continue;
            }
            // A post that would run past the deadline is cut off there: the batch is then
            // counted below with the rest, and the final heartbeat still goes out in time.
            self.send_front(deadline - now)?;
        }
        let mut q = self.shared.queue();
        if self.shared.abandoned.load(Ordering::SeqCst) {
            // The loop did not wait and counted what was left itself.
            return Ok(());
        }
        let left: u64 = self.pending.iter().map(|b| b.events as u64).sum::<u64>() + q.len() as u64;
        if left > 0 {
            // Counted as queue drops, so the final heartbeat still adds up.
            while q.take_batch(Instant::now(), true).is_some() {}
            q.dropped += left;
            self.pending.clear();
        }
        drop(q);
        if left > 0 {
            log::warn!(
                "shutdown: {left} queued events could not be delivered within --shutdown-grace; \
                 counted as dropped"
            );
        }
        let stats = self.shared.counters().heartbeat_stats();
        match backend.heartbeat(
            self.session.agent_id().unwrap_or_default(),
            self.session.workload_id(),
            self.started.elapsed(),
            &stats,
            FINAL_HEARTBEAT_TIMEOUT,
        ) {
            Ok(_) => log::info!(
                "final heartbeat sent ({} events sent, {} dropped)",
                stats.events_sent,
                stats.events_dropped.kernel
                    + stats.events_dropped.queue
                    + stats.events_dropped.upload
            ),
            Err(e) => log::warn!("final heartbeat failed: {e}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            queue_bytes: 64,
            batch_events: 10,
            batch_bytes: 1024,
            batch_age: Duration::from_millis(100),
        }
    }

    #[test]
    fn counters_add_up_and_map_to_the_heartbeat() {
        let sh = Shared::new(limits(), "k".into(), true);
        sh.published.observed.store(30, Ordering::Relaxed);
        sh.published.dropped_decode.store(1, Ordering::Relaxed);
        sh.published.dropped_kernel.store(4, Ordering::Relaxed);
        // 20 lines of 9 bytes (with the newline) into a 64-byte queue: 7 stay, 13 dropped.
        let mut lines: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("{{\"n\":{i:02}}}").into_bytes())
            .collect();
        sh.push_all(&mut lines);
        assert!(lines.is_empty());
        sh.sent.store(9, Ordering::Relaxed);
        let c = sh.counters();
        assert_eq!(c.queued, 7);
        assert_eq!(c.dropped_queue, 13);
        let hb = c.heartbeat_stats();
        assert_eq!(hb.events_observed, 30);
        assert_eq!(hb.events_sent, 9);
        assert_eq!(hb.events_dropped.queue, 14, "queue + decode drops");
        assert_eq!(hb.events_dropped.kernel, 4);
        assert!(sh.queued_bytes() <= 64);
    }

    #[test]
    fn an_abandoned_uplink_leaves_counters_that_add_up() {
        let sh = Shared::new(limits(), "k".into(), true);
        // 10 observed: 3 sent, 1 undecodable, 4 queued, and 2 in a batch hanging in a post.
        sh.published.observed.store(10, Ordering::Relaxed);
        sh.published.dropped_decode.store(1, Ordering::Relaxed);
        sh.sent.store(3, Ordering::Relaxed);
        let mut lines: Vec<Vec<u8>> = (0..4)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        sh.push_all(&mut lines);
        assert_eq!(sh.count_undelivered_as_dropped(), 6);
        assert!(sh.abandoned.load(Ordering::SeqCst));
        let c = sh.counters();
        assert_eq!(c.queued, 0, "the queue is emptied");
        assert_eq!(
            c.events_observed,
            c.events_sent + c.dropped_decode + c.dropped_queue + c.dropped_upload
        );
        // A second look (the loop's own final count) finds nothing left.
        assert_eq!(sh.count_undelivered_as_dropped(), 0);
    }

    #[test]
    fn stdout_mode_counts_stdout_writes_as_sent() {
        let sh = Shared::new(limits(), "k".into(), false);
        sh.published.stdout_sent.store(5, Ordering::Relaxed);
        sh.sent.store(99, Ordering::Relaxed);
        assert_eq!(sh.counters().events_sent, 5);
    }

    #[test]
    fn flush_deadline_is_visible_to_the_uplink() {
        let sh = Shared::new(limits(), "k".into(), true);
        assert!(sh.flush_deadline().is_none());
        let t = Instant::now();
        sh.begin_flush(t);
        assert_eq!(sh.flush_deadline(), Some(t));
        assert!(sh.take_fatal().is_none());
    }
}
