//! The seam between the node agent and the thing that runs workloads.
//!
//! A provider is a Rust type implementing [`Provider`]. The kubelet crate owns everything
//! that talks to the API server (node, lease, pod watch, status, events, secrets and
//! config maps, the kubelet API); a provider only answers questions and acts on the host:
//! it fetches a container's image and runs a container until it exits or is told to stop.
//! That split is what lets a hardware vendor write a provider without touching Kubernetes
//! plumbing, and lets the WASI and peripheral providers share one agent.
//!
//! The trait is used generically (`Kubelet<P: Provider>`), so its async methods are plain
//! `impl Future + Send` and an implementation needs no boxing or `async_trait`.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::logs::LogStream;
use crate::pod::admission::Rejection;

/// How often the agent asks a provider to collect garbage.
pub const GC_PERIOD: std::time::Duration = std::time::Duration::from_secs(300);

/// What a provider adds to the Node object it runs under.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeContribution {
    /// Reported as `status.nodeInfo.containerRuntimeVersion`, e.g. `wasmtime://48.0.8`.
    pub runtime_version: String,
    /// Extended resources (e.g. `devices.wasmlet.dev/gpio`) added to capacity and allocatable.
    pub extended_resources: BTreeMap<String, Quantity>,
}

impl NodeContribution {
    /// The extended resources in whole units; one that does not parse counts as none, so
    /// no pod can claim it.
    pub fn extended_capacity(&self) -> crate::pod::admission::ExtendedCapacity {
        self.extended_resources
            .iter()
            .map(|(name, q)| (name.clone(), crate::pod::quantity::bytes(q).unwrap_or(0)))
            .collect()
    }
}

/// Which pod a container belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID: unique across re-creations under the same name.
    pub uid: String,
}

/// One `imagePullSecrets` entry, as read from the API.
#[derive(Clone, Debug, Default)]
pub struct PullSecret {
    /// The Secret's `type`.
    pub type_: String,
    /// The Secret's data, already base64-decoded.
    pub data: BTreeMap<String, Vec<u8>>,
}

/// What a provider needs to fetch a container's image.
#[derive(Clone, Debug)]
pub struct ImageRequest<'a> {
    /// The pod.
    pub pod: &'a PodKey,
    /// The container's `image`.
    pub image: &'a str,
    /// The container's `imagePullPolicy`, if set.
    pub pull_policy: Option<&'a str>,
    /// The pod's pull secrets.
    pub pull_secrets: &'a [PullSecret],
    /// The container's `command`, which for some image shapes names the file to run.
    pub command: &'a [String],
}

/// Everything needed to start one container instance.
pub struct ContainerStart {
    /// The pod.
    pub pod: PodKey,
    /// The container's name.
    pub container: String,
    /// The container's `command` (empty: the image's default).
    pub command: Vec<String>,
    /// The container's `args` (empty: the image's default).
    pub args: Vec<String>,
    /// The environment, resolved (`valueFrom` already looked up).
    pub env: Vec<(String, String)>,
    /// Where the guest's stdout goes.
    pub stdout: LogStream,
    /// Where the guest's stderr goes.
    pub stderr: LogStream,
    /// A fresh, private, writable directory for this instance: the container's writable
    /// layer. A provider may expose it as the guest's root (`/`); it is removed with the pod.
    pub root_dir: std::path::PathBuf,
    /// The container's volume mounts, each a host directory the kubelet prepared (a file
    /// mount arrives as a directory holding just that file), in the pod spec's order.
    pub mounts: Vec<Mount>,
    /// The pod's annotations, for provider-specific settings.
    pub annotations: BTreeMap<String, String>,
    /// `resources.limits.memory`, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// `resources.limits.cpu`, in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// Where the provider accounts the instance's CPU time and memory, which the kubelet API
    /// reports (`kubectl top`). A provider that cannot measure leaves it at zero.
    pub usage: std::sync::Arc<crate::usage::ContainerUsage>,
    /// The container's TCP `containerPort`s, which a provider that serves requests listens
    /// on; admission has made sure no other pod on the node declares them.
    pub ports: Vec<u16>,
    /// The extended resources (devices) granted to the container: its requests of the
    /// resources the node advertises, by name, in whole units. Admission has counted them
    /// against what is free; a [`DeviceProvider`](crate::devices::DeviceProvider) has
    /// allocated them before the runtime sees this.
    pub devices: BTreeMap<String, u64>,
    /// Cancelled when the container must stop. The provider then ends the guest promptly
    /// and reports its exit; the agent aborts the task if it overstays the grace period.
    pub stop: CancellationToken,
}

