//! The `file` event's watch lists (read, write, Unix connect): the built-in defaults, `*`
//! expansion, and the entries of the kernel's LPM trie (bpf/file.bpf.h) that filters file
//! activity before it reaches user space.

use crate::sensor::skel::{consts, types};

/// Opens for reading reported by default: credential files.
pub const DEFAULT_READ: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/ssh/ssh_host_",
    "/root/.ssh/",
    "/home/*/.ssh/",
    "/run/secrets/kubernetes.io/serviceaccount/",
    "/var/run/secrets/kubernetes.io/serviceaccount/",
];

/// Writes, creates, renames, deletes and mode changes reported by default: the directories that
/// decide what runs (configuration, binaries, libraries, boot, cron, systemd units under /etc
/// and /usr/lib, the dynamic loader's preload list, SSH keys).
pub const DEFAULT_WRITE: &[&str] = &[
    "/etc/",
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/local/bin/",
    "/usr/local/sbin/",
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/local/lib/",
    "/boot/",
    "/var/spool/cron/",
    "/root/.ssh/",
    "/home/*/.ssh/",
];

/// Unix socket files whose connects are reported by default: the container runtimes' API and
/// shim sockets (a process in a container reaching one of them can start a privileged container:
/// an escape). `/run/docker` also covers `/run/docker.sock`, `/run/docker/` and
/// `/run/dockershim.sock`; the `/var/run/` twins are for systems where /var/run is a directory.
pub const DEFAULT_CONNECT: &[&str] = &[
    "/run/containerd/",
    "/run/k3s/containerd/",
    "/run/docker",
    "/run/crio/",
    "/run/podman/",
    "/run/cri-dockerd.sock",
    "/run/buildkit/",
    "/run/user/*/podman/",
    "/run/user/*/docker.sock",
    "/var/run/containerd/",
    "/var/run/docker",
    "/var/run/crio/",
    "/var/run/podman/",
];

/// Entries the kernel's trie holds at most (`watch` in bpf/file.bpf.h).
pub const MAX_ENTRIES: usize = 256;

/// Bytes of a prefix the kernel compares (the trie key's data).
const KEY_BYTES: usize = 256;

