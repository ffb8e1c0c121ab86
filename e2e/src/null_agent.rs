//! A node agent that runs nothing: the floor under a real agent's start latency.
//!
//! For every pod bound to its node it does only what any agent must before the pod shows
//! Running: it sees the pod on its own watch, asks for a service-account token when the pod
//! projects one (a TokenRequest bound to the pod, as the kubelet does), and patches
//! the pod's status to Running with one strategic merge patch. A pod's create → Running
//! through it is therefore the API server's share of a start on this machine; what wasmlet
//! adds is the difference between its series and this one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Node, Pod, PodCondition, PodStatus,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use tokio::task::JoinHandle;

/// The agent's node: a Node object it created (no kubelet behind it), and the task that
/// answers for its pods. Dropping it stops the task; [`NullAgent::stop`] also deletes the
/// Node.
pub struct NullAgent {
    client: kube::Client,
    pods: kube::Api<Pod>,
    node: String,
    task: JoinHandle<()>,
    patches: Arc<PatchClock>,
}

/// How many status patches the agent sent and how long they took, from sending to the
/// answer decoded: the same span wasmlet's `pod_status_patch_duration_seconds` times.
type PatchClock = Mutex<(u32, Duration)>;

impl NullAgent {
    /// Creates Node `node` and starts answering for pods bound to it in `namespace`.
    pub async fn start(client: kube::Client, node: &str, namespace: &str) -> anyhow::Result<Self> {
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        nodes.create(&PostParams::default(), &object).await?;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        // Watch before returning, so no pod created after `start` is missed.
        let params = WatchParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .timeout(290);
        let events = pods.watch(&params, "0").await?.boxed();
        let patches = Arc::new(PatchClock::default());
        let task = tokio::spawn(answer(
            client.clone(),
            pods.clone(),
            params,
            events,
            patches.clone(),
        ));
        Ok(Self {
            client,
            pods,
            node: node.to_string(),
            task,
            patches,
        })
    }

    /// The status patches sent so far, and their total time.
    pub fn status_patches(&self) -> (u32, Duration) {
        self.patches
            .lock()
            .map(|p| *p)
            .unwrap_or_else(|poisoned| *poisoned.into_inner())
    }

    /// Stops answering, deletes its pods at once (no kubelet is there to finish a graceful
    /// deletion) and then the Node.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.task.abort();
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let bound = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        self.pods.delete_collection(&now, &bound).await?;
        let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
        nodes.delete(&self.node, &DeleteParams::default()).await?;
        Ok(())
    }
}

impl Drop for NullAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Send>>;

/// Answers each pod once, the first time the watch shows it, each on a task of its own so a
/// burst is answered side by side, as an agent's per-pod workers would.
async fn answer(
    client: kube::Client,
    pods: kube::Api<Pod>,
    params: WatchParams,
    mut events: Events,
    patches: Arc<PatchClock>,
) {
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            // The API server ended the watch: watch again (pods already Running are skipped).
            Ok(None) | Err(_) => match pods.watch(&params, "0").await {
                Ok(stream) => {
                    events = stream.boxed();
                    continue;
                }
                Err(err) => {
                    eprintln!("null agent: cannot watch pods: {err}");
                    return;
                }
            },
        };
        let WatchEvent::Added(pod) = event else {
            continue;
        };
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            continue;
        }
        let (client, pods, patches) = (client.clone(), pods.clone(), patches.clone());
        tokio::spawn(async move {
            if let Err(err) = run(&client, &pods, &pod, &patches).await {
                eprintln!("null agent: {:?}: {err:#}", pod.metadata.name);
            }
        });
    }
}

/// The token (when projected), then the Running status.
async fn run(
    client: &kube::Client,
    pods: &kube::Api<Pod>,
    pod: &Pod,
    patches: &PatchClock,
) -> anyhow::Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    // The kubelet asks for a token only for a projected `serviceAccountToken` source. On
    // this control plane (1.20, BoundServiceAccountTokenVolume off) a default pod mounts
    // its service account's token Secret instead, which an agent reads from its watch of
    // the Secret, not with a request per pod.
    let projects_a_token = spec.volumes.iter().flatten().any(|v| {
        v.projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()))
    });
    if projects_a_token {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3607),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    uid: pod.metadata.uid.clone(),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        accounts
            .create_token_request(&account, &PostParams::default(), &request)
            .await?;
    }
    let now = Time(jiff::Timestamp::now());
    let condition = |type_: &str| PodCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    };
    let status = PodStatus {
        phase: Some("Running".into()),
        conditions: Some(
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .map(condition)
                .into(),
        ),
        host_ip: Some("127.0.0.1".into()),
        pod_ip: Some("127.0.0.1".into()),
        start_time: Some(now.clone()),
        container_statuses: Some(
            spec.containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: "null".into(),
                    ready: true,
                    started: Some(true),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now.clone()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    let patch = Pod {
        status: Some(status),
        ..Default::default()
    };
    let started = Instant::now();
    pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let took = started.elapsed();
    let mut clock = patches
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *clock = (clock.0.saturating_add(1), clock.1 + took);
    Ok(())
}
