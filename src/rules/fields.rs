//! The fields a rule condition can read: every dotted name of docs/events.md that a rule can
//! use, resolved once at load time to a typed getter over [`Event`] (no JSON per event), plus a
//! few derived names documented in docs/rules.md (`process.parent.name`, ...).

use std::borrow::Cow;

use crate::events::event::Event;
use crate::events::proctable::Ancestor;

/// What a field holds, for checking a condition's literals at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    Str,
    Bool,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Int => "a number",
            Ty::Str => "a string",
            Ty::Bool => "true or false",
        }
    }
}

/// One value of a field in one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Int(i64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl Val<'_> {
    /// As JSON, for an alert's `trigger.fields`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Int(n) => (*n).into(),
            Val::Str(s) => s.as_ref().into(),
            Val::Bool(b) => (*b).into(),
        }
    }
}

/// Calls the visitor with each value of the field in the event (none when absent, one for most
/// fields, one per element for lists) until it returns true; returns whether it did.
pub type Getter = for<'e> fn(&'e Event, &mut dyn FnMut(Val<'e>) -> bool) -> bool;

/// A resolved field: its documented name, type, whether it holds a list, and its getter.
#[derive(Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub list: bool,
    pub get: Getter,
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Field {
    /// Every value of the field, as JSON (a list field: an array; absent: null).
    pub fn to_json(self, ev: &Event) -> serde_json::Value {
        let mut vals = Vec::new();
        (self.get)(ev, &mut |v| {
            vals.push(v.to_json());
            false
        });
        if self.list {
            serde_json::Value::Array(vals)
        } else {
            vals.into_iter().next().unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Resolves a dotted name. `orchestrator.labels.<key>` is resolved by [`lookup_dynamic`].
pub fn lookup(name: &str) -> Option<Field> {
    FIELDS.iter().find(|f| f.name == name).copied()
}

/// Every name a rule can use (the docs test).
#[cfg(test)]
pub fn names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}

/// The file name of a path (what `process.parent.name` and `process.ancestry[].name` hold).
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn int<'e>(f: &mut dyn FnMut(Val<'e>) -> bool, n: impl Into<i64>) -> bool {
    f(Val::Int(n.into()))
}

fn text<'e>(f: &mut dyn FnMut(Val<'e>) -> bool, s: &'e str) -> bool {
    f(Val::Str(Cow::Borrowed(s)))
}

