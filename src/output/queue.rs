//! Each output's queue: a byte-bounded FIFO of serialized events that drops the oldest when full
//! (and counts it), cut into NDJSON batches that keep one idempotency key across retries; and the
//! [`Channel`] through which the poll loop hands events to an output's thread (the queue under a
//! lock, a wake-up, the shutdown deadline and the output's counters).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::counters::{OutputCounts, OutputStats};

/// Limits of the queue and of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue_bytes: usize,
    pub batch_events: usize,
    pub batch_bytes: usize,
    pub batch_age: Duration,
}

/// One upload: an NDJSON body with a key that stays the same on every retry of this batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub key: String,
    pub body: Vec<u8>,
    pub events: usize,
    /// Failed attempts so far (for backoff).
    pub attempts: u32,
}

impl Batch {
    /// The batch without its first `n` events (they were delivered); same key.
    pub fn skip(mut self, n: usize) -> Batch {
        let n = n.min(self.events);
        if n > 0 {
            let cut = self
                .body
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .nth(n - 1)
                .map_or(self.body.len(), |(i, _)| i + 1);
            self.body.drain(..cut);
            self.events -= n;
        }
        self
    }

    /// The events of the batch, one serialized event each (without the newline).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.body.split(|c| *c == b'\n').take(self.events)
    }
}

/// One serialized event, shared by every output's queue (serialized once, on the loop thread).
pub type Line = Arc<[u8]>;

/// Serialized events waiting for an output.
#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    lines: VecDeque<(Line, Instant)>,
    bytes: usize,
    key_prefix: String,
    next_batch: u64,
    /// Events dropped because the queue was full (oldest first) or one event exceeded a batch.
    pub dropped: u64,
}

