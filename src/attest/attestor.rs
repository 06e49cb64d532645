//! Workload attestation: the [`Attestor`] the event pipeline and the socket server call to attribute a process to its container and pod (never blocking on
//! the kubelet: a background thread refreshes the pod list).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::attest::cgroup::{self, Placement, Runtime};
use crate::attest::cgroup_cache::{self, CgroupCache};
use crate::attest::kubelet::{self, Kubelet};
use crate::attest::pods::{ContainerStatus, Pod, PodList};
use crate::attest::selectors;
use crate::counters::AttestCounts;
use crate::error::{Error, Kind, Result};
use crate::serve::socket;

/// The answer for one process.
#[derive(Debug, Clone, Default)]
pub struct Attestation {
    pub placement: Placement,
    pub pod: Option<Pod>,
    pub container: Option<ContainerStatus>,
    pub selectors: Vec<String>,
    /// Why the answer is incomplete (not in a pod, kubelet down, ...); None when complete.
    pub problem: Option<String>,
}

impl Attestation {
    /// The runtime from the cgroup path, else from the `containerID` scheme in the pod status.
    pub fn runtime(&self) -> Option<&'static str> {
        self.placement.runtime.map(Runtime::name).or_else(|| {
            let (scheme, _) = self.container.as_ref()?.split_id()?;
            Runtime::from_scheme(scheme).map(Runtime::name)
        })
    }

    /// The same object as one line, keys in the documented order.
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Line<'a> {
            pod_uid: Option<&'a str>,
            container_id: Option<&'a str>,
            runtime: Option<&'static str>,
            selectors: &'a [String],
        }
        let line = Line {
            pod_uid: self.placement.pod_uid.as_deref(),
            container_id: self.placement.container_id.as_deref(),
            runtime: self.runtime(),
            selectors: &self.selectors,
        };
        serde_json::to_string(&line).unwrap_or_else(|_| self.to_json().to_string())
    }

    /// `{"podUid", "containerId", "runtime", "selectors"}` with null for what is unknown.
    pub fn to_json(&self) -> Value {
        json!({
            "podUid": self.placement.pod_uid,
            "containerId": self.placement.container_id,
            "runtime": self.runtime(),
            "selectors": self.selectors,
        })
    }

    /// The event fields: `container` and `kubernetes`, where known.
    pub fn enrichment(&self) -> Enrichment {
        let container = self
            .placement
            .container_id
            .as_ref()
            .map(|id| ContainerField {
                id: id.clone(),
                runtime: self.runtime(),
            });
        let kubernetes = self.placement.pod_uid.as_ref().map(|uid| {
            let pod = self.pod.as_ref();
            KubeField {
                pod_uid: uid.clone(),
                namespace: pod.map(|p| p.metadata.namespace.clone()),
                pod_name: pod.map(|p| p.metadata.name.clone()),
                container_name: self.container.as_ref().map(|c| c.name.clone()),
                image: self.container.as_ref().map(|c| c.image.clone()),
                labels: pod.map(|p| p.metadata.labels.clone()),
                service_account: pod.map(|p| p.spec.service_account_name.clone()),
                owner: pod.and_then(Pod::owner).map(|o| Owner {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                }),
            }
        });
        Enrichment {
            container,
            kubernetes,
        }
    }
}

