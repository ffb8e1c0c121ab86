//! The pods this node runs, as the kubelet API reports them (`/pods`, logs, stats).
//!
//! The pod manager adds a pod's entry when it hands the pod to its worker and removes it
//! when the worker ends; the worker keeps the entry current meanwhile. Readers get copies,
//! so a slow API client never holds up a worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::usage::ContainerUsage;

/// A running container instance's accounting.
#[derive(Clone, Debug)]
pub struct RunningContainer {
    /// When the instance started.
    pub started: Timestamp,
    /// What it has used so far.
    pub usage: Arc<ContainerUsage>,
}

/// One pod as the API sees it.
#[derive(Clone, Debug)]
pub struct PodEntry {
    /// The pod object, with the status this node computed (sent or not). Shared, so a
    /// snapshot for an API request copies a pointer under the lock, not the object.
    pub pod: Arc<Pod>,
    /// When this node took the pod on.
    pub started: Timestamp,
    /// Its running containers, by name.
    pub running: BTreeMap<String, RunningContainer>,
}

/// All pods of this node, by UID.
#[derive(Debug, Default)]
pub struct PodTable {
    pods: RwLock<HashMap<String, PodEntry>>,
}

impl PodTable {
    /// Adds (or replaces) `uid`'s pod object, keeping what is known of its containers.
    pub fn put(&self, uid: &str, pod: Pod) {
        let mut pods = self.write();
        match pods.get_mut(uid) {
            Some(entry) => {
                let mut pod = pod;
                pod.status = entry.pod.status.clone().or(pod.status.take());
                entry.pod = Arc::new(pod);
            }
            None => {
                pods.insert(
                    uid.to_string(),
                    PodEntry {
                        pod: Arc::new(pod),
                        started: Timestamp::now(),
                        running: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// Records the status the worker computed.
    pub fn set_status(&self, uid: &str, status: PodStatus) {
        if let Some(entry) = self.write().get_mut(uid) {
            // Copies the object only if a snapshot still holds the old one.
            Arc::make_mut(&mut entry.pod).status = Some(status);
        }
    }

    /// Every image the node's pods name, in init and app containers, running or not.
    pub fn images(&self) -> HashSet<String> {
        self.read()
            .values()
            .filter_map(|e| e.pod.spec.as_ref())
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .filter_map(|c| c.image.clone())
            .collect()
    }

    /// The status the node last computed for `uid`.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.read().get(uid).and_then(|e| e.pod.status.clone())
    }

    /// Records that `container` started a new instance accounted in `usage`.
    pub fn container_started(&self, uid: &str, container: &str, usage: Arc<ContainerUsage>) {
        if let Some(entry) = self.write().get_mut(uid) {
            entry.running.insert(
                container.to_string(),
                RunningContainer {
                    started: Timestamp::now(),
                    usage,
                },
            );
        }
    }

    /// Records that `container`'s instance ended.
    pub fn container_stopped(&self, uid: &str, container: &str) {
        if let Some(entry) = self.write().get_mut(uid) {
            entry.running.remove(container);
        }
    }

    /// Pod `uid`'s object as last seen, with the status this node computed.
    pub fn pod(&self, uid: &str) -> Option<Arc<Pod>> {
        self.read().get(uid).map(|e| e.pod.clone())
    }

    /// Forgets `uid`.
    pub fn remove(&self, uid: &str) {
        self.write().remove(uid);
    }

    /// The pod `namespace/name`, with its UID.
    pub fn find(&self, namespace: &str, name: &str) -> Option<(String, PodEntry)> {
        self.read()
            .iter()
            .find(|(_, e)| {
                e.pod.metadata.namespace.as_deref() == Some(namespace)
                    && e.pod.metadata.name.as_deref() == Some(name)
            })
            .map(|(uid, e)| (uid.clone(), e.clone()))
    }

    /// Every pod, ordered by namespace and name. The lock is held only to copy pointers.
    pub fn snapshot(&self) -> Vec<PodEntry> {
        let mut entries: Vec<PodEntry> = self.read().values().cloned().collect();
        entries.sort_by(|a, b| {
            (&a.pod.metadata.namespace, &a.pod.metadata.name)
                .cmp(&(&b.pod.metadata.namespace, &b.pod.metadata.name))
        });
        entries
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, PodEntry>> {
        self.pods.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, PodEntry>> {
        self.pods.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn status_survives_an_updated_object_and_entries_go_with_their_pod() {
        let table = PodTable::default();
        table.put("u1", pod("default", "a"));
        table.set_status(
            "u1",
            PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            },
        );
        table.put("u1", pod("default", "a"));
        let (uid, entry) = table.find("default", "a").unwrap();
        assert_eq!(uid, "u1");
        assert_eq!(
            entry.pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );
        table.container_started("u1", "c", Arc::default());
        assert!(table.snapshot()[0].running.contains_key("c"));
        table.container_stopped("u1", "c");
        assert!(table.snapshot()[0].running.is_empty());
        assert!(table.find("other", "a").is_none());
        table.remove("u1");
        assert!(table.snapshot().is_empty());
    }

    #[test]
    fn snapshots_share_the_pod_objects_until_one_changes() {
        let table = PodTable::default();
        table.put("u1", pod("default", "a"));
        let (first, second) = (table.snapshot(), table.snapshot());
        assert!(
            Arc::ptr_eq(&first[0].pod, &second[0].pod),
            "no copy per snapshot"
        );
        table.set_status("u1", PodStatus::default());
        let third = table.snapshot();
        assert!(!Arc::ptr_eq(&first[0].pod, &third[0].pod));
        assert!(
            first[0].pod.status.is_none(),
            "a taken snapshot does not change"
        );
        assert!(third[0].pod.status.is_some());
    }

    #[test]
    fn images_of_every_pod_are_listed_running_or_not() {
        use k8s_openapi::api::core::v1::{Container, PodSpec};
        let container = |image: &str| Container {
            name: image.into(),
            image: Some(image.into()),
            ..Default::default()
        };
        let mut waiting = pod("default", "a");
        waiting.spec = Some(PodSpec {
            init_containers: Some(vec![container("reg/init:v1")]),
            containers: vec![container("reg/app:v1")],
            ..Default::default()
        });
        let table = PodTable::default();
        table.put("u1", waiting);
        let images = table.images();
        assert_eq!(images.len(), 2);
        assert!(images.contains("reg/init:v1") && images.contains("reg/app:v1"));
    }
}
