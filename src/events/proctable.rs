//! The process table: every live process's parent and executable, seeded from `<proc-root>` at
//! start and kept current by exec/fork/exit events. Bounded (LRU) so memory stays flat under
//! process churn; a process evicted or never seen simply has no parent executable/ancestry.

use std::cell::OnceCell;
use std::num::NonZeroUsize;
use std::path::Path;
use std::rc::Rc;

use lru::LruCache;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::events::json::{self, key};

/// Processes remembered at most (about 150 bytes each plus the shared executable strings).
pub const CAPACITY: usize = 16_384;
/// Ancestors reported on each event (the parent first).
pub const ANCESTRY_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub struct Proc {
    pub ppid: u32,
    /// Absolute path of the executable ("" for kernel threads or when unknown).
    pub executable: Rc<str>,
    /// Where the process was at its exec (a fork inherits both): its cgroup and its mount
    /// namespace (0: unknown, a process seeded from /proc).
    pub exec_at: ExecAt,
    pid: u32,
    /// The process as its descendants' events name it; made when first needed (most
    /// processes in a churn never have a child that reports).
    as_ancestor: OnceCell<Ancestor>,
}

impl Proc {
    fn new(pid: u32, ppid: u32, executable: Rc<str>, exec_at: ExecAt) -> Proc {
        Proc {
            ppid,
            executable,
            exec_at,
            pid,
            as_ancestor: OnceCell::new(),
        }
    }

    fn as_ancestor(&self) -> Ancestor {
        self.as_ancestor
            .get_or_init(|| Ancestor::new(self.pid, &self.executable))
            .clone()
    }
}

/// A process as an event's `parent`, `ancestry[]` or `ptrace.target` shows it:
/// `{"pid":..,"executable":..}` (no executable when unknown). Written once per process and
/// copied verbatim into every event that names it: an exec storm's events each name five
/// ancestors, and serializing them anew was a fifth of the agent's CPU. The pid and executable
/// are kept beside the text for the rules (src/rules/), which read them without parsing.
#[derive(Debug, Clone)]
pub struct Ancestor(Rc<AncestorData>);

#[derive(Debug)]
struct AncestorData {
    json: Box<str>,
    pid: u32,
    executable: Box<str>,
}

impl Ancestor {
    pub fn new(pid: u32, executable: &str) -> Ancestor {
        let mut out = Vec::with_capacity(executable.len() + 32);
        key!(out, open "pid");
        json::uint(&mut out, pid.into());
        if !executable.is_empty() {
            key!(out, "executable");
            json::str(&mut out, executable);
        }
        out.push(b'}');
        // The writer emits UTF-8 only (str input, ASCII escapes): the lossy path never runs.
        Ancestor(Rc::new(AncestorData {
            json: String::from_utf8_lossy(&out).into(),
            pid,
            executable: executable.into(),
        }))
    }

    /// The JSON object text.
    pub fn json(&self) -> &str {
        &self.0.json
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// The executable ("" when unknown).
    pub fn executable(&self) -> &str {
        &self.0.executable
    }
}

/// Verbatim, as its JSON text (the derive-based reference serialization of events).
impl Serialize for Ancestor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: Box<RawValue> =
            RawValue::from_string(self.json().to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// Where a process was when it exec'd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecAt {
    /// The cgroup v2 id and, on a hybrid or v1 system, the v1 memory cgroup's (0: none).
    pub cgroup: u64,
    pub memcg: u64,
    pub mntns: u64,
}

pub struct ProcTable {
    lru: LruCache<u32, Proc>,
    /// The host's mount namespace (pid 1's, read at `seed`); 0: unknown.
    host_mntns: u64,
}

impl ProcTable {
    pub fn new(capacity: usize) -> ProcTable {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("invariant: capacity is at least 1");
        ProcTable {
            lru: LruCache::new(cap),
            host_mntns: 0,
        }
    }

