//! Process → container: parses `/proc/<pid>/cgroup` (and `mountinfo` as the fallback) into the
//! pod UID, container ID and container runtime, for every cgroup layout in use.
//!
//! Self-contained (std only) so the fuzz crate can include this file with `#[path]`.
//!
//! Layouts handled (each segment of a cgroup path is looked at on its own):
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<64 hex>`, `/kubepods/pod<uid>/crio-<id>`,
//!   `/docker/<id>`, `/libpod_parent/libpod-<id>`;
//! - systemd driver: `kubepods-burstable-pod<uid_with_underscores>.slice`,
//!   `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`;
//! - containerd's systemd cgroup paths in cgroup v1: `<slice>:cri-containerd:<id>`;
//! - conmon (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`): the runtime monitor, not the
//!   container;
//! - anchoring: a pod segment counts only where the kubelet makes pods (below a kubepods QoS root,
//!   never in a delegated `user@<uid>.service` tree), the container is the pod's direct child,
//!   and two pod segments name nothing; so a kind node (a docker/podman container running a
//!   kubelet) is never taken for the pod's container.
//!
//! Different answers on different lines (hierarchies) are a conflict, reported as an error.

use std::fmt;

/// The container runtime, as far as the cgroup path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }

    /// The runtime behind a Kubernetes `containerID` scheme (`containerd://`, ...).
    pub fn from_scheme(scheme: &str) -> Option<Runtime> {
        match scheme {
            "containerd" => Some(Runtime::Containerd),
            "cri-o" => Some(Runtime::CriO),
            "docker" => Some(Runtime::Docker),
            "podman" => Some(Runtime::Podman),
            _ => None,
        }
    }
}

/// Where a process sits: any part may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Pod UID, lower case with dashes (`_` from systemd slice names turned back into `-`).
    pub pod_uid: Option<String>,
    /// 64 lower-case hex characters.
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// The process is a conmon (runtime monitor) for `container_id`, not the container itself.
    pub conmon: bool,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.pod_uid.is_none() && self.container_id.is_none()
    }

    /// Adds another line's answer; different non-empty answers are a conflict.
    fn merge(&mut self, other: Placement, line: &str) -> Result<(), Conflict> {
        fn one<T: PartialEq + fmt::Debug + Clone>(
            what: &str,
            mine: &mut Option<T>,
            theirs: Option<T>,
            line: &str,
        ) -> Result<(), Conflict> {
            match (mine.as_ref(), theirs) {
                (Some(a), Some(b)) if *a != b => Err(Conflict(format!(
                    "{what} {a:?} and {b:?} both appear (second in `{}`); refusing to guess",
                    clip(line)
                ))),
                (None, Some(b)) => {
                    *mine = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        one("pod UIDs", &mut self.pod_uid, other.pod_uid, line)?;
        one(
            "container IDs",
            &mut self.container_id,
            other.container_id,
            line,
        )?;
        one("runtimes", &mut self.runtime, other.runtime, line)?;
        self.conmon |= other.conmon;
        Ok(())
    }
}

/// Two lines of the input disagree about the pod or the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict(pub String);

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Parses the contents of `/proc/<pid>/cgroup` (`hierarchy-id:controllers:path` per line).
pub fn parse_cgroup(text: &str) -> Result<Placement, Conflict> {
    let mut out = Placement::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let p = parse_path(path);
        if !p.is_empty() {
            out.merge(p, line)?;
        }
    }
    Ok(out)
}

/// Parses `/proc/<pid>/mountinfo` of a process in a container's mount namespace (the caller
/// checks that: the host's own mount table holds the kubelet's `volume-subpaths` binds, which
/// name pods). The roots of cgroup mounts are cgroup paths; besides those, only the bind mounts
/// a runtime makes for every container count: `/etc/hosts` from the kubelet's
/// `…/kubelet/pods/<uid>/etc-hosts`, `/dev/termination-log` from
/// `…/kubelet/pods/<uid>/containers/<name>/<id>`, and docker's `/etc/hosts` or `/etc/hostname`
/// from `…/containers/<64 hex>/{hosts,hostname}`. Volume mounts (`volumes/`, `volume-subpaths/`)
/// never count.
pub fn parse_mountinfo(text: &str) -> Result<Placement, Conflict> {
    let mut out = Placement::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(dash + 1).copied().unwrap_or("");
        let p = if fstype == "cgroup" || fstype == "cgroup2" {
            parse_path(root)
        } else {
            from_bind_source(root, mount_point)
        };
        if !p.is_empty() {
            out.merge(p, line)?;
        }
    }
    Ok(out)
}