/// What an event gains: `"container": {...}` and `"kubernetes": {...}` (each absent if unknown).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Enrichment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeField>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerField {
    pub id: String,
    pub runtime: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeField {
    pub pod_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// Reads where `pid` sits from its `cgroup` file; with `mountinfo`, falls back to the process's
/// `mountinfo` when that names nothing and the process is in another mount namespace than the
/// host's (`cgroup_cache::from_mountinfo`). Socket callers never get the fallback: a caller can
/// make its own mount namespace and bind mounts, and so choose what its mountinfo says.
pub fn placement_of(proc_root: &Path, pid: u32, mountinfo: bool) -> Result<Placement> {
    let dir = proc_root.join(pid.to_string());
    let text = cgroup_cache::read_small(&dir.join("cgroup")).ok_or_else(|| {
        Error::runtime(format!(
            "process {pid} not found: cannot read `{}` (wrong --proc-root, or the process exited)",
            dir.join("cgroup").display()
        ))
    })?;
    let conflict = |e: cgroup::Conflict| Error::new(Kind::Findings, format!("process {pid}: {e}"));
    let p = cgroup::parse_cgroup(&text).map_err(conflict)?;
    if !p.is_empty() {
        return Ok(p);
    }
    if !mountinfo {
        return Ok(p);
    }
    match cgroup_cache::from_mountinfo(proc_root, pid) {
        Some(r) => r.map_err(conflict),
        None => Ok(p),
    }
}

/// Completes an attestation from a pod list; sets `problem` when the list cannot answer.
pub(crate) fn fill_from_list(a: &mut Attestation, list: &PodList, container_selectors: bool) {
    let Some(uid) = a.placement.pod_uid.clone() else {
        return;
    };
    let Some(pod) = list.by_uid(&uid) else {
        a.problem = Some(format!("pod {uid} is not in the kubelet's pod list"));
        return;
    };
    let status = a
        .placement
        .container_id
        .as_deref()
        .and_then(|id| pod.container(id))
        .map(|(s, _)| s.clone());
    // conmon shares its container's ID but is the runtime's monitor, not the workload.
    let status = status.filter(|_| !a.placement.conmon);
    a.problem = match (&a.placement.container_id, &status) {
        (Some(id), None) if a.placement.conmon => Some(format!(
            "the process is conmon, the runtime monitor of container {id}, not a workload container"
        )),
        // Pod selectors only (SPIRE's disable_container_selectors): they answer as soon as the
        // pod is listed, before the container is among its statuses (a sidecar that attests
        // before its container is reported ready). Every process in the pod's cgroup is the
        // pod's; the container selectors that would tell them apart are not given.
        (Some(_), None) if !container_selectors => None,
        (Some(id), None) => Some(format!(
            "container {id} is not among pod {uid}'s container statuses: it is the pod's sandbox (pause) container or has not started yet"
        )),
        _ => None,
    };
    let for_selectors = if container_selectors {
        status.as_ref()
    } else {
        None
    };
    a.selectors = selectors::for_pod(pod, for_selectors);
    a.container = status;
    a.pod = Some(pod.clone());
}

/// Everything is known: the pod and, when the process is in a container, its status (for the
/// event fields; the answer may be complete earlier, see `fill_from_list`).
pub(crate) fn complete(a: &Attestation) -> bool {
    a.pod.is_some() && (a.placement.container_id.is_none() || a.container.is_some())
}

/// Pod lookups the refresher still has to satisfy.
#[derive(Default)]
struct Wants {
    /// (pod UID, container ID) → fetches tried.
    pending: HashMap<(String, Option<String>), u32>,
    /// Given up after the attempts ran out, until this time.
    given_up: HashMap<(String, Option<String>), Instant>,
    stop: bool,
}

struct Shared {
    wants: Mutex<Wants>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Wants> {
        self.wants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a lookup that ran out of attempts is not retried.
const GIVE_UP_FOR: Duration = Duration::from_secs(300);
/// Bound of the pending lookups (one per new pod/container; a node has a few hundred).
const MAX_PENDING: usize = 4096;

/// What the attestor needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `/proc` (or `--proc-root`).
    pub proc_root: PathBuf,
    /// The kubelet client's options; None outside Kubernetes (no pod lookups).
    pub kubelet: Option<kubelet::Options>,
    /// Container selectors too (off with `--disable-container-selectors`).
    pub container_selectors: bool,
}

/// Attributes processes to containers and pods for the event pipeline and the socket server.
/// `enrich` and `attest_cached` never block on the network.
pub struct Attestor {
    cache: CgroupCache,
    proc_root: PathBuf,
    kube: Option<Arc<Kubelet>>,
    shared: Arc<Shared>,
    refresher: Option<std::thread::JoinHandle<()>>,
    container_selectors: bool,
    pub stats: AttestCounts,
}

impl Attestor {
    /// Sets up the cgroup cache and, with kubelet options (in Kubernetes), the kubelet client
    /// and its refresher thread.
    pub fn new(opts: Options) -> Result<Attestor> {
        let Options {
            proc_root,
            kubelet,
            container_selectors,
        } = opts;
        let kube = match kubelet.map(Kubelet::new) {
            Some(Ok(k)) => Some(Arc::new(k)),
            Some(Err(e)) => {
                log::warn!("events will carry no pod fields: kubelet client not set up: {e}");
                None
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            wants: Mutex::new(Wants::default()),
            wake: Condvar::new(),
        });
        let refresher = match &kube {
            Some(k) => {
                let (k, s) = (k.clone(), shared.clone());
                Some(
                    std::thread::Builder::new()
                        .name("kubelet".into())
                        .spawn(move || refresher(&k, &s))
                        .map_err(|e| {
                            Error::runtime(format!("failed to start the kubelet thread: {e}"))
                        })?,
                )
            }
            None => None,
        };
        Ok(Attestor {
            cache: CgroupCache::new(&proc_root),
            proc_root,
            kube,
            shared,
            refresher,
            container_selectors,
            stats: AttestCounts::default(),
        })
    }

    /// The `container`/`kubernetes` fields for an event from `pid` in BPF cgroup `cgroup_id`
    /// (with `memcg_v1_id`, its memory cgroup on a v1 hierarchy, or 0).
    pub fn enrich(&mut self, pid: u32, cgroup_id: u64, memcg_v1_id: u64) -> Enrichment {
        let placement = self.cache.lookup(cgroup_id, memcg_v1_id, pid);
        if placement.is_empty() {
            return Enrichment::default();
        }
        let a = self.attest_placement(placement);
        self.stats.enriched += 1;
        a.enrichment()
    }

    /// The attestation of `pid` from the cached pod list (for the socket server).
    pub fn attest_cached(&mut self, pid: u32) -> Result<Attestation> {
        let placement = placement_of(&self.proc_root, pid, false)?;
        Ok(self.attest_placement(placement))
    }

    fn attest_placement(&mut self, placement: Placement) -> Attestation {
        let mut a = Attestation {
            placement,
            ..Default::default()
        };
        let (Some(uid), Some(kube)) = (a.placement.pod_uid.clone(), &self.kube) else {
            if a.placement.pod_uid.is_some() {
                a.problem = Some("no kubelet configured".into());
            }
            return a;
        };
        fill_from_list(&mut a, &kube.cached(), self.container_selectors);
        if !complete(&a) && !a.placement.conmon {
            self.stats.kubelet_misses += 1;
            self.want(uid, a.placement.container_id.clone());
        }
        a
    }

    fn want(&self, uid: String, cid: Option<String>) {
        let key = (uid, cid);
        let mut w = self.shared.lock();
        if w.given_up
            .get(&key)
            .is_some_and(|until| Instant::now() < *until)
        {
            return;
        }
        if w.pending.len() < MAX_PENDING && !w.pending.contains_key(&key) {
            w.pending.insert(key, 0);
            self.shared.wake.notify_one();
        }
    }

    /// Counters for `status`.
    pub fn status_json(&self) -> Value {
        let c = &self.cache.stats;
        let mut v = json!({
            "kubeletMisses": self.stats.kubelet_misses,
            "enriched": self.stats.enriched,
            "cgroupCache": {"entries": self.cache.len(), "hits": c.hits, "fromPid": c.from_pid,
                            "fromWalk": c.from_walk, "unresolved": c.unresolved, "conflicts": c.conflicts},
        });
        if let Some(k) = &self.kube {
            v["kubelet"] = json!({
                "url": k.options().base,
                "fetches": k.counters.fetches.load(Ordering::Relaxed),
                "fetchErrors": k.counters.fetch_errors.load(Ordering::Relaxed),
                "lastError": k.last_error(),
                "pods": k.cached().items.len(),
            });
        }
        v
    }

    /// The socket server's answer for a peer: its own attestation, nothing else.
    pub fn answer(&mut self, req: socket::Request, peer: &socket::Peer) -> Value {
        match req {
            socket::Request::Status => {
                socket::ok_reply(json!({"healthy": true, "attestor": self.status_json()}))
            }
            socket::Request::AttestSelf if peer.pid == 0 => socket::error_reply(
                "the caller's pid is not visible in the agent's pid namespace (run the agent with hostPID)",
            ),
            socket::Request::AttestSelf => match self.attest_cached(peer.pid) {
                // The pid must still be the caller: a reused pid would leak someone else's data.
                Ok(_) if !peer.still_alive() => {
                    socket::error_reply("caller exited before the answer")
                }
                Ok(a) => self_reply(&a, self.kube.is_some()),
                Err(e) => socket::error_reply(&e.to_string()),
            },
        }
    }
}

/// The `attest-self` reply for an attestation. Any problem with a kubelet configured means pod
/// selectors would overstate who the caller is (its container is not one of the pod's, it is
/// conmon, or the pod is not listed yet): the reply is an error, and "retry shortly" only while
/// the pod is missing from the list. Without a kubelet there are no selectors, only what the
/// cgroup file says.
fn self_reply(a: &Attestation, kubelet: bool) -> Value {
    match &a.problem {
        Some(p) if kubelet && a.pod.is_none() => socket::error_reply(&format!(
            "{p}; retry shortly (the pod list is being refreshed)"
        )),
        Some(p) if kubelet => socket::error_reply(p),
        _ => socket::ok_reply(a.to_json()),
    }
}

impl Drop for Attestor {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
    }
}

/// The kubelet thread: waits for wanted pods, fetches at most once per minimum interval,
/// gives a lookup up after the configured attempts.
fn refresher(kube: &Kubelet, shared: &Shared) {
    let max = kube.options().max_attempts;
    let interval = kube.options().min_interval;
    loop {
        {
            let mut w = shared.lock();
            while w.pending.is_empty() && !w.stop {
                w = shared.wake.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            if w.stop {
                return;
            }
        }
        let list = kube.refresh();
        {
            let mut w = shared.lock();
            if w.stop {
                return;
            }
            let now = Instant::now();
            w.given_up.retain(|_, until| now < *until);
            let keys: Vec<_> = w.pending.keys().cloned().collect();
            for key in keys {
                let found = list.as_ref().ok().is_some_and(|l| {
                    l.by_uid(&key.0)
                        .is_some_and(|p| key.1.as_deref().is_none_or(|c| p.container(c).is_some()))
                });
                if found {
                    w.pending.remove(&key);
                    continue;
                }
                let n = w.pending.get(&key).copied().unwrap_or(0) + 1;
                if n >= max {
                    w.pending.remove(&key);
                    w.given_up.insert(key, now + GIVE_UP_FOR);
                } else {
                    w.pending.insert(key, n);
                }
            }
            if let Err(e) = &list {
                log::debug!("kubelet refresh failed: {e}");
            }
        }
        // Sleep the minimum interval, waking early only to stop.
        let w = shared.lock();
        let _ = shared
            .wake
            .wait_timeout_while(w, interval, |w| !w.stop)
            .map(|(w, _)| w.stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain-HTTP test kubelet on 127.0.0.1:`port`, polled at most every 20 ms.
    fn test_kubelet(port: u16) -> kubelet::Options {
        kubelet::Options {
            base: format!("http://127.0.0.1:{port}"),
            connect_to: None,
            ca: None,
            skip_verify: false,
            auth: kubelet::Auth::Anonymous,
            min_interval: Duration::from_millis(20),
            max_attempts: 60,
            timeout: kubelet::REQUEST_TIMEOUT,
        }
    }
    use crate::attest::pods;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

    fn list() -> PodList {
        pods::parse(
            format!(
                r#"{{"items":[{{"metadata":{{"name":"web","namespace":"shop","uid":"{UID}","labels":{{"app":"web"}},
                "ownerReferences":[{{"kind":"ReplicaSet","name":"web-1","uid":"rs","controller":true}}]}},
                "spec":{{"serviceAccountName":"sa1","nodeName":"n1"}},
                "status":{{"containerStatuses":[{{"name":"app","image":"nginx:1","imageID":"nginx@sha256:aa","containerID":"cri-o://{CID}"}}]}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn fills_and_enriches() {
        let mut a = Attestation {
            placement: Placement {
                pod_uid: Some(UID.into()),
                container_id: Some(CID.into()),
                runtime: None,
                conmon: false,
            },
            ..Default::default()
        };
        fill_from_list(&mut a, &list(), true);
        assert!(a.problem.is_none() && complete(&a));
        assert_eq!(a.runtime(), Some("cri-o"));
        let j = a.to_json();
        assert_eq!(j["podUid"], UID);
        assert!(
            j["selectors"]
                .as_array()
                .unwrap()
                .contains(&json!("k8s:container-name:app"))
        );
        let e = serde_json::to_value(a.enrichment()).unwrap();
        assert_eq!(e["container"]["runtime"], "cri-o");
        assert_eq!(e["kubernetes"]["namespace"], "shop");
        assert_eq!(e["kubernetes"]["owner"]["kind"], "ReplicaSet");
        assert_eq!(e["kubernetes"]["serviceAccount"], "sa1");
        // Pause container: pod selectors, with a reason.
        let mut a = Attestation {
            placement: Placement {
                pod_uid: Some(UID.into()),
                container_id: Some("f".repeat(64)),
                ..Default::default()
            },
            ..Default::default()
        };
        fill_from_list(&mut a, &list(), true);
        assert!(a.problem.as_deref().unwrap().contains("pause"));
        assert!(!a.selectors.is_empty());
        assert!(a.selectors.iter().all(|s| !s.starts_with("k8s:container-")));
    }

    /// `attest-self` refuses whenever the kubelet's list cannot vouch for the caller's container.
    #[test]
    fn self_reply_refuses_when_a_problem_is_recorded() {
        const OTHER: &str = "e1b9c8e6b0a6f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6";
        let with = |uid: &str, cid: Option<&str>, conmon: bool| {
            let mut a = Attestation {
                placement: Placement {
                    pod_uid: Some(uid.into()),
                    container_id: cid.map(Into::into),
                    runtime: None,
                    conmon,
                },
                ..Default::default()
            };
            fill_from_list(&mut a, &list(), true);
            a
        };
        // The pod's own container: ok, with selectors.
        let v = self_reply(&with(UID, Some(CID), false), true);
        assert_eq!(v["ok"], true, "{v}");
        assert!(
            v["result"]["selectors"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        // A container inside the pod's cgroup that is not one of its containers (DinD inner
        // job), and conmon: refused with the reason, no selectors, no retry.
        for a in [with(UID, Some(OTHER), false), with(UID, Some(CID), true)] {
            let v = self_reply(&a, true);
            assert_eq!(v["ok"], false, "{v}");
            let e = v["error"].as_str().unwrap();
            assert!(
                !e.contains("retry shortly") && v.get("result").is_none(),
                "{v}"
            );
            assert!(e.contains("not among") || e.contains("conmon"), "{e}");
        }
        // Pod not listed yet: refused, retry shortly.
        let v = self_reply(
            &with("11111111-2222-3333-4444-555555555555", None, false),
            true,
        );
        assert_eq!(v["ok"], false);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .ends_with("retry shortly (the pod list is being refreshed)")
        );
        // No kubelet: the placement only, no selectors.
        let a = Attestation {
            placement: Placement {
                pod_uid: Some(UID.into()),
                ..Default::default()
            },
            problem: Some("no kubelet configured".into()),
            ..Default::default()
        };
        let v = self_reply(&a, false);
        assert_eq!(v["ok"], true);
        assert!(
            v["result"]["selectors"]
                .as_array()
                .is_none_or(|s| s.is_empty()),
            "{v}"
        );
    }

    /// A real child process connects; the server answers with that child's pid-derived data.
    #[test]
    fn socket_answers_a_child_process_with_its_own_attestation() {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::process::{Command, Stdio};

        let dir = std::env::temp_dir().join(format!("lg-attest-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let proc_root = dir.join("proc");
        std::fs::create_dir_all(&proc_root).unwrap();
        let sock = dir.join("agent.sock");
        let mut attestor = Attestor::new(Options {
            proc_root: proc_root.clone(),
            kubelet: None,
            container_selectors: true,
        })
        .unwrap();
        let mut srv = socket::Server::bind(&sock, 0o666).unwrap();
        let exe = std::env::current_exe().unwrap();
        let child = attest_self_child(&sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child's cgroup, derived from its pid, in the fixture /proc.
        let pid = child.id();
        let cid = format!("{pid:064x}");
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", pid, pid);
        std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
        std::fs::write(
            proc_root.join(pid.to_string()).join("cgroup"),
            format!("0::/kubepods/besteffort/pod{uid}/{cid}\n"),
        )
        .unwrap();
        let start = Instant::now();
        while srv.stats.answered == 0 && start.elapsed() < Duration::from_secs(10) {
            let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
            srv.handle_ready(&mut |req, peer| attestor.answer(req, peer));
        }
        // Let the answer drain.
        for _ in 0..10 {
            srv.handle_ready(&mut |req, peer| attestor.answer(req, peer));
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "no JSON from the child: {text} / {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["containerId"], cid.as_str());
        assert_eq!(v["podUid"], uid.as_str());
        // `status` as a real child too (the Kubernetes exec probe), when the binary is built.
        let agent = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("linuxguard-agent"));
        if let Some(agent) = agent.filter(|a| a.exists()) {
            let child = Command::new(agent)
                .args(["status", "--json", "--socket"])
                .arg(&sock)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let before = srv.stats.answered;
            let start = Instant::now();
            while srv.stats.answered == before && start.elapsed() < Duration::from_secs(10) {
                let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
                srv.handle_ready(&mut |req, peer| attestor.answer(req, peer));
            }
            for _ in 0..10 {
                srv.handle_ready(&mut |req, peer| attestor.answer(req, peer));
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["healthy"], true);
            assert!(v["attestor"]["cgroupCache"].is_object());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The client: the agent binary's `attest --self` when built, else this test binary running
    /// `socket_child_client`.
    fn attest_self_child(sock: &Path) -> std::process::Command {
        let exe = std::env::current_exe().unwrap();
        let agent = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("linuxguard-agent"));
        match agent.filter(|a| a.exists()) {
            Some(a) => {
                let mut c = std::process::Command::new(a);
                c.args(["attest", "--self", "--socket"]).arg(sock);
                c
            }
            None => {
                let mut c = std::process::Command::new(&exe);
                c.args([
                    "--exact",
                    "attest::attestor::tests::socket_child_client",
                    "--ignored",
                    "--nocapture",
                ])
                .env("LG_TEST_SOCKET", sock);
                c
            }
        }
    }

    /// With container selectors disabled, a process whose container is not (yet) among the
    /// pod's statuses gets the pod selectors; conmon does not.
    #[test]
    fn disabled_container_selectors_answer_once_the_pod_is_listed() {
        let with = |cid: &str, conmon: bool, container_selectors: bool| {
            let mut a = Attestation {
                placement: Placement {
                    pod_uid: Some(UID.into()),
                    container_id: Some(cid.into()),
                    runtime: None,
                    conmon,
                },
                ..Default::default()
            };
            fill_from_list(&mut a, &list(), container_selectors);
            a
        };
        let starting = "e".repeat(64);
        let a = with(&starting, false, false);
        assert!(a.problem.is_none(), "{:?}", a.problem);
        assert!(
            a.selectors
                .contains(&"k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796".to_string())
        );
        assert!(a.selectors.iter().all(|s| !s.starts_with("k8s:container-")));
        assert!(
            !complete(&a),
            "the container is still wanted for the event fields"
        );
        assert_eq!(self_reply(&a, true)["ok"], true);
        // The listed container: pod selectors only, complete.
        let a = with(CID, false, false);
        assert!(a.problem.is_none() && complete(&a));
        assert!(a.selectors.iter().all(|s| !s.starts_with("k8s:container-")));
        // conmon stays refused; with container selectors the old refusal stays.
        assert!(with(CID, true, false).problem.unwrap().contains("conmon"));
        assert!(
            with(&starting, false, true)
                .problem
                .unwrap()
                .contains("not among")
        );
    }

    /// The socket answer through the agent binary: `attest --self` from a process whose
    /// container the kubelet does not list yet gets the pod selectors with
    /// --disable-container-selectors, and the refusal without it.
    #[test]
    fn socket_answers_pod_selectors_before_the_container_is_listed() {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::io::{Read, Write};
        use std::process::Stdio;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = format!(
            r#"{{"items":[{{"metadata":{{"name":"web","namespace":"shop","uid":"{UID}"}},
            "status":{{"containerStatuses":[{{"name":"app","image":"nginx:1","containerID":"containerd://{CID}"}}]}}}}]}}"#
        );
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        for disable in [true, false] {
            let dir = std::env::temp_dir()
                .join(format!("lg-attest-nosel-{}-{disable}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let proc_root = dir.join("proc");
            std::fs::create_dir_all(&proc_root).unwrap();
            let sock = dir.join("agent.sock");
            let mut attestor = Attestor::new(Options {
                proc_root: proc_root.clone(),
                kubelet: Some(test_kubelet(port)),
                container_selectors: !disable,
            })
            .unwrap();
            let mut srv = socket::Server::bind(&sock, 0o666).unwrap();
            let mut child = attest_self_child(&sock)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The child sits in the pod, in a container the kubelet does not list.
            let pid = child.id();
            std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(
                proc_root.join(pid.to_string()).join("cgroup"),
                format!("0::/kubepods/besteffort/pod{UID}/{pid:064x}\n"),
            )
            .unwrap();
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(20)
            {
                let mut fds = [PollFd::new(srv.fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(50u16));
                srv.handle_ready(&mut |req, peer| attestor.answer(req, peer));
            }
            let out = child.wait_with_output().unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            if disable {
                let line = stdout
                    .lines()
                    .find(|l| l.starts_with('{'))
                    .unwrap_or_else(|| panic!("no JSON: {stdout} / {stderr}"));
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["podUid"], UID, "{v}");
                let sel = v["selectors"].as_array().unwrap();
                assert!(sel.contains(&json!("k8s:ns:shop")), "{v}");
                assert!(
                    sel.iter()
                        .all(|s| !s.as_str().unwrap().starts_with("k8s:container-")),
                    "{v}"
                );
            } else {
                assert!(!out.status.success(), "{stdout}");
                assert!(
                    stdout.contains("is not among pod") || stderr.contains("is not among pod"),
                    "{stdout} / {stderr}"
                );
            }
            drop(attestor);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Client half of the socket tests above (run only as their child).
    #[test]
    #[ignore]
    fn socket_child_client() {
        let Some(path) = std::env::var_os("LG_TEST_SOCKET") else {
            return;
        };
        let v = socket::request(
            Path::new(&path),
            socket::Request::AttestSelf,
            Duration::from_secs(10),
            None,
        )
        .unwrap();
        println!("{v}");
    }

    /// `enrich` never waits for the kubelet: the first event goes out with the pod UID only and
    /// counts a miss; the refresher fetches the pod and later events carry the pod fields.
    #[test]
    fn enrich_does_not_block_and_counts_misses() {
        use std::io::{Read, Write};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = String::from_utf8(
            format!(
                r#"{{"items":[{{"metadata":{{"name":"web","namespace":"shop","uid":"{UID}"}},
                "status":{{"containerStatuses":[{{"name":"app","image":"nginx:1","containerID":"containerd://{CID}"}}]}}}}]}}"#
            )
            .into_bytes(),
        )
        .unwrap();
        // A kubelet that answers only once the test lets it (or after 20 s): an event path that
        // waited for it would take 20 s, one that does not returns at once.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = gate.recv_timeout(Duration::from_secs(20));
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let dir = std::env::temp_dir().join(format!("lg-attest-enrich-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("4242")).unwrap();
        std::fs::write(
            dir.join("4242/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let mut a = Attestor::new(Options {
            proc_root: dir.clone(),
            kubelet: Some(test_kubelet(port)),
            container_selectors: true,
        })
        .unwrap();
        let t = Instant::now();
        let e = a.enrich(4242, 9999, 0);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the event path waited for the kubelet: {:?}",
            t.elapsed()
        );
        assert_eq!(e.container.as_ref().unwrap().id, CID);
        let k = e.kubernetes.unwrap();
        assert_eq!(k.pod_uid, UID);
        assert!(k.namespace.is_none());
        assert_eq!(a.stats.kubelet_misses, 1);
        drop(release);
        let start = Instant::now();
        let mut got = None;
        while start.elapsed() < Duration::from_secs(5) {
            let e = a.enrich(4242, 9999, 0);
            if e.kubernetes.as_ref().is_some_and(|k| k.namespace.is_some()) {
                got = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let e = got.expect("pod fields after the refresh");
        let k = e.kubernetes.unwrap();
        assert_eq!(k.namespace.as_deref(), Some("shop"));
        assert_eq!(k.container_name.as_deref(), Some("app"));
        assert_eq!(e.container.unwrap().runtime, Some("containerd"));
        let st = a.status_json();
        assert!(st["kubelet"]["fetches"].as_u64().unwrap() >= 1);
        drop(a); // joins the refresher thread
        let _ = std::fs::remove_dir_all(&dir);
    }
}