fn ancestors<'e>(
    e: &'e Event,
    f: &mut dyn FnMut(Val<'e>) -> bool,
    pick: fn(&'e Ancestor) -> Val<'e>,
) -> bool {
    e.process
        .as_ref()
        .is_some_and(|p| p.ancestry.iter().any(|a| f(pick(a))))
}

/// A string inside `container`/`orchestrator` (attestation's JSON objects).
fn json_str<'e>(
    v: Option<&'e serde_json::Value>,
    path: &[&str],
    f: &mut dyn FnMut(Val<'e>) -> bool,
) -> bool {
    let mut cur = v;
    for k in path {
        cur = cur.and_then(|c| c.get(k));
    }
    cur.and_then(|c| c.as_str()).is_some_and(|s| text(f, s))
}

/// `orchestrator.labels.<key>`: a pod label.
pub fn lookup_dynamic(name: &str) -> Option<(Box<str>, Ty)> {
    name.strip_prefix("orchestrator.labels.")
        .filter(|k| !k.is_empty())
        .map(|k| (k.into(), Ty::Str))
}

/// A pod label's value.
pub fn label<'e>(e: &'e Event, key: &str, f: &mut dyn FnMut(Val<'e>) -> bool) -> bool {
    e.orchestrator
        .as_ref()
        .and_then(|o| o.get("labels"))
        .and_then(|l| l.get(key))
        .and_then(|v| v.as_str())
        .is_some_and(|s| text(f, s))
}

macro_rules! field {
    ($name:literal, $ty:ident, $get:expr) => {
        Field {
            name: $name,
            ty: Ty::$ty,
            list: false,
            get: $get,
        }
    };
    ($name:literal, $ty:ident, list, $get:expr) => {
        Field {
            name: $name,
            ty: Ty::$ty,
            list: true,
            get: $get,
        }
    };
}

/// A process field that is always there.
macro_rules! proc_int {
    ($name:literal, $($p:ident).+) => {
        field!($name, Int, |e, f| e.process.as_ref().is_some_and(|p| int(f, p.$($p).+ as i64)))
    };
}

/// A process field that may be absent.
macro_rules! proc_opt {
    ($name:literal, Int, $p:ident) => {
        field!($name, Int, |e, f| e
            .process
            .as_ref()
            .and_then(|p| p.$p)
            .is_some_and(|v| int(f, v)))
    };
    ($name:literal, Bool, $p:ident) => {
        field!($name, Bool, |e, f| e
            .process
            .as_ref()
            .and_then(|p| p.$p)
            .is_some_and(|v| f(Val::Bool(v))))
    };
}

macro_rules! creds {
    ($name:literal, $side:ident, $c:ident) => {
        field!($name, Int, |e, f| e
            .credentials
            .as_ref()
            .is_some_and(|c| int(f, c.$side.$c as i64)))
    };
}

static FIELDS: &[Field] = &[
    field!("type", Str, |e, f| text(f, e.kind)),
    field!("seq", Int, |e, f| int(f, e.seq as i64)),
    field!("host.name", Str, |e, f| text(f, &e.host.name)),
    proc_int!("process.pid", pid),
    proc_int!("process.thread.id", thread.id),
    field!("process.name", Str, |e, f| e
        .process
        .as_ref()
        .is_some_and(|p| f(Val::Str(p.name.as_str())))),
    field!("process.executable", Str, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.executable.as_deref())
        .is_some_and(|x| text(f, x))),
    proc_opt!("process.executable_truncated", Bool, executable_truncated),
    field!("process.args", Str, list, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.args.as_ref())
        .is_some_and(|a| a.iter().any(|s| text(f, s)))),
    field!("process.args_count", Int, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.args_count)
        .is_some_and(|n| int(f, n as i64))),
    proc_opt!("process.args_truncated", Bool, args_truncated),
    proc_opt!("process.fileless", Bool, fileless),
    field!("process.exec_outside", Bool, |e, f| f(Val::Bool(
        e.process
            .as_ref()
            .and_then(|p| p.exec_outside)
            .unwrap_or(false)
    ))),
    field!("process.stdio_sockets", Str, list, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.stdio_sockets)
        .is_some_and(|s| s.names().any(|n| text(f, n)))),
    proc_int!("process.user.id", user.id),
    proc_int!("process.real_user.id", real_user.id),
    proc_int!("process.group.id", group.id),
    proc_int!("process.real_group.id", real_group.id),
    field!("process.login_user.id", Int, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.login_user.as_ref())
        .is_some_and(|l| int(f, l.id))),
    field!("process.parent.pid", Int, |e, f| e
        .process
        .as_ref()
        .is_some_and(|p| int(f, p.parent.pid()))),
    field!("process.parent.executable", Str, |e, f| e
        .process
        .as_ref()
        .map(|p| p.parent.executable())
        .filter(|x| !x.is_empty())
        .is_some_and(|x| text(f, x))),
    field!("process.parent.name", Str, |e, f| e
        .process
        .as_ref()
        .map(|p| p.parent.executable())
        .filter(|x| !x.is_empty())
        .is_some_and(|x| text(f, base_name(x)))),
    field!("process.ancestry[].pid", Int, list, |e, f| ancestors(
        e,
        f,
        |a| Val::Int(a.pid().into())
    )),
    field!("process.ancestry[].executable", Str, list, |e, f| {
        e.process.as_ref().is_some_and(|p| {
            p.ancestry
                .iter()
                .map(Ancestor::executable)
                .filter(|x| !x.is_empty())
                .any(|x| text(f, x))
        })
    }),
    field!("process.ancestry[].name", Str, list, |e, f| {
        e.process.as_ref().is_some_and(|p| {
            p.ancestry
                .iter()
                .map(Ancestor::executable)
                .filter(|x| !x.is_empty())
                .any(|x| text(f, base_name(x)))
        })
    }),
    proc_int!("process.cgroup.id", cgroup.id),
    proc_int!("process.namespaces.pid", namespaces.pid),
    proc_int!("process.namespaces.mnt", namespaces.mnt),
    proc_opt!("process.exit_code", Int, exit_code),
    proc_opt!("process.exit_signal", Int, exit_signal),
    proc_opt!("process.core_dumped", Bool, core_dumped),
    field!("process.lifetime_ns", Int, |e, f| e
        .process
        .as_ref()
        .and_then(|p| p.lifetime_ns)
        .is_some_and(|n| int(f, n.min(i64::MAX as u64) as i64))),
    field!("source.ip", Str, |e, f| e
        .source
        .as_ref()
        .is_some_and(|s| text(f, &s.ip))),
    field!("source.port", Int, |e, f| e
        .source
        .as_ref()
        .is_some_and(|s| int(f, s.port))),
    field!("destination.ip", Str, |e, f| e
        .destination
        .as_ref()
        .is_some_and(|s| text(f, &s.ip))),
    field!("destination.port", Int, |e, f| e
        .destination
        .as_ref()
        .is_some_and(|s| int(f, s.port))),
    field!("network.transport", Str, |e, f| e
        .network
        .as_ref()
        .is_some_and(|n| text(f, n.transport))),
    field!("network.type", Str, |e, f| e
        .network
        .as_ref()
        .is_some_and(|n| text(f, n.kind))),
    field!("network.direction", Str, |e, f| e
        .network
        .as_ref()
        .is_some_and(|n| text(f, n.direction))),
    field!("network.result", Int, |e, f| e
        .network
        .as_ref()
        .and_then(|n| n.result)
        .is_some_and(|n| int(f, n))),
    field!("network.protocol", Str, |e, f| e
        .network
        .as_ref()
        .and_then(|n| n.protocol)
        .is_some_and(|n| text(f, n))),
    field!("network.bytes", Int, |e, f| e
        .network
        .as_ref()
        .and_then(|n| n.bytes)
        .is_some_and(|n| int(f, n.min(i64::MAX as u64) as i64))),
    field!("source.bytes", Int, |e, f| e
        .source
        .as_ref()
        .and_then(|n| n.bytes)
        .is_some_and(|n| int(f, n.min(i64::MAX as u64) as i64))),
    field!("destination.bytes", Int, |e, f| e
        .destination
        .as_ref()
        .and_then(|n| n.bytes)
        .is_some_and(|n| int(f, n.min(i64::MAX as u64) as i64))),
    field!("event.action", Str, |e, f| text(f, e.event.action)),
    field!("event.outcome", Str, |e, f| e
        .event
        .outcome
        .is_some_and(|o| text(f, o))),
    field!("event.category", Str, list, |e, f| e
        .event
        .category
        .iter()
        .any(|c| text(f, c))),
    field!("event.type", Str, list, |e, f| e
        .event
        .types
        .iter()
        .any(|c| text(f, c))),
    field!("namespace.syscall", Str, |e, f| e
        .namespace
        .as_ref()
        .is_some_and(|n| text(f, n.syscall))),
    field!("namespace.requested", Str, list, |e, f| e
        .namespace
        .as_ref()
        .is_some_and(|n| n.requested.iter().any(|x| text(f, x)))),
    field!("namespace.changed", Str, list, |e, f| e
        .namespace
        .as_ref()
        .is_some_and(|n| n.changed.iter().any(|x| text(f, x)))),
    field!("namespace.result", Int, |e, f| e
        .namespace
        .as_ref()
        .is_some_and(|n| int(f, n.result))),
    field!("mount.syscall", Str, |e, f| e
        .mount
        .as_ref()
        .is_some_and(|m| text(f, m.syscall))),
    field!("mount.source", Str, |e, f| e
        .mount
        .as_ref()
        .and_then(|m| m.source.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("mount.target", Str, |e, f| e
        .mount
        .as_ref()
        .and_then(|m| m.target.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("mount.fs_type", Str, |e, f| e
        .mount
        .as_ref()
        .and_then(|m| m.fs_type.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("mount.flags", Int, |e, f| e
        .mount
        .as_ref()
        .is_some_and(|m| int(f, m.flags as i64))),
    field!("mount.result", Int, |e, f| e
        .mount
        .as_ref()
        .is_some_and(|m| int(f, m.result))),
    field!("module.syscall", Str, |e, f| e
        .module
        .as_ref()
        .is_some_and(|m| text(f, m.syscall))),
    field!("module.name", Str, |e, f| e
        .module
        .as_ref()
        .and_then(|m| m.name.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("module.path", Str, |e, f| e
        .module
        .as_ref()
        .and_then(|m| m.path.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("module.params", Str, |e, f| e
        .module
        .as_ref()
        .is_some_and(|m| text(f, &m.params))),
    field!("module.flags", Int, |e, f| e
        .module
        .as_ref()
        .is_some_and(|m| int(f, m.flags))),
    field!("module.result", Int, |e, f| e
        .module
        .as_ref()
        .is_some_and(|m| int(f, m.result))),
    field!("file.path", Str, |e, f| e
        .file
        .as_ref()
        .is_some_and(|x| text(f, &x.path))),
    field!("file.old_path", Str, |e, f| e
        .file
        .as_ref()
        .and_then(|x| x.old_path.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("file.target_path", Str, |e, f| e
        .file
        .as_ref()
        .and_then(|x| x.target_path.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("file.mode", Str, |e, f| e
        .file
        .as_ref()
        .and_then(|x| x.mode.as_deref())
        .is_some_and(|x| text(f, x))),
    field!("file.watch", Str, |e, f| e
        .file
        .as_ref()
        .is_some_and(|x| text(f, x.watch))),
    field!("file.result", Int, |e, f| e
        .file
        .as_ref()
        .is_some_and(|x| int(f, x.result))),
    field!("file.path_from_caller", Bool, |e, f| e
        .file
        .as_ref()
        .is_some_and(|x| f(Val::Bool(x.path_from_caller)))),
    field!("dns.question.name", Str, |e, f| e
        .dns
        .as_ref()
        .and_then(|d| d.question.as_ref())
        .is_some_and(|q| text(f, &q.name))),
    field!("dns.question.type", Str, |e, f| e
        .dns
        .as_ref()
        .and_then(|d| d.question.as_ref())
        .is_some_and(|q| text(f, &q.kind))),
    field!("dns.size", Int, |e, f| e
        .dns
        .as_ref()
        .is_some_and(|d| int(f, d.size))),
    field!("dns.malformed", Str, |e, f| e
        .dns
        .as_ref()
        .and_then(|d| d.malformed)
        .is_some_and(|m| text(f, m))),
    field!("credentials.syscall", Str, |e, f| e
        .credentials
        .as_ref()
        .is_some_and(|c| text(f, c.syscall))),
    creds!("credentials.old.uid", old, uid),
    creds!("credentials.old.euid", old, euid),
    creds!("credentials.old.suid", old, suid),
    creds!("credentials.old.fsuid", old, fsuid),
    creds!("credentials.old.gid", old, gid),
    creds!("credentials.old.egid", old, egid),
    creds!("credentials.old.sgid", old, sgid),
    creds!("credentials.old.fsgid", old, fsgid),
    creds!("credentials.old.cap_effective", old, cap_effective),
    creds!("credentials.old.cap_permitted", old, cap_permitted),
    creds!("credentials.old.cap_inheritable", old, cap_inheritable),
    creds!("credentials.new.uid", new, uid),
    creds!("credentials.new.euid", new, euid),
    creds!("credentials.new.suid", new, suid),
    creds!("credentials.new.fsuid", new, fsuid),
    creds!("credentials.new.gid", new, gid),
    creds!("credentials.new.egid", new, egid),
    creds!("credentials.new.sgid", new, sgid),
    creds!("credentials.new.fsgid", new, fsgid),
    creds!("credentials.new.cap_effective", new, cap_effective),
    creds!("credentials.new.cap_permitted", new, cap_permitted),
    creds!("credentials.new.cap_inheritable", new, cap_inheritable),
    field!("ptrace.request", Str, |e, f| e
        .ptrace
        .as_ref()
        .is_some_and(|p| text(f, p.request))),
    field!("ptrace.target.pid", Int, |e, f| e
        .ptrace
        .as_ref()
        .is_some_and(|p| int(f, p.target.pid()))),
    field!("ptrace.target.executable", Str, |e, f| e
        .ptrace
        .as_ref()
        .map(|p| p.target.executable())
        .filter(|x| !x.is_empty())
        .is_some_and(|x| text(f, x))),
    field!("ptrace.result", Int, |e, f| e
        .ptrace
        .as_ref()
        .is_some_and(|p| int(f, p.result))),
    field!("bpf.prog_type", Int, |e, f| e
        .bpf
        .as_ref()
        .is_some_and(|b| int(f, b.prog_type))),
    field!("bpf.prog_name", Str, |e, f| e
        .bpf
        .as_ref()
        .is_some_and(|b| text(f, &b.prog_name))),
    field!("bpf.insn_count", Int, |e, f| e
        .bpf
        .as_ref()
        .is_some_and(|b| int(f, b.insn_count))),
    field!("bpf.result", Int, |e, f| e
        .bpf
        .as_ref()
        .is_some_and(|b| int(f, b.result))),
    field!("memfd.name", Str, |e, f| e
        .memfd
        .as_ref()
        .is_some_and(|m| text(f, &m.name))),
    field!("memfd.flags", Int, |e, f| e
        .memfd
        .as_ref()
        .is_some_and(|m| int(f, m.flags))),
    field!("memfd.result", Int, |e, f| e
        .memfd
        .as_ref()
        .is_some_and(|m| int(f, m.result))),
    field!("container.id", Str, |e, f| json_str(
        e.container.as_ref(),
        &["id"],
        f
    )),
    field!("container.runtime", Str, |e, f| json_str(
        e.container.as_ref(),
        &["runtime"],
        f
    )),
    field!("orchestrator.podUid", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["podUid"],
        f
    )),
    field!("orchestrator.namespace", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["namespace"],
        f
    )),
    field!("orchestrator.podName", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["podName"],
        f
    )),
    field!("orchestrator.containerName", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["containerName"],
        f
    )),
    field!("orchestrator.image", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["image"],
        f
    )),
    field!("orchestrator.serviceAccount", Str, |e, f| json_str(
        e.orchestrator.as_ref(),
        &["serviceAccount"],
        f
    )),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_base_name_cuts_at_the_last_slash() {
        let mut n: Vec<&str> = names().collect();
        let len = n.len();
        n.sort_unstable();
        n.dedup();
        assert_eq!(n.len(), len);
        assert_eq!(base_name("/usr/bin/bash"), "bash");
        assert_eq!(base_name("bash"), "bash");
        assert_eq!(base_name("/x/"), "");
        assert!(lookup("process.pid").is_some());
        assert!(lookup("process.nope").is_none());
        assert_eq!(
            lookup_dynamic("orchestrator.labels.app").map(|(k, _)| k),
            Some("app".into())
        );
        assert!(lookup_dynamic("orchestrator.labels.").is_none());
    }
}
