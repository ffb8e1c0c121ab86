//! Pods bound to this node: the watch, the local store, admission, and one owner task per
//! pod.
//!
//! The pipeline is watch → store → workers. The [`PodManager`] writes every pod it is told
//! about (by the API watch, or by the static pod manifests) into the local store, then hands
//! the latest object to the pod's worker, starting one for a pod it has not seen. At start-up
//! it first starts every pod the store holds, before any request to the API server, so a node
//! restarted while cut off runs its pods again at once; the watch then reconciles (pods
//! deleted meanwhile stop, new ones start). Events may repeat or arrive late (a re-list
//! replays everything), so a worker is keyed by UID, acts on the latest object, never on the
//! event itself, and a UID whose worker has ended never gets a second one.

pub mod admission;
pub mod backoff;
mod ended;
pub mod env;
pub mod mirror;
pub(crate) mod probe;
pub mod quantity;
mod retake;
pub mod state;
mod status_sender;
pub mod storage;
pub mod table;
mod trace;
pub mod watched;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::events::{EventRecorder, EventType};
use crate::link::Link;
use crate::logs::{LogHub, LogLimits};
use crate::metrics::AgentMetrics;
use crate::provider::{PodKey, Provider};
use crate::static_pods::{self, StaticPod};
use crate::store::{LocalStore, PodSource, StoredPod};
use admission::{Capacity, Requests};
use ended::Ended;
use mirror::MirrorBoard;
use retake::Retakes;
use status_sender::StatusSender;
use table::PodTable;
use watched::WatchedObjects;
use worker::{Desired, Outcome, Stage, WorkerContext};

/// How long a stopping agent waits for its pod workers to stop their containers and flush
/// their logs.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The node's name.
    pub node_name: String,
    /// The node's address (the pods' hostIP).
    pub host_ip: String,
    /// What the node can give pods in all.
    pub capacity: Capacity,
    /// How often running pods' API-backed volumes are resynchronised (`--sync-frequency`).
    pub sync_frequency: Duration,
    /// Secret and projected volumes each get a tmpfs ([`NodeConfig::secrets_in_memory`]).
    ///
    /// [`NodeConfig::secrets_in_memory`]: crate::NodeConfig::secrets_in_memory
    pub secrets_in_memory: bool,
}

/// Where the pod manager learns which pods to run.
pub struct PodSources {
    /// The API server (None on a standalone node).
    pub client: Option<kube::Client>,
    /// The static pods' manifests, as the manifest directory's watcher last read them.
    pub static_pods: Option<watch::Receiver<Vec<StaticPod>>>,
    /// Where the pods' events go.
    pub events: EventRecorder,
}

/// A running worker: its source and the channel that holds its pod's latest object.
struct WorkerHandle {
    source: PodSource,
    /// Which pod: a static pod's new version has the same namespace and name, another UID.
    key: PodKey,
    desired: watch::Sender<Desired>,
}

/// Watches this node's pods and gives each one an owner task.
pub struct PodManager<P> {
    ctx: Arc<WorkerContext<P>>,
    node_name: String,
    capacity: Capacity,
    static_pods: Option<watch::Receiver<Vec<StaticPod>>>,
    workers: HashMap<String, WorkerHandle>,
    tasks: JoinSet<(String, Outcome)>,
    /// Which pod each worker task owns, for a task that ends without saying (it panicked).
    task_uids: HashMap<tokio::task::Id, String>,
    ended: Ended,
    /// Pods whose worker failed, to be taken on again after a back-off.
    retakes: Retakes,
    mirrors: MirrorBoard,
}

