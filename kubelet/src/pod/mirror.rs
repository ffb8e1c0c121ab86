//! Mirror pods: the API's copy of each static pod, so `kubectl get pods` shows what the node
//! runs from its manifests, kept as the kubelet keeps them.
//!
//! The pod manager posts what it knows on a [`MirrorBoard`]: the static pods it runs, and the
//! mirror pods the watch shows. The [`MirrorKeeper`] compares the two and acts: it creates a
//! missing mirror (and gives it the static pod's current status at once), replaces one made
//! for an older manifest or being deleted (so a deleted mirror pod comes back), and removes
//! one whose static pod is gone. The pod's worker keeps the mirror's status current after
//! that, as for any pod. The keeper acts only on a complete picture: after the watch has
//! listed every pod, never in the middle of a re-list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::table::PodTable;
use crate::node::registration::FIELD_MANAGER;
use crate::static_pods::{StaticPod, mirror_hash, mirror_pod};
use crate::unread_reply;

/// How often the keeper looks again after a request failed, or with nothing new to go on.
const RECHECK: Duration = Duration::from_secs(10);

/// What the pod manager knows of static pods and their mirrors, by `namespace/name`.
#[derive(Clone, Debug, Default)]
struct MirrorState {
    /// The static pods the node runs.
    wanted: BTreeMap<String, Pod>,
    /// The mirror pods the API holds for this node.
    seen: BTreeMap<String, Pod>,
    /// Whether `seen` is complete (the watch has listed every pod since it last started).
    listed: bool,
}

