//! One task per pod: the pod's owner. It walks an explicit stage machine
//!
//! ```text
//!   Rejected ──────────────────────────────────────────────────────┐
//!   Mount ──▶ Pull ──▶ Init(0) ──▶ … ──▶ Init(n) ──▶ Run ──▶ Finished ──┤ deletion
//!     │                                                          ▲     │
//!     ├── any stage, past activeDeadlineSeconds: stop, Failed ───┘     │
//!     └── any stage, on deletion ────────────────────────────────────┴──▶ terminate, delete object
//! ```
//!
//! and it computes and sends the pod's status, only when it changed (the mirror keeper only
//! gives a static pod's new mirror pod the status the worker last computed). Deletion is watched at every
//! await point, so no stage can keep a deleted pod alive. Each stage is a module with one
//! job: `mount` (volumes), `pull` (images), `run` (init and app containers, restarts),
//! `launch` (one container instance: its env, root dir, log and provider start), `status`
//! (publishing the status to the store, the table and the API) and `stop` (stopping,
//! eviction and removal). The pod object reaches the worker through its [`Inbox`].

mod inbox;
mod launch;
mod layout;
mod mount;
mod probing;
mod pull;
mod run;
mod status;
mod stop;

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
use kube::api::{DeleteParams, Preconditions};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Capacity, Rejection, Requests};
use super::backoff::CrashLoop;
use super::env::ObjectReads;
use super::sleep_until;
use super::state::{ContainerRecord, ContainerState, Phase, PodState, overwritten};
use super::status_sender::{PodStatusHandle, StatusSender, Target};
use super::table::PodTable;
use super::trace::StartTrace;
use super::watched::WatchedObjects;
use super::{admission, env, quantity};
use crate::events::{EventRecorder, EventType, StartInProgress};
use crate::link::Link;
use crate::logs::{LogHub, LogLimits, LogSink, Stream, reader};
use crate::metrics::AgentMetrics;
use crate::provider::{
    ContainerError, ContainerExit, ContainerStart, ImageRequest, PodKey, Provider, PulledImage,
};
use crate::store::{LocalStore, PodSource};
use crate::usage::ContainerUsage;
use crate::volumes::{PodVolumes, VolumeContext};
use launch::NotStarted;

pub(crate) use inbox::{Desired, Inbox};

/// What every worker shares.
pub(crate) struct WorkerContext<P> {
    /// None on a standalone node (static pods, no API server).
    pub(crate) client: Option<kube::Client>,
    /// The node's local store: the pod's status is kept there for the next run.
    pub(crate) store: LocalStore,
    /// The ConfigMaps and Secrets pods read, each watched once (None on a standalone node).
    pub(crate) watched: Option<WatchedObjects>,
    /// The link to the API server, which the pod watch reports on.
    pub(crate) link: Link,
    /// Sends the pods' statuses to the API server.
    pub(crate) status: StatusSender,
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
    /// Secret and projected volumes each get a tmpfs.
    pub(crate) secrets_in_memory: bool,
}

impl<P> WorkerContext<P> {
    fn reads(&self) -> ObjectReads<'_> {
        ObjectReads {
            client: self.client.as_ref(),
            watched: self.watched.as_ref(),
            store: &self.store,
        }
    }

    fn volume_context(&self) -> VolumeContext<'_> {
        VolumeContext {
            reads: self.reads(),
            allocatable: self.allocatable,
            metrics: &self.metrics,
            secrets_in_memory: self.secrets_in_memory,
        }
    }
}

