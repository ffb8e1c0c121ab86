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
use admission::{Capacity, Requests};
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
#[derive(Clone, Copy, Debug)]
pub struct PodSettings {
    /// What the node can give pods in all.
    pub capacity: Capacity,
    /// How often running pods' API-backed volumes are resynchronised (`--sync-frequency`).
    pub sync_frequency: std::time::Duration,
}

/// Watches this node's pods and gives each one an owner task.
pub struct PodManager<P> {
    ctx: Arc<WorkerContext<P>>,
    node_name: String,
    capacity: Capacity,
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
            worker::run(ctx, pod, rx, stage).await;
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
            .map(|(_, r)| *r)
            .collect();
        match admission::admit(pod, &others, self.capacity) {
            Ok(()) => {
                admitted.insert(uid.to_string(), Requests::of(pod));
                Stage::Mount
            }
            Err(rejection) => Stage::Rejected(rejection),
        }
    }
}
