//! The events' JSON on the hot path, written by hand: the same bytes serde_json makes of the
//! derived `Serialize` (the tests hold the two equal for every event type), several times
//! faster. Keys and punctuation are constants, strings are escaped only when they need it, and
//! the rare sections (network, credentials, container, ...) still go through serde.

use serde::Serialize;

use crate::event::{Ancestor, Event, Process, Timestamp};

type Result = serde_json::Result<()>;

impl Event {
    /// Appends the event as one JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result {
        out.extend_from_slice(b"{\"type\":");
        string(out, self.kind)?;
        out.extend_from_slice(b",\"schema_version\":");
        int(out, self.schema_version);
        out.extend_from_slice(b",\"@timestamp\":");
        timestamp(out, self.timestamp);
        out.extend_from_slice(b",\"seq\":");
        int(out, self.seq);
        out.extend_from_slice(b",\"host\":{\"name\":");
        string(out, &self.host.name)?;
        out.push(b'}');
        if let Some(p) = &self.process {
            out.extend_from_slice(b",\"process\":");
            process(out, p)?;
        }
        section(out, "container", &self.container)?;
        section(out, "orchestrator", &self.orchestrator)?;
        section(out, "source", &self.source)?;
        section(out, "destination", &self.destination)?;
        section(out, "network", &self.network)?;
        section(out, "credentials", &self.credentials)?;
        section(out, "ptrace", &self.ptrace)?;
        section(out, "bpf", &self.bpf)?;
        section(out, "memfd", &self.memfd)?;
        section(out, "stats", &self.stats)?;
        out.push(b'}');
        Ok(())
    }
}

fn process(out: &mut Vec<u8>, p: &Process) -> Result {
    out.extend_from_slice(b"{\"pid\":");
    int(out, p.pid);
    out.extend_from_slice(b",\"thread\":{\"id\":");
    int(out, p.thread.id);
    out.extend_from_slice(b"},\"name\":");
    string(out, &p.name.as_str())?;
    if let Some(exe) = &p.executable {
        out.extend_from_slice(b",\"executable\":");
        string(out, exe)?;
    }
    if let Some(args) = &p.args {
        out.extend_from_slice(b",\"args\":[");
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, a)?;
        }
        out.push(b']');
    }
    if let Some(n) = p.args_count {
        out.extend_from_slice(b",\"args_count\":");
        int(out, n);
    }
    if let Some(b) = p.args_truncated {
        out.extend_from_slice(b",\"args_truncated\":");
        boolean(out, b);
    }
    if let Some(b) = p.fileless {
        out.extend_from_slice(b",\"fileless\":");
        boolean(out, b);
    }
    if let Some(t) = p.start {
        out.extend_from_slice(b",\"start\":");
        timestamp(out, t);
    }
    out.extend_from_slice(b",\"user\":{\"id\":");
    int(out, p.user.id);
    out.extend_from_slice(b"},\"real_user\":{\"id\":");
    int(out, p.real_user.id);
    out.extend_from_slice(b"},\"group\":{\"id\":");
    int(out, p.group.id);
    out.extend_from_slice(b"},\"real_group\":{\"id\":");
    int(out, p.real_group.id);
    out.push(b'}');
    if let Some(l) = &p.login_user {
        out.extend_from_slice(b",\"login_user\":{\"id\":");
        int(out, l.id);
        out.push(b'}');
    }
    out.extend_from_slice(b",\"parent\":");
    ancestor(out, &p.parent)?;
    out.extend_from_slice(b",\"ancestry\":[");
    for (i, a) in p.ancestry.as_slice().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ancestor(out, a)?;
    }
    out.extend_from_slice(b"],\"cgroup\":");
    // Through serde: workload attribution may grow this object.
    serde_json::to_writer(&mut *out, &p.cgroup)?;
    out.extend_from_slice(b",\"namespaces\":{\"pid\":");
    int(out, p.namespaces.pid);
    out.extend_from_slice(b",\"mnt\":");
    int(out, p.namespaces.mnt);
    out.push(b'}');
    if let Some(c) = p.exit_code {
        out.extend_from_slice(b",\"exit_code\":");
        int(out, c);
    }
    if let Some(s) = p.exit_signal {
        out.extend_from_slice(b",\"exit_signal\":");
        int(out, s);
    }
    if let Some(b) = p.core_dumped {
        out.extend_from_slice(b",\"core_dumped\":");
        boolean(out, b);
    }
    if let Some(t) = p.end {
        out.extend_from_slice(b",\"end\":");
        timestamp(out, t);
    }
    if let Some(n) = p.lifetime_ns {
        out.extend_from_slice(b",\"lifetime_ns\":");
        int(out, n);
    }
    out.push(b'}');
    Ok(())
}

fn ancestor(out: &mut Vec<u8>, a: &Ancestor) -> Result {
    out.extend_from_slice(b"{\"pid\":");
    int(out, a.pid);
    if let Some(exe) = &a.executable {
        out.extend_from_slice(b",\"executable\":");
        string(out, exe)?;
    }
    out.push(b'}');
    Ok(())
}

/// `,"key":value` for a present optional section, through serde.
fn section<T: Serialize>(out: &mut Vec<u8>, key: &str, v: &Option<T>) -> Result {
    if let Some(v) = v {
        out.push(b',');
        string(out, key)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, v)?;
    }
    Ok(())
}

/// A JSON string: copied as it is unless it holds a byte JSON must escape (`"`, `\`, control
/// characters), which serde_json then escapes exactly as the derived serializer would.
fn string(out: &mut Vec<u8>, s: &str) -> Result {
    // A fold rather than `any`: no early exit, so the scan vectorizes.
    let escape = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        return serde_json::to_writer(&mut *out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn timestamp(out: &mut Vec<u8>, t: Timestamp) {
    out.push(b'"');
    out.extend_from_slice(&t.rfc3339());
    out.push(b'"');
}