impl<P: Provider> PodManager<P> {
    /// A manager for the node's pods, keeping their files under `pods_dir`, their desired
    /// state in `store` and what the kubelet API reads in `shared`.
    pub fn new(
        sources: PodSources,
        provider: Arc<P>,
        settings: PodSettings,
        shared: &SharedPodState,
        store: LocalStore,
        link: Link,
    ) -> Self {
        Self {
            ctx: Arc::new(WorkerContext {
                recorder: sources.events,
                watched: sources.client.clone().map(WatchedObjects::new),
                client: sources.client,
                store,
                link,
                status: StatusSender::default(),
                provider,
                host_ip: settings.host_ip.clone(),
                pods_dir: shared.pods_dir.clone(),
                log_limits: LogLimits::default(),
                logs: shared.logs.clone(),
                table: shared.table.clone(),
                metrics: shared.metrics.clone(),
                admitted: Arc::new(Mutex::new(HashMap::new())),
                allocatable: settings.capacity,
                sync_frequency: settings.sync_frequency,
                secrets_in_memory: settings.secrets_in_memory,
            }),
            node_name: settings.node_name,
            capacity: settings.capacity,
            static_pods: sources.static_pods,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            ended: Ended::default(),
            retakes: Retakes::new(retake::INITIAL),
            mirrors: MirrorBoard::default(),
        }
    }

    /// Where this manager posts static pods and the mirror pods it sees, for the
    /// [`mirror::MirrorKeeper`].
    pub fn mirrors(&self) -> MirrorBoard {
        self.mirrors.clone()
    }