    /// Reads every `<proc_root>/<pid>` (ppid from `stat`, executable from the `exe` link).
    /// Processes that vanish while being read are skipped. Returns how many were added.
    /// Also notes the host's mount namespace: pid 1's, else (its link unreadable, as in some
    /// sandboxes) the agent's own.
    pub fn seed(&mut self, proc_root: &Path) -> std::io::Result<usize> {
        self.host_mntns = [proc_root.join("1/ns/mnt"), "/proc/self/ns/mnt".into()]
            .iter()
            .find_map(|p| std::fs::read_link(p).ok())
            .and_then(|l| parse_ns_link(&l.to_string_lossy()))
            .unwrap_or(0);
        let mut n = 0;
        for entry in std::fs::read_dir(proc_root)?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(ppid) = parse_stat_ppid(&stat) else {
                continue;
            };
            let exe = std::fs::read_link(entry.path().join("exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.lru.put(
                pid,
                Proc::new(pid, ppid, Rc::from(exe.as_str()), ExecAt::default()),
            );
            n += 1;
        }
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// A process exec'd (`at`: where it was): its executable changed.
    pub fn exec(&mut self, pid: u32, ppid: u32, executable: impl Into<Rc<str>>, at: ExecAt) {
        self.lru
            .put(pid, Proc::new(pid, ppid, executable.into(), at));
    }

    /// A process forked: the child runs the parent's executable until it execs.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let (executable, at) = self
            .lru
            .get(&parent)
            .map(|p| (p.executable.clone(), p.exec_at))
            .unwrap_or_else(|| (Rc::from(""), ExecAt::default()));
        self.lru
            .put(child, Proc::new(child, parent, executable, at));
    }

    /// A process exited (call after its event was built: the event still needs the entry).
    pub fn exit(&mut self, pid: u32) {
        self.lru.pop(&pid);
    }

    #[cfg(test)]
    pub fn get(&mut self, pid: u32) -> Option<&Proc> {
        self.lru.get(&pid)
    }

    /// `pid`'s executable if known.
    #[cfg(test)]
    pub fn executable(&mut self, pid: u32) -> Option<Rc<str>> {
        self.lru
            .get(&pid)
            .map(|p| p.executable.clone())
            .filter(|e| !e.is_empty())
    }

    /// `pid`'s executable if known, and whether, now at `now`, it runs an executable it was
    /// given elsewhere: exec'd in another cgroup, or in the host's mount namespace and now in
    /// another one. That is a container runtime's own processes while they set up the
    /// container whose cgroup and namespaces they entered (runc's are moved into the cgroup
    /// after their exec, or exec a copy of runc once inside it but still in the host's mount
    /// namespace). A process exec'd inside a container cannot be made to match without leaving
    /// the container's cgroup. False when unknown. One lookup for both (every event asks).
    pub fn exe_and_outside(&mut self, pid: u32, now: ExecAt) -> (Option<Rc<str>>, bool) {
        let host = self.host_mntns;
        let Some(p) = self.lru.get(&pid) else {
            return (None, false);
        };
        let at = p.exec_at;
        let known = at.cgroup != 0 && now.cgroup != 0;
        let outside = (known && (at.cgroup != now.cgroup || at.memcg != now.memcg))
            || (host != 0 && at.mntns == host && now.mntns != host);
        let exe = (!p.executable.is_empty()).then(|| p.executable.clone());
        (exe, outside)
    }

    #[cfg(test)]
    pub fn exec_outside(&mut self, pid: u32, now: ExecAt) -> bool {
        self.exe_and_outside(pid, now).1
    }

    /// `pid` as an ancestor: from the table, else with its pid alone.
    pub fn ancestor(&mut self, pid: u32) -> Ancestor {
        match self.lru.get(&pid) {
            Some(p) => p.as_ancestor(),
            None => Ancestor::new(pid, ""),
        }
    }

    /// Up to `ANCESTRY_DEPTH` ancestors starting at `ppid` (the parent first), while known.
    pub fn ancestry(&self, ppid: u32) -> impl Iterator<Item = Ancestor> + '_ {
        let mut next = Some(ppid);
        std::iter::from_fn(move || {
            let pid = next.filter(|&p| p != 0)?;
            let p = self.lru.peek(&pid)?;
            // A process that is its own parent ends the chain.
            next = (p.ppid != pid).then_some(p.ppid);
            Some(p.as_ancestor())
        })
        .take(ANCESTRY_DEPTH)
    }
}

