//! The kubelet's pod list (`GET /pods`): the fields attestation needs, parsed with serde, and
//! the lookups by pod UID and container ID.
//!
//! Depends only on serde/serde_json so the fuzz crate can include this file with `#[path]`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub status: Status,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnerRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub os: Option<PodOs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodOs {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// `kubectl debug` containers: a shell an operator (or intruder) runs inside the pod.
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    /// The image as written (`docker.io/library/nginx:1.25`).
    #[serde(default)]
    pub image: String,
    /// The resolved image (`docker.io/library/nginx@sha256:...`).
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; empty until the container starts.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

impl ContainerStatus {
    /// (scheme, bare id) of `containerID`.
    pub fn split_id(&self) -> Option<(&str, &str)> {
        self.container_id.split_once("://")
    }
}

/// Parses a pod list, dropping Windows pods (`spec.os.name: windows`).
pub fn parse(body: &[u8]) -> Result<PodList, String> {
    let mut list: PodList = serde_json::from_slice(body)
        .map_err(|e| format!("the kubelet's pod list is not valid JSON: {e}"))?;
    list.items.retain(|p| {
        p.spec
            .os
            .as_ref()
            .is_none_or(|os| !os.name.eq_ignore_ascii_case("windows"))
    });
    Ok(list)
}

impl PodList {
    pub fn by_uid(&self, uid: &str) -> Option<&Pod> {
        self.items.iter().find(|p| p.metadata.uid == uid)
    }
}

impl Pod {
    /// The status of the container with this bare ID, in `containerStatuses`, then
    /// `initContainerStatuses`, then `ephemeralContainerStatuses`, with whether it is an init
    /// container.
    pub fn container(&self, id: &str) -> Option<(&ContainerStatus, bool)> {
        let hit = |s: &&ContainerStatus| s.split_id().is_some_and(|(_, bare)| bare == id);
        let st = &self.status;
        st.container_statuses
            .iter()
            .find(hit)
            .map(|s| (s, false))
            .or_else(|| {
                st.init_container_statuses
                    .iter()
                    .find(hit)
                    .map(|s| (s, true))
            })
            .or_else(|| {
                st.ephemeral_container_statuses
                    .iter()
                    .find(hit)
                    .map(|s| (s, false))
            })
    }

    /// The owner to report: the controller if one is marked, else the first reference.
    pub fn owner(&self) -> Option<&OwnerRef> {
        let refs = &self.metadata.owner_references;
        refs.iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| refs.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
      {"metadata":{"name":"web-7d4b9c","namespace":"shop","uid":"2c48913c-b29f-11e7-9350-020968147796",
        "labels":{"app":"web"},"ownerReferences":[{"kind":"ReplicaSet","name":"web-7d4b","uid":"r-1","controller":true}]},
       "spec":{"serviceAccountName":"web-sa","nodeName":"worker-1","containers":[{"name":"nginx","image":"nginx:1.25"}]},
       "status":{"phase":"Running","containerStatuses":[{"name":"nginx","image":"docker.io/library/nginx:1.25",
          "imageID":"docker.io/library/nginx@sha256:aa","containerID":"containerd://abc","ready":true}],
        "initContainerStatuses":[{"name":"init","image":"busybox:1","imageID":"busybox@sha256:bb","containerID":"cri-o://def"}],
        "ephemeralContainerStatuses":[{"name":"debugger-x7k","image":"busybox:1","containerID":"containerd://e1"}]}},
      {"metadata":{"name":"win","uid":"w"},"spec":{"os":{"name":"windows"}}},
      {"metadata":{"name":"pending","uid":"p"},"status":{"containerStatuses":[{"name":"c","image":"x"}]}}
    ]}"#;

    #[test]
    fn parses_and_drops_windows() {
        let l = parse(LIST.as_bytes()).unwrap();
        assert_eq!(l.items.len(), 2);
        assert!(l.by_uid("w").is_none());
        let p = l.by_uid("2c48913c-b29f-11e7-9350-020968147796").unwrap();
        assert_eq!(p.container("abc").unwrap().0.name, "nginx");
        assert!(!p.container("abc").unwrap().1);
        assert!(p.container("def").unwrap().1);
        assert!(p.container("zzz").is_none());
        // A `kubectl debug` shell is attributed to its ephemeral container.
        assert_eq!(p.container("e1").unwrap().0.name, "debugger-x7k");
        assert!(!p.container("e1").unwrap().1);
        // A status without containerID matches nothing.
        assert!(l.by_uid("p").unwrap().container("").is_none());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"items\": 3}").is_err());
        assert!(parse(b"{}").unwrap().items.is_empty());
    }
}
