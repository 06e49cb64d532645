//! Configuration → each component's typed options. Commands call these; the components below
//! take only their own options, never the whole [`Config`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::agent;
use crate::attest::{attestor, kubelet};
use crate::config::{Config, Key, SETTINGS, Ty};
use crate::error::Result;
use crate::events::redact;
use crate::identity::workload;
use crate::output::{self, queue::Limits};
use crate::pipeline;
use crate::rules;
use crate::sensor;
use crate::serve::metrics;

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
        redact: redaction(cfg),
        rules: rules(cfg),
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
            watch_connect: sensor::watch::resolve(
                cfg.get(Key::WatchConnect).unwrap_or("default"),
                sensor::watch::DEFAULT_CONNECT,
            ),
            exclude: sensor::exclude::Options {
                items: cfg
                    .get(Key::Exclude)
                    .and_then(|v| sensor::exclude::parse_list(v).ok())
                    .unwrap_or_default(),
                // Rule files may gain `exclude:` items at SIGHUP.
                reloadable: cfg.is_set(Key::Rules),
                proc_root: proc_root(cfg),
            },
        },
    }
}

/// The rules: the compiled-in defaults unless `--no-default-rules`, then each `--rules` file.
pub fn rules(cfg: &Config) -> rules::Options {
    rules::Options {
        defaults: !cfg.flag(Key::NoDefaultRules),
        files: cfg.paths(Key::Rules),
    }
}

/// What exec events redact: `--redact-flags` for every process; for this agent's own
/// executable also its own secret flags (every setting of type secret, so a secret flag added
/// later is covered), and `NAME=value` of their variables for every process.
pub fn redaction(cfg: &Config) -> redact::Options {
    let secrets = || SETTINGS.iter().filter(|s| matches!(s.ty, Ty::Secret));
    redact::Options {
        flags: redact::parse_list(cfg.get(Key::RedactFlags).unwrap_or(redact::DEFAULT_FLAGS)),
        own_flags: secrets().map(|s| s.flag.to_string()).collect(),
        own_env: secrets().map(|s| format!("{}=", s.env)).collect(),
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

/// `--output` and each output's settings (the list was validated by the configuration);
/// `workload` is the derived workload id (an OTLP resource attribute).
pub fn outputs(cfg: &Config, workload: &str) -> output::Options {
    let kinds = output::parse_list(cfg.get(Key::Output).unwrap_or("backend"))
        .unwrap_or_else(|_| vec![output::Kind::Backend]);
    let file = cfg.path(Key::FilePath).map(|path| output::file::Options {
        path,
        max_bytes: cfg.num(Key::FileMaxMb).max(1) << 20,
        keep: cfg.num(Key::FileKeep).clamp(1, 1000) as u32,
    });
    let syslog = cfg
        .get(Key::SyslogAddr)
        .and_then(|v| output::syslog::parse_target(v).ok())
        .map(|target| output::syslog::Options {
            target,
            facility: output::syslog::FACILITIES
                .iter()
                .find(|(n, _)| Some(*n) == cfg.get(Key::SyslogFacility))
                .map_or(16, |(_, code)| *code),
            hostname: hostname(),
        });
    let otlp = cfg.get(Key::OtlpEndpoint).map(|e| output::otlp::Options {
        url: output::otlp::logs_url(e),
        headers_file: cfg.path(Key::OtlpHeadersFile),
        ca: cfg.path(Key::OtlpCa),
        client: cfg.path(Key::OtlpCert).zip(cfg.path(Key::OtlpKey)),
        resource: resource(cfg, workload),
    });
    output::Options {
        kinds,
        limits: Limits {
            queue_bytes: (cfg.num(Key::QueueMb).max(1) as usize) << 20,
            batch_events: cfg.num(Key::BatchMaxEvents).max(1) as usize,
            batch_bytes: cfg.num(Key::BatchMaxBytes).max(1024) as usize,
            batch_age: Duration::from_millis(cfg.num(Key::BatchMaxAgeMs).max(1)),
        },
        file,
        syslog,
        otlp,
    }
}

/// OTLP resource attributes: the host, the service, the workload id, and in Kubernetes (the
/// Downward API's node name and pod UID both set) the node and pod.
fn resource(cfg: &Config, workload: &str) -> Vec<(String, String)> {
    let mut r = vec![
        ("host.name".to_string(), hostname()),
        ("service.name".to_string(), "linuxguard-agent".to_string()),
        (
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("service.instance.id".to_string(), workload.to_string()),
        ("linuxguard.workload.id".to_string(), workload.to_string()),
    ];
    if let (Some(node), Some(pod)) = (cfg.get(Key::NodeName), cfg.get(Key::PodUid)) {
        r.push(("k8s.node.name".to_string(), node.to_string()));
        r.push(("k8s.pod.uid".to_string(), pod.to_string()));
    }
    r
}

/// This host's name (`unknown` when it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `start`'s loop: its components' options, the outputs, the metrics listener, the shutdown
/// grace and the stats-event interval.
pub fn agent(cfg: &Config, workload: &str) -> agent::Options {
    agent::Options {
        pipeline: pipeline(cfg),
        attestor: attestor(cfg),
        socket: socket(cfg),
        outputs: outputs(cfg, workload),
        metrics: cfg.get(Key::MetricsAddr).map(|addr| metrics::Options {
            addr: addr.to_string(),
            allow_remote: cfg.flag(Key::MetricsAllowRemote),
        }),
        grace: Duration::from_secs(cfg.num(Key::ShutdownGrace)),
        stats_every: match cfg.num(Key::StatsInterval) {
            0 => None,
            n => Some(Duration::from_secs(n)),
        },
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