impl<P: Provider> WorkerContext<P> {
    /// Frees what a pod held: its share of the node at admission, and whatever the provider
    /// keeps for it (granted devices). Its containers have all ended.
    pub(crate) async fn release(&self, key: &PodKey) {
        // The provider first: once admission no longer counts the pod, a newcomer may be
        // admitted and started, and must find the devices free.
        self.provider.pod_ended(key).await;
        self.admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key.uid);
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

impl Stage {
    /// Whether the pod has nothing left to run: refused, or all its containers done for good.
    fn is_over(&self) -> bool {
        matches!(self, Stage::Finished | Stage::Rejected(_))
    }
}

enum Next {
    Stage(Stage),
    Terminate,
}

/// A container instance that could not be created (a ConfigMap key it needs is missing,
/// say) is tried again after this, doubling to [`CREATE_BACKOFF_MAX`], or sooner when an
/// object it reads changes (but never sooner than this after the failure).
const CREATE_BACKOFF_INITIAL: Duration = Duration::from_secs(2);
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A pull that failed and will be retried after this long.
const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A volume that cannot be set up is tried again after this long, doubling, as the kubelet's
/// volume manager retries (its cap is about two minutes).
const MOUNT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const MOUNT_BACKOFF_MAX: Duration = Duration::from_secs(122);
/// How long the log writer may take to flush after a container ends.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit code reported for a container the agent had to kill, as for SIGKILL.
const KILLED_EXIT_CODE: i32 = 137;

type ExitFuture = Pin<Box<dyn Future<Output = (Kind, usize, ContainerExit)> + Send>>;

/// A running container instance.
struct Live {
    stop: CancellationToken,
    abort: AbortHandle,
    started: Instant,
}

/// An instance lives no longer than the worker's record of it: a worker that ends without
/// stopping it (it panicked) aborts it rather than leave it running unowned. Every other
/// way a `Live` goes, its instance has already ended.
impl Drop for Live {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Init,
    App,
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The pod is gone and so are its files: the manager forgets it, store included.
    Removed,
    /// The agent is stopping: the pod, its files and its record stay for the next run.
    AgentStopping,
}

/// Which pod `pod` is, as providers see it.
pub(crate) fn pod_key(pod: &Pod) -> PodKey {
    PodKey {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Runs a pod from `stage` until it is deleted or the agent stops.
pub(crate) async fn run<P: Provider>(
    ctx: Arc<WorkerContext<P>>,
    pod: Pod,
    source: PodSource,
    rx: watch::Receiver<Desired>,
    stage: Stage,
    seen: Instant,
) -> Outcome {
    let key = pod_key(&pod);
    let state = PodState::new(&pod, &ctx.host_ip);
    let volumes = PodVolumes::new(&ctx.pods_dir.join(&key.uid));
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let api = ctx
        .client
        .clone()
        .map(|client| Api::<Pod>::namespaced(client, &key.namespace));
    // A static pod's status goes to its mirror pod, which has the same name.
    let status = api.as_ref().map(|api| {
        let target = Target {
            api: api.clone(),
            name: key.name.clone(),
            uid: (source == PodSource::Api).then(|| key.uid.clone()),
        };
        ctx.status.register(&key.uid, target)
    });
    let giving_way = ctx.recorder.start_in_progress();
    let mut worker = Worker {
        api,
        status,
        changes: ctx.watched.as_ref().map(|w| w.changes(&key.uid)),
        source,
        ctx,
        key,
        state,
        volumes,
        images: HashMap::new(),
        live_init: None,
        live_app: (0..containers).map(|_| None).collect(),
        // Admission read every probe; one it refused never reaches a worker.
        probes: pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| super::probe::Probes::of(c).unwrap_or_default())
            .collect(),
        probing: (0..containers).map(|_| None).collect(),
        crash_init: CrashLoop::default(),
        crash_app: vec![CrashLoop::default(); containers],
        last_stored: None,
        trace: Some(StartTrace::new(seen)),
        giving_way: Some(giving_way),
        start_sent: None,
        laid_out: Default::default(),
    };
    // The active deadline counts from the pod's start time, which survives the agent's
    // restarts, as the kubelet's does.
    let active_since = Some(worker.state.start_time());
    let mut inbox = Inbox::new(rx, pod, active_since);
    worker.drive(&mut inbox, stage).await;
    if inbox.agent_stopping {
        Outcome::AgentStopping
    } else {
        Outcome::Removed
    }
}

struct Worker<P: Provider> {
    ctx: Arc<WorkerContext<P>>,
    /// None on a standalone node: the store and the table are then the only readers.
    api: Option<Api<Pod>>,
    /// Where the pod came from: a static pod's status goes to its mirror pod, and its
    /// object is never deleted through the API.
    source: PodSource,
    /// Where the pod's statuses go to the API server (None on a standalone node).
    status: Option<PodStatusHandle>,
    /// Tells the worker when a ConfigMap or Secret it reads changes.
    changes: Option<watch::Receiver<u64>>,
    key: PodKey,
    state: PodState,
    volumes: PodVolumes,
    images: HashMap<String, P::Image>,
    live_init: Option<Live>,
    live_app: Vec<Option<Live>>,
    /// Each app container's probes, from the spec.
    probes: Vec<super::probe::Probes>,
    /// Each running app container instance's probing.
    probing: Vec<Option<probing::Probing>>,
    crash_init: CrashLoop,
    crash_app: Vec<CrashLoop>,
    /// The last status written to the store and the table, and handed to the sender.
    last_stored: Option<PodStatus>,
    /// The pod's first start, from its watch event until its containers first all ran and
    /// the API server had that status.
    trace: Option<StartTrace>,
    /// Events wait while the start is in progress (its first second at most): until the
    /// trace ends, the pod is refused or has finished, or the worker ends.
    giving_way: Option<StartInProgress>,
    /// The version of the status that first showed the containers all running, once it is
    /// handed over: the start trace ends when the API server answers its request.
    start_sent: Option<u64>,
    /// Container instances whose directories were made during the Mount stage; each start
    /// takes its own out.
    laid_out: std::collections::HashSet<layout::Instance>,
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
            // Checked before each stage too: a pod taken on again after the agent's restart
            // may be past its deadline already, and is not set up again first.
            if !stage.is_over() && inbox.past_deadline() {
                stage = self.deadline_exceeded(&inbox.pod, &mut exits).await;
            }
            if stage.is_over() {
                // Its start is over: events about it need not wait.
                self.giving_way = None;
            }
            let next = match stage {
                Stage::Rejected(rejection) => {
                    inbox.finished();
                    self.reject(&inbox.pod, rejection).await;
                    self.ctx.release(&self.key).await;
                    self.idle_until_deleted(inbox).await
                }
                Stage::Finished => {
                    inbox.finished();
                    self.ctx.release(&self.key).await;
                    self.idle_until_deleted(inbox).await
                }
                Stage::Mount => self.mount_all(inbox).await,
                Stage::Pull => self.pull_all(inbox).await,
                Stage::Init(i) => self.run_init(inbox, &mut exits, i).await,
                Stage::Run => self.run_app(inbox, &mut exits).await,
            };
            match next {
                Next::Stage(s) => stage = s,
                // Wound down for its deadline, not a deletion: it fails, as the kubelet's.
                Next::Terminate if !inbox.deleting() && inbox.past_deadline() => {
                    stage = self.deadline_exceeded(&inbox.pod, &mut exits).await;
                }
                Next::Terminate => break,
            }
        }
        self.terminate(inbox, &mut exits).await;
        self.ctx.release(&self.key).await;
    }

