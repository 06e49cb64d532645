//! Workload identity: `sha256(--workload-id)`, else `sha256(node + ":" + pod uid)`, else a hard error.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How the workload id was derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// hex(sha256(--workload-id value)).
    WorkloadIdFlag,
    /// hex(sha256(node name + ":" + LINUXGUARD_POD_UID)).
    DownwardApi,
}

/// The derived workload identity: 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub hex: String,
    pub derivation: Derivation,
    /// The variable the node name is read from (`--node-name-env`), for messages.
    pub node_var: String,
}

impl WorkloadId {
    /// `sha256(--workload-id)` or `sha256(<node-name variable> + ":" + LINUXGUARD_POD_UID)`.
    pub fn describe(&self) -> String {
        match self.derivation {
            Derivation::WorkloadIdFlag => "sha256(--workload-id)".into(),
            Derivation::DownwardApi => {
                format!("sha256({} + \":\" + LINUXGUARD_POD_UID)", self.node_var)
            }
        }
    }
}

/// The Downward API block users add to their pod spec, the node name in `node_var`.
pub fn downward_api_block(node_var: &str) -> String {
    format!(
        "    env:
    - name: {node_var}
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    - name: LINUXGUARD_POD_UID
      valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}"
    )
}

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Derives the workload id. Inputs are already-trimmed values; `None` means unset. `node_var`
/// is the variable the node name is read from (`--node-name-env`). The node name is hashed
/// exactly as given: a host name keeps its case and its `_`.
pub fn derive(
    workload_id: Option<&str>,
    node_name: Option<&str>,
    pod_uid: Option<&str>,
    node_var: &str,
) -> Result<WorkloadId> {
    if let Some(v) = workload_id {
        validate_workload_id(v)?;
        return Ok(WorkloadId {
            hex: sha256_hex(v.as_bytes()),
            derivation: Derivation::WorkloadIdFlag,
            node_var: node_var.to_string(),
        });
    }
    match (node_name, pod_uid) {
        (Some(node), Some(uid)) => {
            validate_host_name(node, node_var)?;
            validate_pod_uid(uid)?;
            Ok(WorkloadId {
                hex: sha256_hex(format!("{node}:{uid}").as_bytes()),
                derivation: Derivation::DownwardApi,
                node_var: node_var.to_string(),
            })
        }
        (node, uid) => Err(missing_identity(node.is_some(), uid.is_some(), node_var)),
    }
}

fn missing_identity(node: bool, uid: bool, node_var: &str) -> Error {
    let state = |present: bool| if present { "present" } else { "missing" };
    let what = match (node, uid) {
        (true, false) => format!(
            "LINUXGUARD_POD_UID is missing ({node_var} is set): a node-only identity would be shared by every pod on the node"
        ),
        (false, true) => format!("{node_var} is missing (LINUXGUARD_POD_UID is set)"),
        _ => "no workload identity input is set".to_string(),
    };
    Error::config(format!(
        "cannot derive the workload id: {what}. Inputs: --workload-id: missing; \
         {node_var} (from spec.nodeName): {}; LINUXGUARD_POD_UID (from metadata.uid): {}. \
         Outside Kubernetes pass --workload-id <hex> (for example $(cat /etc/machine-id)); \
         in Kubernetes add the Downward API env block to the agent container:\n{}",
        state(node),
        state(uid),
        downward_api_block(node_var)
    ))
}

pub fn validate_workload_id(v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 256 {
        return Err(Error::config(
            "--workload-id must be 1 to 256 hexadecimal characters",
        ));
    }
    if let Some(c) = v.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(Error::config(format!(
            "--workload-id must be hexadecimal (0-9, a-f); found {c:?}. Use a stable hex id such as $(cat /etc/machine-id)"
        )));
    }
    Ok(())
}

