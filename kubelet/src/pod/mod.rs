//! Pods bound to this node: the watch, admission, and one owner task per pod.
//!
//! The [`PodManager`] watches pods with `spec.nodeName=<node>` and routes every event to the
//! pod's worker, starting one for a pod it has not seen. Events may repeat or arrive late
//! (a re-list after an outage replays everything), so a worker is keyed by UID and acts on
//! the latest object, never on the event itself.

pub mod admission;
pub mod backoff;
pub mod env;
pub mod quantity;
pub mod state;
pub mod table;
mod trace;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::events::EventRecorder;
use crate::logs::{LogHub, LogLimits};
use crate::metrics::AgentMetrics;
use crate::provider::Provider;
use admission::{Capacity, ExtendedCapacity, Requests};
use table::PodTable;
use worker::{PodEvent, Stage, WorkerContext};

/// What the pod workers and the kubelet API share: where pod files live, the live logs,
/// the pod table and the metrics.
#[derive(Clone, Default)]
pub struct SharedPodState {
    /// `<data-dir>/pods`: per-pod logs and writable layers, by UID.
    pub pods_dir: PathBuf,
    /// Live container logs, for followers.
    pub logs: LogHub,
    /// The pods as the API reports them.
    pub table: Arc<PodTable>,
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
}

/// How the node runs its pods.
#[derive(Clone, Debug)]
pub struct PodSettings {
    /// What the node can give pods in all.
    pub capacity: Capacity,
    /// The extended resources (devices) its provider advertises.
    pub extended: ExtendedCapacity,
    /// How often running pods' API-backed volumes are resynchronised (`--sync-frequency`).
    pub sync_frequency: std::time::Duration,
}

