//! The JSON objects of the events added with schema 2 (`namespace`, `mount`, `module`, `file`,
//! `dns`): their serde derives (the schema's reference) and their hot-path writers, byte for byte
//! the same (event.rs's writer test covers them with every other field).

use serde::Serialize;

use crate::events::json::{self, key};
use crate::sensor::decode::NsInodes;

#[derive(Serialize, Debug)]
pub struct NamespaceInfo {
    pub syscall: &'static str,
    /// The namespaces asked for (CLONE_NEW* flags; setns: its nstype, none for "any").
    pub requested: Vec<&'static str>,
    /// The namespaces whose inode differs between `from` and `to`.
    pub changed: Vec<&'static str>,
    pub from: NsInodes,
    /// Absent when unknown (a failed clone, or a child gone before it could be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<NsInodes>,
    pub result: i32,
}

#[derive(Serialize, Debug)]
pub struct MountInfo {
    pub syscall: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    pub flags: u64,
    pub result: i32,
}

#[derive(Serialize, Debug)]
pub struct ModuleInfo {
    pub syscall: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub params: String,
    pub flags: u32,
    pub result: i32,
}

#[derive(Serialize, Debug)]
pub struct FileInfo {
    pub path: String,
    /// rename: the old name; link: the existing file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// symlink: the link's target, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// chmod: the mode asked for, octal (ECS `file.mode`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The list the path matched: `read` or `write` (`unknown`: a path too deep to judge).
    pub watch: &'static str,
    pub result: i32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_from_caller: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
}

#[derive(Serialize, Debug)]
pub struct DnsInfo {
    /// `query` (ECS).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The header's id, as a string (ECS keyword).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<DnsQuestion>,
    /// Bytes the process sent.
    pub size: u32,
    /// Why the payload is not a DNS query (then there is no question).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<&'static str>,
}

#[derive(Serialize, Debug)]
pub struct DnsQuestion {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub class: String,
}

/// The objects an event has, in the order of `Event`'s fields.
pub struct Objects<'a> {
    pub namespace: Option<&'a NamespaceInfo>,
    pub mount: Option<&'a MountInfo>,
    pub module: Option<&'a ModuleInfo>,
    pub file: Option<&'a FileInfo>,
    pub dns: Option<&'a DnsInfo>,
}

/// Appends `,"namespace":{...}` and so on for each object present.
pub fn write_json(ev: &Objects<'_>, out: &mut Vec<u8>) {
    if let Some(n) = ev.namespace {
        key!(out, "namespace");
        key!(out, open "syscall");
        json::str(out, n.syscall);
        key!(out, "requested");
        write_strs(out, &n.requested);
        key!(out, "changed");
        write_strs(out, &n.changed);
        key!(out, "from");
        write_ns(out, &n.from);
        if let Some(to) = &n.to {
            key!(out, "to");
            write_ns(out, to);
        }
        key!(out, "result");
        json::int(out, n.result.into());
        out.push(b'}');
    }
    if let Some(m) = ev.mount {
        key!(out, "mount");
        key!(out, open "syscall");
        json::str(out, m.syscall);
        if let Some(v) = &m.source {
            key!(out, "source");
            json::str(out, v);
        }
        if let Some(v) = &m.target {
            key!(out, "target");
            json::str(out, v);
        }
        if let Some(v) = &m.fs_type {
            key!(out, "fs_type");
            json::str(out, v);
        }
        key!(out, "flags");
        json::uint(out, m.flags);
        key!(out, "result");
        json::int(out, m.result.into());
        out.push(b'}');
    }
    if let Some(m) = ev.module {
        key!(out, "module");
        key!(out, open "syscall");
        json::str(out, m.syscall);
        if let Some(v) = &m.name {
            key!(out, "name");
            json::str(out, v);
        }
        if let Some(v) = &m.path {
            key!(out, "path");
            json::str(out, v);
        }
        if m.path_truncated {
            key!(out, "path_truncated");
            json::bool(out, true);
        }
        if let Some(n) = m.size {
            key!(out, "size");
            json::uint(out, n);
        }
        key!(out, "params");
        json::str(out, &m.params);
        key!(out, "flags");
        json::uint(out, m.flags.into());
        key!(out, "result");
        json::int(out, m.result.into());
        out.push(b'}');
    }
    if let Some(f) = ev.file {
        key!(out, "file");
        key!(out, open "path");
        json::str(out, &f.path);
        if let Some(v) = &f.old_path {
            key!(out, "old_path");
            json::str(out, v);
        }
        if let Some(v) = &f.target_path {
            key!(out, "target_path");
            json::str(out, v);
        }
        if let Some(v) = &f.mode {
            key!(out, "mode");
            json::str(out, v);
        }
        key!(out, "watch");
        json::str(out, f.watch);
        key!(out, "result");
        json::int(out, f.result.into());
        if f.path_from_caller {
            key!(out, "path_from_caller");
            json::bool(out, true);
        }
        if f.path_truncated {
            key!(out, "path_truncated");
            json::bool(out, true);
        }
        out.push(b'}');
    }
    if let Some(d) = ev.dns {
        key!(out, "dns");
        key!(out, open "type");
        json::str(out, d.kind);
        if let Some(v) = &d.id {
            key!(out, "id");
            json::str(out, v);
        }
        if let Some(v) = &d.op_code {
            key!(out, "op_code");
            json::str(out, v);
        }
        if let Some(q) = &d.question {
            key!(out, "question");
            key!(out, open "name");
            json::str(out, &q.name);
            key!(out, "type");
            json::str(out, &q.kind);
            key!(out, "class");
            json::str(out, &q.class);
            out.push(b'}');
        }
        key!(out, "size");
        json::uint(out, d.size.into());
        if let Some(v) = d.malformed {
            key!(out, "malformed");
            json::str(out, v);
        }
        out.push(b'}');
    }
}

/// The hot-path writer of [`NsInodes`] (same bytes as its serde derive).
fn write_ns(out: &mut Vec<u8>, n: &NsInodes) {
    for (i, (name, inode)) in n.named().into_iter().enumerate() {
        out.push(if i == 0 { b'{' } else { b',' });
        json::str(out, name);
        out.push(b':');
        json::uint(out, inode.into());
    }
    out.push(b'}');
}

/// `["a","b"]`.
pub fn write_strs(out: &mut Vec<u8>, items: &[&str]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::str(out, s);
    }
    out.push(b']');
}