    /// Runs the stored pods, then watches until `cancel` fires. The watch retries through API
    /// outages; running pods are unaffected by them. On the way out it waits (bounded) for
    /// the workers to stop their containers and flush their logs.
    pub async fn run(mut self, cancel: CancellationToken) {
        let sending = tokio::spawn(
            self.ctx
                .status
                .clone()
                .run(self.ctx.link.clone(), self.ctx.metrics.clone()),
        );
        self.start_stored().await;
        if let Some(mut manifests) = self.static_pods.clone() {
            let current = manifests.borrow_and_update().clone();
            self.reconcile_static(&current).await;
        }
        let mut watch = match self.ctx.client.clone() {
            Some(client) => watch_pods(client, &self.node_name).boxed(),
            None => futures::stream::pending().boxed(),
        };
        let mut relisted: Option<HashSet<String>> = None;
        let mut watching = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = self.tasks.join_next_with_id() => match done {
                    Ok((id, (uid, outcome))) => {
                        self.task_uids.remove(&id);
                        self.worker_ended(&uid, outcome).await;
                    }
                    Err(err) => {
                        if let Some(uid) = self.task_uids.remove(&err.id()) {
                            self.worker_failed(&uid, &err).await;
                        }
                    }
                },
                () = sleep_until(self.retakes.next_due()) => {
                    for retake in self.retakes.due(Instant::now()) {
                        self.retake(retake);
                    }
                }
                changed = changed(&mut self.static_pods) => {
                    if changed {
                        let current = self.static_pods.as_mut().map(|m| m.borrow_and_update().clone()).unwrap_or_default();
                        self.reconcile_static(&current).await;
                    }
                }
                event = watch.next(), if watching => match event {
                    None => watching = false,
                    Some(Err(err)) => {
                        if self.ctx.link.watch_failed_with(&err) {
                            warn!(%err, "pod watch failed; pods run on from the local store, retrying");
                        } else {
                            debug!(%err, "pod watch failed; retrying");
                        }
                    }
                    Some(Ok(Event::Apply(pod))) => self.api_pod(pod).await,
                    Some(Ok(Event::Delete(pod))) => self.api_pod_gone(&pod),
                    Some(Ok(Event::Init)) => {
                        relisted = Some(HashSet::new());
                        self.mirrors.relisting();
                    }
                    Some(Ok(Event::InitApply(pod))) => {
                        if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.clone()) {
                            seen.insert(uid);
                        }
                        self.api_pod(pod).await;
                    }
                    Some(Ok(Event::InitDone)) => {
                        self.ctx.link.succeeded();
                        // Pods deleted while the watch was down (or the agent was) never got
                        // a Delete event.
                        if let Some(seen) = relisted.take() {
                            self.forget_unlisted(&seen);
                        }
                        self.mirrors.listed();
                    }
                },
            }
        }
        self.stop().await;
        sending.abort();
    }

    /// Starts every pod the store holds, before any request to the API server.
    async fn start_stored(&mut self) {
        let stored = match self.ctx.store.pods().await {
            Ok(stored) => stored,
            Err(err) => {
                warn!(%err, "cannot read the local store; pods start as the API server lists them");
                return;
            }
        };
        if stored.is_empty() {
            return;
        }
        info!(
            pods = stored.len(),
            "starting the pods held in the local store"
        );
        for StoredPod {
            uid,
            source,
            mut pod,
            status,
        } in stored
        {
            if source == PodSource::File && self.static_pods.is_none() {
                info!(%uid, "a stored static pod has no manifest directory any more; removing it");
                self.ctx.store.remove_pod(&uid).await;
                remove_files(&self.ctx.pods_dir, &uid).await;
                continue;
            }
            // The node's own last status: restart counts and last states carry on from it.
            pod.status = status;
            self.take_on(source, pod, Instant::now());
        }
    }

    async fn api_pod(&mut self, pod: Pod) {
        if static_pods::is_mirror(&pod) {
            self.mirrors.seen(pod);
            return;
        }
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        if self.ended.contains(uid) {
            debug!(%uid, "an event for a pod whose worker has ended; ignoring it");
            return;
        }
        self.ctx.store.put_pod(PodSource::Api, &pod).await;
        self.apply(PodSource::Api, pod, Instant::now());
    }

    fn api_pod_gone(&mut self, pod: &Pod) {
        if static_pods::is_mirror(pod) {
            self.mirrors.gone(pod);
            return;
        }
        if let Some(uid) = &pod.metadata.uid {
            self.gone(uid);
        }
    }

    /// Tells pod `uid`'s worker that the pod is gone from its source. A pod waiting to be
    /// taken on after its worker failed is, once its back-off is over, only to be removed
    /// as any other.
    fn gone(&mut self, uid: &str) {
        match self.workers.get(uid) {
            Some(handle) => {
                handle.desired.send_replace(Desired::Gone);
            }
            None => {
                self.retakes.gone(uid);
            }
        }
    }

    /// Takes on again a pod whose worker failed, now that its back-off is over; one gone
    /// from its source meanwhile is told so at once, and its new worker removes it.
    fn retake(&mut self, retake: retake::Retake) {
        if self.workers.contains_key(&retake.uid) {
            return;
        }
        info!(uid = %retake.uid, gone = retake.gone, "taking on again a pod whose worker failed");
        self.take_on(retake.source, retake.pod, Instant::now());
        if retake.gone {
            self.gone(&retake.uid);
        }
    }

    /// Tells every API pod's worker whose pod the API no longer lists that it is gone.
    fn forget_unlisted(&mut self, listed: &HashSet<String>) {
        let unlisted: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, handle)| handle.source == PodSource::Api)
            .map(|(uid, _)| uid.clone())
            .chain(self.retakes.waiting(&PodSource::Api))
            .filter(|uid| !listed.contains(uid))
            .collect();
        for uid in unlisted {
            info!(%uid, "the pod is no longer bound to this node; stopping it");
            self.gone(&uid);
        }
    }

    /// Runs the static pods `current` describes, and stops those it no longer does. A
    /// changed manifest's pod (a new UID under the same name) starts once the old version
    /// has stopped, as the kubelet waits for a static pod of the same full name: the two
    /// would otherwise compete for the same ports and devices, and the new one be refused.
    /// The old worker's end runs this again.
    async fn reconcile_static(&mut self, current: &[StaticPod]) {
        let wanted: HashSet<&str> = current
            .iter()
            .filter_map(|m| m.pod.metadata.uid.as_deref())
            .collect();
        for uid in self.retakes.waiting(&PodSource::File) {
            if !wanted.contains(uid.as_str()) {
                self.gone(&uid);
            }
        }
        let mut stopping = HashSet::new();
        for (uid, handle) in &self.workers {
            if handle.source == PodSource::File && !wanted.contains(uid.as_str()) {
                info!(%uid, "its manifest is gone or changed; stopping the static pod");
                handle.desired.send_replace(Desired::Gone);
                stopping.insert(full_name(&handle.key));
            }
        }
        for manifest in current {
            let Some(uid) = manifest.pod.metadata.uid.clone() else {
                continue;
            };
            let waiting = stopping.contains(&full_name(&worker::pod_key(&manifest.pod)));
            // A pod whose worker failed waits out its back-off.
            if !waiting && !self.workers.contains_key(&uid) && !self.retakes.is_waiting(&uid) {
                self.ctx.store.put_pod(PodSource::File, &manifest.pod).await;
                self.apply(PodSource::File, manifest.pod.clone(), Instant::now());
            }
        }
        self.mirrors.want(current);
    }

    /// Hands `pod` to its worker, starting one if it has none.
    fn apply(&mut self, source: PodSource, pod: Pod, seen: Instant) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        match self.workers.get(&uid) {
            Some(handle) => {
                self.ctx.table.put(&uid, pod.clone());
                handle.desired.send_replace(Desired::Present(Arc::new(pod)));
            }
            // A pod whose worker failed waits out its back-off, whatever events come for it
            // meanwhile (its own last status patch, a re-list). Otherwise it puts the pod in
            // the table itself.
            None => {
                if let Some(pod) = self.retakes.hold(&uid, pod) {
                    self.take_on(source, pod, seen);
                }
            }
        }
    }

    /// Starts the worker of a pod seen for the first time.
    fn take_on(&mut self, source: PodSource, pod: Pod, seen: Instant) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.ctx.table.put(&uid, pod.clone());
        let stage = self.first_stage(&pod, &uid);
        info!(
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            ?stage,
            ?source,
            "taking on pod"
        );
        let (desired, rx) = watch::channel(Desired::Present(Arc::new(pod.clone())));
        self.workers.insert(
            uid.clone(),
            WorkerHandle {
                source: source.clone(),
                key: worker::pod_key(&pod),
                desired,
            },
        );
        let ctx = self.ctx.clone();
        let task_uid = uid.clone();
        let task = self.tasks.spawn(async move {
            let outcome = worker::run(ctx, pod, source, rx, stage, seen).await;
            (task_uid, outcome)
        });
        self.task_uids.insert(task.id(), uid);
    }

    /// Forgets a pod whose worker ended. The manager is the only writer of pod records, and
    /// it ignores every later event for an ended UID, so a late event can never write back
    /// the record of a pod that is gone.
    async fn worker_ended(&mut self, uid: &str, outcome: Outcome) {
        let handle = self.workers.remove(uid);
        self.ctx.table.remove(uid);
        if let Some(watched) = &self.ctx.watched {
            watched.release(uid);
        }
        if outcome == Outcome::AgentStopping {
            return;
        }
        self.retakes.forget(uid);
        self.ctx.store.remove_pod(uid).await;
        match handle.map(|h| h.source) {
            Some(PodSource::Api) => self.ended.insert(uid),
            Some(PodSource::File) => {
                // A static pod's UID is its manifest's hash: the same manifest may have come
                // back while its old worker was stopping.
                if let Some(manifests) = &self.static_pods {
                    let current = manifests.borrow().clone();
                    self.reconcile_static(&current).await;
                }
            }
            None => {}
        }
    }

    /// A worker that panicked (a bug): its containers were aborted with it (a `Live` aborts
    /// its instance when dropped). What it held is freed as its own end would have freed
    /// it, and the pod is forgotten as when the agent stops, its record kept; it is taken on
    /// afresh after a back-off ([`retake`]), only to be removed if it is gone by then.
    async fn worker_failed(&mut self, uid: &str, err: &tokio::task::JoinError) {
        let Some(handle) = self.workers.get(uid) else {
            return;
        };
        let (key, source) = (handle.key.clone(), handle.source.clone());
        let gone = matches!(*handle.desired.borrow(), Desired::Gone);
        // The latest object, with the node's own last status: restart counts and last states
        // carry on from it, as after a restart of the agent.
        let retake = self.ctx.table.pod(uid).and_then(|pod| {
            self.retakes
                .failed(uid, source.clone(), Pod::clone(&pod), gone, Instant::now())
        });
        let then = match retake {
            Some(wait) if gone => format!("the pod, gone, is removed in {}s", wait.as_secs()),
            Some(wait) => format!("it is taken on again in {}s", wait.as_secs()),
            None => "it is taken on again at its next change".into(),
        };
        error!(pod = %key.name, namespace = %key.namespace, %uid, %err, "the pod's worker failed; its containers were stopped, and {then}");
        self.ctx.recorder.record_for(
            &key,
            EventType::Warning,
            "Failed",
            &format!("wasmlet's worker for this pod failed ({err}); its containers were stopped, and {then}"),
        );
        self.ctx.release(&key).await;
        self.worker_ended(uid, Outcome::AgentStopping).await;
        // A static pod's new version may have been waiting for this one to stop.
        if source == PodSource::File
            && let Some(manifests) = &self.static_pods
        {
            let current = manifests.borrow().clone();
            if !current
                .iter()
                .any(|m| m.pod.metadata.uid.as_deref() == Some(uid))
            {
                self.reconcile_static(&current).await;
            }
        }
    }

    /// Lets every worker wind down (their channels close: the pods and their files stay for
    /// the next run), waiting at most [`STOP_TIMEOUT`] for the last log lines and status.
    /// A worker that was already removing its pod (deleted, or gone from the API) finishes
    /// that, and its record goes with it, or the next run would start the pod again.
    async fn stop(mut self) {
        self.workers.clear();
        let drained = tokio::time::timeout(STOP_TIMEOUT, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((uid, Outcome::Removed)) = joined {
                    self.ctx.store.remove_pod(&uid).await;
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("pod workers did not stop in time; leaving them");
        }
        self.ctx.store.flush().await;
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
        // Read now, not at start-up: devices come and go, and the node's status reports
        // the same figures from the same call.
        let extended = self.ctx.provider.node_contribution().extended_capacity();
        let admitted_here = admission::admit(pod, &others, self.capacity, &extended)
            .and_then(|takes| self.ctx.provider.admit(pod).map(|()| takes));
        match admitted_here {
            Ok(takes) => {
                admitted.insert(uid.to_string(), takes);
                Stage::Mount
            }
            Err(rejection) => Stage::Rejected(rejection),
        }
    }
}

