//! BPF cgroup id → (pod UID, container ID): a bounded LRU filled from the event's pid, or, when
//! the process is already gone, by finding the cgroup2 directory whose inode is the id.

use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::cgroup::{self, Placement};

/// Entries kept (a node has a few thousand cgroups at most; each entry is ~200 bytes).
const CAPACITY: usize = 8192;
/// Directories a walk may visit before giving up.
const WALK_BUDGET: usize = 50_000;
const WALK_DEPTH: usize = 24;
/// How long an answer cached by pid is trusted (pids are reused).
pub const PID_TTL: Duration = Duration::from_secs(2);

/// How an answer was found, for counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub from_pid: u64,
    pub from_walk: u64,
    pub unresolved: u64,
    pub conflicts: u64,
}

pub struct CgroupCache {
    proc_root: PathBuf,
    /// Where cgroup2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts), if anywhere.
    cgroup2: Option<PathBuf>,
    map: LruCache<u64, Placement>,
    /// Answers that the cgroup id cannot key (see [`CgroupCache::lookup`]), briefly, by pid.
    by_pid: LruCache<u32, (Placement, Instant)>,
    pub stats: CacheStats,
}

impl CgroupCache {
    pub fn new(proc_root: &Path) -> CgroupCache {
        CgroupCache {
            proc_root: proc_root.to_path_buf(),
            cgroup2: find_cgroup2(proc_root),
            map: LruCache::new(NonZeroUsize::new(CAPACITY).expect("invariant: CAPACITY > 0")),
            by_pid: LruCache::new(NonZeroUsize::new(CAPACITY).expect("invariant: CAPACITY > 0")),
            stats: CacheStats::default(),
        }
    }

    #[cfg(test)]
    fn with_root(proc_root: &Path, cgroup2: Option<PathBuf>) -> CgroupCache {
        let mut c = CgroupCache::new(proc_root);
        c.cgroup2 = cgroup2;
        c
    }

