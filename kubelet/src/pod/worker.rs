//! One task per pod: the pod's owner. It walks an explicit stage machine
//!
//! ```text
//!   Rejected ──────────────────────────────────────────────────────┐
//!   Mount ──▶ Pull ──▶ Init(0) ──▶ … ──▶ Init(n) ──▶ Run ──▶ Finished ──┤ deletion
//!     └── any stage, on deletion ────────────────────────────────────┴──▶ terminate, delete object
//! ```
//!
//! and it alone writes the pod's status, only when it changed. Deletion is watched at every
//! await point, so no stage can keep a deleted pod alive.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Capacity, Rejection, Requests};
use super::backoff::CrashLoop;
use super::state::{ContainerRecord, ContainerState, Phase, PodState, overwritten};
use super::table::PodTable;
use super::trace::StartTrace;
use super::{env, quantity};
use crate::events::{EventRecorder, EventType};
use crate::logs::{LogHub, LogLimits, LogSink, Stream, reader};
use crate::metrics::AgentMetrics;
use crate::node::registration::FIELD_MANAGER;
use crate::provider::{
    ContainerError, ContainerExit, ContainerStart, ImageRequest, PodKey, Provider, PulledImage,
};
use crate::usage::ContainerUsage;
use crate::volumes::{PodVolumes, VolumeContext};

/// What the manager tells a worker.
#[derive(Debug)]
pub(crate) enum PodEvent {
    /// The pod object changed.
    Updated(Box<Pod>),
    /// The pod object is gone.
    Deleted,
}

/// What every worker shares.
pub(crate) struct WorkerContext<P> {
    pub(crate) client: kube::Client,
    pub(crate) provider: Arc<P>,
    pub(crate) recorder: EventRecorder,
    pub(crate) host_ip: String,
    pub(crate) pods_dir: PathBuf,
    pub(crate) log_limits: LogLimits,
    pub(crate) logs: LogHub,
    pub(crate) table: Arc<PodTable>,
    pub(crate) metrics: Arc<AgentMetrics>,
    /// Requests of pods holding node resources, by UID; a worker leaves when it finishes.
    pub(crate) admitted: Arc<Mutex<HashMap<String, Requests>>>,
    /// The node's allocatable resources, which the downward API reports for unset limits.
    pub(crate) allocatable: Capacity,
    /// How often a running pod's ConfigMap, Secret and token volumes are brought up to date
    /// and its emptyDir size limits checked (the kubelet's `--sync-frequency`).
    pub(crate) sync_frequency: Duration,
}

impl<P> WorkerContext<P> {
    fn volume_context(&self) -> VolumeContext<'_> {
        VolumeContext {
            client: &self.client,
            allocatable: self.allocatable,
        }
    }
}

/// Where a worker starts.
#[derive(Debug)]
pub(crate) enum Stage {
    Rejected(Rejection),
    Mount,
    Pull,
    Init(usize),
    Run,
    Finished,
}

enum Next {
    Stage(Stage),
    Terminate,
}

/// A pull that failed and will be retried after this long.
const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A volume that cannot be set up is tried again after this long, doubling, as the kubelet's
/// volume manager retries (its cap is about two minutes).
const MOUNT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const MOUNT_BACKOFF_MAX: Duration = Duration::from_secs(122);
/// A status the API server did not accept is sent again after this long.
const STATUS_RETRY: Duration = Duration::from_secs(5);
/// How long the log writer may take to flush after a container ends.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit code reported for a container the agent had to kill, as for SIGKILL.
const KILLED_EXIT_CODE: i32 = 137;

type ExitFuture = Pin<Box<dyn Future<Output = (Kind, usize, ContainerExit)> + Send>>;

/// The pod as last seen, and whether it is going away.
struct Inbox {
    rx: mpsc::UnboundedReceiver<PodEvent>,
    pod: Pod,
    gone: bool,
    /// The agent is shutting down (the pod manager dropped this worker's channel): the pod
    /// stays, and so do its files, for the next run of the agent to take on.
    agent_stopping: bool,
}

