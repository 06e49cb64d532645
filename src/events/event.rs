//! The JSON event object (schema in docs/events.md): `"type"` first, then schema version, RFC 3339
//! nanosecond timestamp, per-agent `seq`, host, the process (ECS field names), then the
//! type-specific sections. `container`/`orchestrator` are reserved for workload attribution.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::events::activity::{
    self, DnsInfo, DnsQuestion, FileInfo, ModuleInfo, MountInfo, NamespaceInfo,
};
use crate::events::alert::AlertInfo;
use crate::events::json::{self, key};
use crate::events::proctable::{ANCESTRY_DEPTH, Ancestor, ExecAt, ProcTable};
use crate::events::redact::Redactor;
use crate::sensor::decode::{Comm, Creds, NsInodes, Record, Task, clone_new_names};

/// Bumped on any incompatible change to the event format (docs/events.md). 2: ECS `event.*`
/// fields on every event, user and group ids as strings (ECS keywords).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Serialize, Debug)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema_version: u32,
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub seq: u64,
    /// ECS categorization (`event.kind`, `event.category`, `event.type`, `event.action`, ...).
    pub event: Ecs,
    pub host: Host,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Filled by workload attribution (container runtime, image, ...); absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<serde_json::Value>,
    /// Filled by workload attribution (Kubernetes pod, namespace, ...); absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Box<Credentials>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptrace: Option<PtraceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf: Option<BpfInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfd: Option<MemfdInfo>,
    /// Alerts only: the rule, severity, technique ids and trigger (flattened: `rule`, `event`,
    /// `threat`, `trigger` are top-level objects).
    #[serde(flatten)]
    pub alert: Option<Box<AlertInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Box<NamespaceInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<Box<MountInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Box<ModuleInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Box<FileInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<DnsInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Box<crate::counters::Snapshot>>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Host {
    pub name: Rc<str>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Id {
    pub id: u32,
}

/// A user or group id: an ECS keyword, so a string (`{"id":"1000"}`).
#[derive(Serialize, Debug, Default, Clone)]
pub struct KeywordId {
    #[serde(serialize_with = "as_string")]
    pub id: u32,
}

fn as_string<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The ECS 8 `event` object: how Elastic (and any ECS consumer) routes the event. Every value
/// is one of ECS's allowed values (docs/events.md has the table per type).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// `event` for what the kernel saw, `metric` for the agent's own counters.
    pub kind: &'static str,
    pub category: &'static [&'static str],
    #[serde(rename = "type")]
    pub types: &'static [&'static str],
    /// What happened, in this agent's words (`exec`, `connect`, `setresuid`, ...).
    pub action: &'static str,
    /// `success` / `failure` (/ `unknown`) where the operation has a result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// Nanoseconds the observed activity lasted (`connection_close`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Alerts: the rule's ECS severity (21 low, 47 medium, 73 high, 99 critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
}

impl Ecs {
    /// An `event` of `category` and `types`.
    pub const fn event(
        category: &'static [&'static str],
        types: &'static [&'static str],
        action: &'static str,
    ) -> Ecs {
        Ecs {
            kind: "event",
            category,
            types,
            action,
            outcome: None,
            duration: None,
            severity: None,
        }
    }

    /// With `event.outcome` from a syscall result: negative is a failure.
    pub fn result(mut self, ret: i64) -> Ecs {
        self.outcome = Some(if ret < 0 { "failure" } else { "success" });
        self
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        key!(out, open "kind");
        json::str(out, self.kind);
        key!(out, "category");
        activity::write_strs(out, self.category);
        key!(out, "type");
        activity::write_strs(out, self.types);
        key!(out, "action");
        json::str(out, self.action);
        if let Some(o) = self.outcome {
            key!(out, "outcome");
            json::str(out, o);
        }
        if let Some(d) = self.duration {
            key!(out, "duration");
            json::uint(out, d);
        }
        if let Some(v) = self.severity {
            key!(out, "severity");
            json::uint(out, v.into());
        }
        out.push(b'}');
    }
}

/// Which of descriptors 0-2 are sockets (bit i for descriptor i), as the list of their names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioSockets(pub u8);

impl StdioSockets {
    const NAMES: [&'static str; 3] = ["stdin", "stdout", "stderr"];

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| n)
    }
}

impl Serialize for StdioSockets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// The ancestry chain, parent first: a fixed array, so building an event allocates no list.
#[derive(Debug, Default, Clone)]
pub struct Ancestry {
    items: [Option<Ancestor>; ANCESTRY_DEPTH],
}

impl Ancestry {
    pub fn iter(&self) -> impl Iterator<Item = &Ancestor> {
        self.items.iter().map_while(Option::as_ref)
    }
}

/// From [`ProcTable::ancestry`].
impl FromIterator<Ancestor> for Ancestry {
    fn from_iter<I: IntoIterator<Item = Ancestor>>(iter: I) -> Ancestry {
        let mut a = Ancestry::default();
        for (slot, anc) in a.items.iter_mut().zip(iter) {
            *slot = Some(anc);
        }
        a
    }
}