/// The node name's rule wherever it is read: outside Kubernetes it is a host name
/// (`-e LINUXGUARD_NODE_NAME=$(hostname)`), so upper case, `_` and non-ASCII letters are fine.
/// Refused: empty or over 253 bytes (a full DNS name; Linux host names are at most 64), control
/// characters, whitespace, and `:` (it separates the node name from the pod UID in the hashed
/// `node:uid`). `origin` names where the value came from (`--node-name` or the variable).
pub fn validate_host_name(v: &str, origin: &str) -> Result<()> {
    let why = if v.is_empty() || v.len() > 253 {
        Some("it must be 1 to 253 bytes")
    } else if v.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if v.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if v.contains(':') {
        Some("it contains ':', which separates the node name from the pod UID in the workload id")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::config(format!(
            "{origin} {v:?} is not a host name: {why}; in Kubernetes set it from spec.nodeName with the Downward API, elsewhere use the host name (`$(hostname)`)"
        ))),
        None => Ok(()),
    }
}

/// Whether `v` is a Kubernetes node name (a DNS-1123 subdomain).
pub fn is_node_name(v: &str) -> bool {
    dns1123_problem(v).is_none()
}

fn dns1123_problem(v: &str) -> Option<&'static str> {
    if v.is_empty() || v.len() > 253 {
        return Some("it must be 1 to 253 characters");
    }
    for label in v.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some("only lower-case letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("each part must start and end with a letter or digit");
        }
    }
    None
}

/// Where the node name is the kubelet's host name it must be a Kubernetes node name (a DNS-1123
/// subdomain), the strict check (`cmd::options::kubelet`).
pub fn validate_node_name(v: &str, origin: &str) -> Result<()> {
    match dns1123_problem(v) {
        Some(why) => Err(Error::config(format!(
            "{origin} {v:?} is not a valid Kubernetes node name (DNS-1123 subdomain): {why}; the kubelet is reached by node name: \
             set it from spec.nodeName with the Downward API, or give the kubelet's address with --kubelet-url"
        ))),
        None => Ok(()),
    }
}