impl Queue {
    /// `key_prefix` makes batch keys unique across agent restarts (e.g. random hex per process).
    pub fn new(limits: Limits, key_prefix: String) -> Queue {
        Queue {
            limits,
            lines: VecDeque::new(),
            bytes: 0,
            key_prefix,
            next_batch: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends one serialized event (no trailing newline). When the queue would exceed its bound,
    /// the oldest events are dropped and counted; an event larger than a whole batch is dropped.
    pub fn push(&mut self, line: Line, now: Instant) {
        let cost = line.len() + 1;
        if cost > self.limits.batch_bytes || cost > self.limits.queue_bytes {
            self.dropped += 1;
            return;
        }
        while self.bytes + cost > self.limits.queue_bytes {
            match self.lines.pop_front() {
                Some((old, _)) => {
                    self.bytes -= old.len() + 1;
                    self.dropped += 1;
                }
                None => break,
            }
        }
        self.bytes += cost;
        self.lines.push_back((line, now));
    }

    /// When the next batch is due: now if a full batch is waiting, else when the oldest event
    /// reaches the batch age; `None` when empty.
    pub fn due(&self) -> Option<Instant> {
        let (_, oldest) = self.lines.front()?;
        if self.lines.len() >= self.limits.batch_events || self.bytes >= self.limits.batch_bytes {
            return Some(*oldest);
        }
        Some(*oldest + self.limits.batch_age)
    }

    /// Takes the next batch if one is due at `now` (or unconditionally with `force`, for flushing).
    pub fn take_batch(&mut self, now: Instant, force: bool) -> Option<Batch> {
        let due = self.due()?;
        if !force && due > now {
            return None;
        }
        let mut body = Vec::new();
        let mut events = 0;
        while let Some((line, _)) = self.lines.front() {
            if events == self.limits.batch_events
                || body.len() + line.len() + 1 > self.limits.batch_bytes
            {
                break;
            }
            let (line, _) = self.lines.pop_front().expect("invariant: front() was Some");
            self.bytes -= line.len() + 1;
            body.extend_from_slice(&line);
            body.push(b'\n');
            events += 1;
        }
        Some(self.batch(body, events))
    }

    fn batch(&mut self, body: Vec<u8>, events: usize) -> Batch {
        self.next_batch += 1;
        Batch {
            key: format!("{}-{:08}", self.key_prefix, self.next_batch),
            body,
            events,
            attempts: 0,
        }
    }

    /// Splits a batch the server refused as too large (413) into two new batches with new keys.
    /// A batch of one event cannot be split: it is dropped and counted, and `None` is returned.
    pub fn split(&mut self, b: Batch) -> Option<(Batch, Batch)> {
        if b.events < 2 {
            self.dropped += b.events as u64;
            return None;
        }
        let lines: Vec<&[u8]> = b.body.split_inclusive(|&c| c == b'\n').collect();
        let half = lines.len() / 2;
        let first: Vec<u8> = lines[..half].concat();
        let second: Vec<u8> = lines[half..].concat();
        let (n1, n2) = (half, lines.len() - half);
        Some((self.batch(first, n1), self.batch(second, n2)))
    }
}

/// What the poll loop and one output's thread share: the queue (under a lock), the wake-up, the
/// shutdown deadline and the output's counters.
#[derive(Debug)]
pub struct Channel {
    /// The output's name (`backend`, `otlp`, `file`, `syslog`) in logs, `status` and metrics.
    pub name: &'static str,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Shutdown requested: deliver until this deadline, then stop.
    flush_until: Mutex<Option<Instant>>,
    pub counts: OutputCounts,
    /// Set (under the queue lock) when the loop exits without waiting for the output's thread
    /// (a call still hanging): it counted everything undelivered, so the thread counts nothing
    /// more.
    abandoned: AtomicBool,
}

impl Channel {
    pub fn new(name: &'static str, limits: Limits, key_prefix: String) -> Channel {
        Channel {
            name,
            queue: Mutex::new(Queue::new(limits, key_prefix)),
            wake: Condvar::new(),
            flush_until: Mutex::new(None),
            counts: OutputCounts::default(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The queue, locked (a poisoned lock is taken over: the queue stays consistent).
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends serialized events (the poll loop, once per drained batch); wakes the thread.
    pub fn push_all(&self, lines: &[Line]) {
        if lines.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut q = self.lock();
        for l in lines {
            q.push(l.clone(), now);
        }
        self.counts
            .offered
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        drop(q);
        self.wake.notify_one();
    }

    /// Sleeps on the queue until a push, a flush request, or `timeout`.
    pub fn wait<'a>(&self, q: MutexGuard<'a, Queue>, timeout: Duration) -> MutexGuard<'a, Queue> {
        match self.wake.wait_timeout(q, timeout) {
            Ok((q, _)) => q,
            Err(p) => p.into_inner().0,
        }
    }

    /// Asks the thread to deliver what is queued until `deadline`, then stop.
    pub fn begin_flush(&self, deadline: Instant) {
        *self.flush_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let _q = self.lock();
        self.wake.notify_all();
    }

    pub fn flush_deadline(&self) -> Option<Instant> {
        *self.flush_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the loop gave up waiting (see [`Channel::abandon`]); read under the queue lock.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// At an exit that cannot wait for the thread (a call still hanging after the grace period,
    /// or no identity to deliver with): every event handed to this output and neither delivered
    /// nor dropped — queued, or in a batch in flight — is counted as a queue drop, so the
    /// counters still add up. Returns how many.
    pub fn abandon(&self) -> u64 {
        // Under the queue lock, which the thread also holds while it counts an answer: what it
        // counted before is included here, and after the flag it counts nothing.
        let mut q = self.lock();
        self.abandoned.store(true, Ordering::SeqCst);
        let c = &self.counts;
        let accounted =
            c.sent.load(Ordering::SeqCst) + c.dropped.load(Ordering::SeqCst) + q.dropped;
        let left = c.offered.load(Ordering::SeqCst).saturating_sub(accounted);
        while q.take_batch(Instant::now(), true).is_some() {}
        q.dropped += left;
        left
    }

    /// After a flush ran out of time: what is still queued, and `pending` events the thread
    /// held, are counted as queue drops (nothing when the loop already abandoned the output).
    /// Returns how many.
    pub fn drop_leftover(&self, pending: u64) -> u64 {
        let mut q = self.lock();
        if self.is_abandoned() {
            return 0;
        }
        let left = pending + q.len() as u64;
        while q.take_batch(Instant::now(), true).is_some() {}
        q.dropped += left;
        left
    }

    /// Bytes waiting in the queue (0 when it is empty).
    pub fn queued_bytes(&self) -> usize {
        let q = self.lock();
        if q.is_empty() { 0 } else { q.bytes() }
    }

    /// This output's counters, now.
    pub fn stats(&self) -> OutputStats {
        let (dropped_queue, queued) = {
            let q = self.lock();
            (q.dropped, q.len() as u64)
        };
        let c = &self.counts;
        OutputStats {
            name: self.name,
            events_sent: c.sent.load(Ordering::Relaxed),
            dropped_queue,
            dropped_output: c.dropped.load(Ordering::Relaxed),
            queued,
            batches: c.batches.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(b: &[u8]) -> Line {
        Arc::from(b)
    }

    fn limits(queue_bytes: usize) -> Limits {
        Limits {
            queue_bytes,
            batch_events: 3,
            batch_bytes: 64,
            batch_age: Duration::from_millis(100),
        }
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let now = Instant::now();
        let mut q = Queue::new(limits(20), "k".into());
        for i in 0..5u8 {
            q.push(line(&[b'a' + i; 4]), now); // 5 bytes each with the newline
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.dropped, 1);
        let b = q.take_batch(now, true).unwrap();
        assert_eq!(b.body, b"bbbb\ncccc\ndddd\n");
        assert_eq!(b.events, 3);
    }

    #[test]
    fn batches_are_due_by_count_or_age() {
        let t0 = Instant::now();
        let mut q = Queue::new(limits(1000), "k".into());
        q.push(line(b"{}"), t0);
        assert!(
            q.take_batch(t0, false).is_none(),
            "one event is not due before its age"
        );
        assert!(
            q.take_batch(t0 + Duration::from_millis(100), false)
                .is_some()
        );
        for _ in 0..3 {
            q.push(line(b"{}"), t0);
        }
        assert_eq!(q.due(), Some(t0));
    }

    #[test]
    fn keys_are_unique_and_split_keeps_every_event() {
        let now = Instant::now();
        let mut q = Queue::new(limits(1000), "abc".into());
        for i in 0..3 {
            q.push(line(format!("{{\"n\":{i}}}").as_bytes()), now);
        }
        let b = q.take_batch(now, true).unwrap();
        let key = b.key.clone();
        let (x, y) = q.split(b).unwrap();
        assert_ne!(x.key, key);
        assert_ne!(x.key, y.key);
        assert_eq!(x.events + y.events, 3);
        let joined = [x.body, y.body].concat();
        assert_eq!(joined, b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        let one = Batch {
            key: "z".into(),
            body: b"{}\n".to_vec(),
            events: 1,
            attempts: 0,
        };
        assert!(q.split(one).is_none());
        assert_eq!(q.dropped, 1);
    }

    #[test]
    fn oversized_event_is_dropped_not_queued() {
        let mut q = Queue::new(limits(1000), "k".into());
        q.push(line(&[b'x'; 100]), Instant::now());
        assert!(q.is_empty());
        assert_eq!(q.dropped, 1);
    }

    #[test]
    fn skip_keeps_the_rest_of_a_batch() {
        let now = Instant::now();
        let mut q = Queue::new(limits(1000), "k".into());
        for i in 0..3 {
            q.push(line(format!("{{\"n\":{i}}}").as_bytes()), now);
        }
        let b = q.take_batch(now, true).unwrap();
        let lines: Vec<&[u8]> = b.lines().collect();
        assert_eq!(lines, [&b"{\"n\":0}"[..], b"{\"n\":1}", b"{\"n\":2}"]);
        let b = b.skip(0);
        assert_eq!(b.events, 3);
        let b = b.skip(2);
        assert_eq!((b.events, &b.body[..]), (1, &b"{\"n\":2}\n"[..]));
        let b = b.skip(5);
        assert_eq!((b.events, b.body.len()), (0, 0));
    }

    #[test]
    fn an_abandoned_channel_counts_every_undelivered_event_once() {
        let ch = Channel::new("x", limits(1000), "k".into());
        let lines: Vec<Line> = (0..6).map(|i| line(format!("{i}").as_bytes())).collect();
        ch.push_all(&lines);
        // 2 delivered, 1 refused by the receiver, 2 in flight, 1 still queued.
        let _in_flight = ch.lock().take_batch(Instant::now(), true);
        ch.lock().push(line(b"q"), Instant::now());
        ch.counts.offered.fetch_add(1, Ordering::Relaxed);
        ch.counts.sent.store(2, Ordering::Relaxed);
        ch.counts.dropped.store(1, Ordering::Relaxed);
        assert_eq!(ch.abandon(), 4);
        let s = ch.stats();
        assert_eq!(s.queued, 0);
        assert_eq!(s.events_sent + s.dropped_output + s.dropped_queue, 7);
        assert_eq!(ch.abandon(), 0, "a second look finds nothing left");
        assert_eq!(ch.drop_leftover(3), 0, "the thread counts nothing after it");
    }
}