/// The inode of a namespace link's text (`mnt:[4026531841]`).
fn parse_ns_link(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The ppid from a `/proc/<pid>/stat` line: the 2nd field after the `)` that closes `comm`
/// (comm itself may contain spaces and parentheses).
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let _state = f.next()?;
    f.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ppid_survives_odd_comm() {
        assert_eq!(parse_stat_ppid("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn fork_exec_exit_and_ancestry() {
        let mut t = ProcTable::new(8);
        t.exec(1, 0, "/sbin/init", ExecAt::default());
        t.fork(1, 10);
        assert_eq!(t.executable(10).as_deref(), Some("/sbin/init"));
        t.exec(10, 1, "/bin/sh", ExecAt::default());
        t.fork(10, 11);
        t.exec(11, 10, "/bin/true", ExecAt::default());
        let chain: Vec<u32> = t.ancestry(11).map(|a| a.pid()).collect();
        assert_eq!(chain, vec![11, 10, 1]);
        t.exec(2, 2, "/self-parent", ExecAt::default());
        let chain: Vec<u32> = t.ancestry(2).map(|a| a.pid()).collect();
        assert_eq!(
            chain,
            vec![2],
            "a process that is its own parent ends the chain"
        );
        assert_eq!(
            t.ancestor(10).json(),
            r#"{"pid":10,"executable":"/bin/sh"}"#
        );
        assert_eq!(
            t.ancestor(99).json(),
            r#"{"pid":99}"#,
            "unknown: the pid alone"
        );
        t.exit(11);
        assert!(t.get(11).is_none());
    }

    /// A container runtime's steps (runc here): exec'd outside, moved into the container's
    /// cgroup, a copy of itself exec'd there while still in the host's mount namespace, a
    /// child that unshares; then the container's program. Only the runtime's steps match.
    #[test]
    fn exec_outside_tells_the_runtime_from_the_container() {
        let mut t = ProcTable::new(8);
        t.host_mntns = 100;
        let host = ExecAt {
            cgroup: 1,
            memcg: 5,
            mntns: 100,
        };
        let ctr = ExecAt { memcg: 9, ..host };
        let ctr_ns = ExecAt { mntns: 200, ..ctr };
        t.exec(10, 1, "/usr/sbin/runc", host);
        assert!(!t.exec_outside(10, host), "not moved");
        // Moved into the container's cgroup (a v1 memory cgroup here: the v2 id stays 1).
        assert!(t.exec_outside(10, ctr));
        // Re-exec'd there (runc's /dev/fd/N copy), still in the host's mount namespace.
        t.exec(10, 1, "/dev/fd/6", ctr);
        assert!(!t.exec_outside(10, ctr));
        t.fork(10, 11);
        assert!(t.exec_outside(11, ctr_ns), "its child, unshared");
        // The container's program, exec'd inside: nothing it does afterwards matches.
        t.exec(11, 10, "/bin/sh", ctr_ns);
        assert!(!t.exec_outside(11, ctr_ns));
        t.fork(11, 12);
        assert!(
            !t.exec_outside(
                12,
                ExecAt {
                    mntns: 300,
                    ..ctr_ns
                }
            ),
            "a further unshare"
        );
        // Unknown processes (seeded from /proc) never match.
        assert!(!t.exec_outside(99, ctr_ns));
    }

    #[test]
    fn ns_links_parse() {
        assert_eq!(parse_ns_link("mnt:[4026531841]"), Some(4026531841));
        assert_eq!(parse_ns_link("mnt:4026531841"), None);
    }

    #[test]
    fn bounded_under_churn() {
        let mut t = ProcTable::new(100);
        for pid in 0..10_000 {
            t.exec(pid, 1, "/bin/x", ExecAt::default());
        }
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn seeds_from_real_proc() {
        let mut t = ProcTable::new(CAPACITY);
        let n = t.seed(Path::new("/proc")).expect("read /proc");
        assert!(n > 0);
        let me = std::process::id();
        assert!(t.get(me).is_some());
    }
}