impl Serialize for Ancestry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Namespaces {
    pub pid: u32,
    pub mnt: u32,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Cgroup {
    pub id: u64,
    /// Attestation's cache key on hybrid hosts; not part of the schema.
    #[serde(skip)]
    pub memcg_v1_id: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub thread: Id,
    pub name: Comm,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<Rc<str>>,
    /// exec: the kernel could not walk the whole path (`executable` then starts with `...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_truncated: Option<bool>,
    /// exec: secret flag values in `args` were replaced (events::redact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_redacted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fileless: Option<bool>,
    /// Present (true) when the process runs an executable it was given in another cgroup
    /// (events::proctable: a container runtime's processes in the container they set up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_outside: Option<bool>,
    /// exec: which of stdin, stdout, stderr were sockets (a reverse shell's are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdio_sockets: Option<StdioSockets>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    pub user: KeywordId,
    pub real_user: KeywordId,
    pub group: KeywordId,
    pub real_group: KeywordId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_user: Option<KeywordId>,
    pub parent: Ancestor,
    pub ancestry: Ancestry,
    pub cgroup: Cgroup,
    pub namespaces: Namespaces,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_dumped: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_ns: Option<u64>,
}

#[derive(Serialize, Debug)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
    /// Bytes this side sent (`connection_close`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Serialize, Debug)]
pub struct Network {
    pub transport: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub direction: &'static str,
    /// The application protocol (`dns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Bytes both ways (`connection_close`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// connect(): 0, or -errno (-115 EINPROGRESS: non-blocking, still connecting); accept: the fd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
}

#[derive(Serialize, Debug)]
pub struct Credentials {
    pub syscall: &'static str,
    pub old: Creds,
    pub new: Creds,
}

#[derive(Serialize, Debug)]
pub struct PtraceInfo {
    pub request: &'static str,
    pub target: Ancestor,
    pub result: i32,
    /// A failed attach from inside a pid namespace: `target.pid` is the tracer's own number for
    /// it, not a host pid, and is not looked up.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub target_pid_in_tracer_ns: bool,
}

#[derive(Serialize, Debug)]
pub struct BpfInfo {
    pub prog_type: u32,
    pub prog_name: String,
    pub insn_count: u32,
    pub result: i32,
}

#[derive(Serialize, Debug)]
pub struct MemfdInfo {
    pub name: String,
    pub flags: u32,
    pub result: i32,
}

/// `Some(s)` unless `s` is empty.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Event {
    /// Appends the event as one JSON object (no newline) to `out`, a buffer the sink reuses.
    ///
    /// Written field by field with literal keys: serde_json spent half the agent's CPU in an
    /// exec storm on keys, escaping and small writes. The output is byte for byte what
    /// `serde_json::to_writer(out, self)` (the derive above, the schema's reference) writes;
    /// `fast_writer_matches_serde_byte_for_byte` checks every event type and every option.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        key!(out, open "type");
        json::str(out, self.kind);
        key!(out, "schema_version");
        json::uint(out, SCHEMA_VERSION.into());
        key!(out, "@timestamp");
        json::timestamp(out, self.timestamp.0);
        key!(out, "seq");
        json::uint(out, self.seq);
        key!(out, "event");
        self.event.write_json(out);
        key!(out, "host");
        key!(out, open "name");
        json::str(out, &self.host.name);
        out.push(b'}');
        if let Some(p) = &self.process {
            key!(out, "process");
            p.write_json(out);
        }
        if let Some(c) = &self.container {
            key!(out, "container");
            serde_json::to_writer(&mut *out, c)?;
        }
        if let Some(o) = &self.orchestrator {
            key!(out, "orchestrator");
            serde_json::to_writer(&mut *out, o)?;
        }
        if let Some(s) = &self.source {
            key!(out, "source");
            s.write_json(out);
        }
        if let Some(d) = &self.destination {
            key!(out, "destination");
            d.write_json(out);
        }
        if let Some(n) = &self.network {
            key!(out, "network");
            key!(out, open "transport");
            json::str(out, n.transport);
            key!(out, "type");
            json::str(out, n.kind);
            key!(out, "direction");
            json::str(out, n.direction);
            if let Some(p) = n.protocol {
                key!(out, "protocol");
                json::str(out, p);
            }
            if let Some(b) = n.bytes {
                key!(out, "bytes");
                json::uint(out, b);
            }
            if let Some(r) = n.result {
                key!(out, "result");
                json::int(out, r.into());
            }
            out.push(b'}');
        }
        if let Some(c) = &self.credentials {
            key!(out, "credentials");
            key!(out, open "syscall");
            json::str(out, c.syscall);
            key!(out, "old");
            write_creds(&c.old, out);
            key!(out, "new");
            write_creds(&c.new, out);
            out.push(b'}');
        }
        if let Some(p) = &self.ptrace {
            key!(out, "ptrace");
            key!(out, open "request");
            json::str(out, p.request);
            key!(out, "target");
            out.extend_from_slice(p.target.json().as_bytes());
            key!(out, "result");
            json::int(out, p.result.into());
            if p.target_pid_in_tracer_ns {
                key!(out, "target_pid_in_tracer_ns");
                json::bool(out, true);
            }
            out.push(b'}');
        }
        if let Some(b) = &self.bpf {
            key!(out, "bpf");
            key!(out, open "prog_type");
            json::uint(out, b.prog_type.into());
            key!(out, "prog_name");
            json::str(out, &b.prog_name);
            key!(out, "insn_count");
            json::uint(out, b.insn_count.into());
            key!(out, "result");
            json::int(out, b.result.into());
            out.push(b'}');
        }
        if let Some(m) = &self.memfd {
            key!(out, "memfd");
            key!(out, open "name");
            json::str(out, &m.name);
            key!(out, "flags");
            json::uint(out, m.flags.into());
            key!(out, "result");
            json::int(out, m.result.into());
            out.push(b'}');
        }
        if let Some(a) = &self.alert {
            a.write_json(out)?;
        }
        activity::write_json(
            &activity::Objects {
                namespace: self.namespace.as_deref(),
                mount: self.mount.as_deref(),
                module: self.module.as_deref(),
                file: self.file.as_deref(),
                dns: self.dns.as_deref(),
            },
            out,
        );
        if let Some(s) = &self.stats {
            key!(out, "stats");
            serde_json::to_writer(&mut *out, s)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// `{"id":N}`.
fn write_id(out: &mut Vec<u8>, id: u32) {
    key!(out, open "id");
    json::uint(out, id.into());
    out.push(b'}');
}

/// `{"id":"N"}` (an ECS keyword id; digits need no escaping).
fn write_keyword_id(out: &mut Vec<u8>, id: u32) {
    key!(out, open "id");
    out.push(b'"');
    json::uint(out, id.into());
    out.extend_from_slice(b"\"}");
}

impl Process {
    fn write_json(&self, out: &mut Vec<u8>) {
        key!(out, open "pid");
        json::uint(out, self.pid.into());
        key!(out, "thread");
        write_id(out, self.thread.id);
        key!(out, "name");
        json::str(out, &self.name.as_str());
        if let Some(x) = &self.executable {
            key!(out, "executable");
            json::str(out, x);
        }
        if let Some(b) = self.executable_truncated {
            key!(out, "executable_truncated");
            json::bool(out, b);
        }
        if let Some(args) = &self.args {
            key!(out, "args");
            out.push(b'[');
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::str(out, a);
            }
            out.push(b']');
        }
        if let Some(n) = self.args_count {
            key!(out, "args_count");
            json::uint(out, n as u64);
        }
        if let Some(b) = self.args_truncated {
            key!(out, "args_truncated");
            json::bool(out, b);
        }
        if let Some(b) = self.args_redacted {
            key!(out, "args_redacted");
            json::bool(out, b);
        }
        if let Some(b) = self.fileless {
            key!(out, "fileless");
            json::bool(out, b);
        }
        if let Some(b) = self.exec_outside {
            key!(out, "exec_outside");
            json::bool(out, b);
        }
        if let Some(s) = self.stdio_sockets {
            key!(out, "stdio_sockets");
            out.push(b'[');
            for (i, n) in s.names().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::str(out, n);
            }
            out.push(b']');
        }
        if let Some(t) = self.start {
            key!(out, "start");
            json::timestamp(out, t.0);
        }
        key!(out, "user");
        write_keyword_id(out, self.user.id);
        key!(out, "real_user");
        write_keyword_id(out, self.real_user.id);
        key!(out, "group");
        write_keyword_id(out, self.group.id);
        key!(out, "real_group");
        write_keyword_id(out, self.real_group.id);
        if let Some(l) = &self.login_user {
            key!(out, "login_user");
            write_keyword_id(out, l.id);
        }
        key!(out, "parent");
        out.extend_from_slice(self.parent.json().as_bytes());
        key!(out, "ancestry");
        out.push(b'[');
        for (i, a) in self.ancestry.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(a.json().as_bytes());
        }
        out.push(b']');
        key!(out, "cgroup");
        key!(out, open "id");
        json::uint(out, self.cgroup.id);
        out.push(b'}');
        key!(out, "namespaces");
        key!(out, open "pid");
        json::uint(out, self.namespaces.pid.into());
        key!(out, "mnt");
        json::uint(out, self.namespaces.mnt.into());
        out.push(b'}');
        if let Some(c) = self.exit_code {
            key!(out, "exit_code");
            json::int(out, c.into());
        }
        if let Some(s) = self.exit_signal {
            key!(out, "exit_signal");
            json::uint(out, s.into());
        }
        if let Some(b) = self.core_dumped {
            key!(out, "core_dumped");
            json::bool(out, b);
        }
        if let Some(t) = self.end {
            key!(out, "end");
            json::timestamp(out, t.0);
        }
        if let Some(n) = self.lifetime_ns {
            key!(out, "lifetime_ns");
            json::uint(out, n);
        }
        out.push(b'}');
    }
}

