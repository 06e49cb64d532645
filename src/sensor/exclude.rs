//! In-kernel exclusions (`--exclude`, rule files' `exclude:`): the `exe:`/`uid:`/`cgroup:`
//! items, parsed, resolved to the keys the BPF maps hold (an executable's device and inode, a
//! uid, a cgroup v2 id), and the processes already running an excluded executable found in
//! `/proc` so they are marked too (bpf/sensor.bpf.c, `exclusion()`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where cgroups are mounted (cgroup v2 itself on unified hosts, see [`cgroup2_root`]).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The kinds, in the order of the kernel's `filtered` counters (`enum lg_filter`).
pub const KINDS: usize = 3;
pub const KIND_NAMES: [&str; KINDS] = ["exe", "uid", "cgroup"];
/// Entries per kind the kernel's maps hold (bpf/sensor.bpf.c).
pub const MAX_PER_KIND: usize = 1024;

/// One exclusion, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Exclusion {
    /// An executable file (absolute path): its execs, and everything the processes running it
    /// and their descendants do.
    Exe(PathBuf),
    /// A real uid.
    Uid(u32),
    /// A cgroup v2 directory (the path below the cgroup v2 mount, [`cgroup2_root`], starting
    /// with `/`): exactly that cgroup, not its children.
    Cgroup(PathBuf),
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Exe(p) => write!(f, "exe:{}", p.display()),
            Exclusion::Uid(u) => write!(f, "uid:{u}"),
            Exclusion::Cgroup(p) => write!(f, "cgroup:{}", p.display()),
        }
    }
}

/// Parses one item: `exe:/abs/path`, `uid:N` or `cgroup:/path` (below /sys/fs/cgroup; the
/// full `/sys/fs/cgroup/...` path is accepted too).
pub fn parse_item(s: &str) -> Result<Exclusion, String> {
    let s = s.trim();
    let (kind, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not KIND:VALUE (exe:/abs/path, uid:N or cgroup:/path)"))?;
    let abs = |what: &str| -> Result<PathBuf, String> {
        if !v.starts_with('/') || v.contains('\0') {
            return Err(format!("{s:?}: {what} must be an absolute path"));
        }
        if v.split('/').any(|c| c == "." || c == "..") {
            return Err(format!("{s:?}: no `.` or `..` in the path"));
        }
        Ok(PathBuf::from(v))
    };
    match kind {
        "exe" => abs("exe:").map(Exclusion::Exe),
        "uid" => v
            .parse::<u32>()
            .ok()
            .filter(|u| *u != u32::MAX)
            .map(Exclusion::Uid)
            .ok_or_else(|| format!("{s:?}: uid: takes a number (0 to 4294967294)")),
        "cgroup" => {
            let p = abs("cgroup:")?;
            let below = p
                .strip_prefix(CGROUP_ROOT)
                .map(|r| Path::new("/").join(r))
                .unwrap_or(p);
            Ok(Exclusion::Cgroup(below))
        }
        "container" => Err(format!(
            "{s:?}: container: is not supported; exclude the container's cgroup with cgroup:/path (docs/rules.md)"
        )),
        _ => Err(format!(
            "{s:?}: unknown kind {kind:?} (exe:/abs/path, uid:N or cgroup:/path)"
        )),
    }
}

/// Parses a comma-separated list (`none` or empty: no exclusions).
pub fn parse_list(v: &str) -> Result<Vec<Exclusion>, String> {
    let v = v.trim();
    if v.is_empty() || v == "none" {
        return Ok(Vec::new());
    }
    let mut out: Vec<Exclusion> = Vec::new();
    for item in v.split(',').filter(|i| !i.trim().is_empty()) {
        let x = parse_item(item)?;
        if !out.contains(&x) {
            out.push(x);
        }
    }
    Ok(out)
}

/// What the sensor needs: the exclusions in force at start, and whether later ones may come
/// (rule files can gain `exclude:` items at `SIGHUP`: the kernel's checks are then loaded even
/// while there are none, at the cost of one load and test per record).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub items: Vec<Exclusion>,
    pub reloadable: bool,
    /// `/proc` (or `--proc-root`): where running processes of excluded executables are found.
    pub proc_root: PathBuf,
}

impl Options {
    /// Whether the kernel's checks are loaded at all.
    pub fn in_kernel(&self) -> bool {
        !self.items.is_empty() || self.reloadable
    }
}

/// An executable as the kernel keys it: `s_dev` (major << 20 | minor) and the inode.
pub type ExeKey = (u64, u64);

/// The exclusions resolved to map keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub exe: HashSet<ExeKey>,
    pub uid: HashSet<u32>,
    pub cgroup: HashSet<u64>,
}

/// `stat`'s st_dev → the kernel's dev_t encoding (`new_decode_dev`, then MKDEV).
pub fn kernel_dev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major << 20) | (minor & 0xf_ffff)
}

fn exe_key(md: &std::fs::Metadata) -> ExeKey {
    (kernel_dev(md.dev()), md.ino())
}