    /// The placement of cgroup `id` seen on an event from `pid`. Never fails: unknown parts are
    /// None.
    ///
    /// The cgroup id names a cgroup2 directory. It is a cache key only when the process's
    /// cgroup2 path alone gives the whole answer: on hybrid hosts a container may be placed only
    /// in the v1 hierarchies (cgroupfs driver), sharing its cgroup2 cgroup (often the root,
    /// id 1) with other containers and the host. Such answers are cached by pid for
    /// [`PID_TTL`] instead.
    pub fn lookup(&mut self, id: u64, pid: u32) -> Placement {
        if id > 1 {
            if let Some(p) = self.map.get(&id) {
                self.stats.hits += 1;
                return p.clone();
            }
        }
        if let Some((p, at)) = self.by_pid.get(&pid) {
            if at.elapsed() < PID_TTL {
                self.stats.hits += 1;
                return p.clone();
            }
        }
        match read_pid(&self.proc_root, pid, self.cgroup2.as_deref(), id) {
            Some(r) => {
                self.stats.from_pid += 1;
                let (p, keyed) = match r {
                    Ok(x) => x,
                    Err(_) => {
                        self.stats.conflicts += 1;
                        (Placement::default(), false)
                    }
                };
                if keyed && id > 1 {
                    self.map.put(id, p.clone());
                } else {
                    self.by_pid.put(pid, (p.clone(), Instant::now()));
                }
                p
            }
            None if id > 1 => match self.walk(id) {
                Some(p) => {
                    self.stats.from_walk += 1;
                    self.map.put(id, p.clone());
                    p
                }
                None => {
                    // Not cached: the cgroup may appear later (a walk racing its creation).
                    self.stats.unresolved += 1;
                    Placement::default()
                }
            },
            None => {
                self.stats.unresolved += 1;
                Placement::default()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len() + self.by_pid.len()
    }

    /// Finds the cgroup2 directory with inode `id` and parses its path.
    fn walk(&self, id: u64) -> Option<Placement> {
        let root = self.cgroup2.as_ref()?;
        let mut budget = WALK_BUDGET;
        let rel = find_inode(root, id, 0, &mut budget)?;
        Some(cgroup::parse_path(&rel))
    }
}

/// `None` if the process is gone; `Some(Err)` on conflicting answers. With the placement: whether
/// the cgroup2 (`0::`) line alone gives the same answer, so the cgroup id may key it.
///
/// The file is read after the event: the process may have moved since (runc moves its init
/// into the container's cgroup; a pid may be reused). When the cgroup2 directory it names is
/// visible under `cgroup2` and is not cgroup `id`, the answer describes another cgroup and must
/// not key `id` (it would misattribute every later event of that cgroup).
fn read_pid(
    proc_root: &Path,
    pid: u32,
    cgroup2: Option<&Path>,
    id: u64,
) -> Option<Result<(Placement, bool), cgroup::Conflict>> {
    if pid == 0 {
        return None;
    }
    let dir = proc_root.join(pid.to_string());
    let text = read_small(&dir.join("cgroup"))?;
    let full = match cgroup::parse_cgroup(&text) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let unified: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("0::")).collect();
    let only_v2 = unified.len() == 1 && text.lines().filter(|l| !l.is_empty()).count() == 1;
    let moved = |path: &str| {
        cgroup2
            .and_then(|root| std::fs::metadata(root.join(path.trim_start_matches('/'))).ok())
            .is_some_and(|md| md.ino() != id)
    };
    let keyed = match unified.as_slice() {
        [path] => cgroup::parse_path(path) == full && (only_v2 || !full.is_empty()) && !moved(path),
        _ => false,
    };
    if full.is_empty() {
        if let Some(mi) = read_small(&dir.join("mountinfo")) {
            return Some(cgroup::parse_mountinfo(&mi).map(|p| {
                let keyed = keyed && p.is_empty();
                (p, keyed)
            }));
        }
    }
    Some(Ok((full, keyed)))
}

/// Reads a /proc file with a bound (cgroup files are small; mountinfo can reach a few hundred KiB).
pub fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

fn find_inode(dir: &Path, id: u64, depth: usize, budget: &mut usize) -> Option<String> {
    if depth > WALK_DEPTH {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        if *budget == 0 {
            return None;
        }
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        *budget -= 1;
        let Ok(md) = e.metadata() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if md.ino() == id {
            return Some(format!("/{name}"));
        }
        subdirs.push((e.path(), name));
    }
    for (path, name) in subdirs {
        if let Some(rest) = find_inode(&path, id, depth + 1, budget) {
            return Some(format!("/{name}{rest}"));
        }
    }
    None
}

/// The cgroup2 mount point, from `<proc_root>/self/mountinfo`, else the usual places.
fn find_cgroup2(proc_root: &Path) -> Option<PathBuf> {
    if let Some(mi) = read_small(&proc_root.join("self/mountinfo")) {
        for line in mi.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let Some(dash) = f.iter().position(|x| *x == "-") {
                if f.get(dash + 1) == Some(&"cgroup2") {
                    if let Some(mp) = f.get(4) {
                        return Some(PathBuf::from(mp.replace("\\040", " ")));
                    }
                }
            }
        }
    }
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lg-cgcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn from_pid_then_cached_then_walk() {
        let proc_root = tmp("proc");
        std::fs::create_dir_all(proc_root.join("42")).unwrap();
        std::fs::write(
            proc_root.join("42/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        // A fake cgroup2 tree: directory inodes stand in for cgroup ids.
        let cg = tmp("cg2");
        let leaf = cg.join(format!("kubepods/besteffort/pod{UID}/{CID}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let leaf_id = std::fs::metadata(&leaf).unwrap().ino();
        let mut c = CgroupCache::with_root(&proc_root, Some(cg.clone()));
        let p = c.lookup(777, 42);
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.stats.from_pid, 1);
        // The pid is gone now; the cached answer stays.
        std::fs::remove_dir_all(proc_root.join("42")).unwrap();
        assert_eq!(c.lookup(777, 42).container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.hits, 1);
        // Unknown id, dead pid: found by walking.
        let p = c.lookup(leaf_id, 43);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_walk, 1);
        // Unknown everywhere: empty, not cached.
        assert!(c.lookup(1 << 60, 44).is_empty());
        assert_eq!(c.stats.unresolved, 1);
        assert!(c.lookup(1, 1).is_empty());
        // Hybrid host, cgroupfs driver: the container is only in the v1 hierarchies and shares
        // the cgroup2 root (id 1) with everyone: answered per pid, never keyed by the id.
        let cid2 = "e".repeat(64);
        for (pid, cid) in [(50, CID), (51, cid2.as_str())] {
            std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(
                proc_root.join(format!("{pid}/cgroup")),
                format!("4:memory:/kubepods/burstable/pod{UID}/{cid}\n0::/\n"),
            )
            .unwrap();
        }
        assert_eq!(c.lookup(1, 50).container_id.as_deref(), Some(CID));
        assert_eq!(c.lookup(1, 51).container_id.as_deref(), Some(cid2.as_str()));
        // Same for a shared non-root cgroup2 cgroup (containerd.service).
        std::fs::write(
            proc_root.join("50/cgroup"),
            format!("4:memory:/kubepods/pod{UID}/{CID}\n0::/system.slice/containerd.service\n"),
        )
        .unwrap();
        std::fs::create_dir_all(proc_root.join("52")).unwrap();
        std::fs::write(
            proc_root.join("52/cgroup"),
            format!("4:memory:/kubepods/pod{UID}/{cid2}\n0::/system.slice/containerd.service\n"),
        )
        .unwrap();
        assert_eq!(
            c.lookup(555, 52).container_id.as_deref(),
            Some(cid2.as_str())
        );
        assert!(
            c.map.get(&555).is_none(),
            "a shared cgroup2 id must not key an answer"
        );
        let _ = std::fs::remove_dir_all(proc_root);
        let _ = std::fs::remove_dir_all(cg);
    }

    /// The process moved (or its pid was reused) between the event and the /proc read: the
    /// answer is given for that event but does not key the event's cgroup id.
    #[test]
    fn a_process_that_moved_does_not_key_the_old_cgroup_id() {
        let proc_root = tmp("proc-moved");
        std::fs::create_dir_all(proc_root.join("60")).unwrap();
        std::fs::write(
            proc_root.join("60/cgroup"),
            format!("0::/kubepods/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let cg = tmp("cg2-moved");
        let leaf = cg.join(format!("kubepods/pod{UID}/{CID}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let now_in = std::fs::metadata(&leaf).unwrap().ino();
        let was_in = now_in + 1_000_003;
        let mut c = CgroupCache::with_root(&proc_root, Some(cg.clone()));
        assert_eq!(c.lookup(was_in, 60).container_id.as_deref(), Some(CID));
        assert!(
            c.map.get(&was_in).is_none(),
            "stale answer keyed the old id"
        );
        // A fresh cache (the first answer is cached by pid for PID_TTL).
        let mut c = CgroupCache::with_root(&proc_root, Some(cg.clone()));
        assert_eq!(c.lookup(now_in, 60).container_id.as_deref(), Some(CID));
        assert!(
            c.map.get(&now_in).is_some(),
            "the current cgroup keys its answer"
        );
        let _ = std::fs::remove_dir_all(proc_root);
        let _ = std::fs::remove_dir_all(cg);
    }

    #[test]
    fn real_host_cgroup2_root_resolves_to_nothing() {
        let mut c = CgroupCache::new(Path::new("/proc"));
        // Our own process: on this host it sits in the root cgroup, not in a container.
        let p = c.lookup(2, std::process::id());
        assert!(p.pod_uid.is_none());
    }

    /// Real cgroup2 (hybrid host: /sys/fs/cgroup/unified): a real process placed in a cgroup
    /// named like a pod's is resolved from its pid; after it exits, the cgroup's inode (what
    /// `bpf_get_current_cgroup_id()` returns) is resolved by walking.
    #[test]
    fn root_real_cgroup2_pid_then_walk() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(root) = find_cgroup2(Path::new("/proc")) else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let top = root.join(format!("lg-test-{}", std::process::id()));
        let leaf = top.join(format!("kubepods/burstable/pod{UID}/{CID}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        let mut c = CgroupCache::new(Path::new("/proc"));
        let p = c.lookup(id, child.id());
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_pid, 1);
        let _ = child.kill();
        let _ = child.wait();
        let mut c = CgroupCache::new(Path::new("/proc"));
        let p = c.lookup(id, child.id());
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_walk, 1);
        // Remove the test cgroups, leaf first.
        let mut dir = leaf.clone();
        while dir.starts_with(&top) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}
