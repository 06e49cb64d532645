//! Configuration → each component's typed options. Commands call these; the components below
//! take only their own options, never the whole [`Config`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::attest::{attestor, kubelet};
use crate::config::{Config, Key};
use crate::error::Result;
use crate::identity::workload;
use crate::pipeline;
use crate::sensor;

/// `--proc-root` (default `/proc`).
pub fn proc_root(cfg: &Config) -> PathBuf {
    cfg.path(Key::ProcRoot)
        .unwrap_or_else(|| PathBuf::from("/proc"))
}

/// The pipeline: the sensor's knobs and where the process table is seeded from.
pub fn pipeline(cfg: &Config) -> pipeline::Options {
    let ring_buffer_mb = cfg.num(Key::RingBufferMb);
    pipeline::Options {
        proc_root: proc_root(cfg),
        sensor: sensor::Options {
            ring_buffer_mb,
            own_tgid: std::process::id(),
            // An eighth of the ring: batches under load, far from filling it.
            wakeup_bytes: (ring_buffer_mb << 20) / 8,
            compat_syscalls: cfg.flag(Key::CompatSyscalls),
            watch_read: sensor::watch::resolve(
                cfg.get(Key::WatchRead).unwrap_or("default"),
                sensor::watch::DEFAULT_READ,
            ),
            watch_write: sensor::watch::resolve(
                cfg.get(Key::WatchWrite).unwrap_or("default"),
                sensor::watch::DEFAULT_WRITE,
            ),
        },
    }
}

/// The attestor: the kubelet client only in Kubernetes (a node name that can be a Kubernetes
/// node name, a kubelet URL or read-only port given, or a service-account token present).
/// Outside Kubernetes the node name is a host name (`Build_Host`) and no kubelet is looked for.
pub fn attestor(cfg: &Config) -> attestor::Options {
    let in_k8s = cfg.get(Key::NodeName).is_some_and(workload::is_node_name)
        || cfg.is_set(Key::KubeletUrl)
        || cfg.is_set(Key::KubeletReadOnlyPort)
        || cfg.path(Key::KubeletTokenPath).is_some_and(|p| p.exists());
    let kubelet = match in_k8s.then(|| kubelet(cfg)) {
        Some(Ok(o)) => Some(o),
        Some(Err(e)) => {
            log::warn!("events will carry no pod fields: kubelet client not set up: {e}");
            None
        }
        None => None,
    };
    attestor::Options {
        proc_root: proc_root(cfg),
        kubelet,
        container_selectors: !cfg.flag(Key::DisableContainerSelectors),
    }
}

/// `--socket` and `--socket-mode` (default 0660).
pub fn socket(cfg: &Config) -> Option<(PathBuf, u32)> {
    let path = cfg.path(Key::Socket)?;
    let mode = cfg
        .get(Key::SocketMode)
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o660);
    Some((path, mode))
}