impl Inbox {
    /// Resolves once the pod is being deleted or is gone; keeps `pod` current meanwhile.
    /// Cancel-safe, so it can sit in every `select!`.
    async fn deletion(&mut self) {
        if self.deleting() {
            return;
        }
        loop {
            match self.rx.recv().await {
                Some(PodEvent::Updated(pod)) => {
                    self.pod = *pod;
                    if self.deleting() {
                        return;
                    }
                }
                Some(PodEvent::Deleted) => {
                    self.gone = true;
                    return;
                }
                None => {
                    self.agent_stopping = true;
                    return;
                }
            }
        }
    }

    /// Whether the worker must wind the pod down: it is being deleted, is gone, or the agent
    /// is stopping.
    fn deleting(&self) -> bool {
        self.gone || self.agent_stopping || self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// A running container instance.
struct Live {
    stop: CancellationToken,
    abort: AbortHandle,
    started: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    App,
}

/// Runs a pod from `stage` until it is deleted.
pub(crate) async fn run<P: Provider>(
    ctx: Arc<WorkerContext<P>>,
    pod: Pod,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    stage: Stage,
    seen: Instant,
) {
    let key = PodKey {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    };
    let state = PodState::new(&pod, &ctx.host_ip);
    let volumes = PodVolumes::new(&ctx.pods_dir.join(&key.uid));
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let mut worker = Worker {
        api: Api::namespaced(ctx.client.clone(), &key.namespace),
        ctx,
        key,
        state,
        volumes,
        images: HashMap::new(),
        live_init: None,
        live_app: (0..containers).map(|_| None).collect(),
        crash_init: CrashLoop::default(),
        crash_app: vec![CrashLoop::default(); containers],
        last_sent: None,
        unsent: false,
        trace: Some(StartTrace::new(seen)),
    };
    let mut inbox = Inbox {
        rx,
        pod,
        gone: false,
        agent_stopping: false,
    };
    worker.drive(&mut inbox, stage).await;
}

struct Worker<P: Provider> {
    ctx: Arc<WorkerContext<P>>,
    api: Api<Pod>,
    key: PodKey,
    state: PodState,
    volumes: PodVolumes,
    images: HashMap<String, P::Image>,
    live_init: Option<Live>,
    live_app: Vec<Option<Live>>,
    crash_init: CrashLoop,
    crash_app: Vec<CrashLoop>,
    last_sent: Option<PodStatus>,
    /// The last status patch failed.
    unsent: bool,
    /// The pod's first start, from its watch event until its containers first all ran and
    /// the API server had that status.
    trace: Option<StartTrace>,
}

impl<P: Provider> Worker<P> {
    async fn drive(&mut self, inbox: &mut Inbox, mut stage: Stage) {
        debug!(pod = %self.key.name, ?stage, "pod worker started");
        self.mark("admit");
        let mut exits: FuturesUnordered<ExitFuture> = FuturesUnordered::new();
        loop {
            if inbox.deleting() {
                break;
            }
            let next = match stage {
                Stage::Rejected(rejection) => {
                    self.reject(&inbox.pod, rejection).await;
                    self.release();
                    self.idle_until_deleted(inbox).await
                }
                Stage::Finished => {
                    self.release();
                    self.idle_until_deleted(inbox).await
                }
                Stage::Mount => self.mount_all(inbox).await,
                Stage::Pull => self.pull_all(inbox).await,
                Stage::Init(i) => self.run_init(inbox, &mut exits, i).await,
                Stage::Run => self.run_app(inbox, &mut exits).await,
            };
            match next {
                Next::Stage(s) => stage = s,
                Next::Terminate => break,
            }
        }
        self.terminate(inbox, &mut exits).await;
        self.release();
    }

    fn release(&self) {
        let mut admitted = self.ctx.admitted.lock().unwrap_or_else(|p| p.into_inner());
        admitted.remove(&self.key.uid);
    }

    async fn idle_until_deleted(&mut self, inbox: &mut Inbox) -> Next {
        loop {
            self.publish().await;
            tokio::select! {
                _ = inbox.deletion() => return Next::Terminate,
                _ = self.status_retry_due() => {}
            }
        }
    }

    /// Resolves when the last status was not accepted and it is time to send it again;
    /// never resolves while the API server has the current status.
    async fn status_retry_due(&self) {
        if self.unsent {
            tokio::time::sleep(STATUS_RETRY).await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    async fn reject(&mut self, pod: &Pod, rejection: Rejection) {
        self.state.finish(
            Phase::Failed,
            Some(&rejection.reason),
            Some(rejection.message.clone()),
        );
        self.ctx.recorder.record(
            pod,
            None,
            EventType::Warning,
            &rejection.reason,
            &rejection.message,
        );
    }

    /// Sends the status if it changed since the last one the API server accepted.
    async fn publish(&mut self) {
        let status = self.state.to_status();
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        self.ctx.table.set_status(&self.key.uid, status.clone());
        let patch = Pod {
            status: Some(status.clone()),
            ..Default::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let started = Instant::now();
        match self
            .api
            .patch_status(&self.key.name, &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                self.ctx.metrics.observe_status_patch(started.elapsed());
                self.last_sent = Some(status);
                self.unsent = false;
            }
            Err(err) => {
                warn!(pod = %self.key.name, %err, "pod status update failed; retrying");
                self.unsent = true;
            }
        }
    }

    fn containers(pod: &Pod, kind: Kind) -> Vec<Container> {
        let spec = pod.spec.clone().unwrap_or_default();
        match kind {
            Kind::Init => spec.init_containers.unwrap_or_default(),
            Kind::App => spec.containers,
        }
    }

    fn record(&mut self, kind: Kind, index: usize) -> &mut ContainerRecord {
        match kind {
            Kind::Init => &mut self.state.init[index],
            Kind::App => &mut self.state.app[index],
        }
    }

    /// Sets up the pod's volumes, as the kubelet does before it pulls: a volume that cannot
    /// be set up (a Secret that does not exist yet, say) holds the pod in ContainerCreating
    /// with a FailedMount event, and is retried.
    async fn mount_all(&mut self, inbox: &mut Inbox) -> Next {
        let mut delay = MOUNT_BACKOFF_INITIAL;
        loop {
            let pod = inbox.pod.clone();
            let ctx = self.ctx.clone();
            let volume_ctx = ctx.volume_context();
            let mounted = tokio::select! {
                result = self.volumes.set_up(&volume_ctx, &pod) => result,
                _ = inbox.deletion() => return Next::Terminate,
            };
            let Err(err) = mounted else {
                self.mark("mount");
                return Next::Stage(Stage::Pull);
            };
            let message = err.to_string();
            warn!(pod = %self.key.name, %message, "volume set-up failed; retrying");
            for record in self.state.init.iter_mut().chain(self.state.app.iter_mut()) {
                record.state = ContainerState::waiting("ContainerCreating", Some(message.clone()));
            }
            self.event(&pod, None, EventType::Warning, "FailedMount", &message);
            self.publish().await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inbox.deletion() => return Next::Terminate,
            }
            delay = (delay * 2).min(MOUNT_BACKOFF_MAX);
        }
    }

    async fn pull_all(&mut self, inbox: &mut Inbox) -> Next {
        let pod = inbox.pod.clone();
        let secrets = env::pull_secrets(&self.ctx.client, &pod).await;
        let mut delay = PULL_BACKOFF_INITIAL;
        for (kind, container) in Self::containers(&pod, Kind::Init)
            .into_iter()
            .map(|c| (Kind::Init, c))
            .chain(
                Self::containers(&pod, Kind::App)
                    .into_iter()
                    .map(|c| (Kind::App, c)),
            )
        {
            let index = match kind {
                Kind::Init => self
                    .state
                    .init
                    .iter()
                    .position(|r| r.name == container.name),
                Kind::App => self.state.app.iter().position(|r| r.name == container.name),
            }
            .unwrap_or(0);
            let image = container.image.clone().unwrap_or_default();
            loop {
                let request = ImageRequest {
                    pod: &self.key,
                    image: &image,
                    pull_policy: container.image_pull_policy.as_deref(),
                    pull_secrets: &secrets,
                    command: container.command.as_deref().unwrap_or_default(),
                };
                self.event(
                    &pod,
                    Some(&container.name),
                    EventType::Normal,
                    "Pulling",
                    &format!("Pulling image \"{image}\""),
                );
                let started = Instant::now();
                let pulled = tokio::select! {
                    result = self.ctx.provider.pull(request) => result,
                    _ = inbox.deletion() => return Next::Terminate,
                };
                match pulled {
                    Ok(pulled) => {
                        let took = started.elapsed();
                        self.ctx.metrics.observe_image_pull(took);
                        self.event(
                            &pod,
                            Some(&container.name),
                            EventType::Normal,
                            "Pulled",
                            &format!(
                                "Successfully pulled image \"{image}\" in {:.3}s",
                                took.as_secs_f64()
                            ),
                        );
                        self.record(kind, index).image_id = Some(pulled.image_id());
                        self.images.insert(container.name.clone(), pulled);
                        break;
                    }
                    Err(err) => {
                        self.event(
                            &pod,
                            Some(&container.name),
                            EventType::Warning,
                            "Failed",
                            &format!("Failed to pull image \"{image}\": {}", err.message),
                        );
                        self.record(kind, index).state =
                            ContainerState::waiting(&err.reason, Some(err.message.clone()));
                        if err.fatal {
                            self.state
                                .finish(Phase::Failed, Some(&err.reason), Some(err.message));
                            return Next::Stage(Stage::Finished);
                        }
                        self.publish().await;
                        self.record(kind, index).state = ContainerState::waiting(
                            "ImagePullBackOff",
                            Some(format!(
                                "Back-off pulling image \"{image}\": {}",
                                err.message
                            )),
                        );
                        self.event(
                            &pod,
                            Some(&container.name),
                            EventType::Normal,
                            "BackOff",
                            &format!("Back-off pulling image \"{image}\""),
                        );
                        self.publish().await;
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = inbox.deletion() => return Next::Terminate,
                        }
                        delay = (delay * 2).min(PULL_BACKOFF_MAX);
                    }
                }
            }
        }
        self.mark("pull");
        Next::Stage(if self.state.init.is_empty() {
            Stage::Run
        } else {
            Stage::Init(0)
        })
    }

    /// Ends stage `name` of the pod's first start.
    fn mark(&mut self, name: &'static str) {
        if let Some(trace) = &mut self.trace {
            trace.mark(name);
        }
    }

    fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        self.ctx
            .recorder
            .record(pod, container, kind, reason, message);
    }

    fn restart_policy(pod: &Pod) -> String {
        pod.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Starts container `index` of `kind` and returns a future of its exit.
    async fn launch(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
    ) -> Result<ExitFuture, ContainerError> {
        let launching = Instant::now();
        let container = Self::containers(pod, kind)
            .into_iter()
            .nth(index)
            .ok_or_else(|| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("container {index} is not in the pod spec"),
                fatal: true,
            })?;
        let env = env::resolve(
            &self.ctx.client,
            pod,
            &container,
            &self.ctx.host_ip,
            self.ctx.allocatable,
        )
        .await
        .map_err(|e| ContainerError {
            reason: "CreateContainerConfigError".into(),
            message: e.0,
            fatal: false,
        })?;
        let restart = self.record(kind, index).restart_count;
        let pod_dir = self.ctx.pods_dir.join(&self.key.uid);
        let log_path = reader::instance_path(
            &reader::container_dir(&self.ctx.pods_dir, &self.key.uid, &container.name),
            restart,
        );
        let instance_dir = |restart: i32| {
            pod_dir
                .join("rootfs")
                .join(format!("{}-{restart}", container.name))
        };
        let root_dir = instance_dir(restart);
        // File mounts are staged beside the root, never inside it, where the guest could
        // reach them another way.
        let staging = root_dir.with_extension("mounts");
        let fresh_root = async {
            // Only the current and the previous instance's logs are kept (`--previous`), as
            // the kubelet does; older ones would grow without bound in a crash loop.
            if restart >= 2 {
                remove_instance_logs(&log_path, restart - 2).await;
            }
            // A restarted container starts from a clean writable layer, as a new container does.
            if restart > 0 {
                let previous = instance_dir(restart - 1);
                let _ = tokio::fs::remove_dir_all(previous.with_extension("mounts")).await;
                let _ = tokio::fs::remove_dir_all(previous).await;
            }
            let _ = tokio::fs::remove_dir_all(&staging).await;
            let _ = tokio::fs::remove_dir_all(&root_dir).await;
            tokio::fs::create_dir_all(&root_dir).await
        };
        fresh_root.await.map_err(|e| ContainerError {
            reason: "CreateContainerError".into(),
            message: format!("cannot create the container's root directory: {e}"),
            fatal: false,
        })?;
        let mounts = self
            .volumes
            .mounts_for(&container, &env, &staging)
            .await
            .map_err(|message| ContainerError {
                reason: "CreateContainerConfigError".into(),
                message,
                fatal: false,
            })?;
        let (sink, writer) = LogSink::open(log_path, self.ctx.log_limits, &self.ctx.logs)
            .await
            .map_err(|e| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("cannot open the container log: {e}"),
                fatal: false,
            })?;
        let limits = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let stop = CancellationToken::new();
        let usage = Arc::new(ContainerUsage::default());
        let start = ContainerStart {
            pod: self.key.clone(),
            container: container.name.clone(),
            command: container.command.clone().unwrap_or_default(),
            args: container.args.clone().unwrap_or_default(),
            env,
            stdout: sink.stream(Stream::Stdout),
            stderr: sink.stream(Stream::Stderr),
            root_dir,
            mounts,
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            memory_limit_bytes: limits.get("memory").and_then(quantity::bytes),
            cpu_limit_millis: limits.get("cpu").and_then(quantity::cpu_millis),
            usage: usage.clone(),
            stop: stop.clone(),
        };
        let image = self
            .images
            .get(&container.name)
            .ok_or_else(|| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("image of container {} was not pulled", container.name),
                fatal: false,
            })?;
        let task = self.ctx.provider.start(image, start).await;
        let task = match task {
            Ok(task) => {
                self.ctx
                    .metrics
                    .observe_container_start(launching.elapsed());
                task
            }
            Err(err) => {
                sink.note(Stream::Stderr, &format!("wasmlet: {}", err.message))
                    .await;
                return Err(err);
            }
        };
        drop(sink);
        self.event(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Created",
            &format!("Created container {}", container.name),
        );
        self.event(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Started",
            &format!("Started container {}", container.name),
        );
        let live = Live {
            stop,
            abort: task.abort_handle(),
            started: Instant::now(),
        };
        match kind {
            Kind::Init => self.live_init = Some(live),
            Kind::App => self.live_app[index] = Some(live),
        }
        self.record(kind, index).state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        self.ctx
            .table
            .container_started(&self.key.uid, &container.name, usage);
        let name = container.name.clone();
        Ok(Box::pin(async move {
            let exit = match task.await {
                Ok(exit) => exit,
                Err(err) if err.is_cancelled() => ContainerExit {
                    exit_code: KILLED_EXIT_CODE,
                    reason: "Error".into(),
                    message: Some("killed after the termination grace period".into()),
                },
                Err(err) => ContainerExit {
                    exit_code: 128,
                    reason: "Error".into(),
                    message: Some(format!("the runtime failed while running {name}: {err}")),
                },
            };
            // The guest's streams are gone with its task; wait for the last line to land.
            let _ = tokio::time::timeout(LOG_FLUSH_TIMEOUT, writer).await;
            (kind, index, exit)
        }))
    }

    /// Records that container `index` of `kind` ended.
    fn record_exit(&mut self, kind: Kind, index: usize, exit: &ContainerExit) -> Duration {
        let live = match kind {
            Kind::Init => self.live_init.take(),
            Kind::App => self.live_app[index].take(),
        };
        let started_instant = live.as_ref().map_or_else(Instant::now, |l| l.started);
        let name = self.record(kind, index).name.clone();
        self.ctx.table.container_stopped(&self.key.uid, &name);
        let record = self.record(kind, index);
        let started_at = match record.state {
            ContainerState::Running { started_at } => Some(started_at),
            _ => None,
        };
        record.state = ContainerState::Terminated {
            exit_code: exit.exit_code,
            reason: exit.reason.clone(),
            message: exit.message.clone(),
            started_at,
            finished_at: Timestamp::now(),
        };
        let crash = match kind {
            Kind::Init => &mut self.crash_init,
            Kind::App => &mut self.crash_app[index],
        };
        crash.delay_after_exit(started_instant, Instant::now())
    }

    /// A Warning event for a container that ran and failed (a trap, a non-zero exit, an
    /// OOM kill), so `kubectl describe` and `kubectl get events` show why without the status.
    /// One that never started already had its `Failed` event.
    fn report_failure(&mut self, pod: &Pod, kind: Kind, index: usize) {
        let record = self.record(kind, index);
        let ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at: Some(_),
            ..
        } = &record.state
        else {
            return;
        };
        if *exit_code == 0 {
            return;
        }
        let name = record.name.clone();
        let text = format!(
            "Container {name} failed: exit code {exit_code} ({reason}){}",
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        self.event(pod, Some(&name), EventType::Warning, "Failed", &text);
    }

    /// Moves a terminated container to waiting for its next instance.
    fn prepare_restart(&mut self, kind: Kind, index: usize, delay: Duration, pod_name: &str) {
        let record = self.record(kind, index);
        record.last_terminated = Some(record.state.clone());
        record.restart_count += 1;
        record.state = if delay.is_zero() {
            ContainerState::waiting("ContainerCreating", None)
        } else {
            ContainerState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={pod_name}",
                    delay.as_secs(),
                    record.name
                )),
            )
        };
    }

    async fn run_init(
        &mut self,
        inbox: &mut Inbox,
        exits: &mut FuturesUnordered<ExitFuture>,
        index: usize,
    ) -> Next {
        let pod = inbox.pod.clone();
        let policy = Self::restart_policy(&pod);
        loop {
            let exit = match self.launch(&pod, Kind::Init, index).await {
                Ok(mut exit) => {
                    self.publish().await;
                    tokio::select! {
                        (_, _, exit) = &mut exit => exit,
                        _ = inbox.deletion() => {
                            // Termination stops it and waits for this exit with the others.
                            exits.push(exit);
                            return Next::Terminate;
                        }
                    }
                }
                Err(err) if err.fatal => {
                    return self
                        .fail_to_start(&pod, Kind::Init, index, err, exits)
                        .await;
                }
                Err(err) => self.start_failed(&pod, Kind::Init, index, err).await,
            };
            let delay = self.record_exit(Kind::Init, index, &exit);
            self.report_failure(&pod, Kind::Init, index);
            if exit.exit_code == 0 {
                let next = index + 1;
                if next == self.state.init.len() {
                    self.state.initialized = true;
                    for app in &mut self.state.app {
                        app.state = ContainerState::waiting("ContainerCreating", None);
                    }
                    self.mark("init");
                    return Next::Stage(Stage::Run);
                }
                return Next::Stage(Stage::Init(next));
            }
            if policy == "Never" {
                self.state.finish(
                    Phase::Failed,
                    None,
                    Some(format!(
                        "init container {} failed",
                        self.state.init[index].name
                    )),
                );
                return Next::Stage(Stage::Finished);
            }
            self.prepare_restart(
                Kind::Init,
                index,
                delay,
                &pod.metadata.name.clone().unwrap_or_default(),
            );
            self.publish().await;
            if !delay.is_zero() {
                self.event(
                    &pod,
                    Some(&self.state.init[index].name.clone()),
                    EventType::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inbox.deletion() => return Next::Terminate,
            }
        }
    }

    /// A container could not be started: its state says why, and it counts as a failed run.
    async fn start_failed(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: ContainerError,
    ) -> ContainerExit {
        let name = self.record(kind, index).name.clone();
        self.event(
            pod,
            Some(&name),
            EventType::Warning,
            "Failed",
            &format!("Error: {}", err.message),
        );
        self.record(kind, index).state =
            ContainerState::waiting(&err.reason, Some(err.message.clone()));
        self.publish().await;
        ContainerExit {
            exit_code: 128,
            reason: err.reason,
            message: Some(err.message),
        }
    }

    /// A start failure that no retry can mend (a malformed annotation, say) fails the pod
    /// at once, as a fatal pull error does, instead of crash-looping on it.
    async fn fail_to_start(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: ContainerError,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) -> Next {
        let (reason, message) = (err.reason.clone(), err.message.clone());
        self.start_failed(pod, kind, index, err).await;
        self.stop_containers(pod, exits).await;
        self.state
            .finish(Phase::Failed, Some(&reason), Some(message));
        Next::Stage(Stage::Finished)
    }

    async fn run_app(
        &mut self,
        inbox: &mut Inbox,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) -> Next {
        let pod = inbox.pod.clone();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let policy = Self::restart_policy(&pod);
        let count = self.state.app.len();
        let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); count];
        let period = self.ctx.sync_frequency;
        let mut sync = tokio::time::interval_at((Instant::now() + period).into(), period);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = Instant::now();
            let starting: Vec<usize> = (0..count)
                .filter(|&i| due[i].is_some_and(|at| at <= now))
                .collect();
            for index in starting {
                due[index] = None;
                match self.launch(&pod, Kind::App, index).await {
                    Ok(exit) => exits.push(exit),
                    Err(err) if err.fatal => {
                        return self.fail_to_start(&pod, Kind::App, index, err, exits).await;
                    }
                    Err(err) => {
                        let exit = self.start_failed(&pod, Kind::App, index, err).await;
                        exits.push(Box::pin(async move { (Kind::App, index, exit) }));
                    }
                }
            }
            if self.state.app.iter().any(ContainerRecord::is_running)
                || due.iter().any(Option::is_some)
            {
                self.state.phase = Phase::Running;
            }
            let first_run =
                self.state.app.iter().all(ContainerRecord::is_running) && self.trace.is_some();
            if first_run {
                self.mark("start");
            }
            if exits.is_empty() && due.iter().all(Option::is_none) {
                let all_ok =
                    self.state.app.iter().all(|c| {
                        matches!(c.state, ContainerState::Terminated { exit_code: 0, .. })
                    });
                self.state.finish(
                    if all_ok {
                        Phase::Succeeded
                    } else {
                        Phase::Failed
                    },
                    None,
                    None,
                );
                return Next::Stage(Stage::Finished);
            }
            self.publish().await;
            if first_run && let Some(mut trace) = self.trace.take() {
                trace.mark("status_patch");
                self.ctx.metrics.observe_pod_start(trace.total());
                info!(pod = %pod_name, total_ms = trace.total().as_secs_f64() * 1e3, stages = %trace, "pod started");
            }
            let next_due = due.iter().flatten().min().copied();
            tokio::select! {
                Some((_, index, exit)) = exits.next() => {
                    let delay = self.record_exit(Kind::App, index, &exit);
                    self.report_failure(&pod, Kind::App, index);
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => exit.exit_code != 0,
                        _ => true,
                    };
                    info!(pod = %pod_name, container = %self.state.app[index].name, exit = exit.exit_code, restart, "container exited");
                    if restart {
                        self.prepare_restart(Kind::App, index, delay, &pod_name);
                        if !delay.is_zero() {
                            let name = self.state.app[index].name.clone();
                            self.event(&pod, Some(&name), EventType::Warning, "BackOff", "Back-off restarting failed container");
                        }
                        due[index] = Some(Instant::now() + delay);
                    }
                }
                _ = sleep_until(next_due) => {}
                _ = self.status_retry_due() => {}
                _ = sync.tick() => {
                    // The latest object: a label change shows in downwardAPI volumes.
                    let current = inbox.pod.clone();
                    if self.last_sent.as_ref().is_some_and(|sent| overwritten(sent, current.status.as_ref())) {
                        info!(pod = %pod_name, "the pod's status was changed by another writer; sending the node's again");
                        self.last_sent = None;
                    }
                    let ctx = self.ctx.clone();
                    let updated = self.volumes.refresh(&ctx.volume_context(), &current).await;
                    if !updated.is_empty() {
                        info!(pod = %pod_name, volumes = ?updated, "volumes updated");
                    }
                    if let Some(message) = self.volumes.over_size_limit().await {
                        return self.evict(&current, exits, message).await;
                    }
                }
                _ = inbox.deletion() => return Next::Terminate,
            }
        }
    }

    /// Stops every running container: at once, since a Wasm guest cannot catch SIGTERM, and
    /// aborted if the runtime takes longer than the pod's grace period to wind it down.
    async fn stop_containers(&mut self, pod: &Pod, exits: &mut FuturesUnordered<ExitFuture>) {
        let grace = Duration::from_secs(
            pod.metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64,
        );
        let mut stopping = Vec::new();
        if let Some(live) = self.live_init.take() {
            stopping.push(live);
        }
        for (index, live) in self.live_app.iter_mut().enumerate() {
            if let Some(live) = live.take() {
                let name = self.state.app[index].name.clone();
                self.ctx.recorder.record(
                    pod,
                    Some(&name),
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                stopping.push(live);
            }
        }
        for live in &stopping {
            live.stop.cancel();
        }
        let drained = tokio::time::timeout(grace, async {
            while let Some((kind, index, exit)) = exits.next().await {
                self.record_exit(kind, index, &exit);
            }
        })
        .await;
        if drained.is_err() {
            for live in &stopping {
                live.abort.abort();
            }
            while let Some((kind, index, exit)) = exits.next().await {
                self.record_exit(kind, index, &exit);
            }
        }
    }

    /// Evicts the pod, as the kubelet's eviction manager does when a pod outgrows what it
    /// asked for: its containers stop and it fails with reason `Evicted`.
    async fn evict(
        &mut self,
        pod: &Pod,
        exits: &mut FuturesUnordered<ExitFuture>,
        message: String,
    ) -> Next {
        warn!(pod = %self.key.name, %message, "evicting pod");
        self.event(pod, None, EventType::Warning, "Evicted", &message);
        self.stop_containers(pod, exits).await;
        self.state
            .finish(Phase::Failed, Some("Evicted"), Some(message));
        Next::Stage(Stage::Finished)
    }

    /// Stops whatever runs, within the grace period, then deletes the pod object and the
    /// pod's files. When only the agent is stopping, the pod object and its files (logs for
    /// `--previous`, emptyDir data) stay for the agent's next run.
    async fn terminate(&mut self, inbox: &mut Inbox, exits: &mut FuturesUnordered<ExitFuture>) {
        let pod = inbox.pod.clone();
        self.stop_containers(&pod, exits).await;
        if inbox.agent_stopping {
            return;
        }
        if !inbox.gone {
            self.publish().await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.key.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.api.delete(&self.key.name, &params).await {
                Ok(_) => info!(pod = %self.key.name, "pod deleted"),
                Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
                Err(err) => warn!(pod = %self.key.name, %err, "could not remove the pod object"),
            }
        }
        let dir = self.ctx.pods_dir.join(&self.key.uid);
        if let Err(err) = tokio::fs::remove_dir_all(&dir).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), %err, "could not remove the pod's files");
        }
    }
}

/// Removes instance `restart`'s log and its rotations, beside `current` (another instance's log).
async fn remove_instance_logs(current: &std::path::Path, restart: i32) {
    let Some(dir) = current.parent() else { return };
    let prefix = format!("{restart}.log");
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == prefix || name.starts_with(&format!("{prefix}.")) {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (mpsc::UnboundedSender<PodEvent>, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Inbox {
            rx,
            pod: Pod::default(),
            gone: false,
            agent_stopping: false,
        };
        (tx, inbox)
    }

    #[tokio::test]
    async fn a_closed_inbox_means_the_agent_is_stopping_not_that_the_pod_is_gone() {
        // The pod manager drops every worker's channel when the agent stops; the pod and its
        // files must outlive that, for the agent's next run.
        let (tx, mut stopping) = inbox();
        drop(tx);
        stopping.deletion().await;
        assert!(stopping.agent_stopping && !stopping.gone);
        assert!(stopping.deleting(), "the worker still winds down");

        let (tx, mut deleted) = inbox();
        tx.send(PodEvent::Deleted).unwrap();
        deleted.deletion().await;
        assert!(deleted.gone && !deleted.agent_stopping);
    }
}
