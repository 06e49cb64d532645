//! BPF cgroup ids → (pod UID, container ID): a bounded LRU keyed by the event's cgroup v2 id and
//! memory cgroup v1 id, filled from the event's pid, or, when the process is already gone, by
//! finding the cgroup2 directory whose inode is the id.

use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::attest::cgroup::{self, Placement};
use crate::counters::CacheStats;

/// Entries kept (a node has a few thousand cgroups at most; each entry is ~200 bytes).
const CAPACITY: usize = 8192;
/// Answers kept by pid (see [`CgroupCache::lookup`]); short-lived, so a small table.
const PID_CAPACITY: usize = 1024;
/// Directories a walk may visit before giving up.
const WALK_BUDGET: usize = 50_000;
const WALK_DEPTH: usize = 24;
/// How long an answer cached by pid is trusted (pids are reused).
pub const PID_TTL: Duration = Duration::from_secs(2);

/// The cgroup ids an event carries: cgroup v2, and the memory controller's v1 cgroup (0 when
/// the memory controller is not on a v1 hierarchy).
type Key = (u64, u64);

pub struct CgroupCache {
    proc_root: PathBuf,
    mounts: Mounts,
    map: LruCache<Key, Placement>,
    /// Answers that the ids cannot key (see [`CgroupCache::lookup`]), briefly, by pid.
    by_pid: LruCache<u32, (Placement, Instant)>,
    pub stats: CacheStats,
}

/// Where the hierarchies the key names are mounted, if anywhere.
#[derive(Debug, Default, Clone)]
struct Mounts {
    /// cgroup2 (`/sys/fs/cgroup/unified` on hybrid hosts).
    v2: Option<PathBuf>,
    /// The cgroup v1 hierarchy holding the memory controller.
    memory_v1: Option<PathBuf>,
    /// Whether each mount shows the host's hierarchy (see [`host_view`]): only then can a
    /// moved process be seen (`read_pid`) and an exited one's cgroup be found (`walk`).
    v2_host: bool,
    memory_v1_host: bool,
}

impl CgroupCache {
    pub fn new(proc_root: &Path) -> CgroupCache {
        CgroupCache {
            proc_root: proc_root.to_path_buf(),
            mounts: find_mounts(proc_root),
            map: LruCache::new(NonZeroUsize::new(CAPACITY).expect("invariant: CAPACITY > 0")),
            by_pid: LruCache::new(
                NonZeroUsize::new(PID_CAPACITY).expect("invariant: PID_CAPACITY > 0"),
            ),
            stats: CacheStats::default(),
        }
    }

    #[cfg(test)]
    fn with_root(proc_root: &Path, cgroup2: Option<PathBuf>) -> CgroupCache {
        let mut c = CgroupCache::new(proc_root);
        // Fixture trees stand for the host's.
        c.mounts = Mounts {
            v2: cgroup2,
            memory_v1: None,
            v2_host: true,
            memory_v1_host: true,
        };
        c
    }