/// A host directory shown to the guest at `guest_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The absolute path the guest sees, e.g. `/etc/config`.
    pub guest_path: String,
    /// The directory on the host; already confined to its volume by the kubelet. For a
    /// `subPath`, the path of a directory the kubelet holds open (`/proc/self/fd/N`), so
    /// opening it opens exactly what was checked; open it while the [`Mount`] lives.
    pub host_path: std::path::PathBuf,
    /// The guest may read but not change what is there.
    pub read_only: bool,
    /// Keeps `host_path` open when it names a held directory.
    pub held: Option<HeldPath>,
}

/// A file or directory resolved beneath its volume and held open.
#[derive(Clone, Debug)]
pub struct HeldPath {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
    is_dir: bool,
}

impl HeldPath {
    pub(crate) fn new(fd: std::sync::Arc<std::os::fd::OwnedFd>, is_dir: bool) -> Self {
        Self { fd, is_dir }
    }

    /// A path that opens the held file itself: `/proc/self/fd/N`.
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.is_dir
    }
}

impl PartialEq for HeldPath {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.fd, &other.fd)
    }
}

impl Eq for HeldPath {}

/// A failure to pull or start, as the pod's status and events should show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerError {
    /// A CamelCase reason, e.g. `ErrImagePull`, `NotWasm`, `CreateContainerError`.
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
    /// True when retrying cannot help (e.g. the image is not Wasm): the pod fails at once.
    pub fatal: bool,
}

/// How a container instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerExit {
    /// The exit code (137 when it was killed).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, …
    pub reason: String,
    /// Details, e.g. the trap that ended it.
    pub message: Option<String>,
}

/// A pulled image, as the provider keeps it.
pub trait PulledImage: Send + Sync + 'static {
    /// Reported as the container's `imageID`, e.g. `sha256:…` of the exact code run.
    fn image_id(&self) -> String;
    /// Its size on the node in bytes, which the `Pulled` event of a pulled image reports;
    /// an image [already present](Self::already_present) may say 0.
    fn size_bytes(&self) -> u64;
    /// Whether the pull found it on the node without asking a registry. The node then
    /// records one `Pulled` event, "already present on machine", as the kubelet does,
    /// instead of `Pulling` and "Successfully pulled".
    fn already_present(&self) -> bool {
        false
    }
}

/// A workload runtime plugged into the node agent.
///
/// Implementations must be cheap to query: the agent asks about health every status period
/// (10 s). Nothing here may block a thread: run guests as tasks.
pub trait Provider: Send + Sync + 'static {
    /// A pulled image, ready to start containers from.
    type Image: PulledImage;

    /// What this provider contributes to the Node: runtime version and extended resources.
    fn node_contribution(&self) -> NodeContribution;

    /// Whether the provider can run pods right now. An `Err` carries the reason, and the
    /// node reports `Ready=False` with it until the provider recovers.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Called once when the agent starts, with the recorder a provider may use to tell a
    /// pod's events about what it learns on its own (a granted device failed).
    fn attach_events(&self, events: crate::events::EventRecorder) {
        let _ = events;
    }

    /// Whether this provider will run `pod`, asked once when the node first sees it and
    /// after the agent's own checks (max-pods, CPU, memory, extended resources) passed. A
    /// refusal fails the pod with the rejection's reason and message and is never retried:
    /// e.g. a peripheral provider refusing a pod whose devices it cannot grant.
    fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let _ = pod;
        Ok(())
    }

    /// Fetches (or finds locally) what a container needs to start.
    fn pull(
        &self,
        request: ImageRequest<'_>,
    ) -> impl Future<Output = Result<Self::Image, ContainerError>> + Send;

    /// Starts one container instance. The returned task ends with the instance's exit; the
    /// agent stops it through [`ContainerStart::stop`].
    fn start(
        &self,
        image: &Self::Image,
        start: ContainerStart,
    ) -> impl Future<Output = Result<JoinHandle<ContainerExit>, ContainerError>> + Send;

    /// Called when a pod's containers have all ended for good (it finished, was refused, or
    /// is being deleted): what was held for it, such as granted devices, is freed. It may
    /// come more than once for a pod (finished, then deleted), so it must be idempotent.
    fn pod_ended(&self, pod: &PodKey) -> impl Future<Output = ()> + Send {
        let _ = pod;
        async {}
    }

    /// Frees what no container of the node needs (e.g. unused images). `images` are the
    /// images every pod the node holds names, running or not: those are kept. The agent calls
    /// it every [`GC_PERIOD`], as the kubelet runs its image garbage collection.
    fn collect_garbage(
        &self,
        images: &std::collections::HashSet<String>,
    ) -> impl Future<Output = ()> + Send {
        let _ = images;
        async {}
    }
}