/// Resolves every item (the executables and cgroups with `stat`); what cannot be resolved is
/// returned as a reason each (`--exclude` refuses the start on one; a reload skips it).
pub fn resolve(items: &[Exclusion], cgroup_root: &Path) -> (Resolved, Vec<String>) {
    let mut r = Resolved::default();
    let mut bad = Vec::new();
    for x in items {
        match x {
            Exclusion::Exe(p) => match std::fs::metadata(p) {
                Ok(md) if md.is_file() => {
                    r.exe.insert(exe_key(&md));
                }
                Ok(_) => bad.push(format!("{x}: not a regular file")),
                Err(e) => bad.push(format!("{x}: {e}")),
            },
            Exclusion::Uid(u) => {
                r.uid.insert(*u);
            }
            Exclusion::Cgroup(p) => {
                let rel = p.strip_prefix("/").unwrap_or(p);
                let mut dir = cgroup_root.join(rel);
                // `cgroup:/sys/fs/cgroup/unified/x` on a hybrid host: below the v2 mount too.
                if !dir.exists() && Path::new(CGROUP_ROOT).join(rel).exists() {
                    dir = Path::new(CGROUP_ROOT).join(rel);
                }
                match cgroup_id(&dir) {
                    Ok(id) => {
                        r.cgroup.insert(id);
                    }
                    Err(e) => bad.push(format!("{x}: {e}")),
                }
            }
        }
    }
    for (kind, n) in [
        ("exe", r.exe.len()),
        ("uid", r.uid.len()),
        ("cgroup", r.cgroup.len()),
    ] {
        if n > MAX_PER_KIND {
            bad.push(format!(
                "{n} {kind}: exclusions; at most {MAX_PER_KIND} fit in the kernel's table"
            ));
        }
    }
    (r, bad)
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones (the first `cgroup2` mount in /proc/self/mounts); `cgroup:` paths are below it.
pub fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
                (ty == "cgroup2").then(|| PathBuf::from(at))
            })
        })
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
}

/// A cgroup v2 directory's id: its inode number (kernfs), as bpf_get_current_cgroup_id() gives.
fn cgroup_id(dir: &Path) -> Result<u64, String> {
    let st = nix::sys::statfs::statfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if st.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{} is not a cgroup v2 directory (cgroup v1 hosts: exclude by exe: or uid:)",
            dir.display()
        ));
    }
    std::fs::metadata(dir)
        .map(|md| md.ino())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// The processes (tgids) running an excluded executable, or descending from one, under
/// `proc_root`: the kernel marks new ones at exec and fork, these started before.
pub fn running(proc_root: &Path, exe: &HashSet<ExeKey>) -> Vec<u32> {
    if exe.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut marked: HashSet<u32> = HashSet::new();
    for d in dir.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = d.path();
        if let Ok(md) = std::fs::metadata(base.join("exe")) {
            if exe.contains(&exe_key(&md)) {
                marked.insert(pid);
            }
        }
        if let Some(ppid) = std::fs::read_to_string(base.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_ppid)
        {
            parent.insert(pid, ppid);
        }
    }
    let mut out: Vec<u32> = parent
        .keys()
        .copied()
        .filter(|&pid| {
            let mut p = pid;
            // Bounded: a pid chain cannot be longer than the table.
            for _ in 0..=parent.len() {
                if marked.contains(&p) {
                    return true;
                }
                match parent.get(&p) {
                    Some(&pp) if pp != 0 && pp != p => p = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect();
    out.extend(marked.iter().filter(|p| !parent.contains_key(p)));
    out.sort_unstable();
    out.dedup();
    out
}

/// The ppid of a `/proc/PID/stat` line (after the command, which may hold spaces and `)`).
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_refuses_the_rest() {
        assert_eq!(
            parse_list("exe:/usr/bin/true, uid:1000,cgroup:/sys/fs/cgroup/a.slice/b").unwrap(),
            vec![
                Exclusion::Exe("/usr/bin/true".into()),
                Exclusion::Uid(1000),
                Exclusion::Cgroup("/a.slice/b".into()),
            ]
        );
        assert_eq!(parse_list("none").unwrap(), vec![]);
        assert_eq!(parse_list("uid:1,uid:1").unwrap().len(), 1);
        for bad in [
            "exe:bin/true",
            "uid:x",
            "uid:-1",
            "uid:4294967295",
            "host:x",
            "true",
            "cgroup:/a/../b",
            "container:abc",
        ] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.contains(bad.split(',').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn device_numbers_take_the_kernel_encoding() {
        // 259:5 (nvme), st_dev 0x10305 → MKDEV(259, 5).
        assert_eq!(kernel_dev((259 << 8) | 5), (259 << 20) | 5);
        // A minor above 255: st_dev spreads it (0x12345 → bits 0-7 and 20-31).
        let st = 0x45 | (8 << 8) | (0x123 << 20);
        assert_eq!(kernel_dev(st), (8 << 20) | 0x12345);
    }

    #[test]
    fn resolve_names_what_it_cannot_find() {
        let (r, bad) = resolve(
            &[
                Exclusion::Exe("/proc/self/exe".into()),
                Exclusion::Exe("/nonexistent/x".into()),
                Exclusion::Uid(7),
            ],
            Path::new(CGROUP_ROOT),
        );
        assert_eq!(r.exe.len(), 1);
        assert!(r.uid.contains(&7));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("exe:/nonexistent/x: "), "{bad:?}");
    }

    #[test]
    fn running_finds_this_process_by_its_executable() {
        let md = std::fs::metadata("/proc/self/exe").unwrap();
        let set: HashSet<ExeKey> = [exe_key(&md)].into();
        assert!(running(Path::new("/proc"), &set).contains(&std::process::id()));
        assert_eq!(stat_ppid("12 (a) b) S 7 12 12"), Some(7));
    }
}