/// Watches this node's pods and gives each one an owner task.
pub struct PodManager<P> {
    ctx: Arc<WorkerContext<P>>,
    node_name: String,
    capacity: Capacity,
    extended: ExtendedCapacity,
    workers: HashMap<String, mpsc::UnboundedSender<PodEvent>>,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl<P: Provider> PodManager<P> {
    /// A manager for `node_name`'s pods, keeping their files under `pods_dir` and what the
    /// kubelet API reads in `shared`.
    pub fn new(
        client: kube::Client,
        provider: Arc<P>,
        node_name: &str,
        host_ip: &str,
        settings: PodSettings,
        shared: &SharedPodState,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            ctx: Arc::new(WorkerContext {
                recorder: EventRecorder::new(client.clone(), node_name),
                client,
                provider,
                host_ip: host_ip.to_string(),
                pods_dir: shared.pods_dir.clone(),
                log_limits: LogLimits::default(),
                logs: shared.logs.clone(),
                table: shared.table.clone(),
                metrics: shared.metrics.clone(),
                admitted: Arc::new(Mutex::new(HashMap::new())),
                allocatable: settings.capacity,
                sync_frequency: settings.sync_frequency,
            }),
            node_name: node_name.to_string(),
            capacity: settings.capacity,
            extended: settings.extended,
            workers: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Watches until `cancel` fires. The watch retries with back-off through API outages;
    /// running pods are unaffected by them.
    pub async fn run(mut self, cancel: CancellationToken) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(uid) = self.done_rx.recv() => {
                    self.workers.remove(&uid);
                    self.ctx.table.remove(&uid);
                }
                event = stream.next() => match event {
                    None => return,
                    Some(Err(err)) => warn!(%err, "pod watch failed; retrying"),
                    Some(Ok(Event::Apply(pod))) => self.route(pod),
                    Some(Ok(Event::Delete(pod))) => self.forget(&pod),
                    Some(Ok(Event::Init)) => relisted = Some(HashSet::new()),
                    Some(Ok(Event::InitApply(pod))) => {
                        if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.clone()) {
                            seen.insert(uid);
                        }
                        self.route(pod);
                    }
                    Some(Ok(Event::InitDone)) => {
                        // Pods deleted while the watch was down never got a Delete event.
                        if let Some(seen) = relisted.take() {
                            let vanished: Vec<String> =
                                self.workers.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
                            for uid in vanished {
                                if let Some(tx) = self.workers.get(&uid) {
                                    let _ = tx.send(PodEvent::Deleted);
                                }
                            }
                        }
                    }
                },
            }
        }
    }

    fn forget(&mut self, pod: &Pod) {
        if let Some(tx) = pod
            .metadata
            .uid
            .as_ref()
            .and_then(|uid| self.workers.get(uid))
        {
            let _ = tx.send(PodEvent::Deleted);
        }
    }

    fn route(&mut self, pod: Pod) {
        let seen = std::time::Instant::now();
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.ctx.table.put(&uid, pod.clone());
        if let Some(tx) = self.workers.get(&uid)
            && tx.send(PodEvent::Updated(Box::new(pod.clone()))).is_ok()
        {
            return;
        }
        let stage = self.first_stage(&pod, &uid);
        info!(
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            ?stage,
            "taking on pod"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        self.workers.insert(uid.clone(), tx);
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            worker::run(ctx, pod, rx, stage, seen).await;
            let _ = done.send(uid);
        });
    }

    /// Admission for a pod seen for the first time. A pod that already finished (seen again
    /// after a restart of the agent) is not run again.
    fn first_stage(&self, pod: &Pod, uid: &str) -> Stage {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Stage::Finished;
        }
        let mut admitted = self.ctx.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let others: Vec<Requests> = admitted
            .iter()
            .filter(|(k, _)| k.as_str() != uid)
            .map(|(_, r)| r.clone())
            .collect();
        let admitted_here = admission::admit(pod, &others, self.capacity, &self.extended)
            .and_then(|()| self.ctx.provider.admit(pod));
        match admitted_here {
            Ok(()) => {
                admitted.insert(uid.to_string(), Requests::of(pod));
                Stage::Mount
            }
            Err(rejection) => Stage::Rejected(rejection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ContainerError, ContainerExit, ContainerStart, ImageRequest};
    use crate::provider::{NodeContribution, PulledImage};
    use admission::Rejection;
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;
    use kube::client::Body;
    use tokio::task::JoinHandle;

    /// A provider that only admits: it refuses pods labelled `refuse`.
    struct Picky;

    struct NoImage;

    impl PulledImage for NoImage {
        fn image_id(&self) -> String {
            String::new()
        }
    }

    impl Provider for Picky {
        type Image = NoImage;

        fn node_contribution(&self) -> NodeContribution {
            NodeContribution::default()
        }

        fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
            match pod.metadata.labels.as_ref().and_then(|l| l.get("refuse")) {
                Some(why) => Err(Rejection {
                    reason: "NoSuchDevice".into(),
                    message: why.clone(),
                }),
                None => Ok(()),
            }
        }

        async fn pull(&self, _: ImageRequest<'_>) -> Result<NoImage, ContainerError> {
            unreachable!("admission only")
        }

        async fn start(
            &self,
            _: &NoImage,
            _: ContainerStart,
        ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
            unreachable!("admission only")
        }
    }

    fn pod(uid: &str, refuse: Option<&str>, gpio: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                labels: refuse.map(|why| [("refuse".to_string(), why.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: gpio.map(|n| ResourceRequirements {
                        limits: Some(
                            [("devices.example/gpio".to_string(), Quantity(n.into()))].into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_provider_and_the_advertised_devices_both_decide_admission() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let settings = PodSettings {
            capacity: Capacity {
                pods: 10,
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            extended: [("devices.example/gpio".to_string(), 1)].into(),
            sync_frequency: std::time::Duration::from_secs(60),
        };
        let manager = PodManager::new(
            kube::Client::new(service, "default"),
            Arc::new(Picky),
            "edge-1",
            "10.0.0.1",
            settings,
            &SharedPodState::default(),
        );
        assert!(matches!(
            manager.first_stage(&pod("a", None, Some("1")), "a"),
            Stage::Mount
        ));
        match manager.first_stage(&pod("b", None, Some("1")), "b") {
            Stage::Rejected(r) => assert_eq!(r.reason, "OutOfdevices.example/gpio"),
            other => panic!("the only gpio line is held by pod a: {other:?}"),
        }
        match manager.first_stage(&pod("c", Some("no sensor here"), None), "c") {
            Stage::Rejected(r) => {
                assert_eq!(
                    (r.reason.as_str(), r.message.as_str()),
                    ("NoSuchDevice", "no sensor here")
                );
            }
            other => panic!("the provider refused it: {other:?}"),
        }
        let held = manager.ctx.admitted.lock().unwrap().len();
        assert_eq!(held, 1, "refused pods hold nothing");
    }
}