/// The prefixes of one setting's value (already checked by the configuration): `none`, or items
/// that are `default` (the built-in list) or absolute prefixes; a `*` component is expanded to
/// every directory there when the agent starts. Sorted, without duplicates.
pub fn resolve(setting: &str, defaults: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if setting.trim() == "none" {
        return out;
    }
    for item in setting.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item == "default" {
            for d in defaults {
                out.extend(expand(d));
            }
        } else {
            out.extend(expand(item));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `p` with each `*` component replaced by every directory in its place (none when the
/// directory above does not exist); `p` itself when it has no `*`.
fn expand(p: &str) -> Vec<String> {
    let Some(star) = p.split('/').position(|c| c == "*") else {
        return vec![p.to_string()];
    };
    let parts: Vec<&str> = p.split('/').collect();
    let parent = parts[..star].join("/");
    let rest = parts[star + 1..].join("/");
    let Ok(dir) = std::fs::read_dir(if parent.is_empty() { "/" } else { &parent }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.extend(expand(&format!("{parent}/{name}/{rest}")));
        }
    }
    out
}

/// The trie's entries: each prefix with the lists it is on (`LG_FILE_F_WATCH_READ`/`_WRITE`/
/// `_CONNECT`), including the lists of every shorter prefix of it, so that the longest match
/// alone answers.
pub fn entries(read: &[String], write: &[String], connect: &[String]) -> Vec<(String, u32)> {
    let r = consts::LG_FILE_F_WATCH_READ as u32;
    let w = consts::LG_FILE_F_WATCH_WRITE as u32;
    let c = consts::LG_FILE_F_WATCH_CONNECT as u32;
    let mut all: Vec<(String, u32)> = read
        .iter()
        .map(|p| (p.clone(), r))
        .chain(write.iter().map(|p| (p.clone(), w)))
        .chain(connect.iter().map(|p| (p.clone(), c)))
        .collect();
    all.sort();
    let mut merged: Vec<(String, u32)> = Vec::new();
    for (p, f) in all {
        match merged.last_mut() {
            Some((q, g)) if *q == p => *g |= f,
            _ => merged.push((p, f)),
        }
    }
    let own = merged.clone();
    for (p, f) in &mut merged {
        for (q, g) in &own {
            if p.as_bytes().starts_with(q.as_bytes()) {
                *f |= g;
            }
        }
    }
    merged
}

/// One first-component filter entry of the kernel's fast path (`top_*` in bpf/file.bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Top {
    /// The first 16 bytes of the component, as two native-endian words, and which to compare.
    pub lo: u64,
    pub hi: u64,
    pub mlo: u64,
    pub mhi: u64,
    /// Its length.
    pub len: u32,
    /// The prefix goes on after it (`/etc/...`): a path's first component must be exactly it;
    /// else (`/et`, `/etc`) it must only start with it.
    pub exact: bool,
    /// The lists of the entries that start so.
    pub lists: u32,
}

/// Entries the kernel's first-component filter holds at most (`LG_TOPS`).
pub const MAX_TOPS: usize = 16;

/// The first-component filter of opens for `entries`: None when it cannot be used (a prefix
/// that is the root itself, or more than [`MAX_TOPS`] distinct first components): then every
/// path is looked up in the trie. Entries on the connect list alone take no part (connects are
/// not opens).
pub fn tops(entries: &[(String, u32)]) -> Option<Vec<Top>> {
    let open_lists = (consts::LG_FILE_F_WATCH_READ | consts::LG_FILE_F_WATCH_WRITE) as u32;
    let mut out: Vec<Top> = Vec::new();
    for (prefix, lists) in entries {
        let lists = &(lists & open_lists);
        if *lists == 0 {
            continue;
        }
        let rest = prefix.strip_prefix('/')?;
        let (first, exact) = match rest.split_once('/') {
            Some((f, _)) => (f, true),
            None => (rest, false),
        };
        if first.is_empty() {
            return None;
        }
        let mut bytes = [0u8; 16];
        let mut mask = [0u8; 16];
        for (i, b) in first.bytes().take(16).enumerate() {
            bytes[i] = b;
            mask[i] = 0xff;
        }
        let word = |a: &[u8; 16], i: usize| {
            u64::from_ne_bytes(a[i * 8..i * 8 + 8].try_into().unwrap_or_default())
        };
        let top = Top {
            lo: word(&bytes, 0),
            hi: word(&bytes, 1),
            mlo: word(&mask, 0),
            mhi: word(&mask, 1),
            len: first.len() as u32,
            exact,
            lists: *lists,
        };
        match out
            .iter_mut()
            .find(|t| (t.lo, t.hi, t.len, t.exact) == (top.lo, top.hi, top.len, top.exact))
        {
            Some(t) => t.lists |= top.lists,
            None => out.push(top),
        }
    }
    (out.len() <= MAX_TOPS).then_some(out)
}

/// The trie key of `prefix`: `struct lg_watch_key` (bpf/file.bpf.h), a `u32` count of bits to
/// match then the bytes (the kernel's LPM trie key layout).
pub fn key(prefix: &str) -> Vec<u8> {
    let bytes = &prefix.as_bytes()[..prefix.len().min(KEY_BYTES)];
    let mut k = Vec::with_capacity(std::mem::size_of::<types::lg_watch_key>());
    k.extend_from_slice(&((bytes.len() * 8) as u32).to_ne_bytes());
    k.extend_from_slice(bytes);
    k.resize(std::mem::size_of::<types::lg_watch_key>(), 0);
    k
}

#[cfg(test)]
/// What the kernel's trie answers for `path`: the lists of its longest watched prefix (the
/// same rule in user space, for tests and `show-config`).
pub fn lookup(entries: &[(String, u32)], path: &str) -> u32 {
    let path = &path.as_bytes()[..path.len().min(KEY_BYTES)];
    entries
        .iter()
        .filter(|(p, _)| path.starts_with(p.as_bytes()))
        .max_by_key(|(p, _)| p.len())
        .map_or(0, |(_, f)| *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u32 = consts::LG_FILE_F_WATCH_READ as u32;
    const W: u32 = consts::LG_FILE_F_WATCH_WRITE as u32;
    const C: u32 = consts::LG_FILE_F_WATCH_CONNECT as u32;

    #[test]
    fn longest_match_carries_the_lists_of_shorter_prefixes() {
        let e = entries(
            &["/etc/shadow".into(), "/root/.ssh/".into()],
            &["/etc/".into(), "/root/.ssh/".into()],
            &[],
        );
        // /etc/shadow is read-watched, and below the write-watched /etc/.
        assert_eq!(lookup(&e, "/etc/shadow"), R | W);
        assert_eq!(lookup(&e, "/etc/shadow-"), R | W);
        assert_eq!(lookup(&e, "/etc/passwd"), W);
        assert_eq!(lookup(&e, "/root/.ssh/id_ed25519"), R | W);
        assert_eq!(lookup(&e, "/srv/x"), 0);
        assert_eq!(
            lookup(&e, "/etc"),
            0,
            "the directory itself is not below /etc/"
        );
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn resolve_expands_default_none_and_stars() {
        assert!(resolve("none", DEFAULT_READ).is_empty());
        let d = resolve("default", DEFAULT_WRITE);
        assert!(d.contains(&"/etc/".to_string()) && d.contains(&"/usr/bin/".to_string()));
        assert!(!d.iter().any(|p| p.contains('*')));
        let extra = resolve("default, /opt/app/", DEFAULT_WRITE);
        assert_eq!(extra.len(), d.len() + 1);
        // `*` stands for every directory there, now.
        let dir = std::env::temp_dir().join(format!("lg-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("alice/.ssh")).expect("mkdir");
        std::fs::create_dir_all(dir.join("bob")).expect("mkdir");
        std::fs::write(dir.join("file"), b"").expect("write");
        let pat = format!("{}/*/.ssh/", dir.display());
        let got = resolve(&pat, &[]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            vec![
                format!("{}/alice/.ssh/", dir.display()),
                format!("{}/bob/.ssh/", dir.display())
            ]
        );
        assert!(resolve("/nonexistent-lg/*/x", &[]).is_empty());
    }

    /// The kernel's first-component test, in Rust: a path is a candidate when some entry on
    /// `need`'s list starts it.
    fn candidate(tops: &[Top], path: &str, need: u32) -> bool {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let mut b = [0u8; 16];
        for (i, c) in first.bytes().take(16).enumerate() {
            b[i] = c;
        }
        let lo = u64::from_ne_bytes(b[..8].try_into().expect("8"));
        let hi = u64::from_ne_bytes(b[8..].try_into().expect("8"));
        let len = first.len() as u32;
        tops.iter().any(|t| {
            t.lists & need != 0
                && (lo ^ t.lo) & t.mlo == 0
                && (hi ^ t.hi) & t.mhi == 0
                && if t.exact { len == t.len } else { len >= t.len }
        })
    }

    #[test]
    fn first_component_filter_lets_through_every_watched_path() {
        let read = resolve("default", DEFAULT_READ);
        let write = resolve("default", DEFAULT_WRITE);
        let connect = resolve("default", DEFAULT_CONNECT);
        let e = entries(&read, &write, &connect);
        let t = tops(&e).expect("the defaults fit the filter");
        for (path, need) in [
            ("/etc/shadow", R),
            ("/etc/ld.so.preload", W),
            ("/usr/bin/ls", W),
            ("/root/.ssh/authorized_keys", R),
            ("/run/secrets/kubernetes.io/serviceaccount/token", R),
            ("/var/spool/cron/crontabs/root", W),
        ] {
            assert!(candidate(&t, path, need), "{path}");
            assert_ne!(lookup(&e, path) & need, 0, "{path}");
        }
        // Never a candidate, so never composed: the common case.
        for (path, need) in [
            ("/srv/x", R),
            ("/opt/x", W),
            ("/proc/self/stat", R),
            ("/dev/null", W),
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", R),
            ("/etcetera/x", W),
            // The connect list takes no part in the filter of opens (/run is a candidate for
            // reads only because of the service-account token's read-list entry).
            ("/run/docker.sock", W),
        ] {
            assert!(!candidate(&t, path, need), "{path}");
        }
        assert_eq!(lookup(&e, "/run/containerd/containerd.sock"), C);
        assert_eq!(lookup(&e, "/run/docker.sock"), C);
        assert_eq!(lookup(&e, "/run/dbus/system_bus_socket"), 0);
        // A prefix that ends inside the first component matches longer names too.
        let e = entries(
            &["/et".into(), "/abcdefghijklmnopqrstuvwxyz/".into()],
            &[],
            &[],
        );
        let t = tops(&e).expect("fits");
        assert!(candidate(&t, "/etc/passwd", R) && candidate(&t, "/et", R));
        assert!(!candidate(&t, "/e/x", R));
        assert!(candidate(&t, "/abcdefghijklmnopqrstuvwxyz/x", R));
        // Watching the root itself turns the filter off.
        assert!(tops(&entries(&["/".into()], &[], &[])).is_none());
        // ... unless it is on the connect list only.
        assert!(tops(&entries(&[], &["/etc/".into()], &["/".into()])).is_some());
    }

    #[test]
    fn keys_are_the_kernel_trie_layout() {
        let k = key("/etc/");
        assert_eq!(k.len(), std::mem::size_of::<types::lg_watch_key>());
        assert_eq!(k.len(), 4 + KEY_BYTES);
        assert_eq!(u32::from_ne_bytes([k[0], k[1], k[2], k[3]]), 5 * 8);
        assert_eq!(&k[4..9], b"/etc/");
        assert!(k[9..].iter().all(|&b| b == 0));
    }
}