    /// The records of the containers of `kind`, in spec order.
    pub(super) fn records(&self, kind: Kind) -> &[ContainerRecord] {
        match kind {
            Kind::Init => &self.state.init,
            Kind::App => &self.state.app,
        }
    }

    pub(super) fn record(&mut self, kind: Kind, index: usize) -> &mut ContainerRecord {
        match kind {
            Kind::Init => &mut self.state.init[index],
            Kind::App => &mut self.state.app[index],
        }
    }

    /// Ends stage `name` of the pod's first start.
    pub(super) fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    /// Ends stage `name` of the pod's first start at `at`.
    pub(super) fn mark_at(&mut self, name: &'static str, at: Instant) {
        if let Some(trace) = &mut self.trace {
            trace.mark_at(name, at);
        }
    }

    pub(super) fn event(
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

    pub(super) fn restart_policy(pod: &Pod) -> String {
        pod.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }
}

/// The containers of `kind` in `pod`'s spec, in order.
fn containers(pod: &Pod, kind: Kind) -> &[Container] {
    let Some(spec) = pod.spec.as_ref() else {
        return &[];
    };
    match kind {
        Kind::Init => spec.init_containers.as_deref().unwrap_or_default(),
        Kind::App => &spec.containers,
    }
}

/// The container of `kind` called `name` in `pod`'s spec.
fn container_named<'a>(pod: &'a Pod, kind: Kind, name: &str) -> Option<&'a Container> {
    containers(pod, kind).iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that goes without stopping its instances (it panicked) takes them with it.
    #[tokio::test]
    async fn an_instance_goes_with_the_workers_record_of_it() {
        let task = tokio::spawn(std::future::pending::<()>());
        let live = Live {
            stop: CancellationToken::new(),
            abort: task.abort_handle(),
            started: Instant::now(),
        };
        drop(live);
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the instance was aborted");
        assert!(ended.is_err_and(|err| err.is_cancelled()));
    }
}
