//! SPIRE's `k8s` workload selectors for a pod (and one of its containers): sorted, deduplicated,
//! each `k8s:<name>:<value>`.

use std::collections::BTreeSet;

use crate::attest::pods::{ContainerStatus, Pod};

/// The image as written and the resolved digest, where the status has them (empty ones skipped).
fn images(s: &ContainerStatus) -> impl Iterator<Item = &str> {
    [s.image.as_str(), s.image_id.as_str()]
        .into_iter()
        .filter(|i| !i.is_empty())
}

/// Selectors for `pod`; with `container`, also `container-name`/`container-image`.
pub fn for_pod(pod: &Pod, container: Option<&ContainerStatus>) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut add = |name: &str, value: &str| {
        out.insert(format!("k8s:{name}:{value}"));
    };
    let m = &pod.metadata;
    add("sa", &pod.spec.service_account_name);
    add("ns", &m.namespace);
    add("node-name", &pod.spec.node_name);
    add("pod-uid", &m.uid);
    add("pod-name", &m.name);
    add(
        "pod-image-count",
        &pod.status.container_statuses.len().to_string(),
    );
    add(
        "pod-init-image-count",
        &pod.status.init_container_statuses.len().to_string(),
    );
    for s in &pod.status.container_statuses {
        for i in images(s) {
            add("pod-image", i);
        }
    }
    for s in &pod.status.init_container_statuses {
        for i in images(s) {
            add("pod-init-image", i);
        }
    }
    for (k, v) in &m.labels {
        add("pod-label", &format!("{k}:{v}"));
    }
    for o in &m.owner_references {
        add("pod-owner", &format!("{}:{}", o.kind, o.name));
        add("pod-owner-uid", &format!("{}:{}", o.kind, o.uid));
    }
    if let Some(c) = container {
        add("container-name", &c.name);
        for i in images(c) {
            add("container-image", i);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::pods;

    #[test]
    fn spire_selector_set() {
        let body = br#"{"items":[{"metadata":{"name":"web-1","namespace":"shop","uid":"u-1",
          "labels":{"app":"web","tier":"front"},
          "ownerReferences":[{"kind":"ReplicaSet","name":"web","uid":"rs-1"}]},
          "spec":{"serviceAccountName":"web-sa","nodeName":"n1"},
          "status":{"containerStatuses":[
             {"name":"app","image":"nginx:1.25","imageID":"docker.io/library/nginx@sha256:aa","containerID":"containerd://c1"},
             {"name":"side","image":"envoy:1","imageID":"","containerID":"containerd://c2"}],
           "initContainerStatuses":[{"name":"init","image":"busybox:1","imageID":"busybox@sha256:bb","containerID":"containerd://c3"}]}}]}"#;
        let l = pods::parse(body).unwrap();
        let pod = &l.items[0];
        let (c, _) = pod.container("c1").unwrap();
        let got = for_pod(pod, Some(c));
        let want = [
            "k8s:container-image:docker.io/library/nginx@sha256:aa",
            "k8s:container-image:nginx:1.25",
            "k8s:container-name:app",
            "k8s:node-name:n1",
            "k8s:ns:shop",
            "k8s:pod-image-count:2",
            "k8s:pod-image:docker.io/library/nginx@sha256:aa",
            "k8s:pod-image:envoy:1",
            "k8s:pod-image:nginx:1.25",
            "k8s:pod-init-image-count:1",
            "k8s:pod-init-image:busybox:1",
            "k8s:pod-init-image:busybox@sha256:bb",
            "k8s:pod-label:app:web",
            "k8s:pod-label:tier:front",
            "k8s:pod-name:web-1",
            "k8s:pod-owner-uid:ReplicaSet:rs-1",
            "k8s:pod-owner:ReplicaSet:web",
            "k8s:pod-uid:u-1",
            "k8s:sa:web-sa",
        ];
        assert_eq!(got, want);
        let pod_only = for_pod(pod, None);
        assert!(pod_only.iter().all(|s| !s.starts_with("k8s:container-")));
        assert_eq!(pod_only.len(), want.len() - 3);
    }
}