fn is_uuid(v: &str) -> bool {
    let groups: Vec<&str> = v.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A pod UID is a UUID; a pod name in its place gets a hint.
pub fn validate_pod_uid(v: &str) -> Result<()> {
    if is_uuid(v) {
        return Ok(());
    }
    let looks_like_name = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let hint = if looks_like_name {
        "; this looks like metadata.name; use metadata.uid"
    } else {
        "; set it from metadata.uid with the Downward API"
    };
    Err(Error::config(format!(
        "LINUXGUARD_POD_UID {v:?} is not a UUID (8-4-4-4-12 hex digits){hint}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with `printf '<input>' | sha256sum`.
    const ABC123: &str = "6ca13d52ca70c883e0f0bb101e425a89e8624de51db2d2392593af6a84118090";
    const SEED_NODE_POD: &str = "737a0950fe7fdf90053876c0b3896289606b3bbd4934b634614f4c74f351b1b1";
    const DEADBEEF: &str = "2baf1f40105d9501fe319a8ec463fdf4325a2a5df445adf3f572f626253678c9";
    const NODE: &str = "worker-node-3";
    const UID: &str = "7b8f9c1d-3e4a-4b5c-9d6e-1f2a3b4c5d6e";
    const NV: &str = "LINUXGUARD_NODE_NAME";
    /// `printf 'Build_Host:7b8f9c1d-3e4a-4b5c-9d6e-1f2a3b4c5d6e' | sha256sum`.
    const BUILD_HOST_SEED: &str =
        "aa9ff0c7976533a3385f7b74f77f2704178de1d5d6473c873f4dc326526edb75";

    #[test]
    fn workload_id_flag_is_hashed() {
        let id = derive(Some("abc123"), None, None, NV).unwrap();
        assert_eq!(id.hex, ABC123);
        assert_eq!(id.derivation, Derivation::WorkloadIdFlag);
        assert_eq!(
            derive(Some("deadbeef"), None, None, NV).unwrap().hex,
            DEADBEEF
        );
    }

    #[test]
    fn downward_api_seed_example() {
        let id = derive(None, Some(NODE), Some(UID), NV).unwrap();
        assert_eq!(id.hex, SEED_NODE_POD);
        assert_eq!(id.derivation, Derivation::DownwardApi);
    }

    #[test]
    fn flag_wins_over_downward_api() {
        assert_eq!(
            derive(Some("abc123"), Some(NODE), Some(UID), NV)
                .unwrap()
                .hex,
            ABC123
        );
    }

    #[test]
    fn nothing_set_names_all_three_inputs() {
        let e = derive(None, None, None, NV).unwrap_err().to_string();
        for needle in [
            "--workload-id",
            "LINUXGUARD_NODE_NAME",
            "LINUXGUARD_POD_UID",
            "spec.nodeName",
            "metadata.uid",
            "fieldRef",
        ] {
            assert!(e.contains(needle), "{needle} missing from: {e}");
        }
    }

    #[test]
    fn one_env_var_says_which_is_missing() {
        let e = derive(None, Some(NODE), None, NV).unwrap_err().to_string();
        assert!(e.contains("LINUXGUARD_POD_UID is missing"), "{e}");
        let e = derive(None, None, Some(UID), NV).unwrap_err().to_string();
        assert!(e.contains("LINUXGUARD_NODE_NAME is missing"), "{e}");
    }

    #[test]
    fn pod_name_gets_metadata_uid_hint() {
        let e = derive(None, Some(NODE), Some("nginx-7c5ddbdf54-x2x9q"), NV)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this looks like metadata.name; use metadata.uid"),
            "{e}"
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert!(derive(Some("not-hex!"), None, None, NV).is_err());
        assert!(derive(Some(""), None, None, NV).is_err());
        for bad in ["", "a b", "a\tb", "a\u{0}b", "a\u{85}b", "a:b"] {
            assert!(derive(None, Some(bad), Some(UID), NV).is_err(), "{bad:?}");
        }
        assert!(derive(None, Some(&"a".repeat(254)), Some(UID), NV).is_err());
        assert!(derive(None, Some(&"a".repeat(253)), Some(UID), NV).is_ok());
        assert!(derive(None, Some("a.b.c-d"), Some(UID), NV).is_ok());
    }

    #[test]
    fn host_names_are_hashed_exactly_as_given() {
        let id = derive(None, Some("Build_Host"), Some(UID), NV).unwrap();
        assert_eq!(id.hex, BUILD_HOST_SEED);
        assert_eq!(
            id.describe(),
            "sha256(LINUXGUARD_NODE_NAME + \":\" + LINUXGUARD_POD_UID)"
        );
        for ok in ["EDGE-07", "-worker", "Worker_3", "büro-pc", "host/1"] {
            assert!(derive(None, Some(ok), Some(UID), NV).is_ok(), "{ok}");
        }
        let id = derive(None, Some("EDGE-07"), Some(UID), "MY_NODE_NAME").unwrap();
        assert_eq!(
            id.describe(),
            "sha256(MY_NODE_NAME + \":\" + LINUXGUARD_POD_UID)"
        );
        let e = derive(None, None, Some(UID), "MY_NODE_NAME")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MY_NODE_NAME is missing"), "{e}");
        assert!(e.contains("- name: MY_NODE_NAME"), "{e}");
    }

    #[test]
    fn the_kubelet_needs_a_kubernetes_node_name() {
        for bad in ["Worker_3", "-worker", "EDGE-07", "a..b"] {
            assert!(!is_node_name(bad), "{bad}");
            let e = validate_node_name(bad, "--node-name")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "--node-name {bad:?} is not a valid Kubernetes node name (DNS-1123"
                )),
                "{e}"
            );
            assert!(e.contains("--kubelet-url"), "{e}");
        }
        assert!(is_node_name("worker-node-3.example"));
        assert!(!is_node_name(&"a".repeat(254)));
    }
}
