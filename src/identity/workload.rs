//! Workload identity: `sha256(--workload-id)`, else `sha256(node + ":" + pod uid)`, else a hard error.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How the workload id was derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// hex(sha256(--workload-id value)).
    WorkloadIdFlag,
    /// hex(sha256(LINUXGUARD_NODE_NAME + ":" + LINUXGUARD_POD_UID)).
    DownwardApi,
}

impl Derivation {
    pub fn describe(self) -> &'static str {
        match self {
            Derivation::WorkloadIdFlag => "sha256(--workload-id)",
            Derivation::DownwardApi => "sha256(LINUXGUARD_NODE_NAME + \":\" + LINUXGUARD_POD_UID)",
        }
    }
}

/// The derived workload identity: 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub hex: String,
    pub derivation: Derivation,
}

/// The Downward API block users add to their pod spec.
pub const DOWNWARD_API_BLOCK: &str = "    env:
    - name: LINUXGUARD_NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: LINUXGUARD_POD_UID
      valueFrom: {fieldRef: {fieldPath: metadata.uid}}";

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Derives the workload id. Inputs are already-trimmed values; `None` means unset.
pub fn derive(
    workload_id: Option<&str>,
    node_name: Option<&str>,
    pod_uid: Option<&str>,
) -> Result<WorkloadId> {
    if let Some(v) = workload_id {
        validate_workload_id(v)?;
        return Ok(WorkloadId {
            hex: sha256_hex(v.as_bytes()),
            derivation: Derivation::WorkloadIdFlag,
        });
    }
    match (node_name, pod_uid) {
        (Some(node), Some(uid)) => {
            validate_node_name(node)?;
            validate_pod_uid(uid)?;
            Ok(WorkloadId {
                hex: sha256_hex(format!("{node}:{uid}").as_bytes()),
                derivation: Derivation::DownwardApi,
            })
        }
        (node, uid) => Err(missing_identity(node.is_some(), uid.is_some())),
    }
}

fn missing_identity(node: bool, uid: bool) -> Error {
    let state = |present: bool| if present { "present" } else { "missing" };
    let what = match (node, uid) {
        (true, false) => "LINUXGUARD_POD_UID is missing (LINUXGUARD_NODE_NAME is set): a node-only identity would be shared by every pod on the node".to_string(),
        (false, true) => "LINUXGUARD_NODE_NAME is missing (LINUXGUARD_POD_UID is set)".to_string(),
        _ => "no workload identity input is set".to_string(),
    };
    Error::config(format!(
        "cannot derive the workload id: {what}. Inputs: --workload-id: missing; \
         LINUXGUARD_NODE_NAME (from spec.nodeName): {}; LINUXGUARD_POD_UID (from metadata.uid): {}. \
         Outside Kubernetes pass --workload-id <hex> (for example $(cat /etc/machine-id)); \
         in Kubernetes add the Downward API env block to the agent container:\n{DOWNWARD_API_BLOCK}",
        state(node),
        state(uid)
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

/// A Kubernetes node name is a DNS-1123 subdomain.
pub fn validate_node_name(v: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "LINUXGUARD_NODE_NAME {v:?} is not a valid Kubernetes node name (DNS-1123 subdomain): {why}; set it from spec.nodeName with the Downward API"
        )))
    };
    if v.is_empty() || v.len() > 253 {
        return bad("it must be 1 to 253 characters");
    }
    for label in v.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only lower-case letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("each part must start and end with a letter or digit");
        }
    }
    Ok(())
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

    #[test]
    fn workload_id_flag_is_hashed() {
        let id = derive(Some("abc123"), None, None).unwrap();
        assert_eq!(id.hex, ABC123);
        assert_eq!(id.derivation, Derivation::WorkloadIdFlag);
        assert_eq!(derive(Some("deadbeef"), None, None).unwrap().hex, DEADBEEF);
    }

    #[test]
    fn downward_api_seed_example() {
        let id = derive(None, Some(NODE), Some(UID)).unwrap();
        assert_eq!(id.hex, SEED_NODE_POD);
        assert_eq!(id.derivation, Derivation::DownwardApi);
    }

    #[test]
    fn flag_wins_over_downward_api() {
        assert_eq!(
            derive(Some("abc123"), Some(NODE), Some(UID)).unwrap().hex,
            ABC123
        );
    }

    #[test]
    fn nothing_set_names_all_three_inputs() {
        let e = derive(None, None, None).unwrap_err().to_string();
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
        let e = derive(None, Some(NODE), None).unwrap_err().to_string();
        assert!(e.contains("LINUXGUARD_POD_UID is missing"), "{e}");
        let e = derive(None, None, Some(UID)).unwrap_err().to_string();
        assert!(e.contains("LINUXGUARD_NODE_NAME is missing"), "{e}");
    }

    #[test]
    fn pod_name_gets_metadata_uid_hint() {
        let e = derive(None, Some(NODE), Some("nginx-7c5ddbdf54-x2x9q"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this looks like metadata.name; use metadata.uid"),
            "{e}"
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert!(derive(Some("not-hex!"), None, None).is_err());
        assert!(derive(Some(""), None, None).is_err());
        assert!(derive(None, Some("Worker_3"), Some(UID)).is_err());
        assert!(derive(None, Some("-worker"), Some(UID)).is_err());
        assert!(derive(None, Some(&"a".repeat(254)), Some(UID)).is_err());
        assert!(derive(None, Some("a.b.c-d"), Some(UID)).is_ok());
    }
}
