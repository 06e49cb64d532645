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
    pid: u32,
    /// The process as its descendants' events name it; made when first needed (most
    /// processes in a churn never have a child that reports).
    as_ancestor: OnceCell<Ancestor>,
}

impl Proc {
    fn new(pid: u32, ppid: u32, executable: Rc<str>) -> Proc {
        Proc {
            ppid,
            executable,
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

pub struct ProcTable {
    lru: LruCache<u32, Proc>,
}

impl ProcTable {
    pub fn new(capacity: usize) -> ProcTable {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("invariant: capacity is at least 1");
        ProcTable {
            lru: LruCache::new(cap),
        }
    }

    /// Reads every `<proc_root>/<pid>` (ppid from `stat`, executable from the `exe` link).
    /// Processes that vanish while being read are skipped. Returns how many were added.
    pub fn seed(&mut self, proc_root: &Path) -> std::io::Result<usize> {
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
            self.lru
                .put(pid, Proc::new(pid, ppid, Rc::from(exe.as_str())));
            n += 1;
        }
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// A process exec'd: its executable changed.
    pub fn exec(&mut self, pid: u32, ppid: u32, executable: impl Into<Rc<str>>) {
        self.lru.put(pid, Proc::new(pid, ppid, executable.into()));
    }

    /// A process forked: the child runs the parent's executable until it execs.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let executable = self
            .lru
            .get(&parent)
            .map(|p| p.executable.clone())
            .unwrap_or_else(|| Rc::from(""));
        self.lru.put(child, Proc::new(child, parent, executable));
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
    pub fn executable(&mut self, pid: u32) -> Option<Rc<str>> {
        self.lru
            .get(&pid)
            .map(|p| p.executable.clone())
            .filter(|e| !e.is_empty())
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
        t.exec(1, 0, "/sbin/init");
        t.fork(1, 10);
        assert_eq!(t.executable(10).as_deref(), Some("/sbin/init"));
        t.exec(10, 1, "/bin/sh");
        t.fork(10, 11);
        t.exec(11, 10, "/bin/true");
        let chain: Vec<u32> = t.ancestry(11).map(|a| a.pid()).collect();
        assert_eq!(chain, vec![11, 10, 1]);
        t.exec(2, 2, "/self-parent");
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

    #[test]
    fn bounded_under_churn() {
        let mut t = ProcTable::new(100);
        for pid in 0..10_000 {
            t.exec(pid, 1, "/bin/x");
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
