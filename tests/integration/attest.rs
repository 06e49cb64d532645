//! `attest --pid` end to end: the real binary, a fixture `--proc-root`, and a real test kubelet
//! over HTTP and HTTPS (bearer token, client certificate, wrong CA, slow and down kubelets).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{TempDir, agent, run, stderr, stdout};
use crate::kubelet_server::{Behaviour, Pki, TestKubelet, Tls};

const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
const PID: u32 = 4242;

fn pod_list() -> String {
    format!(
        r#"{{"kind":"PodList","items":[
      {{"metadata":{{"name":"web-7d4b9c","namespace":"shop","uid":"{UID}","labels":{{"app":"web"}},
        "ownerReferences":[{{"kind":"ReplicaSet","name":"web-7d4b","uid":"rs-1","controller":true}}]}},
       "spec":{{"serviceAccountName":"web-sa","nodeName":"worker-1"}},
       "status":{{"containerStatuses":[{{"name":"nginx","image":"docker.io/library/nginx:1.25",
          "imageID":"docker.io/library/nginx@sha256:0123","containerID":"containerd://{CID}"}}],
        "initContainerStatuses":[]}}}},
      {{"metadata":{{"name":"win","namespace":"shop","uid":"ffffffff-b29f-11e7-9350-020968147796"}},"spec":{{"os":{{"name":"windows"}}}}}}
    ]}}"#
    )
}

const SELECTORS: &[&str] = &[
    "k8s:container-image:docker.io/library/nginx:1.25",
    "k8s:container-image:docker.io/library/nginx@sha256:0123",
    "k8s:container-name:nginx",
    "k8s:node-name:worker-1",
    "k8s:ns:shop",
    "k8s:pod-image-count:1",
    "k8s:pod-image:docker.io/library/nginx:1.25",
    "k8s:pod-image:docker.io/library/nginx@sha256:0123",
    "k8s:pod-init-image-count:0",
    "k8s:pod-label:app:web",
    "k8s:pod-name:web-7d4b9c",
    "k8s:pod-owner-uid:ReplicaSet:rs-1",
    "k8s:pod-owner:ReplicaSet:web-7d4b",
    "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
    "k8s:sa:web-sa",
];

fn behaviour() -> Behaviour {
    Behaviour {
        body: pod_list(),
        status: 200,
        token: None,
        delay: Duration::ZERO,
        later_body: None,
    }
}

/// A fixture /proc with PID in a containerd pod (systemd driver, cgroup v2).
fn proc_root(cgroup: &str) -> TempDir {
    let d = TempDir::new("attest-proc");
    let p = d.path().join(PID.to_string());
    std::fs::create_dir_all(&p).expect("fixture dir");
    std::fs::write(p.join("cgroup"), cgroup).expect("fixture cgroup");
    std::fs::write(p.join("mountinfo"), "").expect("fixture mountinfo");
    d
}

fn pod_cgroup() -> String {
    let u = UID.replace('-', "_");
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
    )
}

fn attest(root: &Path, extra: &[&str]) -> Output {
    let mut c = agent();
    c.args(["attest", "--pid", &PID.to_string(), "--proc-root"])
        .arg(root)
        .args([
            "--kubelet-poll-retry-interval-ms",
            "20",
            "--kubelet-max-poll-attempts",
            "3",
        ])
        .args(extra);
    run(&mut c)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", stdout(o)))
}

fn write(dir: &TempDir, name: &str, content: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, content).expect("fixture file");
    p.to_string_lossy().into_owned()
}

