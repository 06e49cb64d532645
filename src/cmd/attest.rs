//! `attest --pid PID` (blocking, with the kubelet's retry budget) and `attest --self` (asks the
//! running agent over its socket).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::attest::attestor::{Attestation, fill_from_list, placement_of};
use crate::attest::kubelet::Kubelet;
use crate::cli::Args;
use crate::cmd::options;
use crate::config::{Config, Key};
use crate::error::{Error, Kind, Result};
use crate::serve::socket;

/// `attest --pid PID` (blocking, with the kubelet's retry budget) or `attest --self`.
pub fn run(cfg: Config, args: &Args) -> Result<()> {
    if args.attest_self {
        let path = cfg
            .path(Key::Socket)
            .expect("invariant: --socket has a default");
        // The agent answers from its cached pod list; a new pod may need a refresh or two.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match socket::request(
                &path,
                socket::Request::AttestSelf,
                Duration::from_secs(5),
                crate::cmd::status::agent_uid(&cfg),
            ) {
                Ok(v) => {
                    println!("{}", crate::cli::printable_json(&v.to_string()));
                    return Ok(());
                }
                Err(e) if e.to_string().contains("retry shortly") && Instant::now() < deadline => {
                    log::debug!("{e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let pid = args
        .pid
        .ok_or_else(|| Error::usage("`attest` takes --pid PID or --self"))?;
    let proc_root = cfg
        .path(Key::ProcRoot)
        .unwrap_or_else(|| PathBuf::from("/proc"));
    let a = attest_pid_blocking(&cfg, &proc_root, pid);
    match a {
        Ok(a) => {
            println!("{}", a.to_line());
            match a.problem {
                Some(p) => Err(Error::new(Kind::Findings, format!("process {pid}: {p}"))),
                None => Ok(()),
            }
        }
        Err(e) => {
            if e.kind() == Kind::Findings {
                println!("{}", Attestation::default().to_line());
            }
            Err(e)
        }
    }
}

fn attest_pid_blocking(cfg: &Config, proc_root: &Path, pid: u32) -> Result<Attestation> {
    let placement = placement_of(proc_root, pid, true)?;
    let mut a = Attestation {
        placement,
        ..Default::default()
    };
    if a.placement.pod_uid.is_none() {
        a.problem = Some(match (&a.placement.container_id, a.runtime()) {
            (Some(id), rt) => format!(
                "not in a Kubernetes pod (container {id}, runtime {})",
                rt.unwrap_or("unknown")
            ),
            (None, _) => "not in a Kubernetes pod or a container".into(),
        });
        return Ok(a);
    }
    // A node name that cannot be the kubelet's host name is a configuration error (exit 3).
    let opts = options::kubelet(cfg)?;
    let kube = match Kubelet::new(opts) {
        Ok(k) => k,
        Err(e) => {
            a.problem = Some(format!("the kubelet cannot answer: {e}"));
            return Ok(a);
        }
    };
    let container_selectors = !cfg.flag(Key::DisableContainerSelectors);
    let attempts = kube.options().max_attempts;
    let interval = kube.options().min_interval;
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(interval);
        }
        match kube.refresh() {
            Ok(list) => {
                // Answered: the pod (and, with container selectors, the container) is listed;
                // conmon is refused at once.
                fill_from_list(&mut a, &list, container_selectors);
                if a.problem.is_none() || a.placement.conmon {
                    break;
                }
            }
            Err(e) => a.problem = Some(format!("the kubelet cannot answer: {e}")),
        }
    }
    Ok(a)
}