/// `namespace/name`.
fn full_name(key: &PodKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// Removes pod `uid`'s files (logs, volumes, writable roots) under `pods_dir`, unmounting its
/// in-memory volumes first so that only the pod's own files go.
async fn remove_files(pods_dir: &std::path::Path, uid: &str) {
    let dir = pods_dir.join(uid);
    let unmounting = dir.clone();
    let unmounted = tokio::task::spawn_blocking(move || crate::volumes::unmount_under(&unmounting))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)));
    if let Err(err) = unmounted {
        // Removing the files now would empty the mounted volumes and fail on their mount
        // points; they are left for the next clean-up.
        warn!(dir = %dir.display(), %err, "could not unmount the pod's volumes; keeping its files");
        return;
    }
    if let Err(err) = tokio::fs::remove_dir_all(&dir).await
        && err.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), %err, "could not remove the pod's files");
    }
}

/// Resolves with true when the static pods changed; never when there are none (or their
/// watcher has stopped).
async fn changed(manifests: &mut Option<watch::Receiver<Vec<StaticPod>>>) -> bool {
    match manifests {
        Some(rx) => match rx.changed().await {
            Ok(()) => true,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The pods bound to `node_name`, as a stream of watch events. Retries are quick (100 ms
/// doubling to 1 s) so that once the API server answers again after an outage the node
/// re-lists at once: a failed attempt against a server that is down costs one refused
/// connection.
fn watch_pods(
    client: kube::Client,
    node_name: &str,
) -> impl futures::Stream<Item = Result<Event<Pod>, watcher::Error>> + Send + 'static {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    watcher::watcher(api, config).backoff(WatchBackoff::default())
}

/// The watch's retry delays.
struct WatchBackoff(crate::backoff::Backoff);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self(crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_delay())
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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

        fn size_bytes(&self) -> u64 {
            0
        }
    }

    impl Provider for Picky {
        type Image = NoImage;

        fn node_contribution(&self) -> NodeContribution {
            NodeContribution {
                extended_resources: [("devices.example/gpio".to_string(), Quantity("1".into()))]
                    .into(),
                ..Default::default()
            }
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

    /// A small node's settings.
    fn settings() -> PodSettings {
        PodSettings {
            node_name: "edge-1".into(),
            host_ip: "10.0.0.1".into(),
            capacity: Capacity {
                pods: 10,
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 1 << 40,
            },
            sync_frequency: Duration::from_secs(60),
            secrets_in_memory: false,
        }
    }

    #[tokio::test]
    async fn the_provider_and_the_advertised_devices_both_decide_admission() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let store_dir = tempfile::tempdir().unwrap();
        let manager = PodManager::new(
            PodSources {
                client: Some(kube::Client::new(service, "default")),
                static_pods: None,
                events: EventRecorder::new(None, "edge-1", crate::events::default_limit()),
            },
            Arc::new(Picky),
            settings(),
            &SharedPodState::default(),
            LocalStore::open(store_dir.path()).unwrap(),
            Link::default(),
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

    /// A runtime whose containers run until told to stop, then exit only when released: so
    /// the agent can be stopped while one of its pods is being removed.
    struct SlowToStop {
        started: Arc<tokio::sync::Notify>,
        stopping: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    }

    impl Provider for SlowToStop {
        type Image = NoImage;

        fn node_contribution(&self) -> NodeContribution {
            NodeContribution::default()
        }

        async fn pull(&self, _: ImageRequest<'_>) -> Result<NoImage, ContainerError> {
            Ok(NoImage)
        }

        async fn start(
            &self,
            _: &NoImage,
            start: ContainerStart,
        ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
            self.started.notify_one();
            let (stopping, release) = (self.stopping.clone(), self.release.clone());
            Ok(tokio::spawn(async move {
                start.stop.cancelled().await;
                stopping.notify_one();
                release.notified().await;
                ContainerExit {
                    exit_code: 0,
                    reason: "Completed".into(),
                    message: None,
                }
            }))
        }
    }

    /// Static pod `web` on node `edge-1`, its manifest in `dir`.
    fn static_web(dir: &std::path::Path) -> StaticPod {
        StaticPod {
            pod: Pod {
                metadata: ObjectMeta {
                    name: Some("web-edge-1".into()),
                    namespace: Some("default".into()),
                    uid: Some("web-hash".into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("example/app:1".into()),
                        ..Default::default()
                    }],
                    node_name: Some("edge-1".into()),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
                ..Default::default()
            },
            file: dir.join("web.yaml"),
        }
    }

    /// The pod manager of a standalone node whose data dir is `dir`, running the static
    /// pods `manifests` holds on `provider`; with its store and what it shares.
    fn standalone<P: Provider>(
        dir: &std::path::Path,
        provider: Arc<P>,
        manifests: watch::Receiver<Vec<StaticPod>>,
    ) -> (PodManager<P>, LocalStore, SharedPodState) {
        let store = LocalStore::open(dir).unwrap();
        let shared = SharedPodState {
            pods_dir: dir.join("pods"),
            ..SharedPodState::default()
        };
        let manager = PodManager::new(
            PodSources {
                client: None,
                static_pods: Some(manifests),
                events: EventRecorder::new(None, "edge-1", crate::events::default_limit()),
            },
            provider,
            settings(),
            &shared,
            store.clone(),
            Link::default(),
        );
        (manager, store, shared)
    }

    #[tokio::test]
    async fn a_pod_being_removed_when_the_agent_stops_is_not_kept_for_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let (manifests, watched) = watch::channel(vec![static_web(dir.path())]);
        let provider = SlowToStop {
            started: Arc::default(),
            stopping: Arc::default(),
            release: Arc::default(),
        };
        let (started, stopping, release) = (
            provider.started.clone(),
            provider.stopping.clone(),
            provider.release.clone(),
        );
        let (manager, store, _) = standalone(dir.path(), Arc::new(provider), watched);
        let cancel = CancellationToken::new();
        let running = tokio::spawn(manager.run(cancel.clone()));
        let soon = Duration::from_secs(10);
        tokio::time::timeout(soon, started.notified())
            .await
            .expect("the pod starts");
        store.flush().await;
        assert_eq!(
            store.pods().await.unwrap().len(),
            1,
            "a running pod is kept"
        );

        // Its manifest goes; while its container is still stopping, so does the agent.
        manifests.send_replace(Vec::new());
        tokio::time::timeout(soon, stopping.notified())
            .await
            .expect("the container is told to stop");
        cancel.cancel();
        release.notify_one();
        tokio::time::timeout(soon, running)
            .await
            .expect("the agent stops")
            .unwrap();

        store.flush().await;
        assert!(
            store.pods().await.unwrap().is_empty(),
            "the removed pod would start again on the next run"
        );
    }

    /// A runtime with a bug: its first start panics, taking the pod's worker with it.
    #[derive(Default)]
    struct PanicsFirst {
        starts: std::sync::atomic::AtomicU32,
        started: Arc<tokio::sync::Notify>,
    }

    impl Provider for PanicsFirst {
        type Image = NoImage;

        fn node_contribution(&self) -> NodeContribution {
            NodeContribution::default()
        }

        async fn pull(&self, _: ImageRequest<'_>) -> Result<NoImage, ContainerError> {
            Ok(NoImage)
        }

        async fn start(
            &self,
            _: &NoImage,
            start: ContainerStart,
        ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
            let before = self
                .starts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(before > 0, "a bug in the runtime");
            self.started.notify_one();
            Ok(tokio::spawn(async move {
                start.stop.cancelled().await;
                ContainerExit {
                    exit_code: 0,
                    reason: "Completed".into(),
                    message: None,
                }
            }))
        }
    }

    #[tokio::test]
    async fn a_pod_whose_worker_failed_is_taken_on_again_after_a_back_off() {
        let dir = tempfile::tempdir().unwrap();
        // The manifest does not change: nothing but the back-off takes the pod on again.
        let (_manifests, watched) = watch::channel(vec![static_web(dir.path())]);
        let provider = Arc::new(PanicsFirst::default());
        let (mut manager, _, shared) = standalone(dir.path(), provider.clone(), watched);
        let backoff = Duration::from_millis(200);
        manager.retakes = Retakes::new(backoff);
        let cancel = CancellationToken::new();
        let failed_at = Instant::now();
        let running = tokio::spawn(manager.run(cancel.clone()));
        tokio::time::timeout(Duration::from_secs(10), provider.started.notified())
            .await
            .expect("the pod is taken on again, and starts");
        assert_eq!(
            provider.starts.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one start failed with its worker, the next ran"
        );
        assert!(failed_at.elapsed() >= backoff, "not before its back-off");
        let running_app = |status: Option<k8s_openapi::api::core::v1::PodStatus>| {
            status
                .into_iter()
                .flat_map(|s| s.container_statuses.unwrap_or_default())
                .any(|c| c.state.is_some_and(|s| s.running.is_some()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running_app(shared.table.status("web-hash")) {
            assert!(
                Instant::now() < deadline,
                "its status shows the container running again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the agent stops")
            .unwrap();
    }
}
