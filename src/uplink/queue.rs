//! Upload queue: a byte-bounded FIFO of serialized events that drops the oldest when full (and
//! counts it), cut into NDJSON batches that keep one idempotency key across retries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// Serialized events waiting for upload.
#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    lines: VecDeque<(Vec<u8>, Instant)>,
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
    pub fn push(&mut self, line: Vec<u8>, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            q.push(vec![b'a' + i; 4], now); // 5 bytes each with the newline
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
        q.push(b"{}".to_vec(), t0);
        assert!(
            q.take_batch(t0, false).is_none(),
            "one event is not due before its age"
        );
        assert!(
            q.take_batch(t0 + Duration::from_millis(100), false)
                .is_some()
        );
        for _ in 0..3 {
            q.push(b"{}".to_vec(), t0);
        }
        assert_eq!(q.due(), Some(t0));
    }

    #[test]
    fn keys_are_unique_and_split_keeps_every_event() {
        let now = Instant::now();
        let mut q = Queue::new(limits(1000), "abc".into());
        for i in 0..3 {
            q.push(format!("{{\"n\":{i}}}").into_bytes(), now);
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
        q.push(vec![b'x'; 100], Instant::now());
        assert!(q.is_empty());
        assert_eq!(q.dropped, 1);
    }
}
