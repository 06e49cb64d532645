//! The uplink thread: obtains the identity (enrolment in the background, while the sensor
//! already watches and events queue), takes NDJSON batches from the shared byte-bounded queue
//! and posts them (same key on every retry, 413 split, backoff on 429/5xx/transport),
//! heartbeats and renews on their deadlines, and on shutdown flushes within the grace period
//! then sends a final heartbeat. One level of concurrency: every network call is a blocking
//! call on this thread, bounded by its own timeout. The poll loop only ever pushes into the
//! queue, so a slow backend never stalls it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::counters::{Counters, Published};
use crate::error::{Error, Result};
use crate::identity::backend::{Events, Failure};
use crate::identity::backoff::Backoff;
use crate::identity::session::Session;
use crate::output::queue::{Batch, Channel};

use crate::output::{RETRY_BASE, RETRY_CAP};
/// At shutdown the final heartbeat gets this long (the loop waits a second more for it).
pub const FINAL_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);

/// What the poll loop and the uplink thread share.
pub struct Shared {
    /// The backend output's queue and counters.
    pub chan: Arc<Channel>,
    /// Stage counters the poll loop publishes (for the heartbeat).
    pub published: Arc<Published>,
    /// Set when the uplink thread ended with an error (revocation): the loop must stop.
    pub failed: AtomicBool,
    fatal: Mutex<Option<Error>>,
}

impl Shared {
    pub fn new(chan: Arc<Channel>, published: Arc<Published>) -> Shared {
        Shared {
            chan,
            published,
            failed: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }

    /// The error that ended the uplink, if any (taken once).
    pub fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The stage counters with the backend as the primary output (what heartbeats carry).
    pub fn counters(&self) -> Counters {
        Counters::new(&self.published, &self.chan.stats(), Vec::new())
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
            if let Some(deadline) = self.shared.chan.flush_deadline() {
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
                    if let Some(b) = self.shared.chan.lock().take_batch(now, force) {
                        self.pending.push_back(b);
                    }
                }
                if !self.pending.is_empty() {
                    self.send_front(crate::identity::tls::CALL_TIMEOUT)?;
                    continue;
                }
            }
            // Nothing to do now: sleep until the next deadline or a push.
            let q = self.shared.chan.lock();
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
            if !left.is_zero() && self.shared.chan.flush_deadline().is_none() {
                drop(self.shared.chan.wait(q, left.min(Duration::from_secs(1))));
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
        // `Channel::abandon`).
        let chan = self.shared.chan.clone();
        let counts = &chan.counts;
        let mut q = chan.lock();
        if chan.is_abandoned() {
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
                counts.sent.fetch_add(b.events as u64, Ordering::Relaxed);
                counts.batches.fetch_add(1, Ordering::Relaxed);
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
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
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
                counts.failures.fetch_add(1, Ordering::Relaxed);
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
                counts.dropped.fetch_add(b.events as u64, Ordering::Relaxed);
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
            let pending = self.pending.iter().map(|b| b.events as u64).sum::<u64>();
            self.shared.chan.drop_leftover(pending);
            self.pending.clear();
            return Ok(());
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.pending.is_empty() {
                match self.shared.chan.lock().take_batch(now, true) {
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
        if self.shared.chan.is_abandoned() {
            // The loop did not wait and counted what was left itself.
            return Ok(());
        }
        // Counted as queue drops, so the final heartbeat still adds up.
        let pending = self.pending.iter().map(|b| b.events as u64).sum::<u64>();
        let left = self.shared.chan.drop_leftover(pending);
        self.pending.clear();
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
    use crate::output::queue::{Limits, Line};

    fn shared(queue_bytes: usize) -> Shared {
        let limits = Limits {
            queue_bytes,
            batch_events: 10,
            batch_bytes: 1024,
            batch_age: Duration::from_millis(100),
        };
        Shared::new(
            Arc::new(Channel::new("backend", limits, "k".into())),
            Arc::new(Published::default()),
        )
    }

    fn lines(n: usize) -> Vec<Line> {
        (0..n)
            .map(|i| Arc::from(format!("{{\"n\":{i:02}}}").as_bytes()))
            .collect()
    }

    #[test]
    fn counters_add_up_and_map_to_the_heartbeat() {
        let sh = shared(64);
        sh.published.observed.store(30, Ordering::Relaxed);
        sh.published.dropped_decode.store(1, Ordering::Relaxed);
        sh.published.dropped_kernel.store(4, Ordering::Relaxed);
        // 20 lines of 9 bytes (with the newline) into a 64-byte queue: 7 stay, 13 dropped.
        sh.chan.push_all(&lines(20));
        sh.chan.counts.sent.store(9, Ordering::Relaxed);
        let c = sh.counters();
        assert_eq!(c.queued, 7);
        assert_eq!(c.dropped_queue, 13);
        let hb = c.heartbeat_stats();
        assert_eq!(hb.events_observed, 30);
        assert_eq!(hb.events_sent, 9);
        assert_eq!(hb.events_dropped.queue, 14, "queue + decode drops");
        assert_eq!(hb.events_dropped.kernel, 4);
        assert!(sh.chan.queued_bytes() <= 64);
    }

    #[test]
    fn an_abandoned_uplink_leaves_counters_that_add_up() {
        let sh = shared(1000);
        // 10 observed: 1 undecodable; of the 9 handed to the backend 3 were sent, 4 are
        // queued, and 2 are in a batch hanging in a post.
        sh.published.observed.store(10, Ordering::Relaxed);
        sh.published.dropped_decode.store(1, Ordering::Relaxed);
        sh.chan.push_all(&lines(9));
        sh.chan.lock().take_batch(Instant::now(), true);
        sh.chan.push_all(&[]);
        sh.chan.counts.sent.store(3, Ordering::Relaxed);
        assert_eq!(sh.chan.abandon(), 6);
        let c = sh.counters();
        assert_eq!(c.queued, 0, "the queue is emptied");
        assert_eq!(
            c.events_observed,
            c.events_sent + c.dropped_decode + c.dropped_queue + c.dropped_upload
        );
        // A second look (the loop's own final count) finds nothing left.
        assert_eq!(sh.chan.abandon(), 0);
    }

    #[test]
    fn flush_deadline_is_visible_to_the_uplink() {
        let sh = shared(64);
        assert!(sh.chan.flush_deadline().is_none());
        let t = Instant::now();
        sh.chan.begin_flush(t);
        assert_eq!(sh.chan.flush_deadline(), Some(t));
        assert!(sh.take_fatal().is_none());
    }
}