    /// The placement of an event from `pid` in cgroup v2 `id` and memory cgroup v1 `memcg_v1`
    /// (0: none). Never fails: unknown parts are None.
    ///
    /// The ids key the cache when they alone give the whole answer: the process's `0::` line
    /// (and, with `memcg_v1`, its memory line) of `/proc/<pid>/cgroup` must yield what all its
    /// lines yield. On a hybrid host a container may be placed only in the v1 hierarchies
    /// (cgroupfs driver), sharing its cgroup2 cgroup (often the root, id 1) with other
    /// containers and the host: there the memory id tells them apart. Answers no key can hold
    /// (a container without a memory cgroup of its own on a host without the v1 memory
    /// controller) are cached by pid for [`PID_TTL`] instead.
    pub fn lookup(&mut self, id: u64, memcg_v1: u64, pid: u32) -> Placement {
        let key = (id, memcg_v1);
        let keyable = id > 1 || memcg_v1 != 0;
        if keyable {
            if let Some(p) = self.map.get(&key) {
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
        match read_pid(&self.proc_root, pid, &self.mounts, key) {
            Some(r) => {
                self.stats.from_pid += 1;
                let (p, keyed) = match r {
                    Ok(x) => x,
                    Err(_) => {
                        self.stats.conflicts += 1;
                        (Placement::default(), false)
                    }
                };
                if keyed && keyable {
                    self.map.put(key, p.clone());
                } else {
                    self.by_pid.put(pid, (p.clone(), Instant::now()));
                }
                p
            }
            None if keyable => match self.walk(key) {
                Some(p) => {
                    self.stats.from_walk += 1;
                    self.map.put(key, p.clone());
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

    /// Finds the directories of the cgroups in `key` (the cgroup2 one unless it is the root,
    /// the memory v1 one if any) by their inodes and parses their paths together.
    fn walk(&self, (id, memcg_v1): Key) -> Option<Placement> {
        let find = |mount: &Option<PathBuf>, host: bool, ino: u64| {
            let mut budget = WALK_BUDGET;
            find_inode(mount.as_ref().filter(|_| host)?, ino, 0, &mut budget)
        };
        let v2 = if id > 1 {
            find(&self.mounts.v2, self.mounts.v2_host, id)?
        } else {
            "/".into()
        };
        let mem = if memcg_v1 != 0 {
            find(&self.mounts.memory_v1, self.mounts.memory_v1_host, memcg_v1)?
        } else {
            "/".into()
        };
        cgroup::parse_cgroup(&keyed_lines(&v2, &mem)).ok()
    }
}

/// `None` if the process is gone; `Some(Err)` on conflicting answers. With the placement: whether
/// the lines of the hierarchies in `key` alone give the same answer, so `key` may key it.
///
/// The file is read after the event: the process may have moved since (runc moves its init
/// into the container's cgroup; a pid may be reused). When a directory a keyed line names is
/// visible under its mount and is not the cgroup in `key`, the answer describes another cgroup
/// and must not key `key` (it would misattribute every later event of that cgroup).
fn read_pid(
    proc_root: &Path,
    pid: u32,
    mounts: &Mounts,
    (id, memcg_v1): Key,
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
    let lines = || text.lines().filter(|l| !l.is_empty());
    let unified: Vec<&str> = lines().filter_map(|l| l.strip_prefix("0::")).collect();
    let memory: Vec<&str> = lines().filter_map(memory_v1_path).collect();
    let only_v2 = unified.len() == 1 && lines().count() == 1;
    // The directory `path` names under `mount` exists and is another cgroup than `want`.
    let moved = |mount: &Option<PathBuf>, path: &str, want: u64| {
        mount
            .as_ref()
            .and_then(|root| std::fs::metadata(root.join(path.trim_start_matches('/'))).ok())
            .is_some_and(|md| md.ino() != want)
    };
    // A mount that does not show the host's hierarchy cannot tell a moved process: such
    // answers are cached by pid only.
    let keyed = match (unified.as_slice(), memory.as_slice(), memcg_v1) {
        ([v2], _, 0) => {
            cgroup::parse_path(v2) == full
                && (only_v2 || !full.is_empty())
                && mounts.v2_host
                && !moved(&mounts.v2, v2, id)
        }
        ([v2], [mem], _) => {
            cgroup::parse_cgroup(&keyed_lines(v2, mem)).is_ok_and(|p| p == full)
                && mounts.v2_host
                && mounts.memory_v1_host
                && !moved(&mounts.v2, v2, id)
                && !moved(&mounts.memory_v1, mem, memcg_v1)
        }
        _ => false,
    };
    if full.is_empty() {
        if let Some(r) = from_mountinfo(proc_root, pid) {
            return Some(r.map(|p| {
                let keyed = keyed && p.is_empty();
                (p, keyed)
            }));
        }
    }
    Some(Ok((full, keyed)))
}

/// The fallback when `/proc/<pid>/cgroup` names nothing (a private cgroup namespace): the
/// process's `mountinfo`, read only when its mount namespace is not the host's (`<proc_root>/1`),
/// since the host's mount table holds the kubelet's bind mounts of every pod's volumes, and its
/// user namespace is the host's: in a user namespace of its own, any unprivileged user can make
/// a mount namespace and bind mounts of look-alike paths. `None` when that does not hold or
/// cannot be checked, or the file cannot be read.
pub fn from_mountinfo(proc_root: &Path, pid: u32) -> Option<Result<Placement, cgroup::Conflict>> {
    let ns = |p: &str, kind: &str| std::fs::read_link(proc_root.join(p).join("ns").join(kind)).ok();
    let pid_s = pid.to_string();
    if ns("1", "mnt")? == ns(&pid_s, "mnt")? || ns("1", "user")? != ns(&pid_s, "user")? {
        return None;
    }
    let mi = read_small(&proc_root.join(pid.to_string()).join("mountinfo"))?;
    Some(cgroup::parse_mountinfo(&mi))
}

/// The `/proc/<pid>/cgroup` lines of the hierarchies a key names.
fn keyed_lines(v2: &str, memory_v1: &str) -> String {
    format!("0::{v2}\n1:memory:{memory_v1}\n")
}

/// The path of a `/proc/<pid>/cgroup` line of the v1 hierarchy holding the memory controller.
fn memory_v1_path(line: &str) -> Option<&str> {
    let mut parts = line.splitn(3, ':');
    let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    (id != "0" && controllers.split(',').any(|c| c == "memory")).then_some(path)
}

/// Reads a /proc file with a bound (cgroup files are small; mountinfo can reach a few hundred KiB).
/// A /proc file as text, or None when it cannot be read. Bytes that are not UTF-8 (a cgroup
/// directory may be named with any bytes) become U+FFFD: such a name is not a container id or
/// pod uid, and the process is still found.
pub fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut b = Vec::new();
    f.take(4 << 20).read_to_end(&mut b).ok()?;
    Some(match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
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

/// The cgroup2 and memory cgroup v1 mount points, from `<proc_root>/self/mountinfo`, else the
/// usual places.
fn find_mounts(proc_root: &Path) -> Mounts {
    let mut m = Mounts::default();
    if let Some(mi) = read_small(&proc_root.join("self/mountinfo")) {
        for line in mi.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let Some(dash) = f.iter().position(|x| *x == "-") else {
                continue;
            };
            let (Some(mp), Some(fstype)) = (f.get(4), f.get(dash + 1)) else {
                continue;
            };
            let mp = PathBuf::from(mp.replace("\\040", " "));
            let memory = || {
                f.get(dash + 3)
                    .is_some_and(|opts| opts.split(',').any(|o| o == "memory"))
            };
            if *fstype == "cgroup2" && m.v2.is_none() {
                m.v2 = Some(mp);
            } else if *fstype == "cgroup" && m.memory_v1.is_none() && memory() {
                m.memory_v1 = Some(mp);
            }
        }
    }
    if m.v2.is_none() {
        m.v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists());
    }
    let pid1 = read_small(&proc_root.join("1/cgroup")).unwrap_or_default();
    let lines = || pid1.lines().filter(|l| !l.is_empty());
    let v2_path = lines().find_map(|l| l.strip_prefix("0::"));
    let mem_path = lines().find_map(memory_v1_path);
    m.v2_host = host_view(m.v2.as_deref(), v2_path);
    m.memory_v1_host = host_view(m.memory_v1.as_deref(), mem_path);
    for (what, mount, host) in [
        ("cgroup2", &m.v2, m.v2_host),
        ("memory cgroup v1", &m.memory_v1, m.memory_v1_host),
    ] {
        if let (Some(mount), false) = (mount, host) {
            log::warn!(
                "the {what} mount `{}` does not show the host's cgroup tree (pid 1 is not in it; \
                 a private cgroup namespace or a bind of the agent's own cgroup): events are \
                 attributed per process only, a process that changed cgroups cannot be detected \
                 and exited processes' cgroups cannot be found; mount the host's /sys/fs/cgroup \
                 read-only (hostPath) and run the agent in the host's cgroup namespace (on cgroup \
                 v2, containerd and CRI-O give that to privileged containers only)",
                mount.display()
            );
        }
    }
    m
}

/// Whether `mount` shows the host's hierarchy: pid 1's path in it (as `<proc_root>/1/cgroup`
/// gives it) lies inside the agent's cgroup namespace (no `..`) and that cgroup under the mount
/// holds pid 1. A private cgroup namespace shows pid 1 at `/../…`; a bind mount of the agent's
/// own cgroup has no such directory, or one without pid 1.
fn host_view(mount: Option<&Path>, pid1_path: Option<&str>) -> bool {
    let (Some(mount), Some(path)) = (mount, pid1_path) else {
        return false;
    };
    !path.split('/').any(|s| s == "..")
        && read_small(
            &mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
        .is_some_and(|t| t.lines().any(|l| l.trim() == "1"))
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
        let p = c.lookup(777, 0, 42);
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.stats.from_pid, 1);
        // The pid is gone now; the cached answer stays.
        std::fs::remove_dir_all(proc_root.join("42")).unwrap();
        assert_eq!(c.lookup(777, 0, 42).container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.hits, 1);
        // Unknown id, dead pid: found by walking.
        let p = c.lookup(leaf_id, 0, 43);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_walk, 1);
        // Unknown everywhere: empty, not cached.
        assert!(c.lookup(1 << 60, 0, 44).is_empty());
        assert_eq!(c.stats.unresolved, 1);
        assert!(c.lookup(1, 0, 1).is_empty());
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
        assert_eq!(c.lookup(1, 0, 50).container_id.as_deref(), Some(CID));
        assert_eq!(
            c.lookup(1, 0, 51).container_id.as_deref(),
            Some(cid2.as_str())
        );
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
            c.lookup(555, 0, 52).container_id.as_deref(),
            Some(cid2.as_str())
        );
        assert!(
            c.map.get(&(555, 0)).is_none(),
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
        assert_eq!(c.lookup(was_in, 0, 60).container_id.as_deref(), Some(CID));
        assert!(
            c.map.get(&(was_in, 0)).is_none(),
            "stale answer keyed the old id"
        );
        // A fresh cache (the first answer is cached by pid for PID_TTL).
        let mut c = CgroupCache::with_root(&proc_root, Some(cg.clone()));
        assert_eq!(c.lookup(now_in, 0, 60).container_id.as_deref(), Some(CID));
        assert!(
            c.map.get(&(now_in, 0)).is_some(),
            "the current cgroup keys its answer"
        );
        let _ = std::fs::remove_dir_all(proc_root);
        let _ = std::fs::remove_dir_all(cg);
    }

    /// Hybrid host: everyone shares the cgroup2 root (id 1); the memory cgroup v1 id tells the
    /// containers and the host apart, so /proc is read once per (v2, v1) pair, not per process.
    #[test]
    fn memory_v1_id_keys_answers_on_hybrid_hosts() {
        let proc_root = tmp("proc-hybrid");
        let cid2 = "e".repeat(64);
        let host = "/process_api/b4f460f7e6ef28394fbc5a89304af878".to_string();
        let placements = [
            (50, format!("/kubepods/burstable/pod{UID}/{CID}")),
            (51, format!("/kubepods/burstable/pod{UID}/{cid2}")),
            (52, host.clone()),
        ];
        for (pid, path) in &placements {
            std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(
                proc_root.join(format!("{pid}/cgroup")),
                format!("5:devices:/\n4:memory:{path}\n1:cpu:/\n0::/\n"),
            )
            .unwrap();
        }
        let mut c = CgroupCache::with_root(&proc_root, None);
        assert_eq!(c.lookup(1, 1001, 50).container_id.as_deref(), Some(CID));
        assert_eq!(
            c.lookup(1, 1002, 51).container_id.as_deref(),
            Some(cid2.as_str())
        );
        assert!(c.lookup(1, 1003, 52).is_empty());
        assert_eq!(c.stats.from_pid, 3);
        // Later processes of the same cgroups (even gone ones) are answered from the cache.
        for pid in 1000..1100 {
            assert_eq!(c.lookup(1, 1001, pid).container_id.as_deref(), Some(CID));
            assert!(c.lookup(1, 1003, pid).is_empty());
        }
        assert_eq!(c.stats.from_pid, 3, "no /proc read per process");
        assert_eq!(c.by_pid.len(), 0);

        // A container placed in another v1 hierarchy than memory: the pair does not give the
        // whole answer, so it is answered per pid.
        std::fs::write(
            proc_root.join("52/cgroup"),
            format!("5:devices:/docker/{CID}\n4:memory:{host}\n0::/\n"),
        )
        .unwrap();
        assert_eq!(c.lookup(1, 1004, 52).container_id.as_deref(), Some(CID));
        assert!(c.map.get(&(1, 1004)).is_none());

        // The memory cgroup the file names is not the event's: moved, not keyed.
        let mem = tmp("memv1");
        let leaf = mem.join(format!("kubepods/burstable/pod{UID}/{CID}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let now_in = std::fs::metadata(&leaf).unwrap().ino();
        c.mounts.memory_v1 = Some(mem.clone());
        assert_eq!(
            c.lookup(1, now_in + 7, 50).container_id.as_deref(),
            Some(CID)
        );
        assert!(c.map.get(&(1, now_in + 7)).is_none(), "stale answer keyed");
        c.by_pid.clear();
        assert_eq!(c.lookup(1, now_in, 50).container_id.as_deref(), Some(CID));
        assert!(c.map.get(&(1, now_in)).is_some());
        // The process is gone before the read: the memory hierarchy is walked for the id.
        let mut c = CgroupCache::with_root(&proc_root, None);
        c.mounts.memory_v1 = Some(mem.clone());
        assert_eq!(c.lookup(1, now_in, 9999).container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_walk, 1);
        assert!(c.lookup(1, now_in + 7, 9999).is_empty());
        assert_eq!(c.stats.unresolved, 1);
        let _ = std::fs::remove_dir_all(proc_root);
        let _ = std::fs::remove_dir_all(mem);
    }

    /// Finding 2 of review 7: a cgroup mount that does not show the host's tree (private cgroup
    /// namespace, or a bind of the agent's own cgroup) keys nothing and walks nothing.
    #[test]
    fn a_mount_without_the_host_tree_keys_nothing() {
        let cg = tmp("hostview-cg");
        std::fs::create_dir_all(cg.join("init.scope")).unwrap();
        std::fs::write(cg.join("init.scope/cgroup.procs"), "1\n").unwrap();
        std::fs::write(cg.join("cgroup.procs"), "7\n8\n").unwrap();
        assert!(host_view(Some(&cg), Some("/init.scope")));
        assert!(!host_view(Some(&cg), Some("/../../init.scope")));
        assert!(!host_view(Some(&cg), Some("/"))); // a cgroup without pid 1
        assert!(!host_view(Some(&cg), Some("/system.slice"))); // not there
        assert!(!host_view(None, Some("/init.scope")));
        assert!(!host_view(Some(&cg), None));

        // A fixture /proc: the agent's cgroup2 mount is its own subtree, pid 1 is outside it.
        let proc_root = tmp("hostview-proc");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        std::fs::write(
            proc_root.join("self/mountinfo"),
            format!("32 25 0:28 / {} rw - cgroup2 cgroup2 rw\n", cg.display()),
        )
        .unwrap();
        std::fs::create_dir_all(proc_root.join("1")).unwrap();
        std::fs::write(proc_root.join("1/cgroup"), "0::/../../../init.scope\n").unwrap();
        std::fs::create_dir_all(proc_root.join("42")).unwrap();
        std::fs::write(
            proc_root.join("42/cgroup"),
            format!("0::/../../kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let leaf = cg.join(format!("kubepods/burstable/pod{UID}/{CID}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let leaf_id = std::fs::metadata(&leaf).unwrap().ino();
        let mut c = CgroupCache::new(&proc_root);
        assert_eq!(c.mounts.v2.as_deref(), Some(cg.as_path()));
        assert!(!c.mounts.v2_host);
        // Answered from the pid, cached by pid only: another pid in the "same" id is read again.
        assert_eq!(c.lookup(777, 0, 42).pod_uid.as_deref(), Some(UID));
        assert_eq!(c.map.len(), 0);
        assert!(c.lookup(777, 0, 43).is_empty());
        // No walk through a tree that is not the host's.
        assert!(c.lookup(leaf_id, 0, 44).is_empty());
        assert_eq!(c.stats.from_walk, 0);
        // Once pid 1 shows inside the mount, the same setup keys and walks.
        std::fs::write(proc_root.join("1/cgroup"), "0::/init.scope\n").unwrap();
        let mut c = CgroupCache::new(&proc_root);
        assert!(c.mounts.v2_host);
        assert!(!c.lookup(leaf_id, 0, 44).is_empty());
        let _ = std::fs::remove_dir_all(proc_root);
        let _ = std::fs::remove_dir_all(cg);
    }

    #[test]
    fn mounts_are_found_from_mountinfo() {
        let root = tmp("mounts");
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(
            root.join("self/mountinfo"),
            "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
             31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory\n\
             32 25 0:28 / /sys/fs/cgroup/my\\040unified rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        let m = find_mounts(&root);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/my unified")));
        assert_eq!(m.memory_v1, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        let _ = std::fs::remove_dir_all(root);
    }

    /// Finding 1 of review 7: the mountinfo fallback is read only for a process in another mount
    /// namespace than pid 1's; in the host's (the kubelet's subPath binds live there) or when the
    /// namespaces cannot be compared, the process stays unattributed.
    #[test]
    fn mountinfo_fallback_only_outside_the_host_mount_namespace() {
        const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
        let root = tmp("mntns");
        for pid in ["1", "500", "501", "502", "503"] {
            std::fs::create_dir_all(root.join(pid).join("ns")).unwrap();
            std::fs::write(root.join(pid).join("cgroup"), "0::/\n").unwrap();
            std::fs::write(
                root.join(pid).join("mountinfo"),
                format!(
                    "36 24 8:1 /var/lib/kubelet/pods/{UID}/etc-hosts /etc/hosts rw - ext4 /dev/sda1 rw\n\
                     37 24 8:1 /var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~configmap/c/f /var/lib/kubelet/pods/{UID}/volume-subpaths/c/app/0 rw - ext4 /dev/sda1 rw\n"
                ),
            )
            .unwrap();
        }
        let link = |pid: &str, mnt: &str, user: &str| {
            std::os::unix::fs::symlink(mnt, root.join(pid).join("ns/mnt")).unwrap();
            std::os::unix::fs::symlink(user, root.join(pid).join("ns/user")).unwrap();
        };
        let (host_user, host_mnt) = ("user:[4026531837]", "mnt:[4026531841]");
        link("1", host_mnt, host_user);
        link("500", host_mnt, host_user); // host mount namespace
        link("501", "mnt:[4026532999]", host_user); // a container's
        link("503", "mnt:[4026533000]", "user:[4026533001]"); // `unshare -Urm`
        // 502: no ns links (cannot be compared)
        let got = |pid| from_mountinfo(&root, pid).map(|r| r.unwrap());
        assert_eq!(got(500), None);
        assert_eq!(got(502), None);
        assert_eq!(got(503), None);
        assert_eq!(got(501).and_then(|p| p.pod_uid).as_deref(), Some(UID));
        let mut c = CgroupCache::with_root(&root, None);
        assert!(c.lookup(7, 0, 500).is_empty());
        assert!(c.lookup(8, 0, 502).is_empty());
        assert!(c.lookup(10, 0, 503).is_empty());
        assert_eq!(c.lookup(9, 0, 501).pod_uid.as_deref(), Some(UID));
        // Without pid 1's namespace, nothing either.
        std::fs::remove_file(root.join("1/ns/mnt")).unwrap();
        assert_eq!(got(501), None);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn real_host_cgroup2_root_resolves_to_nothing() {
        let mut c = CgroupCache::new(Path::new("/proc"));
        // Our own process: on this host it sits in the root cgroup, not in a container.
        let p = c.lookup(2, 0, std::process::id());
        assert!(p.pod_uid.is_none());
    }

    /// Real cgroup2 (hybrid host: /sys/fs/cgroup/unified): a real process placed in a cgroup
    /// named like a pod's is resolved from its pid; after it exits, the cgroup's inode (what
    /// `bpf_get_current_cgroup_id()` returns) is resolved by walking.
    #[test]
    fn root_real_cgroup2_pid_then_walk() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: run the tests as root (sudo scripts/test)"
        );
        let root = find_mounts(Path::new("/proc"))
            .v2
            .expect("a cgroup2 mount (every supported host has one)");
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
        let p = c.lookup(id, 0, child.id());
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(c.stats.from_pid, 1);
        let _ = child.kill();
        let _ = child.wait();
        let mut c = CgroupCache::new(Path::new("/proc"));
        let p = c.lookup(id, 0, child.id());
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