impl Endpoint {
    fn write_json(&self, out: &mut Vec<u8>) {
        key!(out, open "ip");
        json::str(out, &self.ip);
        key!(out, "port");
        json::uint(out, self.port.into());
        if let Some(b) = self.bytes {
            key!(out, "bytes");
            json::uint(out, b);
        }
        out.push(b'}');
    }
}

/// The hot-path writer of [`Creds`] (same bytes as its serde derive).
fn write_creds(c: &Creds, out: &mut Vec<u8>) {
    key!(out, open "uid");
    json::uint(out, c.uid.into());
    for (k, v) in [
        (&b",\"euid\":"[..], c.euid),
        (b",\"suid\":", c.suid),
        (b",\"fsuid\":", c.fsuid),
        (b",\"gid\":", c.gid),
        (b",\"egid\":", c.egid),
        (b",\"sgid\":", c.sgid),
        (b",\"fsgid\":", c.fsgid),
    ] {
        out.extend_from_slice(k);
        json::uint(out, v.into());
    }
    key!(out, "cap_effective");
    hex(out, c.cap_effective);
    key!(out, "cap_permitted");
    hex(out, c.cap_permitted);
    key!(out, "cap_inheritable");
    hex(out, c.cap_inheritable);
    out.push(b'}');
}

/// `"0x…"`: a capability set as serde's `{:#x}` string (hex digits need no escaping).
fn hex(out: &mut Vec<u8>, v: u64) {
    use std::io::Write;
    let _ = write!(out, "\"{v:#x}\"");
}

/// A wall-clock time in ns since the Unix epoch (a `u64` reaches the year 2554), serialized as
/// RFC 3339 UTC with nanoseconds (`2023-11-14T22:13:20.000000123Z`) from a stack buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Timestamp(ns)
    }
}

impl std::fmt::Display for Timestamp {
    /// humantime formats into a stack buffer; `collect_str` below streams it into the output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = UNIX_EPOCH + std::time::Duration::from_nanos(self.0);
        std::fmt::Display::fmt(&humantime::format_rfc3339_nanos(t), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Converts kernel boot-clock times into wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0);
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: real - boot,
        }
    }

    /// The wall-clock time of a boot-clock time (ns since boot).
    pub fn at(&self, boot_ns: u64) -> Timestamp {
        let ns = (self.offset_ns + boot_ns as i128).clamp(0, u64::MAX as i128);
        Timestamp(ns as u64)
    }
}

// ECS 8 `event.category` and `event.type` values (each an allowed value of ECS).
const PROCESS: &[&str] = &["process"];
const NETWORK: &[&str] = &["network"];
const DRIVER: &[&str] = &["driver"];
const FILE: &[&str] = &["file"];
const START: &[&str] = &["start"];
const END: &[&str] = &["end"];
const CHANGE: &[&str] = &["change"];
const ACCESS: &[&str] = &["access"];
const CREATION: &[&str] = &["creation"];
const CONNECTION_START: &[&str] = &["connection", "start"];
const CONFIGURATION: &[&str] = &["configuration"];
const DELETION: &[&str] = &["deletion"];
const PROTOCOL: &[&str] = &["protocol"];
const CONNECTION_END: &[&str] = &["connection", "end"];

/// Builds events: owns the sequence counter, the host name, the clock and the argv redactor.
pub struct Builder {
    pub host: Host,
    pub clock: Clock,
    seq: u64,
    redactor: Redactor,
}

impl Builder {
    /// With the default redaction (`--redact-flags`'s default, this process's executable).
    pub fn new(host_name: &str) -> Builder {
        Builder {
            host: Host {
                name: Rc::from(host_name),
            },
            clock: Clock::now(),
            seq: 0,
            redactor: Redactor::default(),
        }
    }