/// A runtime's per-container bind mount (see [`parse_mountinfo`]): the pod or the container.
fn from_bind_source(root: &str, mount_point: &str) -> Placement {
    let mut p = Placement::default();
    let segs: Vec<&str> = root.split('/').filter(|s| !s.is_empty()).collect();
    let tail = |n: usize| segs.len().checked_sub(n).map(|at| &segs[at..]);
    match mount_point {
        "/etc/hosts" => {
            if let Some(["kubelet", "pods", uid, "etc-hosts"]) = tail(4) {
                p.pod_uid = pod_uid(uid);
            } else if let Some(["containers", id, "hosts"]) = tail(3) {
                p = docker(id);
            }
        }
        "/etc/hostname" => {
            if let Some(["containers", id, "hostname"]) = tail(3) {
                p = docker(id);
            }
        }
        "/dev/termination-log" => {
            if let Some(["kubelet", "pods", uid, "containers", _, _]) = tail(6) {
                p.pod_uid = pod_uid(uid);
            }
        }
        _ => {}
    }
    p
}

/// Docker's `containers/<id>/…` directory.
fn docker(id: &str) -> Placement {
    let mut p = Placement::default();
    if is_container_id(id) {
        p.container_id = Some(id.to_string());
        p.runtime = Some(Runtime::Docker);
    }
    p
}

/// What one path segment says.
#[derive(Debug, Default)]
struct Segment {
    pod_uid: Option<String>,
    container: Option<(String, Option<Runtime>, bool)>,
}

/// Parses one cgroup path such as `/kubepods/burstable/pod<uid>/<id>`.
///
/// A pod segment counts only where the kubelet puts pods (see [`kubelet_pod`]) and never below a
/// systemd user instance (`user.slice`, `user@<uid>.service`: delegated to the user, who can create
/// any cgroup name there). The container is the pod segment's direct child (or the pod segment
/// itself in the `<slice>:cri-containerd:<id>` form); cgroups below it belong to that container.
/// Two pod segments (a writable container cgroup, or a kubelet inside a pod) are ambiguous: the
/// path then names nothing. Without a pod, the innermost container segment is taken.
pub fn parse_path(path: &str) -> Placement {
    let segs: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let mut pods: Vec<(usize, String)> = Vec::new();
    let mut containers: Vec<(usize, String, Option<Runtime>, bool)> = Vec::new();
    let mut user = false;
    for (i, seg) in segs.iter().enumerate() {
        if *seg == ".." {
            continue;
        }
        if *seg == "user.slice" || (seg.starts_with("user@") && seg.ends_with(".service")) {
            user = true;
        }
        let prev = if i > 0 { segs[i - 1] } else { "" };
        let s = segment(seg, prev);
        if let Some(uid) = s.pod_uid {
            if !user && kubelet_pod(&segs[..i], seg) {
                pods.push((i, uid));
            }
        }
        if let Some((id, rt, conmon)) = s.container {
            containers.push((i, id, rt, conmon));
        }
    }
    let mut out = Placement::default();
    let container = match pods.as_slice() {
        [] => containers.into_iter().next_back(),
        [(at, uid)] => {
            out.pod_uid = Some(uid.clone());
            containers
                .into_iter()
                .find(|(i, ..)| *i == *at || *i == *at + 1)
        }
        _ => None,
    };
    if let Some((_, id, rt, conmon)) = container {
        out.container_id = Some(id);
        out.runtime = rt;
        out.conmon = conmon;
    }
    out
}