/// Where the pod manager posts static pods and mirror pods for the [`MirrorKeeper`].
#[derive(Clone, Debug, Default)]
pub struct MirrorBoard {
    state: Arc<watch::Sender<MirrorState>>,
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl MirrorBoard {
    /// The static pods the node now runs.
    pub(crate) fn want(&self, current: &[StaticPod]) {
        let wanted: BTreeMap<String, Pod> = current
            .iter()
            .map(|s| (key(&s.pod), s.pod.clone()))
            .collect();
        self.state.send_if_modified(|state| {
            let changed = state.wanted.keys().ne(wanted.keys())
                || state
                    .wanted
                    .values()
                    .zip(wanted.values())
                    .any(|(a, b)| a.metadata.uid != b.metadata.uid);
            state.wanted = wanted;
            changed
        });
    }

    /// The watch started listing every pod again.
    pub(crate) fn relisting(&self) {
        self.state.send_modify(|state| {
            state.seen.clear();
            state.listed = false;
        });
    }

    /// The watch finished its list.
    pub(crate) fn listed(&self) {
        self.state.send_modify(|state| state.listed = true);
    }

    /// A mirror pod as the API holds it now.
    pub(crate) fn seen(&self, mirror: Pod) {
        self.state.send_modify(|state| {
            state.seen.insert(key(&mirror), mirror);
        });
    }

    /// A mirror pod the API no longer holds.
    pub(crate) fn gone(&self, mirror: &Pod) {
        let gone = key(mirror);
        self.state
            .send_if_modified(|state| state.seen.remove(&gone).is_some());
    }
}

/// What the keeper does about one `namespace/name`.
#[derive(Debug, PartialEq)]
enum Action {
    /// Create the mirror of this static pod.
    Create(Box<Pod>),
    /// Delete this mirror pod (its UID): stale, being deleted, or its static pod is gone.
    Delete {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// What it takes to make `seen` mirror `wanted`. A mirror that is being deleted is finished
/// off (grace 0) and made again once the watch says it is gone.
fn plan(state: &MirrorState) -> Vec<Action> {
    if !state.listed {
        return Vec::new();
    }
    let delete = |mirror: &Pod| Action::Delete {
        namespace: mirror.metadata.namespace.clone().unwrap_or_default(),
        name: mirror.metadata.name.clone().unwrap_or_default(),
        uid: mirror.metadata.uid.clone().unwrap_or_default(),
    };
    let mut actions = Vec::new();
    for (key, wanted) in &state.wanted {
        match state.seen.get(key) {
            None => actions.push(Action::Create(Box::new(wanted.clone()))),
            Some(mirror)
                if mirror.metadata.deletion_timestamp.is_some()
                    || mirror_hash(mirror) != wanted.metadata.uid.as_deref() =>
            {
                actions.push(delete(mirror));
            }
            Some(_) => {}
        }
    }
    for (key, mirror) in &state.seen {
        if !state.wanted.contains_key(key) {
            actions.push(delete(mirror));
        }
    }
    actions
}

/// Keeps the API's mirror pods in step with the node's static pods.
pub struct MirrorKeeper {
    client: kube::Client,
    node_name: String,
    board: watch::Receiver<MirrorState>,
    table: Arc<PodTable>,
}

impl MirrorKeeper {
    /// A keeper for `node_name`, reading what the pod manager posts on `board` and the
    /// static pods' statuses from `table`.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        board: &MirrorBoard,
        table: Arc<PodTable>,
    ) -> Self {
        Self {
            client,
            node_name: node_name.to_string(),
            board: board.state.subscribe(),
            table,
        }
    }

    /// Runs until `cancel` fires: acts on every change the board shows, and looks again
    /// every 10 s, so a request that failed is retried.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut node: Option<Node> = None;
        loop {
            let actions = plan(&self.board.borrow_and_update());
            if !actions.is_empty() {
                if node.is_none() {
                    node = self.node().await;
                }
                if let Some(node) = &node {
                    for action in actions {
                        self.act(action, node).await;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = self.board.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// The Node, whose UID the mirrors' owner reference names.
    async fn node(&self) -> Option<Node> {
        let api: Api<Node> = Api::all(self.client.clone());
        match api.get_opt(&self.node_name).await {
            Ok(found) => found,
            Err(err) => {
                debug!(%err, "cannot read the node for its mirror pods yet");
                None
            }
        }
    }

    async fn act(&self, action: Action, node: &Node) {
        match action {
            Action::Create(static_pod) => {
                let mirror = mirror_pod(&static_pod, node);
                let namespace = mirror.metadata.namespace.as_deref().unwrap_or("default");
                let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                match api.create(&PostParams::default(), &mirror).await {
                    Ok(created) => {
                        info!(pod = %key(&created), "created the mirror pod of a static pod");
                        self.send_status(&api, &created, &static_pod).await;
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(err) => {
                        warn!(pod = %key(&mirror), %err, "cannot create mirror pod; retrying")
                    }
                }
            }
            Action::Delete {
                namespace,
                name,
                uid,
            } => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => {
                        info!(pod = %format!("{namespace}/{name}"), "removed a mirror pod that no longer matches a static pod")
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                    Err(err) => warn!(pod = %name, %err, "cannot remove mirror pod; retrying"),
                }
            }
        }
    }

    /// Gives a new mirror the static pod's current status: the pod's worker sends changes,
    /// but the status it last sent went to the mirror this one replaces.
    async fn send_status(&self, api: &Api<Pod>, mirror: &Pod, static_pod: &Pod) {
        let uid = static_pod.metadata.uid.as_deref().unwrap_or_default();
        let Some(status) = self.table.status(uid) else {
            return;
        };
        let patch = Pod {
            status: Some(status),
            ..Default::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let name = mirror.metadata.name.as_deref().unwrap_or_default();
        if let Err(err) =
            unread_reply::patch_status(api, name, &params, &Patch::Strategic(&patch)).await
        {
            debug!(%name, %err, "cannot give the new mirror pod its status yet; its worker will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn static_pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn mirror(name: &str, hash: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                annotations: Some(
                    [("kubernetes.io/config.mirror".to_string(), hash.to_string())].into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn state(wanted: &[Pod], seen: &[Pod]) -> MirrorState {
        MirrorState {
            wanted: wanted.iter().map(|p| (key(p), p.clone())).collect(),
            seen: seen.iter().map(|p| (key(p), p.clone())).collect(),
            listed: true,
        }
    }

    #[test]
    fn a_static_pod_without_a_mirror_gets_one_and_a_current_mirror_is_left_alone() {
        let a = static_pod("a-edge", "h1");
        let b = static_pod("b-edge", "h2");
        let actions = plan(&state(&[a.clone(), b], &[mirror("b-edge", "h2", "m2")]));
        assert_eq!(actions, vec![Action::Create(Box::new(a))]);
    }

    #[test]
    fn a_stale_or_deleted_mirror_is_removed_so_that_it_is_made_again() {
        let a = static_pod("a-edge", "h-new");
        let mut deleting = mirror("b-edge", "h2", "m2");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let actions = plan(&state(
            &[a, static_pod("b-edge", "h2")],
            &[mirror("a-edge", "h-old", "m1"), deleting],
        ));
        let deleted: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                Action::Delete { uid, .. } => uid.as_str(),
                Action::Create(_) => "create",
            })
            .collect();
        assert_eq!(deleted, vec!["m1", "m2"]);
    }

    #[test]
    fn a_mirror_whose_static_pod_is_gone_is_removed() {
        let actions = plan(&state(&[], &[mirror("a-edge", "h1", "m1")]));
        assert!(matches!(&actions[..], [Action::Delete { uid, .. }] if uid == "m1"));
    }

    #[test]
    fn nothing_is_done_in_the_middle_of_a_relist() {
        let board = MirrorBoard::default();
        board.want(&[StaticPod {
            pod: static_pod("a-edge", "h1"),
            file: "a.yaml".into(),
        }]);
        board.seen(mirror("a-edge", "h1", "m1"));
        board.listed();
        assert!(
            plan(&board.state.borrow()).is_empty(),
            "the mirror is current"
        );
        board.relisting();
        assert!(plan(&board.state.borrow()).is_empty(), "seen is incomplete");
        board.listed();
        assert_eq!(
            plan(&board.state.borrow()),
            vec![Action::Create(Box::new(static_pod("a-edge", "h1")))]
        );
    }
}