    /// Replaces the argv redaction (`--redact-flags`).
    pub fn set_redactor(&mut self, r: Redactor) {
        self.redactor = r;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn base(&mut self, kind: &'static str, event: Ecs, timestamp: Timestamp) -> Event {
        Event {
            kind,
            schema_version: SCHEMA_VERSION,
            timestamp,
            seq: self.next_seq(),
            event,
            host: self.host.clone(),
            process: None,
            container: None,
            orchestrator: None,
            source: None,
            destination: None,
            network: None,
            credentials: None,
            ptrace: None,
            bpf: None,
            memfd: None,
            alert: None,
            namespace: None,
            mount: None,
            module: None,
            file: None,
            dns: None,
            stats: None,
        }
    }

    /// An alert about `trigger`: its own `seq`, the trigger's time, host, container and pod,
    /// and the trigger's process without the fields only exec and exit have.
    pub fn alert(&mut self, trigger: &Event, info: AlertInfo) -> Event {
        let ecs = Ecs {
            kind: "alert",
            severity: Some(info.severity),
            ..Ecs::event(&["intrusion_detection"], &["info"], "rule_match")
        };
        let mut e = self.base("alert", ecs, trigger.timestamp);
        e.process = trigger.process.as_ref().map(|p| Process {
            executable_truncated: None,
            args: None,
            args_count: None,
            args_truncated: None,
            args_redacted: None,
            fileless: None,
            stdio_sockets: None,
            exit_code: None,
            exit_signal: None,
            core_dumped: None,
            end: None,
            lifetime_ns: None,
            ..p.clone()
        });
        e.container.clone_from(&trigger.container);
        e.orchestrator.clone_from(&trigger.orchestrator);
        e.alert = Some(Box::new(info));
        e
    }

    pub fn stats(&mut self, snapshot: crate::counters::Snapshot) -> Event {
        let ecs = Ecs {
            kind: "metric",
            ..Ecs::event(&["host"], &["info"], "stats")
        };
        let mut e = self.base("stats", ecs, Timestamp::now());
        e.stats = Some(Box::new(snapshot));
        e
    }

    /// The process object of task `t`: its parent is `t.ppid`, executables and ancestry come
    /// from the table.
    fn process(&self, t: Task, procs: &mut ProcTable) -> Process {
        let (executable, outside) = procs.exe_and_outside(
            t.pid,
            ExecAt {
                cgroup: t.cgroup_id,
                memcg: t.memcg_v1_id,
                mntns: u64::from(t.mntns),
            },
        );
        Process {
            pid: t.pid,
            thread: Id { id: t.tid },
            executable,
            start: (t.start_boot_ns != 0).then(|| self.clock.at(t.start_boot_ns)),
            user: KeywordId { id: t.euid },
            real_user: KeywordId { id: t.uid },
            group: KeywordId { id: t.egid },
            real_group: KeywordId { id: t.gid },
            login_user: (t.auid != u32::MAX).then_some(KeywordId { id: t.auid }),
            parent: procs.ancestor(t.ppid),
            ancestry: procs.ancestry(t.ppid).collect(),
            cgroup: Cgroup {
                id: t.cgroup_id,
                memcg_v1_id: t.memcg_v1_id,
            },
            namespaces: Namespaces {
                pid: t.pidns,
                mnt: t.mntns,
            },
            exec_outside: outside.then_some(true),
            name: t.comm,
            executable_truncated: None,
            args: None,
            args_count: None,
            args_truncated: None,
            args_redacted: None,
            fileless: None,
            stdio_sockets: None,
            exit_code: None,
            exit_signal: None,
            core_dumped: None,
            end: None,
            lifetime_ns: None,
        }
    }

    /// Enriches one record with the process table into an event, and keeps the table current.
    /// The record's strings move into the event.
    pub fn build(&mut self, rec: Record, procs: &mut ProcTable) -> Event {
        let ts = self.clock.at(rec.task().ts_boot_ns);
        match rec {
            Record::Exec(x) => {
                let t = x.task;
                let exe: Rc<str> = if x.memfd {
                    // Anonymous file: keep the kernel's name ("memfd:<name>").
                    Rc::from(x.path.trim_start_matches('/'))
                } else if !x.path.is_empty() {
                    Rc::from(x.path)
                } else {
                    Rc::from(x.filename)
                };
                let mut args = x.args;
                let redacted = self.redactor.redact(&mut args, x.exe_dev, x.exe_ino, &exe);
                procs.exec(
                    t.pid,
                    t.ppid,
                    exe,
                    ExecAt {
                        cgroup: t.cgroup_id,
                        memcg: t.memcg_v1_id,
                        mntns: u64::from(t.mntns),
                    },
                );
                if x.old_pid != t.pid {
                    procs.exit(x.old_pid);
                }
                let mut e = self.base("exec", Ecs::event(PROCESS, START, "exec"), ts);
                let mut p = self.process(t, procs);
                p.executable_truncated = Some(x.path_truncated);
                p.args_count = Some(args.len());
                p.args = Some(args);
                p.args_truncated = Some(x.args_truncated);
                p.args_redacted = Some(redacted);
                p.fileless = Some(x.memfd);
                p.stdio_sockets = Some(StdioSockets(x.stdio_sockets));
                e.process = Some(p);
                e
            }
            Record::Exit(x) => {
                let t = x.task;
                let mut e = self.base("exit", Ecs::event(PROCESS, END, "exit"), ts);
                let pid = t.pid;
                let lifetime =
                    (t.start_boot_ns != 0).then(|| t.ts_boot_ns.saturating_sub(t.start_boot_ns));
                let mut p = self.process(t, procs);
                p.exit_code = Some(x.exit_code);
                p.exit_signal = Some(x.signal);
                p.core_dumped = Some(x.core_dumped);
                p.end = Some(ts);
                p.lifetime_ns = lifetime;
                e.process = Some(p);
                procs.exit(pid);
                e
            }
            Record::Fork(x) => {
                // The event's process is the new child; its parent is the forking process.
                procs.fork(x.task.pid, x.child_pid);
                let child = Task {
                    pid: x.child_pid,
                    tid: x.child_pid,
                    ppid: x.task.pid,
                    start_boot_ns: x.child_start_boot_ns,
                    ..x.task
                };
                let mut e = self.base("fork", Ecs::event(PROCESS, START, "fork"), ts);
                e.process = Some(self.process(child, procs));
                e
            }
            Record::Sock(x) => {
                let (kind, mut ecs) = if x.inbound {
                    ("accept", Ecs::event(NETWORK, CONNECTION_START, "accept"))
                } else {
                    ("connect", Ecs::event(NETWORK, CONNECTION_START, "connect"))
                };
                ecs = ecs.result(x.ret.into());
                // A non-blocking connect still in progress has no outcome yet.
                if !x.inbound && x.ret == -nix::libc::EINPROGRESS {
                    ecs.outcome = Some("unknown");
                }
                let mut e = self.base(kind, ecs, ts);
                e.process = Some(self.process(x.task, procs));
                // ECS: `source` is who started the connection. For connect that is this host,
                // for accept it is the remote client (the kernel side reports local/remote).
                let local = Endpoint {
                    ip: x.src.to_string(),
                    port: x.sport,
                    bytes: None,
                };
                let remote = Endpoint {
                    ip: x.dst.to_string(),
                    port: x.dport,
                    bytes: None,
                };
                let (source, destination) = if x.inbound {
                    (remote, local)
                } else {
                    (local, remote)
                };
                e.source = Some(source);
                e.destination = Some(destination);
                e.network = Some(Network {
                    transport: "tcp",
                    kind: if x.dst.is_ipv4() { "ipv4" } else { "ipv6" },
                    direction: if x.inbound { "ingress" } else { "egress" },
                    protocol: None,
                    bytes: None,
                    result: Some(x.ret),
                });
                e
            }
            Record::Creds(x) => {
                let kind = if x.syscall == "capset" {
                    "capset"
                } else {
                    "setuid"
                };
                let ecs = Ecs::event(PROCESS, CHANGE, x.syscall).result(0);
                let mut e = self.base(kind, ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.credentials = Some(Box::new(Credentials {
                    syscall: x.syscall,
                    old: x.old,
                    new: x.new,
                }));
                e
            }
            Record::Ptrace(x) => {
                let action = if x.request == "seize" {
                    "ptrace_seize"
                } else {
                    "ptrace_attach"
                };
                let ecs = Ecs::event(PROCESS, ACCESS, action).result(x.ret.into());
                let mut e = self.base("ptrace", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.ptrace = Some(PtraceInfo {
                    request: x.request,
                    target: if x.target_host {
                        procs.ancestor(x.target_pid)
                    } else {
                        Ancestor::new(x.target_pid, "")
                    },
                    target_pid_in_tracer_ns: !x.target_host,
                    result: x.ret,
                });
                e
            }
            Record::BpfLoad(x) => {
                let ecs = Ecs::event(DRIVER, START, "bpf_prog_load").result(x.ret.into());
                let mut e = self.base("bpf_load", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.bpf = Some(BpfInfo {
                    prog_type: x.prog_type,
                    prog_name: x.prog_name,
                    insn_count: x.insn_cnt,
                    result: x.ret,
                });
                e
            }
            Record::Namespace(x) => {
                let ecs = Ecs::event(PROCESS, CHANGE, x.syscall).result(x.ret.into());
                let mut e = self.base("namespace", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                let to = (x.to != NsInodes::default()).then_some(x.to);
                let changed = match &to {
                    Some(to) => x
                        .from
                        .named()
                        .into_iter()
                        .zip(to.named())
                        .filter(|((_, a), (_, b))| a != b)
                        .map(|((n, _), _)| n)
                        .collect(),
                    None => Vec::new(),
                };
                e.namespace = Some(Box::new(NamespaceInfo {
                    syscall: x.syscall,
                    requested: clone_new_names(x.flags),
                    changed,
                    from: x.from,
                    to,
                    result: x.ret,
                }));
                e
            }
            Record::Mount(x) => {
                let ecs = Ecs::event(CONFIGURATION, CHANGE, x.syscall).result(x.ret.into());
                let mut e = self.base("mount", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.mount = Some(Box::new(MountInfo {
                    syscall: x.syscall,
                    source: non_empty(x.source),
                    target: non_empty(x.target),
                    fs_type: non_empty(x.fstype),
                    flags: x.flags,
                    result: x.ret,
                }));
                e
            }
            Record::ModuleLoad(x) => {
                let ecs = Ecs::event(DRIVER, START, x.syscall).result(x.ret.into());
                let mut e = self.base("module_load", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                let init = x.syscall == "init_module";
                e.module = Some(Box::new(ModuleInfo {
                    syscall: x.syscall,
                    name: non_empty(x.name),
                    path: non_empty(x.path),
                    path_truncated: x.path_truncated,
                    size: init.then_some(x.len),
                    params: x.params,
                    flags: x.flags,
                    result: x.ret,
                }));
                e
            }
            Record::File(x) => {
                use crate::sensor::decode::FileOp;
                let (types, action) = match x.op {
                    FileOp::Read => (ACCESS, "open"),
                    FileOp::Write => (CHANGE, "write"),
                    FileOp::Create => (CREATION, "create"),
                    FileOp::Rename => (CHANGE, "rename"),
                    FileOp::Delete => (DELETION, "delete"),
                    FileOp::Chmod => (CHANGE, "chmod"),
                    FileOp::Mkdir => (CREATION, "mkdir"),
                    FileOp::Link => (CREATION, "link"),
                    FileOp::Symlink => (CREATION, "symlink"),
                    FileOp::Connect => (ACCESS, "connect"),
                };
                let ecs = Ecs::event(FILE, types, action).result(x.ret.into());
                let mut e = self.base("file", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                let watch = if x.op == FileOp::Connect {
                    "connect"
                } else if x.watch_write && x.op != FileOp::Read {
                    "write"
                } else if x.watch_read {
                    "read"
                } else {
                    "unknown"
                };
                let (old_path, target_path) = match x.op {
                    FileOp::Symlink => (None, Some(x.old_path)),
                    _ => (non_empty(x.old_path), None),
                };
                e.file = Some(Box::new(FileInfo {
                    path: x.path,
                    old_path,
                    target_path,
                    mode: (x.op == FileOp::Chmod).then(|| format!("{:04o}", x.mode)),
                    watch,
                    result: x.ret,
                    path_from_caller: x.from_caller,
                    path_truncated: x.truncated,
                }));
                e
            }
            Record::Dns(x) => {
                use crate::sensor::dns;
                let ecs = Ecs::event(NETWORK, PROTOCOL, "dns_query");
                let mut e = self.base("dns", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.source = Some(Endpoint {
                    ip: x.src.to_string(),
                    port: x.sport,
                    bytes: None,
                });
                e.destination = Some(Endpoint {
                    ip: x.dst.to_string(),
                    port: x.dport,
                    bytes: None,
                });
                e.network = Some(Network {
                    transport: "udp",
                    kind: if x.dst.is_ipv4() { "ipv4" } else { "ipv6" },
                    direction: "egress",
                    protocol: Some("dns"),
                    bytes: None,
                    result: None,
                });
                let mut info = DnsInfo {
                    kind: "query",
                    id: None,
                    op_code: None,
                    question: None,
                    size: x.len,
                    malformed: None,
                };
                match dns::parse(&x.payload) {
                    Ok(q) => {
                        info.id = Some(q.id.to_string());
                        info.op_code = Some(dns::opcode_name(q.opcode).into_owned());
                        info.question = Some(DnsQuestion {
                            name: q.name,
                            kind: dns::type_name(q.qtype).into_owned(),
                            class: dns::class_name(q.qclass).into_owned(),
                        });
                    }
                    Err(m) => info.malformed = Some(m.as_str()),
                }
                e.dns = Some(Box::new(info));
                e
            }
            Record::ConnectionClose(x) => {
                let mut ecs = Ecs::event(NETWORK, CONNECTION_END, "connection_close");
                ecs.duration = Some(x.task.ts_boot_ns.saturating_sub(x.start_ns));
                let mut e = self.base("connection_close", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                // As for connect/accept: `source` started the connection; each side's bytes
                // are what it sent.
                let local = Endpoint {
                    ip: x.src.to_string(),
                    port: x.sport,
                    bytes: Some(x.bytes_sent),
                };
                let remote = Endpoint {
                    ip: x.dst.to_string(),
                    port: x.dport,
                    bytes: Some(x.bytes_received),
                };
                let (source, destination) = if x.inbound {
                    (remote, local)
                } else {
                    (local, remote)
                };
                e.source = Some(source);
                e.destination = Some(destination);
                e.network = Some(Network {
                    transport: "tcp",
                    kind: if x.dst.is_ipv4() { "ipv4" } else { "ipv6" },
                    direction: if x.inbound { "ingress" } else { "egress" },
                    protocol: None,
                    bytes: Some(x.bytes_sent.saturating_add(x.bytes_received)),
                    result: None,
                });
                e
            }
            Record::Memfd(x) => {
                let ecs = Ecs::event(FILE, CREATION, "memfd_create").result(x.ret.into());
                let mut e = self.base("memfd", ecs, ts);
                e.process = Some(self.process(x.task, procs));
                e.memfd = Some(MemfdInfo {
                    name: x.name,
                    flags: x.flags,
                    result: x.ret,
                });
                e
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::IpAddr;

    use serde_json::Value;

    use super::*;
    use crate::sensor::decode::*;

    const DOC: &str = include_str!("../../docs/events.md");
    const KERNEL_TYPES: [&str; crate::sensor::decode::EVENT_TYPES.len()] =
        crate::sensor::decode::EVENT_TYPES;

    struct Row {
        ty: String,
        optional: bool,
        events: Vec<String>,
    }

    fn documented() -> BTreeMap<String, Row> {
        let mut rows = BTreeMap::new();
        for line in DOC.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let field = cells[1].trim_matches('`').to_string();
            let (ty, optional) = match cells[2].strip_suffix('?') {
                Some(t) => (t.to_string(), true),
                None => (cells[2].to_string(), false),
            };
            let events = match cells[3] {
                "all" => KERNEL_TYPES
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["alert".into(), "stats".into()])
                    .collect(),
                "kernel" => KERNEL_TYPES
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["alert".into()])
                    .collect(),
                list => list.split(',').map(|s| s.trim().to_string()).collect(),
            };
            assert!(
                rows.insert(
                    field.clone(),
                    Row {
                        ty,
                        optional,
                        events
                    }
                )
                .is_none(),
                "{field} documented twice"
            );
        }
        rows
    }

    fn json_type(v: &Value) -> &'static str {
        match v {
            Value::String(_) => "string",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            Value::Null => "null",
        }
    }

    /// Every field path with its JSON type; documented `object` fields are not descended into,
    /// arrays of objects are descended into as `path[]`.
    fn flatten(
        v: &Value,
        prefix: &str,
        docs: &BTreeMap<String, Row>,
        out: &mut BTreeMap<String, &'static str>,
    ) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let doc_obj = docs.get(&path).is_some_and(|r| r.ty == "object");
                match x {
                    Value::Object(_) if !doc_obj => flatten(x, &path, docs, out),
                    Value::Array(items) => {
                        out.insert(path.clone(), "array");
                        for it in items.iter().filter(|i| i.is_object()) {
                            flatten(it, &format!("{path}[]"), docs, out);
                        }
                    }
                    _ => {
                        out.insert(path, json_type(x));
                    }
                }
            }
        }
    }

    fn task() -> Task {
        Task {
            ts_boot_ns: 2_000_000_000,
            start_boot_ns: 1_000_000_000,
            cgroup_id: 1,
            memcg_v1_id: 0,
            pid: 300,
            tid: 300,
            ppid: 200,
            uid: 1000,
            gid: 1000,
            euid: 1000,
            egid: 1000,
            auid: 1000,
            pidns: 4026531836,
            mntns: 4026531832,
            comm: "tool".into(),
        }
    }

    /// The event as the sinks write it (`write_json`): one valid JSON object, byte for byte
    /// what serde_json writes from the derive (the schema's reference).
    fn text(ev: &Event) -> String {
        let mut out = Vec::new();
        ev.write_json(&mut out).expect("write_json");
        let text = String::from_utf8(out).expect("utf-8");
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(v.is_object() && !text.contains('\n'), "{text}");
        let reference = serde_json::to_string(ev).expect("serde_json");
        assert_eq!(text, reference, "the fast writer differs from serde_json");
        text
    }

    #[test]
    fn fast_writer_matches_serde_byte_for_byte() {
        let odd = "q\"b\\s\u{1}\n\t\u{7f}é€😀/x";
        let mut procs = ProcTable::new(64);
        procs.exec(200, 1, odd, ExecAt::default());
        procs.exec(300, 200, "", ExecAt::default());
        let mut b = Builder::new(odd);
        let t = Task {
            comm: odd.into(),
            auid: u32::MAX,
            start_boot_ns: 0,
            ..task()
        };
        let recs = vec![
            Record::Exec(Exec {
                task: t.clone(),
                old_pid: 299,
                filename: odd.into(),
                path: String::new(),
                path_truncated: true,
                args: vec![odd.into(), String::new(), "\0".into()],
                args_truncated: false,
                memfd: false,
                stdio_sockets: 0,
                exe_nlink: 0,
                exe_ino: 0,
                exe_dev: 0,
            }),
            Record::Exec(Exec {
                task: task(),
                old_pid: 300,
                filename: "x".into(),
                path: "/memfd:\"y\" (deleted)".into(),
                path_truncated: false,
                args: Vec::new(),
                args_truncated: true,
                memfd: true,
                stdio_sockets: 5,
                exe_nlink: 0,
                exe_ino: 0,
                exe_dev: 0,
            }),
            Record::Exit(Exit {
                task: t.clone(),
                exit_code: -1,
                signal: u32::MAX,
                core_dumped: true,
            }),
            Record::Fork(Fork {
                task: task(),
                child_pid: u32::MAX,
                child_start_boot_ns: u64::MAX,
            }),
            Record::Sock(Sock {
                task: t.clone(),
                inbound: true,
                src: "::1".parse().expect("ip"),
                sport: u16::MAX,
                dst: "fe80::1".parse().expect("ip"),
                dport: 0,
                ret: i32::MIN,
            }),
            Record::Creds(CredChange {
                task: task(),
                syscall: "setresgid",
                old: Creds::default(),
                new: Creds {
                    uid: u32::MAX,
                    cap_effective: u64::MAX,
                    ..Creds::default()
                },
            }),
            Record::Ptrace(Ptrace {
                task: t.clone(),
                request: "seize",
                target_pid: 200,
                target_host: false,
                ret: -1,
            }),
            Record::BpfLoad(BpfLoad {
                task: t.clone(),
                prog_type: u32::MAX,
                prog_name: odd.into(),
                insn_cnt: 0,
                ret: -13,
            }),
            Record::Memfd(Memfd {
                task: t.clone(),
                name: odd.into(),
                flags: u32::MAX,
                ret: -24,
            }),
            Record::Namespace(NamespaceChange {
                task: t.clone(),
                syscall: "clone3",
                flags: u64::MAX,
                ret: -1,
                from: NsInodes {
                    mnt: u32::MAX,
                    ..NsInodes::default()
                },
                to: NsInodes::default(),
            }),
            Record::Namespace(NamespaceChange {
                task: task(),
                syscall: "setns",
                flags: 0,
                ret: 0,
                from: NsInodes::default(),
                to: NsInodes {
                    net: 7,
                    ..NsInodes::default()
                },
            }),
            Record::Mount(Mount {
                task: t.clone(),
                syscall: "mount",
                flags: u64::MAX,
                ret: i32::MIN,
                source: odd.into(),
                target: String::new(),
                fstype: odd.into(),
            }),
            Record::Mount(Mount {
                task: task(),
                syscall: "umount",
                flags: 0,
                ret: 0,
                source: String::new(),
                target: odd.into(),
                fstype: String::new(),
            }),
            Record::ModuleLoad(ModuleLoad {
                task: t.clone(),
                syscall: "finit_module",
                ret: -38,
                flags: u32::MAX,
                len: 0,
                name: odd.into(),
                params: odd.into(),
                path: odd.into(),
                path_truncated: true,
            }),
            Record::File(FileChange {
                task: t.clone(),
                op: FileOp::Symlink,
                ret: -13,
                mode: 0,
                path: odd.into(),
                old_path: odd.into(),
                from_caller: true,
                truncated: true,
                watch_read: false,
                watch_write: true,
                watch_connect: false,
            }),
            Record::File(FileChange {
                task: task(),
                op: FileOp::Chmod,
                ret: 0,
                mode: 0o4755,
                path: "/usr/bin/x".into(),
                old_path: String::new(),
                from_caller: false,
                truncated: false,
                watch_read: false,
                watch_write: false,
                watch_connect: false,
            }),
            Record::File(FileChange {
                task: task(),
                op: FileOp::Rename,
                ret: 0,
                mode: 0,
                path: "/etc/cron.d/job".into(),
                old_path: odd.into(),
                from_caller: true,
                truncated: false,
                watch_read: false,
                watch_write: true,
                watch_connect: false,
            }),
            Record::Dns(DnsQuery {
                task: t.clone(),
                src: "::1".parse().expect("ip"),
                sport: 0,
                dst: "::1".parse().expect("ip"),
                dport: 53,
                len: u32::MAX,
                payload: vec![0xff; 3],
            }),
            Record::Dns(DnsQuery {
                task: task(),
                src: IpAddr::from([10, 0, 0, 1]),
                sport: 5353,
                dst: IpAddr::from([10, 0, 0, 2]),
                dport: 53,
                len: 20,
                payload: vec![
                    0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'q', b'"', 0xff, 0, 0, 1, 0, 1,
                ],
            }),
            Record::ConnectionClose(ConnClose {
                task: t.clone(),
                inbound: true,
                src: "::1".parse().expect("ip"),
                sport: 1,
                dst: "fe80::2".parse().expect("ip"),
                dport: u16::MAX,
                start_ns: u64::MAX,
                bytes_sent: u64::MAX,
                bytes_received: u64::MAX,
            }),
            Record::ModuleLoad(ModuleLoad {
                task: t,
                syscall: "init_module",
                ret: 0,
                flags: 0,
                len: u64::MAX,
                name: String::new(),
                params: String::new(),
                path: String::new(),
                path_truncated: false,
            }),
        ];
        for r in recs {
            let mut ev = b.build(r, &mut procs);
            text(&ev);
            if let Some(p) = ev.process.as_mut() {
                p.exec_outside = Some(true);
            }
            text(&ev);
            ev.container = Some(serde_json::json!({"id": odd, "runtime": "cri-o"}));
            ev.orchestrator = Some(serde_json::json!({"pod": {"uid": "u"}}));
            text(&ev);
            ev.process = None;
            text(&ev);
        }
    }

    fn every_event() -> Vec<Value> {
        every_event_text()
            .iter()
            .map(|t| serde_json::from_str(t).expect("parse"))
            .collect()
    }

    /// One event of every type, built the way the pipeline builds them, as printed.
    fn every_event_text() -> Vec<String> {
        let mut procs = ProcTable::new(64);
        procs.exec(1, 0, "/sbin/init", ExecAt::default());
        procs.exec(100, 1, "/usr/sbin/sshd", ExecAt::default());
        procs.exec(200, 100, "/usr/bin/bash", ExecAt::default());
        procs.exec(300, 200, "/usr/bin/tool", ExecAt::default());
        procs.exec(9, 1, "/usr/bin/victim", ExecAt::default());
        let mut b = Builder::new("testhost");
        let sock = |inbound| Sock {
            task: task(),
            inbound,
            src: IpAddr::from([127, 0, 0, 1]),
            sport: 4000,
            dst: IpAddr::from([127, 0, 0, 1]),
            dport: 80,
            ret: 0,
        };
        let recs = vec![
            Record::Exec(Exec {
                task: task(),
                old_pid: 300,
                filename: "tool".into(),
                path: "/usr/bin/tool".into(),
                path_truncated: false,
                args: vec!["tool".into(), "-x".into()],
                args_truncated: false,
                memfd: false,
                stdio_sockets: 0,
                exe_nlink: 1,
                exe_ino: 0,
                exe_dev: 0,
            }),
            Record::Fork(Fork {
                task: task(),
                child_pid: 301,
                child_start_boot_ns: 1_500_000_000,
            }),
            Record::Sock(sock(false)),
            Record::Sock(sock(true)),
            Record::Creds(CredChange {
                task: task(),
                syscall: "setuid",
                old: Creds::default(),
                new: Creds {
                    uid: 65534,
                    ..Creds::default()
                },
            }),
            Record::Creds(CredChange {
                task: task(),
                syscall: "capset",
                old: Creds::default(),
                new: Creds {
                    cap_effective: 1,
                    ..Creds::default()
                },
            }),
            Record::Ptrace(Ptrace {
                task: task(),
                request: "attach",
                target_pid: 9,
                target_host: true,
                ret: 0,
            }),
            Record::BpfLoad(BpfLoad {
                task: task(),
                prog_type: 1,
                prog_name: "p".into(),
                insn_cnt: 2,
                ret: 5,
            }),
            Record::Memfd(Memfd {
                task: task(),
                name: "m".into(),
                flags: 1,
                ret: 3,
            }),
            Record::Namespace(NamespaceChange {
                task: task(),
                syscall: "unshare",
                flags: nix::libc::CLONE_NEWNS as u64 | nix::libc::CLONE_NEWUTS as u64,
                ret: 0,
                from: NsInodes {
                    mnt: 4026531841,
                    uts: 4026531838,
                    ..NsInodes::default()
                },
                to: NsInodes {
                    mnt: 4026532200,
                    uts: 4026532201,
                    ..NsInodes::default()
                },
            }),
            Record::Mount(Mount {
                task: task(),
                syscall: "mount",
                flags: 0,
                ret: 0,
                source: "/dev/sda1".into(),
                target: "/mnt".into(),
                fstype: "ext4".into(),
            }),
            Record::ModuleLoad(ModuleLoad {
                task: task(),
                syscall: "finit_module",
                ret: 0,
                flags: 0,
                len: 0,
                name: "dummy".into(),
                params: String::new(),
                path: "/usr/lib/modules/6.1.0/kernel/drivers/net/dummy.ko".into(),
                path_truncated: false,
            }),
            Record::File(FileChange {
                task: task(),
                op: FileOp::Read,
                ret: 3,
                mode: 0,
                path: "/etc/shadow".into(),
                old_path: String::new(),
                from_caller: false,
                truncated: false,
                watch_read: true,
                watch_write: false,
                watch_connect: false,
            }),
            Record::Dns(DnsQuery {
                task: task(),
                src: IpAddr::from([127, 0, 0, 1]),
                sport: 40000,
                dst: IpAddr::from([127, 0, 0, 53]),
                dport: 53,
                len: 29,
                payload: vec![
                    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p',
                    b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
                ],
            }),
            Record::ConnectionClose(ConnClose {
                task: task(),
                inbound: false,
                src: IpAddr::from([127, 0, 0, 1]),
                sport: 40000,
                dst: IpAddr::from([127, 0, 0, 1]),
                dport: 80,
                start_ns: 1_500_000_000,
                bytes_sent: 120,
                bytes_received: 4096,
            }),
            Record::Exit(Exit {
                task: task(),
                exit_code: 7,
                signal: 0,
                core_dumped: false,
            }),
        ];
        let mut out: Vec<String> = recs
            .into_iter()
            .map(|r| text(&b.build(r, &mut procs)))
            .collect();
        let trigger = b.build(
            Record::Memfd(Memfd {
                task: task(),
                name: "m".into(),
                flags: 1,
                ret: 3,
            }),
            &mut procs,
        );
        let info = crate::events::alert::AlertInfo {
            rule: crate::events::alert::RuleRef {
                id: "r".into(),
                name: "n".into(),
                description: "d".into(),
                severity: "high",
                ruleset: "default".into(),
            },
            severity: 73,
            threat: crate::events::alert::Threat {
                framework: "MITRE ATT&CK",
                technique: crate::events::alert::Technique {
                    id: vec!["T1620".into()],
                },
            },
            trigger: crate::events::alert::Trigger {
                seq: trigger.seq,
                kind: trigger.kind,
                fields: serde_json::Map::from_iter([("memfd.name".to_string(), "m".into())]),
            },
        };
        out.push(text(&trigger));
        out.push(text(&b.alert(&trigger, info)));
        let stats = crate::counters::Stats::default().snapshot();
        out.push(text(&b.stats(stats)));
        out
    }

    #[test]
    fn every_documented_field_is_emitted_as_documented() {
        let docs = documented();
        assert!(docs.len() > 80, "docs/events.md table not found");
        let events = every_event();
        let mut types_seen = BTreeSet::new();
        for ev in &events {
            let ty = ev["type"].as_str().expect("type").to_string();
            types_seen.insert(ty.clone());
            let mut fields = BTreeMap::new();
            flatten(ev, "", &docs, &mut fields);
            for (path, jt) in &fields {
                let row = docs.get(path).unwrap_or_else(|| {
                    panic!("{ty}: `{path}` is emitted but not in docs/events.md")
                });
                assert!(
                    row.events.contains(&ty),
                    "{ty}: `{path}` is emitted but documented only for {:?}",
                    row.events
                );
                assert_eq!(
                    &row.ty, jt,
                    "{ty}: `{path}` has type {jt}, documented {}",
                    row.ty
                );
            }
            for (path, row) in &docs {
                if row.events.contains(&ty) && !row.optional {
                    assert!(
                        fields.contains_key(path),
                        "{ty}: documented `{path}` is missing"
                    );
                }
            }
        }
        let expected: BTreeSet<String> = KERNEL_TYPES
            .iter()
            .map(|s| s.to_string())
            .chain(["alert".to_string(), "stats".to_string()])
            .collect();
        assert_eq!(types_seen, expected);
    }

    /// ECS 8's allowed values, and for each category the types ECS expects with it.
    const ECS_CATEGORY_TYPES: &[(&str, &[&str])] = &[
        ("process", &["access", "change", "end", "info", "start"]),
        (
            "network",
            &[
                "access",
                "allowed",
                "connection",
                "denied",
                "end",
                "info",
                "protocol",
                "start",
            ],
        ),
        (
            "file",
            &["access", "change", "creation", "deletion", "info"],
        ),
        ("driver", &["change", "end", "info", "start"]),
        ("intrusion_detection", &["allowed", "denied", "info"]),
        ("host", &["access", "change", "end", "info", "start"]),
        (
            "configuration",
            &["access", "change", "creation", "deletion", "info"],
        ),
    ];

    /// Every event's `event.*` values are ECS 8 allowed values that go together, and match the
    /// "ECS categorization" table of docs/events.md row for row.
    #[test]
    fn ecs_fields_are_allowed_values_and_documented() {
        let table: BTreeMap<String, Vec<String>> = DOC
            .split("## ECS categorization")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/events.md has an ECS categorization section")
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| type") && !l.starts_with("|---"))
            .map(|l| {
                let c: Vec<String> = l.split('|').map(|c| c.trim().to_string()).collect();
                (c[1].clone(), c[2..6].to_vec())
            })
            .collect();
        for ev in every_event() {
            let ty = ev["type"].as_str().expect("type");
            let e = &ev["event"];
            let strs = |k: &str| -> Vec<&str> {
                e[k].as_array()
                    .unwrap_or_else(|| panic!("{ty}: event.{k} is not an array"))
                    .iter()
                    .map(|v| v.as_str().expect("string"))
                    .collect()
            };
            let kind = e["kind"].as_str().expect("event.kind");
            assert!(["event", "metric", "alert"].contains(&kind), "{ty}: {kind}");
            let (cats, types) = (strs("category"), strs("type"));
            for c in &cats {
                let allowed = ECS_CATEGORY_TYPES
                    .iter()
                    .find(|(n, _)| n == c)
                    .unwrap_or_else(|| panic!("{ty}: category {c} is not used by ECS here"))
                    .1;
                for t in &types {
                    assert!(allowed.contains(t), "{ty}: ECS has no type {t} for {c}");
                }
            }
            if let Some(o) = e.get("outcome") {
                assert!(["success", "failure", "unknown"].contains(&o.as_str().expect("outcome")));
            }
            let row = table
                .get(ty)
                .unwrap_or_else(|| panic!("{ty}: no row in the ECS categorization table"));
            assert_eq!(row[0], kind, "{ty}: event.kind");
            assert_eq!(row[1], cats.join(", "), "{ty}: event.category");
            let action = e["action"].as_str().expect("event.action");
            // One type for the whole row, or `type (`action`, ...); type (...)` per action.
            let typed = row[2]
                .split("; ")
                .any(|entry| match entry.split_once(" (") {
                    Some((t, acts)) => {
                        t == types.join(", ") && acts.contains(&format!("`{action}`"))
                    }
                    None => entry == types.join(", "),
                });
            assert!(
                typed,
                "{ty}: event.type {types:?} for {action} is not {}",
                row[2]
            );
            assert!(
                row[3] == format!("`{action}`")
                    || row[3].contains(&format!("`{action}`"))
                    || row[3].starts_with("the syscall"),
                "{ty}: event.action {action} is not in the table ({})",
                row[3]
            );
        }
    }

    #[test]
    fn type_comes_first_and_seq_increases() {
        let mut last = 0;
        for text in every_event_text() {
            assert!(text.starts_with("{\"type\":"), "{text}");
            let ev: Value = serde_json::from_str(&text).expect("parse");
            let seq = ev["seq"].as_u64().expect("seq");
            assert_eq!(seq, last + 1);
            last = seq;
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let c = Clock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        assert_eq!(c.at(123).to_string(), "2023-11-14T22:13:20.000000123Z");
    }

    #[test]
    fn timestamps_serialize_as_rfc3339_nanos_without_a_string() {
        // (seconds, nanoseconds since the epoch, expected): padding, leap days, century rules.
        let vectors = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000000001Z"),
            (1_709_251_199, 999_999_999, "2024-02-29T23:59:59.999999999Z"),
            (1_709_251_200, 10, "2024-03-01T00:00:00.000000010Z"),
            (4_107_542_400, 120_000_000, "2100-03-01T00:00:00.120000000Z"),
            (1_700_000_000, 123_456, "2023-11-14T22:13:20.000123456Z"),
        ];
        for (secs, nanos, want) in vectors {
            let t = Timestamp(secs * 1_000_000_000 + nanos);
            assert_eq!(t.to_string(), want);
            assert_eq!(
                serde_json::to_string(&t).expect("serialize"),
                format!("\"{want}\"")
            );
        }
    }

    /// The exact bytes of two events (the fast path must not change a field, its order or its
    /// formatting): timestamps from a fixed clock, ancestry cut at its depth.
    #[test]
    fn exact_text_of_fork_and_exit_events() {
        let mut procs = ProcTable::new(64);
        for pid in 1..=6 {
            procs.exec(pid, pid - 1, format!("/bin/p{pid}"), ExecAt::default());
        }
        let mut b = Builder::new("h");
        b.clock = Clock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        let t = Task {
            ppid: 6,
            pid: 7,
            tid: 7,
            auid: u32::MAX,
            comm: "w\"q".into(),
            ..task()
        };
        procs.exec(7, 6, "/bin/w", ExecAt::default());
        let fork = b.build(
            Record::Fork(Fork {
                task: t.clone(),
                child_pid: 8,
                child_start_boot_ns: 5,
            }),
            &mut procs,
        );
        assert_eq!(
            text(&fork),
            r#"{"type":"fork","schema_version":2,"@timestamp":"2023-11-14T22:13:22.000000000Z","seq":1,"event":{"kind":"event","category":["process"],"type":["start"],"action":"fork"},"host":{"name":"h"},"process":{"pid":8,"thread":{"id":8},"name":"w\"q","executable":"/bin/w","start":"2023-11-14T22:13:20.000000005Z","user":{"id":"1000"},"real_user":{"id":"1000"},"group":{"id":"1000"},"real_group":{"id":"1000"},"parent":{"pid":7,"executable":"/bin/w"},"ancestry":[{"pid":7,"executable":"/bin/w"},{"pid":6,"executable":"/bin/p6"},{"pid":5,"executable":"/bin/p5"},{"pid":4,"executable":"/bin/p4"}],"cgroup":{"id":1},"namespaces":{"pid":4026531836,"mnt":4026531832}}}"#
        );
        let exit = b.build(
            Record::Exit(Exit {
                task: Task { ppid: 99, ..t },
                exit_code: 0,
                signal: 9,
                core_dumped: true,
            }),
            &mut procs,
        );
        assert_eq!(
            text(&exit),
            r#"{"type":"exit","schema_version":2,"@timestamp":"2023-11-14T22:13:22.000000000Z","seq":2,"event":{"kind":"event","category":["process"],"type":["end"],"action":"exit"},"host":{"name":"h"},"process":{"pid":7,"thread":{"id":7},"name":"w\"q","executable":"/bin/w","start":"2023-11-14T22:13:21.000000000Z","user":{"id":"1000"},"real_user":{"id":"1000"},"group":{"id":"1000"},"real_group":{"id":"1000"},"parent":{"pid":99},"ancestry":[],"cgroup":{"id":1},"namespaces":{"pid":4026531836,"mnt":4026531832},"exit_code":0,"exit_signal":9,"core_dumped":true,"end":"2023-11-14T22:13:22.000000000Z","lifetime_ns":1000000000}}"#
        );
        assert!(procs.executable(7).is_none(), "exit removes the process");
    }

    #[test]
    fn fork_describes_the_child_and_exit_the_lifetime() {
        let events = every_event();
        let fork = events.iter().find(|e| e["type"] == "fork").expect("fork");
        assert_eq!(fork["process"]["pid"], 301);
        assert_eq!(fork["process"]["parent"]["pid"], 300);
        assert_eq!(fork["process"]["executable"], "/usr/bin/tool");
        let exit = events.iter().find(|e| e["type"] == "exit").expect("exit");
        assert_eq!(exit["process"]["lifetime_ns"], 1_000_000_000u64);
        assert_eq!(exit["process"]["parent"]["executable"], "/usr/bin/bash");
        let anc: Vec<u64> = exit["process"]["ancestry"]
            .as_array()
            .expect("ancestry")
            .iter()
            .map(|a| a["pid"].as_u64().expect("pid"))
            .collect();
        assert_eq!(anc, vec![200, 100, 1]);
    }
}