#[test]
fn attest_read_only_port_prints_spire_selectors() {
    let k = TestKubelet::start(Tls::Plain, behaviour());
    let root = proc_root(&pod_cgroup());
    let o = attest(
        root.path(),
        &["--kubelet-read-only-port", &k.port().to_string()],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["podUid"], UID);
    assert_eq!(v["containerId"], CID);
    assert_eq!(v["runtime"], "containerd");
    let sel: Vec<&str> = v["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sel, SELECTORS);
    // Pod selectors only.
    let o = attest(
        root.path(),
        &[
            "--kubelet-read-only-port",
            &k.port().to_string(),
            "--disable-container-selectors",
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let n = json(&o)["selectors"].as_array().unwrap().len();
    assert_eq!(n, SELECTORS.len() - 3);
}

#[test]
fn attest_https_bearer_token_rotates_and_wrong_token_fails() {
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let mut b = behaviour();
    b.token = Some("token-one".into());
    let k = TestKubelet::start(
        Tls::Https {
            server: &pki,
            client_ca: None,
        },
        b,
    );
    let dir = TempDir::new("attest-tok");
    let ca = write(&dir, "ca.crt", &pki.ca_pem);
    let tok = write(&dir, "token", "token-one\n");
    let root = proc_root(&pod_cgroup());
    let url = format!("https://localhost:{}", k.port());
    let args = [
        "--kubelet-url",
        &url,
        "--kubelet-ca",
        &ca,
        "--kubelet-token-path",
        &tok,
    ];
    let o = attest(root.path(), &args);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(
        json(&o)["selectors"].as_array().unwrap().len(),
        SELECTORS.len()
    );
    // The token rotates on disk and at the kubelet: the new one is read.
    k.behaviour.lock().unwrap().token = Some("token-two".into());
    std::fs::write(&tok, "token-two").unwrap();
    let o = attest(root.path(), &args);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    // A wrong token: exit 6, the container ID still printed, the reason says 401; the token
    // itself never appears in the output.
    std::fs::write(&tok, "token-wrong").unwrap();
    let o = attest(root.path(), &args);
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    assert_eq!(json(&o)["containerId"], CID);
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("token-wrong") && !stdout(&o).contains("token-wrong"));
}

#[test]
fn attest_https_client_certificate() {
    let server = Pki::new(&["localhost"]);
    let client = Pki::new(&["linuxguard-agent"]);
    let k = TestKubelet::start(
        Tls::Https {
            server: &server,
            client_ca: Some(&client),
        },
        behaviour(),
    );
    let dir = TempDir::new("attest-mtls");
    let ca = write(&dir, "ca.crt", &server.ca_pem);
    let cert = write(&dir, "client.crt", &client.leaf_pem);
    let key = write(&dir, "client.key", &client.leaf_key_pem);
    let root = proc_root(&pod_cgroup());
    // Node name as host, secure port.
    let port = k.port().to_string();
    let o = attest(
        root.path(),
        &[
            "--node-name",
            "localhost",
            "--kubelet-secure-port",
            &port,
            "--kubelet-ca",
            &ca,
            "--kubelet-cert",
            &cert,
            "--kubelet-key",
            &key,
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(json(&o)["podUid"], UID);
    // Without the client certificate the handshake fails.
    let o = attest(
        root.path(),
        &[
            "--node-name",
            "localhost",
            "--kubelet-secure-port",
            &port,
            "--kubelet-ca",
            &ca,
            "--kubelet-anonymous",
        ],
    );
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("kubelet cannot answer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attest_wrong_ca_is_rejected_and_skip_verification_works() {
    let pki = Pki::new(&["localhost"]);
    let other = Pki::new(&["localhost"]);
    let k = TestKubelet::start(
        Tls::Https {
            server: &pki,
            client_ca: None,
        },
        behaviour(),
    );
    let dir = TempDir::new("attest-ca");
    let wrong = write(&dir, "wrong.crt", &other.ca_pem);
    let root = proc_root(&pod_cgroup());
    let url = format!("https://localhost:{}", k.port());
    let o = attest(
        root.path(),
        &[
            "--kubelet-url",
            &url,
            "--kubelet-ca",
            &wrong,
            "--kubelet-anonymous",
        ],
    );
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    let e = stderr(&o).to_lowercase();
    assert!(e.contains("certificate") || e.contains("issuer"), "{e}");
    let o = attest(
        root.path(),
        &[
            "--kubelet-url",
            &url,
            "--skip-kubelet-verification",
            "--kubelet-anonymous",
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
}

#[test]
fn attest_checks_certificate_against_host_name_when_no_node_name() {
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    // The certificate names only the host name, not 127.0.0.1: verification must use the name.
    let pki = Pki::new(&[&host]);
    let k = TestKubelet::start(
        Tls::Https {
            server: &pki,
            client_ca: None,
        },
        behaviour(),
    );
    let dir = TempDir::new("attest-host");
    let ca = write(&dir, "ca.crt", &pki.ca_pem);
    let root = proc_root(&pod_cgroup());
    let o = attest(
        root.path(),
        &[
            "--kubelet-secure-port",
            &k.port().to_string(),
            "--kubelet-ca",
            &ca,
            "--kubelet-anonymous",
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
}

#[test]
fn attest_refetches_until_a_new_pod_appears() {
    let mut b = behaviour();
    b.body = r#"{"items":[]}"#.into();
    b.later_body = Some((2, pod_list()));
    let k = TestKubelet::start(Tls::Plain, b);
    let root = proc_root(&pod_cgroup());
    let o = attest(
        root.path(),
        &[
            "--kubelet-read-only-port",
            &k.port().to_string(),
            "--kubelet-max-poll-attempts",
            "5",
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(k.requests(), 3);
    // Never there: bounded attempts, then exit 6 with the reason.
    let mut b = behaviour();
    b.body = r#"{"items":[]}"#.into();
    let k = TestKubelet::start(Tls::Plain, b);
    let o = attest(
        root.path(),
        &["--kubelet-read-only-port", &k.port().to_string()],
    );
    assert_eq!(o.status.code(), Some(6));
    assert_eq!(k.requests(), 3);
    assert!(
        stderr(&o).contains("not in the kubelet's pod list"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attest_slow_and_down_kubelet_fail_in_bounded_time() {
    let mut b = behaviour();
    b.delay = Duration::from_secs(30);
    let k = TestKubelet::start(Tls::Plain, b);
    let root = proc_root(&pod_cgroup());
    let t = Instant::now();
    let o = attest(
        root.path(),
        &[
            "--kubelet-read-only-port",
            &k.port().to_string(),
            "--kubelet-max-poll-attempts",
            "1",
        ],
    );
    // The kubelet answers after 30 s: ending well before proves the request timeout ended it.
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(6));
    assert_eq!(json(&o)["containerId"], CID);
    assert!(
        stderr(&o).contains("kubelet cannot answer"),
        "{}",
        stderr(&o)
    );
    // Down: nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Instant::now();
    let o = attest(
        root.path(),
        &["--kubelet-read-only-port", &port.to_string()],
    );
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(6));
    assert!(
        stderr(&o).contains("kubelet cannot answer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attest_outside_a_pod_and_conflicts() {
    // Plain docker container: container ID printed, exit 6.
    let root = proc_root(&format!("0::/system.slice/docker-{CID}.scope\n"));
    let o = attest(root.path(), &[]);
    assert_eq!(o.status.code(), Some(6));
    let v = json(&o);
    assert_eq!(v["containerId"], CID);
    assert_eq!(v["runtime"], "docker");
    assert!(v["podUid"].is_null());
    assert!(
        stderr(&o).contains("not in a Kubernetes pod"),
        "{}",
        stderr(&o)
    );
    // Host process.
    let root = proc_root("0::/system.slice/sshd.service\n");
    let o = attest(root.path(), &[]);
    assert_eq!(o.status.code(), Some(6));
    assert!(json(&o)["containerId"].is_null());
    // Conflicting lines.
    let root = proc_root(&format!(
        "4:memory:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod11111111-2222-3333-4444-555555555555/{CID}\n"
    ));
    let o = attest(root.path(), &[]);
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains("refusing to guess"), "{}", stderr(&o));
    // Missing process.
    let o = run(agent()
        .args(["attest", "--pid", "99999", "--proc-root"])
        .arg(root.path()));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("process 99999 not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attest_mountinfo_fallback() {
    let root = proc_root("0::/\n");
    let mi = format!(
        "35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n\
         36 24 8:1 /var/lib/kubelet/pods/{UID}/etc-hosts /etc/hosts rw - ext4 /dev/sda1 rw\n"
    );
    let pid_dir = root.path().join(PID.to_string());
    std::fs::write(pid_dir.join("mountinfo"), mi).unwrap();
    let k = TestKubelet::start(Tls::Plain, behaviour());
    let port = k.port().to_string();
    // Mount namespaces: pid 1's (the host's) and the process's, as `ns/mnt` links.
    let ns = |dir: &Path, mnt: &str, user: &str| {
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        for (kind, to) in [("mnt", mnt), ("user", user)] {
            let _ = std::fs::remove_file(dir.join("ns").join(kind));
            std::os::unix::fs::symlink(to, dir.join("ns").join(kind)).unwrap();
        }
    };
    let host = root.path().join("1");
    let (host_mnt, host_user) = ("mnt:[4026531841]", "user:[4026531837]");
    let not_in_a_pod = |o: &Output| {
        assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(o));
        assert!(json(o)["podUid"].is_null());
    };
    // Without pid 1's namespaces to compare with, mountinfo is not read: not in a pod.
    not_in_a_pod(&attest(root.path(), &["--kubelet-read-only-port", &port]));
    // In the host's mount namespace (where the kubelet's subPath binds live): not read either.
    ns(&host, host_mnt, host_user);
    ns(&pid_dir, host_mnt, host_user);
    not_in_a_pod(&attest(root.path(), &["--kubelet-read-only-port", &port]));
    // In a user namespace of its own (anyone can then make mounts): not read.
    ns(&pid_dir, "mnt:[4026532777]", "user:[4026532778]");
    not_in_a_pod(&attest(root.path(), &["--kubelet-read-only-port", &port]));
    // In a container's own mount namespace: the kubelet's etc-hosts bind names the pod.
    ns(&pid_dir, "mnt:[4026532777]", host_user);
    let o = attest(root.path(), &["--kubelet-read-only-port", &port]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["podUid"], UID);
    assert!(v["containerId"].is_null());
}

#[test]
fn status_and_attest_self_without_agent_say_so() {
    let dir = TempDir::new("status-none");
    let sock = dir.path().join("none.sock");
    let o = run(agent().args(["status", "--socket"]).arg(&sock));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("agent is not running"),
        "{}",
        stderr(&o)
    );
    let o = run(agent().args(["attest", "--self", "--socket"]).arg(&sock));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("agent is not running"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attest_conmon_and_pause_are_named() {
    let k = TestKubelet::start(Tls::Plain, behaviour());
    let port = k.port().to_string();
    let u = UID.replace('-', "_");
    // CRI-O's conmon for the container: not the workload.
    let root = proc_root(&format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{CID}.scope\n"
    ));
    let o = attest(root.path(), &["--kubelet-read-only-port", &port]);
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains("conmon"), "{}", stderr(&o));
    // The pod's sandbox (pause) container: not among the statuses; pod selectors are printed.
    let pause = "f".repeat(64);
    let root = proc_root(&format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{pause}.scope\n"
    ));
    let o = attest(root.path(), &["--kubelet-read-only-port", &port]);
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains("pause"), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["containerId"], pause.as_str());
    assert!(
        v["selectors"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("k8s:ns:shop"))
    );
}

/// The pod as the kubelet lists it while the calling container has not started yet: another
/// container is in `containerStatuses`, ours is not.
fn pod_list_without_our_container() -> String {
    const OTHER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    pod_list().replace(CID, OTHER)
}

/// `--disable-container-selectors`: the pod selectors as soon as the pod is known, even while the
/// container is not among `containerStatuses` (a sidecar attesting before its container is
/// reported, Istio's `holdApplicationUntilProxyStarts`). Without the option: exit 6 as before.
#[test]
fn attest_disable_container_selectors_does_not_wait_for_the_container() {
    let k = TestKubelet::start(
        Tls::Plain,
        Behaviour {
            body: pod_list_without_our_container(),
            ..behaviour()
        },
    );
    let port = k.port().to_string();
    let root = proc_root(&pod_cgroup());
    let t = Instant::now();
    let o = attest(
        root.path(),
        &[
            "--kubelet-read-only-port",
            &port,
            "--disable-container-selectors",
            "--kubelet-max-poll-attempts",
            "50",
        ],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    // One fetch: the pod was known at once, nothing was waited for.
    assert_eq!(k.requests(), 1);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let v = json(&o);
    assert_eq!(v["podUid"], UID);
    assert_eq!(v["containerId"], CID);
    let sel: Vec<&str> = v["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want: Vec<&str> = SELECTORS
        .iter()
        .copied()
        .filter(|s| !s.starts_with("k8s:container-"))
        .collect();
    assert_eq!(sel, want);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    // Without the option: polled to the end, exit 6, the reason named (the old behaviour).
    let before = k.requests();
    let o = attest(root.path(), &["--kubelet-read-only-port", &port]);
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    assert_eq!(k.requests() - before, 3);
    assert!(stderr(&o).contains("is not among pod"), "{}", stderr(&o));
    // conmon stays refused with the option: it is the runtime's monitor, not the pod's workload.
    let u = UID.replace('-', "_");
    let root = proc_root(&format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{CID}.scope\n"
    ));
    let o = attest(
        root.path(),
        &[
            "--kubelet-read-only-port",
            &port,
            "--disable-container-selectors",
        ],
    );
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("conmon"), "{}", stderr(&o));
}

/// The strict DNS-1123 check applies where the node name is the kubelet's host name: a host name
/// such as `Build_Host` is a configuration error there (exit 3), and fine with --kubelet-url.
#[test]
fn attest_node_name_must_be_a_kubernetes_node_name_to_reach_the_kubelet() {
    let k = TestKubelet::start(Tls::Plain, behaviour());
    let port = k.port().to_string();
    let root = proc_root(&pod_cgroup());
    let o = attest(
        root.path(),
        &[
            "--node-name",
            "Build_Host",
            "--kubelet-read-only-port",
            &port,
        ],
    );
    assert_eq!(o.status.code(), Some(3), "stderr: {}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "--node-name \"Build_Host\" is not a valid Kubernetes node name (DNS-1123 subdomain)"
        ),
        "{e}"
    );
    assert!(e.contains("--kubelet-url"), "{e}");
    assert_eq!(k.requests(), 0, "the kubelet was contacted");
    // The kubelet's address given: the node name is not its host, and the answer comes.
    let url = format!("http://127.0.0.1:{port}");
    let o = attest(
        root.path(),
        &["--node-name", "Build_Host", "--kubelet-url", &url],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    // A process outside a pod never reaches the kubelet: no check, no error.
    let root = proc_root("0::/system.slice/sshd.service\n");
    let o = run(agent()
        .args(["attest", "--pid", &PID.to_string(), "--proc-root"])
        .arg(root.path())
        .env("LINUXGUARD_NODE_NAME", "Build_Host"));
    assert_eq!(o.status.code(), Some(6), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("not in a Kubernetes pod"),
        "{}",
        stderr(&o)
    );
}