/// Whether a pod segment sits where the kubelet creates pods, given the segments above it:
/// systemd driver: `kubepods[-<qos>]-pod<uid>.slice` (kind: `kubelet-kubepods…`; Kubernetes
/// 1.5: `BestEffort-`/`Burstable-pod<uid>.slice`), whose name encodes its parents; cgroupfs
/// driver: `pod<uid>` directly below `kubepods` or `kubepods/{burstable,besteffort}`, or below
/// `..` (the reader's cgroup namespace root lies inside that QoS tree).
fn kubelet_pod(above: &[&str], seg: &str) -> bool {
    let head = seg.split_once(':').map_or(seg, |(h, _)| h);
    if let Some(base) = head.strip_suffix(".slice") {
        let Some(at) = base.rfind("-pod") else {
            return false;
        };
        let qos = &base[..at];
        return qos == "kubepods"
            || qos.starts_with("kubepods-")
            || qos == "kubelet-kubepods"
            || qos.starts_with("kubelet-kubepods-")
            || qos == "BestEffort"
            || qos == "Burstable";
    }
    let root =
        |s: Option<&&str>| matches!(s, Some(&"kubepods") | Some(&"..") | Some(&"kubepods.slice"));
    let mut it = above.iter().rev();
    match it.next() {
        p @ Some(_) if root(p) => true,
        Some(&"burstable") | Some(&"besteffort") => root(it.next()),
        _ => false,
    }
}

/// Prefixes of `<prefix>-<id>[.scope]`, conmon ones before the plain ones they start with.
const PREFIXES: &[(&str, Runtime, bool)] = &[
    ("cri-containerd-", Runtime::Containerd, false),
    ("crio-conmon-", Runtime::CriO, true),
    ("crio-", Runtime::CriO, false),
    ("docker-", Runtime::Docker, false),
    ("libpod-conmon-", Runtime::Podman, true),
    ("libpod-", Runtime::Podman, false),
    ("nerdctl-", Runtime::Containerd, false),
];

fn segment(seg: &str, parent: &str) -> Segment {
    let mut out = Segment::default();
    // containerd with the systemd driver on cgroup v1: `<slice>:cri-containerd:<id>`.
    if let Some((head, rest)) = seg.split_once(':') {
        if let Some((prefix, id)) = rest.rsplit_once(':') {
            if is_container_id(id) {
                let rt = match prefix {
                    "cri-containerd" => Some(Runtime::Containerd),
                    "crio" => Some(Runtime::CriO),
                    "docker" => Some(Runtime::Docker),
                    _ => None,
                };
                out.container = Some((id.to_string(), rt, false));
            }
        }
        out.pod_uid = segment(head, parent).pod_uid;
        return out;
    }
    let base = seg
        .strip_suffix(".scope")
        .or_else(|| seg.strip_suffix(".slice"))
        .unwrap_or(seg);
    // Pod: `pod<uid>` (cgroupfs) or `...-pod<uid>.slice` (systemd; kind adds a `kubelet-` prefix).
    if let Some(rest) = base.strip_prefix("pod") {
        out.pod_uid = pod_uid(rest);
    } else if seg.ends_with(".slice") {
        // `kubepods-burstable-pod<uid>.slice`; Kubernetes 1.5 wrote `BestEffort-pod<uid>.slice`.
        if let Some(at) = base.rfind("-pod") {
            out.pod_uid = pod_uid(&base[at + 4..]);
        }
    }
    if out.pod_uid.is_some() {
        return out;
    }
    for (prefix, rt, conmon) in PREFIXES {
        if let Some(id) = base.strip_prefix(prefix) {
            if is_container_id(id) {
                out.container = Some((id.to_string(), Some(*rt), *conmon));
                return out;
            }
        }
    }
    if is_container_id(base) {
        let rt = match parent {
            "docker" => Some(Runtime::Docker),
            _ => None,
        };
        out.container = Some((base.to_string(), rt, false));
    }
    out
}