/// The kubelet client, configured like SPIRE's k8s workload attestor. Without --kubelet-url the
/// node name is the kubelet's host name, so there (and only there) it must be a Kubernetes node
/// name (DNS-1123); elsewhere it may be any host name (`workload::validate_host_name`).
pub fn kubelet(cfg: &Config) -> Result<kubelet::Options> {
    let node = cfg.get(Key::NodeName).map(str::to_string);
    if let (Some(n), None) = (&node, cfg.get(Key::KubeletUrl)) {
        workload::validate_node_name(n, &cfg.origin_of(Key::NodeName))?;
    }
    let read_only = cfg.get(Key::KubeletReadOnlyPort);
    let secure_port = cfg.num(Key::KubeletSecurePort).clamp(1, 65_535) as u16;
    let (base, connect_to) = if let Some(url) = cfg.get(Key::KubeletUrl) {
        (url.trim_end_matches('/').to_string(), None)
    } else if let Some(port) = read_only {
        let host = node.clone().unwrap_or_else(|| "127.0.0.1".into());
        (format!("http://{host}:{port}"), None)
    } else if let Some(host) = node.clone() {
        (format!("https://{host}:{secure_port}"), None)
    } else {
        // SPIRE: no node name → 127.0.0.1, certificate checked against the host name.
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), secure_port);
        match nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        {
            Some(h) => (format!("https://{h}:{secure_port}"), Some(local)),
            None => (format!("https://127.0.0.1:{secure_port}"), None),
        }
    };
    let auth = if let (Some(c), Some(k)) = (cfg.path(Key::KubeletCert), cfg.path(Key::KubeletKey)) {
        kubelet::Auth::Cert(c, k)
    } else if cfg.flag(Key::KubeletAnonymous) {
        kubelet::Auth::Anonymous
    } else {
        match cfg.path(Key::KubeletTokenPath) {
            Some(p) => kubelet::Auth::Token(p),
            None => kubelet::Auth::Anonymous,
        }
    };
    let skip_verify = cfg.flag(Key::SkipKubeletVerification);
    Ok(kubelet::Options {
        base,
        connect_to,
        ca: if skip_verify {
            None
        } else {
            cfg.path(Key::KubeletCa)
        },
        skip_verify,
        auth,
        min_interval: Duration::from_millis(cfg.num(Key::KubeletPollInterval).max(10)),
        max_attempts: cfg.num(Key::KubeletMaxPollAttempts).clamp(1, 1000) as u32,
        timeout: kubelet::REQUEST_TIMEOUT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ATTEST, resolve};
    use crate::secret::Secrets;

    fn opts(flags: Vec<(Key, Option<String>)>) -> kubelet::Options {
        let c = resolve(ATTEST, &flags, &|_| None, Secrets::default()).unwrap();
        kubelet(&c).unwrap()
    }

    /// The node name is the kubelet's host name unless --kubelet-url is given: only then must it
    /// be a DNS-1123 name.
    #[test]
    fn node_name_as_kubelet_host_must_be_dns1123() {
        let c = resolve(
            ATTEST,
            &vec![(Key::NodeName, Some("Build_Host".into()))],
            &|_| None,
            Secrets::default(),
        )
        .unwrap();
        let e = kubelet(&c).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Config);
        assert!(e.to_string().contains("DNS-1123"), "{e}");
        let o = opts(vec![
            (Key::NodeName, Some("Build_Host".into())),
            (Key::KubeletUrl, Some("https://10.0.0.1:10250".into())),
        ]);
        assert_eq!(o.base, "https://10.0.0.1:10250");
    }

    #[test]
    fn kubelet_base_url_choices() {
        let o = opts(vec![(Key::NodeName, Some("worker-1".into()))]);
        assert_eq!(o.base, "https://worker-1:10250");
        assert!(o.connect_to.is_none());
        assert_eq!(
            o.auth,
            kubelet::Auth::Token("/run/secrets/kubernetes.io/serviceaccount/token".into())
        );
        let o = opts(vec![(Key::KubeletReadOnlyPort, Some("10255".into()))]);
        assert_eq!(o.base, "http://127.0.0.1:10255");
        let o = opts(vec![]);
        assert_eq!(o.connect_to, Some("127.0.0.1:10250".parse().unwrap()));
        assert!(o.base.starts_with("https://") && o.base.ends_with(":10250"));
        let o = opts(vec![
            (Key::KubeletUrl, Some("https://10.0.0.1:1234/".into())),
            (Key::SkipKubeletVerification, None),
            (Key::KubeletAnonymous, None),
        ]);
        assert_eq!(o.base, "https://10.0.0.1:1234");
        assert!(o.skip_verify && o.ca.is_none());
        assert_eq!(o.auth, kubelet::Auth::Anonymous);
        assert_eq!(o.min_interval, Duration::from_millis(500));
        assert_eq!(o.max_attempts, 60);
    }
}
