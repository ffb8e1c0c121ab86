//! Mirror pods: the API's read-only copy of a static pod, so `kubectl get pods` shows what
//! the node runs from its manifest directory.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION};

/// The mirror pod to create for `static_pod` on `node` (the Node as read from the API, for
/// its UID).
///
/// It is built to pass the NodeRestriction admission plugin on the first try: the static
/// pod's name, namespace, labels, annotations and spec, plus `kubernetes.io/config.mirror`
/// set to the static pod's config hash (so a later read can tell whether the mirror is
/// still current), and exactly one owner reference, a controller reference to the Node
/// (so the mirror is garbage-collected with the Node). No UID, resourceVersion or status:
/// the API server assigns the first two and ignores the last on create.
pub fn mirror_pod(static_pod: &Pod, node: &Node) -> Pod {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let mut annotations = static_pod.metadata.annotations.clone().unwrap_or_default();
    let hash = annotations
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
        .or_else(|| static_pod.metadata.uid.clone())
        .unwrap_or_default();
    annotations.insert(CONFIG_MIRROR_ANNOTATION.to_owned(), hash);
    let mut spec = static_pod.spec.clone().unwrap_or_default();
    spec.node_name = Some(node_name.clone());
    Pod {
        metadata: ObjectMeta {
            name: static_pod.metadata.name.clone(),
            namespace: static_pod.metadata.namespace.clone(),
            labels: static_pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node_name,
                uid: node.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether `pod` (as read from the API) is a mirror pod, which the node must not run: it
/// only stands for a static pod that already runs from its manifest.
pub fn is_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
}

/// The config hash of the static pod that a mirror pod was made for; when it differs from
/// the static pod's current hash, the mirror is stale and must be replaced.
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    use super::*;
    use crate::static_pods::CONFIG_SOURCE_ANNOTATION;

    fn static_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-node-a".to_owned()),
                namespace: Some("default".to_owned()),
                uid: Some("0123456789abcdef0123456789abcdef".to_owned()),
                resource_version: Some("7".to_owned()),
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                annotations: Some(BTreeMap::from([
                    (
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        "0123456789abcdef0123456789abcdef".to_owned(),
                    ),
                    (CONFIG_SOURCE_ANNOTATION.to_owned(), "file".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".to_owned(),
                    image: Some("registry.example/app:1".to_owned()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-a".to_owned()),
                uid: Some("node-uid-1".to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn the_mirror_pod_has_exactly_one_owner_reference_the_node_as_controller() {
        let mirror = mirror_pod(&static_pod(), &node());

        assert_eq!(
            mirror.metadata.owner_references,
            Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: "node-a".to_owned(),
                uid: "node-uid-1".to_owned(),
                controller: Some(true),
                block_owner_deletion: None,
            }])
        );
    }

    #[test]
    fn the_mirror_pod_keeps_the_static_pods_annotations_and_adds_the_mirror_hash() {
        let source = static_pod();
        let mirror = mirror_pod(&source, &node());

        let mut expected = source.metadata.annotations.clone().unwrap();
        expected.insert(
            CONFIG_MIRROR_ANNOTATION.to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        );
        assert_eq!(mirror.metadata.annotations, Some(expected));
        assert!(is_mirror(&mirror));
        assert_eq!(
            mirror_hash(&mirror),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn the_mirror_pod_has_the_static_pods_identity_and_spec_but_no_uid_version_or_status() {
        let source = static_pod();
        let mirror = mirror_pod(&source, &node());

        assert_eq!(mirror.metadata.name, source.metadata.name);
        assert_eq!(mirror.metadata.namespace, source.metadata.namespace);
        assert_eq!(mirror.metadata.labels, source.metadata.labels);
        assert_eq!(mirror.metadata.uid, None);
        assert_eq!(mirror.metadata.resource_version, None);
        assert_eq!(mirror.status, None);
        let mut spec = source.spec.unwrap();
        spec.node_name = Some("node-a".to_owned());
        assert_eq!(mirror.spec, Some(spec));
    }

    #[test]
    fn a_static_pod_itself_is_not_a_mirror() {
        assert!(!is_mirror(&static_pod()));
        assert_eq!(mirror_hash(&static_pod()), None);
        assert!(!is_mirror(&Pod::default()));
    }
}