/// A container ID: 64 lower-case hex characters.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod UID as written in a cgroup or kubelet path: 8-4-4-4-12 hex with `-` or `_` (systemd),
/// or 32 hex (static pods' UIDs are a hash). Returns the canonical form with dashes.
pub fn pod_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let hex = |c: u8| c.is_ascii_hexdigit();
    let ok = match b.len() {
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-' || *c == b'_'
            } else {
                hex(*c)
            }
        }),
        32 => b.iter().all(|c| hex(*c)),
        _ => false,
    };
    ok.then(|| s.replace('_', "-").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const CID2: &str = "e1b9c8e6b0a6f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6";
    const NODE: &str = "8ce1ef3a1ea0b7c9d93bb3c3ab6b5fb8e0ea7e0c1cc8b4ad8e6d6ad3c1ec8b42";

    struct Case {
        name: &'static str,
        text: String,
        pod: Option<&'static str>,
        cid: Option<&'static str>,
        rt: Option<Runtime>,
        conmon: bool,
    }

    fn case(
        name: &'static str,
        text: String,
        pod: Option<&'static str>,
        cid: Option<&'static str>,
        rt: Option<Runtime>,
    ) -> Case {
        Case {
            name,
            text,
            pod,
            cid,
            rt,
            conmon: false,
        }
    }

    /// Real-world shapes of `/proc/<pid>/cgroup` (IDs replaced by fixed test values), from the
    /// containerd, CRI-O, kind, podman, docker, systemd and SPIRE documentation and issue threads.
    fn cgroup_cases() -> Vec<Case> {
        let u = UID.replace('-', "_");
        use Runtime::*;
        vec![
            // cgroup v1, cgroupfs driver (SPIRE's k8s attestor test data, docker/containerd).
            case(
                "v1 cgroupfs burstable",
                format!(
                    "11:hugetlb:/kubepods/burstable/pod{UID}/{CID}\n\
                     10:devices:/kubepods/burstable/pod{UID}/{CID}\n\
                     4:memory:/kubepods/burstable/pod{UID}/{CID}\n\
                     1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
                ),
                Some(UID),
                Some(CID),
                None,
            ),
            case(
                "v1 cgroupfs guaranteed (no qos dir)",
                format!("12:pids:/kubepods/pod{UID}/{CID}\n3:cpuset:/\n"),
                Some(UID),
                Some(CID),
                None,
            ),
            // cgroup v2, systemd driver, containerd (kubeadm default since 1.22).
            case(
                "v2 systemd containerd",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            case(
                "v2 systemd containerd besteffort",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            case(
                "v2 systemd guaranteed",
                format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope\n"),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            // containerd, systemd cgroup driver, cgroup v1: `slice:cri-containerd:id`.
            case(
                "v1 systemd containerd colon form",
                format!(
                    "12:memory:/kubepods-besteffort-pod{u}.slice:cri-containerd:{CID}\n\
                     1:name=systemd:/kubepods-besteffort-pod{u}.slice:cri-containerd:{CID}\n"
                ),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            // CRI-O, systemd driver (OpenShift).
            case(
                "v1 systemd crio",
                format!(
                    "11:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{CID}.scope\n\
                     1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{CID}.scope\n"
                ),
                Some(UID),
                Some(CID),
                Some(CriO),
            ),
            case(
                "v1 cgroupfs crio",
                format!("4:memory:/kubepods/besteffort/pod{UID}/crio-{CID}\n"),
                Some(UID),
                Some(CID),
                Some(CriO),
            ),
            // Hybrid: v1 controllers plus the unified line, both naming the container.
            case(
                "hybrid systemd docker",
                format!(
                    "12:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{CID}.scope\n\
                     1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{CID}.scope\n\
                     0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{CID}.scope\n"
                ),
                Some(UID),
                Some(CID),
                Some(Docker),
            ),
            case(
                "hybrid unified line at root",
                format!("5:memory:/kubepods/burstable/pod{UID}/{CID}\n0::/\n"),
                Some(UID),
                Some(CID),
                None,
            ),
            // Plain docker, not Kubernetes.
            case(
                "docker cgroupfs",
                format!("12:devices:/docker/{CID}\n1:name=systemd:/docker/{CID}\n"),
                None,
                Some(CID),
                Some(Docker),
            ),
            case(
                "docker systemd v2",
                format!("0::/system.slice/docker-{CID}.scope\n"),
                None,
                Some(CID),
                Some(Docker),
            ),
            // Podman: rootful systemd, rootless, cgroupfs; and the nested `container` cgroup.
            case(
                "podman rootful systemd",
                format!("0::/machine.slice/libpod-{CID}.scope\n"),
                None,
                Some(CID),
                Some(Podman),
            ),
            case(
                "podman rootless v2",
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n"
                ),
                None,
                Some(CID),
                Some(Podman),
            ),
            case(
                "podman cgroupfs",
                format!("0::/libpod_parent/libpod-{CID}\n"),
                None,
                Some(CID),
                Some(Podman),
            ),
            // kind: the node is a docker container; seen from the host.
            case(
                "kind v1 cgroupfs nested",
                format!("4:memory:/docker/{NODE}/kubepods/besteffort/pod{UID}/{CID}\n"),
                Some(UID),
                Some(CID),
                None,
            ),
            case(
                "kind v2 systemd nested",
                format!(
                    "0::/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            case(
                "kind pod-level cgroup: node container is not the pod's",
                format!(
                    "0::/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice\n"
                ),
                Some(UID),
                None,
                None,
            ),
            case(
                "kind node's own containerd",
                format!("0::/system.slice/docker-{NODE}.scope/system.slice/containerd.service\n"),
                None,
                Some(NODE),
                Some(Docker),
            ),
            // Seen from inside a cgroup namespace.
            case(
                "outside the reader's cgroupns",
                format!("0::/../../kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"),
                Some(UID),
                Some(CID),
                Some(Containerd),
            ),
            // Static pod: UID is a 32-hex hash.
            case(
                "static pod uid",
                format!("0::/kubepods/burstable/pod6b4a1d9e7f0c2b3a4d5e6f708192a3b4/{CID}\n"),
                Some("6b4a1d9e7f0c2b3a4d5e6f708192a3b4"),
                Some(CID),
                None,
            ),
            // Not in a pod or container.
            case(
                "host systemd service",
                "0::/system.slice/sshd.service\n".into(),
                None,
                None,
                None,
            ),
            case(
                "root cgroup hybrid",
                "12:pids:/\n1:name=systemd:/init.scope\n0::/init.scope\n".into(),
                None,
                None,
                None,
            ),
            case(
                "user session",
                "0::/user.slice/user-1000.slice/session-2.scope\n".into(),
                None,
                None,
                None,
            ),
            case(
                "pod-level process (no container)",
                format!("0::/kubepods/burstable/pod{UID}\n"),
                Some(UID),
                None,
                None,
            ),
            case("empty", String::new(), None, None, None),
            case(
                "garbage",
                "nonsense\n::\n0::\n\u{0}\u{1}:x:/pod/zz\n".into(),
                None,
                None,
                None,
            ),
        ]
    }

    #[test]
    fn cgroup_table() {
        for c in cgroup_cases() {
            let got = parse_cgroup(&c.text).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(got.pod_uid.as_deref(), c.pod, "{}: pod", c.name);
            assert_eq!(got.container_id.as_deref(), c.cid, "{}: container", c.name);
            assert_eq!(got.runtime, c.rt, "{}: runtime", c.name);
            assert_eq!(got.conmon, c.conmon, "{}: conmon", c.name);
        }
    }

    /// Lines quoted from public issue threads (IDs as posted), with what they must give.
    #[test]
    fn real_world_threads() {
        use Runtime::*;
        type Row = (
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            Option<Runtime>,
            bool,
        );
        let cases: &[Row] = &[
            // opencontainers/runc#4620: CRI-O, systemd driver, cgroup v1 (OpenShift-like).
            (
                "runc#4620",
                "13:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope\n\
                 11:files:/\n\
                 12:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope\n",
                Some("a5c1f8d5-1919-434d-add7-4afaafdaef89"),
                Some("5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"),
                Some(CriO),
                false,
            ),
            // runc#4620: the conmon scope of a CRI-O container.
            (
                "runc#4620 conmon",
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod207aaad1_659f_4db8_88e0_46e0cdcc3004.slice/crio-conmon-32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6.scope\n",
                Some("207aaad1-659f-4db8-88e0-46e0cdcc3004"),
                Some("32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6"),
                Some(CriO),
                true,
            ),
            // openshift/microshift#697: conmon in system.slice (conmon_cgroup = system.slice).
            (
                "microshift#697",
                "0::/system.slice/crio-conmon-e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528.scope\n",
                None,
                Some("e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528"),
                Some(CriO),
                true,
            ),
            // lxc/lxc#3890: docker under the systemd driver, cgroup v1.
            (
                "lxc#3890",
                "12:rdma:/\n11:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope\n",
                Some("7d4424e6-bb13-42f4-a47a-45a4828bf54d"),
                Some("d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98"),
                Some(Docker),
                false,
            ),
            // open-telemetry/opentelemetry-java#4507: containerd, systemd driver, v1, colon form,
            // some controllers under containerd.service.
            (
                "otel-java#4507",
                "11:perf_event:/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459\n\
                 10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459\n",
                Some("0125ec2f-b64a-4868-8f5b-94b56cbab864"),
                Some("ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459"),
                Some(Containerd),
                false,
            ),
            // containerd/nri#227: kind, containerd, cgroup v2 (relative path form in the NRI log).
            (
                "nri#227 kind",
                "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice/cri-containerd-a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e.scope\n",
                Some("1e597579-417e-482f-bf65-5fe170c3aebd"),
                Some("a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e"),
                Some(Containerd),
                false,
            ),
            // nri#227: a CRI-O sandbox (pause) cgroup has no `.scope`.
            (
                "nri#227 crio sandbox",
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65.slice/crio-468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631\n",
                Some("35550f44-f691-427e-b57d-ab6127d2cb65"),
                Some("468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631"),
                Some(CriO),
                false,
            ),
            // kubernetes/minikube#11280: CRI-O inside a docker-based node (nested).
            (
                "minikube#11280",
                "0::/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c.scope\n",
                Some("2ca4a155-3599-498d-bb9d-4446693fa3ea"),
                Some("358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c"),
                Some(CriO),
                false,
            ),
            // netdata/netdata#4868: a static pod (UID is a 32-hex hash) under containerd.
            (
                "netdata#4868 static pod",
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8daa50c3a64c9ff60bb9eab7b44b56fd.slice/cri-containerd-2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5.scope\n",
                Some("8daa50c3a64c9ff60bb9eab7b44b56fd"),
                Some("2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5"),
                Some(Containerd),
                false,
            ),
            // kubernetes/kubernetes#36807: Kubernetes 1.5 systemd naming, docker with cgroupfs.
            (
                "kubernetes#36807",
                "11:memory:/system.slice/docker.service/BestEffort.slice/BestEffort-pod0d33f94b_ab1a_11e6_9e1a_68f7281d8004.slice/0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b\n\
                 9:freezer:/BestEffort.slice/BestEffort-pod0d33f94b_ab1a_11e6_9e1a_68f7281d8004.slice/0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b\n",
                Some("0d33f94b-ab1a-11e6-9e1a-68f7281d8004"),
                Some("0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b"),
                None,
                false,
            ),
            // podman-container-tools/podman#10602: podman, systemd inside the container.
            (
                "podman#10602",
                "12:pids:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope\n\
                 1:name=systemd:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope/init.scope\n",
                None,
                Some("2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24"),
                Some(Podman),
                false,
            ),
            // podman#20423: rootless-style path under user@0.service, crun's `/container`.
            (
                "podman#20423",
                "0::/user.slice/user-0.slice/user@0.service/machine.slice/libpod-cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb.scope/container\n",
                None,
                Some("cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb"),
                Some(Podman),
                false,
            ),
            // containerd/containerd#285: docker, systemd driver, some lines under init.scope.
            (
                "containerd#285",
                "11:perf_event:/system.slice/docker-b33dda97580e721a69fa81742190341f858ea809ec4a9d74a8cfd411b0ee7c26.scope\n\
                 10:memory:/init.scope/system.slice/docker-b33dda97580e721a69fa81742190341f858ea809ec4a9d74a8cfd411b0ee7c26.scope\n",
                None,
                Some("b33dda97580e721a69fa81742190341f858ea809ec4a9d74a8cfd411b0ee7c26"),
                Some(Docker),
                false,
            ),
            // kubernetes/kubernetes#18202: docker-in-docker, name=systemd at docker.service.
            (
                "kubernetes#18202",
                "9:perf_event:/docker/81950eac55062e5d8e7b5567d1036e4b146dfe212bdc9263c97347e6ce86b904\n\
                 1:name=systemd:/system.slice/docker.service\n",
                None,
                Some("81950eac55062e5d8e7b5567d1036e4b146dfe212bdc9263c97347e6ce86b904"),
                Some(Docker),
                false,
            ),
            // kontena/pharos-cluster#440: a host daemon in system.slice: nothing.
            (
                "pharos#440",
                "11:cpuacct,cpu:/system.slice\n1:name=systemd:/system.slice\n",
                None,
                None,
                None,
                false,
            ),
        ];
        for (name, text, pod, cid, rt, conmon) in cases {
            let p = parse_cgroup(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.pod_uid.as_deref(), *pod, "{name}");
            assert_eq!(p.container_id.as_deref(), *cid, "{name}");
            assert_eq!(p.runtime, *rt, "{name}");
            assert_eq!(p.conmon, *conmon, "{name}");
        }
    }

    #[test]
    fn conmon_is_recognised() {
        let u = UID.replace('-', "_");
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{CID}.scope\n"
        );
        let p = parse_cgroup(&t).unwrap();
        assert!(p.conmon);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        let p = parse_cgroup(&format!("0::/machine.slice/libpod-conmon-{CID}.scope\n")).unwrap();
        assert!(p.conmon && p.runtime == Some(Runtime::Podman));
    }

    #[test]
    fn conflicts_are_errors() {
        let other_uid = "11111111-2222-3333-4444-555555555555";
        let e = parse_cgroup(&format!(
            "4:memory:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{other_uid}/{CID}\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("pod UIDs"), "{e}");
        let e = parse_cgroup(&format!(
            "4:memory:/kubepods/pod{UID}/{CID}\n3:pids:/kubepods/pod{UID}/{CID2}\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("container IDs"), "{e}");
        let e = parse_cgroup(&format!(
            "0::/system.slice/docker-{CID}.scope\n1:name=systemd:/machine.slice/libpod-{CID}.scope\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("runtimes"), "{e}");
    }

    fn mi(root: &str, mp: &str, fstype: &str) -> String {
        format!(
            "35 24 0:30 {root} {mp} rw,nosuid,nodev,noexec,relatime shared:9 - {fstype} cgroup rw\n"
        )
    }

    #[test]
    fn mountinfo_table() {
        let u = UID.replace('-', "_");
        // containerd pod container: cgroup mount root and kubelet bind mounts.
        let text = format!(
            "{}{}{}",
            mi(
                &format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
                ),
                "/sys/fs/cgroup",
                "cgroup2"
            ),
            mi(
                &format!("/var/lib/kubelet/pods/{UID}/etc-hosts"),
                "/etc/hosts",
                "ext4"
            ),
            mi(
                &format!("/var/lib/kubelet/pods/{UID}/containers/app/0a1b2c3d"),
                "/dev/termination-log",
                "ext4"
            ),
        );
        let p = parse_mountinfo(&text).unwrap();
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.runtime, Some(Runtime::Containerd));
        // Docker container with cgroupns: cgroup root is `/`, but /etc/hostname is a bind mount.
        let text = format!(
            "{}{}",
            mi("/", "/sys/fs/cgroup", "cgroup2"),
            mi(
                &format!("/var/lib/docker/containers/{CID}/hostname"),
                "/etc/hostname",
                "ext4"
            )
        );
        let p = parse_mountinfo(&text).unwrap();
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.runtime, Some(Runtime::Docker));
        assert_eq!(p.pod_uid, None);
        // A host process: nothing.
        let host = "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    30 22 0:26 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n";
        assert!(parse_mountinfo(host).unwrap().is_empty());
        // Runtime mounts of two different pods: conflict.
        let text = format!(
            "{}{}",
            mi(
                &format!("/var/lib/kubelet/pods/{UID}/etc-hosts"),
                "/etc/hosts",
                "ext4"
            ),
            mi(
                "/var/lib/kubelet/pods/11111111-2222-3333-4444-555555555555/containers/app/0a1b",
                "/dev/termination-log",
                "ext4"
            ),
        );
        assert!(parse_mountinfo(&text).is_err());
        // /var on its own partition: the root starts at `/lib/kubelet`.
        let text = mi(
            &format!("/lib/kubelet/pods/{UID}/etc-hosts"),
            "/etc/hosts",
            "xfs",
        );
        assert_eq!(
            parse_mountinfo(&text).unwrap().pod_uid.as_deref(),
            Some(UID)
        );
        // Truncated lines are skipped.
        assert!(parse_mountinfo("35 24\n- -\n\n").unwrap().is_empty());
    }

    /// Bind mounts that are not the runtime's own per-container mounts name nothing: the
    /// kubelet's subPath binds (which sit in the host's mount table), volumes, and binds from
    /// look-alike paths at other mount points (a caller's own mount namespace).
    #[test]
    fn mountinfo_ignores_volumes_and_foreign_binds() {
        let other = "11111111-2222-3333-4444-555555555555";
        for (root, mp) in [
            // subPath of a configMap: host mount table (source root, volume-subpaths target).
            (
                format!(
                    "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~configmap/cfg/..2025_01_01/nginx.conf"
                ),
                format!("/var/lib/kubelet/pods/{UID}/volume-subpaths/cfg/nginx/0"),
            ),
            (
                format!("/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/data"),
                "/data".to_string(),
            ),
            (
                format!("/var/lib/kubelet/pods/{UID}/volume-subpaths/cfg/app/0"),
                "/etc/app.conf".to_string(),
            ),
            // A volume mounted over /etc/hosts: not the kubelet's etc-hosts file.
            (
                format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~configmap/h/hosts"),
                "/etc/hosts".to_string(),
            ),
            // userns spoofs: the right names at the wrong mount point, or pod dirs themselves.
            (format!("/tmp/x/kubelet/pods/{other}"), "/mnt".to_string()),
            (
                format!("/tmp/x/kubelet/pods/{other}/etc-hosts"),
                "/mnt".to_string(),
            ),
            (
                format!("/tmp/x/docker/containers/{CID}/y"),
                "/mnt/y".to_string(),
            ),
            (
                format!("/var/lib/docker/containers/{CID}/hosts"),
                "/etc/resolv.conf".to_string(),
            ),
            (
                format!("/var/lib/docker/containers/{CID}"),
                "/etc/hosts".to_string(),
            ),
        ] {
            let p = parse_mountinfo(&mi(&root, &mp, "ext4")).unwrap();
            assert!(p.is_empty(), "{root} on {mp}: {p:?}");
        }
    }

    /// Finding 3 of review 7: a pod segment counts only under a kubelet QoS root and never in a
    /// systemd user instance; the container is the pod's direct child; two pods refuse.
    #[test]
    fn spoofed_cgroup_paths_name_no_pod() {
        let u = UID.replace('-', "_");
        let other = "11111111-2222-3333-4444-555555555555";
        // (a) a delegated user@ tree (cgroup v2): any name can be created there.
        for path in [
            format!("/user.slice/user-1000.slice/user@1000.service/pod{UID}/{CID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{CID}"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            // not under a kubelet root at all
            format!("/system.slice/foo.service/pod{UID}/{CID}"),
            format!("/mygroup/burstable/pod{UID}/{CID}"),
            format!("/system.slice/evil-pod{u}.slice/cri-containerd-{CID}.scope"),
        ] {
            let p = parse_path(&path);
            assert_eq!(p.pod_uid, None, "{path}");
        }
        // (b) a writable container cgroup nests a victim pod: two pods, refused.
        for path in [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{CID}.scope/kubepods/pod{other}/{CID2}"
            ),
            format!(
                "/kubepods/burstable/pod{UID}/{CID}/kubepods-pod{other}.slice/crio-{CID2}.scope"
            ),
        ] {
            assert!(parse_path(&path).is_empty(), "{path}");
        }
        // The container is the pod's direct child: a deeper 64-hex cgroup (created inside the
        // container, or DinD's inner containers) is that container's.
        let p = parse_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope/docker/{CID2}"
        ));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.runtime, Some(Runtime::Containerd));
        let p = parse_path(&format!("/kubepods/burstable/pod{UID}/x/{CID2}"));
        assert_eq!((p.pod_uid.as_deref(), p.container_id), (Some(UID), None));
        // cgroupfs form seen from inside a cgroup namespace rooted in the QoS tree.
        let p = parse_path(&format!("/../../besteffort/pod{UID}/{CID}"));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn pod_uid_forms() {
        assert_eq!(pod_uid(UID).as_deref(), Some(UID));
        assert_eq!(pod_uid(&UID.replace('-', "_")).as_deref(), Some(UID));
        assert_eq!(pod_uid(&UID.to_uppercase()).as_deref(), Some(UID));
        assert_eq!(pod_uid("xyz"), None);
        assert_eq!(pod_uid(&UID.replace('-', "x")), None);
    }
}
