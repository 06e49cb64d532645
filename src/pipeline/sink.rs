//! Sinks: where the pipeline's events go ([`Sink`]), and [`JsonLines`], the buffered JSON-lines
//! writer that `watch` and `start --output stdout|both` put on stdout; for `watch --alerts`,
//! [`AlertsOnly`] (alerts only, as JSON lines) and [`AlertText`] (one readable line each).

use std::io::{self, Write};

use crate::error::{Error, Result};
use crate::events::event::Event;

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

/// Passes only alerts on (`watch --alerts` with stdout not a terminal).
pub struct AlertsOnly<S: Sink>(pub S);

impl<S: Sink> Sink for AlertsOnly<S> {
    fn send(&mut self, ev: &Event) -> Result<bool> {
        if ev.kind == "alert" {
            self.0.send(ev)
        } else {
            Ok(true)
        }
    }
    fn flush(&mut self) -> Result<bool> {
        self.0.flush()
    }
}

/// Alerts as one readable line each (`watch --alerts` on a terminal): time, severity, rule,
/// process, container, and the fields the rule read. Control characters are escaped.
pub struct AlertText<W: Write> {
    out: W,
}

impl<W: Write> AlertText<W> {
    pub fn new(out: W) -> Self {
        AlertText { out }
    }
}

/// `s` with control characters escaped (text from processes must not act on the terminal).
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc = c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            let mut v: Vec<char> = Vec::new();
            if esc {
                v.extend(c.escape_unicode());
            } else {
                v.push(c);
            }
            v
        })
        .collect()
}

/// The readable line of an alert (without the newline).
pub fn alert_line(ev: &Event) -> Option<String> {
    let a = ev.alert.as_ref()?;
    let mut line = format!(
        "{} {} {} {}: {}",
        ev.timestamp,
        a.rule.severity.to_uppercase(),
        a.severity,
        clean(&a.rule.id),
        clean(&a.rule.name)
    );
    if let Some(p) = &ev.process {
        line.push_str(&format!(
            " | pid {} {} ({})",
            p.pid,
            clean(p.executable.as_deref().unwrap_or("?")),
            clean(&p.name.as_str())
        ));
        let parent = p.parent.executable();
        if !parent.is_empty() {
            line.push_str(&format!(" parent {}", clean(parent)));
        }
    }
    if let Some(id) = ev
        .container
        .as_ref()
        .and_then(|c| c.get("id"))
        .and_then(|i| i.as_str())
    {
        line.push_str(&format!(
            " | container {}",
            clean(id.get(..12).unwrap_or(id))
        ));
    }
    line.push_str(&format!(" | {} seq {}", a.trigger.kind, a.trigger.seq));
    for (k, v) in &a.trigger.fields {
        line.push_str(&format!(" {}={}", clean(k), clean(&v.to_string())));
    }
    Some(line)
}

impl<W: Write> Sink for AlertText<W> {
    fn send(&mut self, ev: &Event) -> Result<bool> {
        match alert_line(ev) {
            Some(l) => match writeln!(self.out, "{l}") {
                Ok(()) => Ok(true),
                Err(e) => closed_or_err(e),
            },
            None => Ok(true),
        }
    }
    fn flush(&mut self) -> Result<bool> {
        self.out.flush().map_or_else(closed_or_err, |()| Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Stats;
    use crate::events::event::Builder;

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
