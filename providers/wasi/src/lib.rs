//! The Wasmtime/WASI provider for wasmlet.
//!
//! It owns two Wasmtime [`Engine`](wasmtime::Engine)s for the whole node, one per compiler
//! tier, configured the way a dense edge node needs: async execution so pods are tasks rather than threads, epoch
//! interruption so a guest that never yields still gives the CPU back every tick and can be
//! stopped, the pooling allocator so instantiation is cheap, and a verified on-disk cache of
//! compiled code. New code is compiled by Winch first and by Cranelift in the background
//! (see `code`). Images come from the `oci` crate; each distinct Wasm binary is compiled
//! and linked once per tier, then instantiated per container start.
#![deny(missing_docs)]

mod address_space;
mod code;
mod egress;
mod engine;
mod extension;
mod guest;
mod http;
mod metering;
mod node_memory;
mod pool;
mod response_body;
mod serve;
mod sockets;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kubelet::{
    ContainerError, ContainerExit, ContainerStart, ImageRequest, NodeContribution, Provider,
    PulledImage,
};
use oci::{PullPolicy, PullRequest, Puller, PullerConfig, RegistryCredentials, Store};
use tokio::task::JoinHandle;

pub use code::{Compiled, TierKind, Tiering};
pub use engine::EngineError;
pub use extension::{ExtensionView, Grant, HostExtension};
pub use guest::P2Host;
pub use pool::AddressSpaceError;
pub use serve::{DEFAULT_MAX_CONCURRENT, MAX_CONCURRENT_INBOUND};
pub use wasi_policy::{
    ALLOWED_DOMAINS, EgressPolicy, HttpPolicy, MAX_CONCURRENT_REQUESTS, PolicyError,
};

/// The runtime version the node reports, e.g. `wasmtime://48.0.8`.
pub const RUNTIME_VERSION: &str = concat!("wasmtime://", env!("WASMTIME_VERSION"));

/// How the provider is set up.
#[derive(Clone, Debug)]
pub struct WasiProviderConfig {
    /// Where compiled code is cached, below the node's data dir.
    pub cache_dir: PathBuf,
    /// Where pulled artifacts are stored, below the node's data dir.
    pub store_dir: PathBuf,
    /// The most pods the node runs; sizes the pooling allocator.
    pub max_pods: u32,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How new code is compiled.
    pub tiering: Tiering,
    /// Where pods' outbound HTTP may connect, whatever their allow-lists say.
    pub egress: EgressPolicy,
    /// The address `wasi:http/proxy` components are served on: the node's InternalIP, which
    /// pods report as their podIP.
    pub serve_address: std::net::IpAddr,
    /// The memory all pods' guests may hold together: the node's allocatable memory, if the
    /// host's memory is known.
    pub pods_memory_bytes: Option<u64>,
    /// The host memory guests may never take (`memory.available`'s hard eviction threshold).
    pub keep_memory_available_bytes: u64,
}

/// Errors setting up the provider.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The artifact store could not be opened.
    #[error(transparent)]
    Store(#[from] oci::Error),
}

/// A pulled and compiled image.
pub struct WasiImage {
    artifact: oci::WasmArtifact,
    compiled: Compiled,
    /// The Wasm file's size; 0 when it was already present.
    size_bytes: u64,
    /// Whether it was on the node already, the registry not asked.
    already_present: bool,
}

impl PulledImage for WasiImage {
    fn image_id(&self) -> String {
        self.artifact.wasm_digest.clone()
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn already_present(&self) -> bool {
        self.already_present
    }
}

/// Runs pods as WASI modules and components on Wasmtime.
pub struct WasiProvider {
    code: code::CodeCache,
    puller: Puller,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
    egress: Arc<EgressPolicy>,
    serve_address: std::net::IpAddr,
    pods_memory: Arc<node_memory::PodsMemory>,
    request_room: pool::RequestRoom,
    extensions: Arc<[Arc<dyn HostExtension>]>,
    _ticker: engine::EpochTicker,
}

/// Counts one running instance of a Wasm digest for as long as it lives, so garbage
/// collection never removes code a container runs.
struct InUse {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    digest: String,
}

impl InUse {
    fn new(counts: &Arc<Mutex<HashMap<String, usize>>>, digest: &str) -> Self {
        *counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default() += 1;
        Self {
            counts: counts.clone(),
            digest: digest.to_string(),
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.digest);
            }
        }
    }
}

impl WasiProvider {
    /// Builds the engines and opens the artifact store and the code cache; fails when the
    /// host cannot support the configuration (e.g. not enough address space for the pool).
    pub fn new(config: &WasiProviderConfig) -> Result<Self, SetupError> {
        Self::with_extensions(config, Vec::new())
    }

    /// As [`WasiProvider::new`], with host interfaces beyond WASI linked into every
    /// component: a device provider's, for instance.
    pub fn with_extensions(
        config: &WasiProviderConfig,
        extensions: Vec<Arc<dyn HostExtension>>,
    ) -> Result<Self, SetupError> {
        let extensions: Arc<[Arc<dyn HostExtension>]> = extensions.into();
        let layout = pool::MemoryLayout::for_host(config.max_pods).map_err(EngineError::from)?;
        if let Some(bytes) = layout.largest_memory() {
            tracing::warn!(
                largest_memory_mib = bytes >> 20,
                "the host's address space cannot give every pod's memories wasmtime's 4 GiB \
                 reservations; each Wasm memory is held to the smaller reservation, and code \
                 checks its bounds"
            );
        }
        let tier = |kind| {
            code::Tier::new(
                kind,
                engine::build(config, &layout, kind)?,
                &config.cache_dir,
                &extensions,
            )
        };
        let code = code::CodeCache::new(
            config.tiering,
            tier(TierKind::Baseline)?,
            tier(TierKind::Optimised)?,
            &config.cache_dir,
        );
        let store = Arc::new(Store::open(&config.store_dir)?);
        Ok(Self {
            _ticker: engine::EpochTicker::start(&code.engines()),
            code,
            puller: Puller::new(
                store,
                PullerConfig {
                    insecure_registries: config.insecure_registries.clone(),
                    ..Default::default()
                },
            ),
            in_use: Arc::new(Mutex::new(HashMap::new())),
            egress: Arc::new(config.egress.clone()),
            serve_address: config.serve_address,
            pods_memory: node_memory::PodsMemory::new(
                config.pods_memory_bytes,
                config.keep_memory_available_bytes,
                layout.largest_memory(),
            ),
            request_room: pool::RequestRoom::of(&layout),
            extensions,
        })
    }
}

fn pull_error(err: oci::Error) -> ContainerError {
    let not_wasm = matches!(
        err,
        oci::Error::NotWasm { .. }
            | oci::Error::NoWasmPlatform { .. }
            | oci::Error::InvalidWasm { .. }
    );
    ContainerError {
        reason: if not_wasm {
            "NotWasm"
        } else {
            err.kubelet_reason()
        }
        .to_string(),
        message: err.to_string(),
        fatal: not_wasm,
    }
}

/// A pod annotation this provider reads is malformed. Fatal: the same annotation fails the
/// same way on every restart; the pod has to be re-created with a fixed one.
fn invalid_annotation(err: PolicyError) -> ContainerError {
    ContainerError {
        reason: "InvalidAnnotation".into(),
        message: err.to_string(),
        fatal: true,
    }
}

impl Provider for WasiProvider {
    type Image = WasiImage;

    fn node_contribution(&self) -> NodeContribution {
        NodeContribution {
            runtime_version: RUNTIME_VERSION.to_string(),
            extended_resources: Default::default(),
        }
    }

    async fn pull(&self, request: ImageRequest<'_>) -> Result<WasiImage, ContainerError> {
        let mut credentials = RegistryCredentials::default();
        for secret in request.pull_secrets {
            // A malformed secret is skipped like a missing one: the pull then says whether
            // the registry wanted credentials.
            if let Err(err) = credentials.add_secret(&secret.type_, &secret.data) {
                tracing::warn!(%err, "ignoring image pull secret");
            }
        }
        let pull = PullRequest {
            image: request.image,
            policy: PullPolicy::for_container(request.pull_policy, request.image),
            auth: credentials.for_image(request.image),
            entry: request.command.first().map(String::as_str),
            on_verified: Some(&|artifact| self.code.prefetch(artifact)),
        };
        let began = std::time::Instant::now();
        let (artifact, origin) = self.puller.pull_from(&pull).await.map_err(pull_error)?;
        let looked_up = began.elapsed();
        let compiled = self.code.get(&artifact).await?;
        // The two halves of a pull, for the start trace: the artifact (from the store or the
        // registry) and its compiled code (from memory, the disk cache or a compiler).
        tracing::debug!(
            pod = %request.pod.name,
            image = request.image,
            artifact_ms = looked_up.as_secs_f64() * 1e3,
            code_ms = (began.elapsed() - looked_up).as_secs_f64() * 1e3,
            compiler = compiled.tier().compiler(),
            "image ready"
        );
        // Only a pulled image's event gives its size: a cached start, whose every blocking
        // hop waits for a core the API server is busy with, skips the file system.
        let size_bytes = match origin {
            oci::Origin::Present => 0,
            oci::Origin::Registry => tokio::fs::metadata(&artifact.wasm_path)
                .await
                .map_or(0, |m| m.len()),
        };
        Ok(WasiImage {
            artifact,
            compiled,
            size_bytes,
            already_present: origin == oci::Origin::Present,
        })
    }

    async fn start(
        &self,
        image: &WasiImage,
        mut start: ContainerStart,
    ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
        // Read before anything runs, so a malformed annotation becomes the container's status
        // instead of a guest that silently can, or cannot, reach the network.
        let outbound = HttpPolicy::from_annotations(&start.annotations)
            .map_err(invalid_annotation)?
            .under(self.egress.clone());
        let plan = guest::Plan::new(
            &image.artifact,
            &start,
            outbound,
            self.serve_address,
            self.extensions.clone(),
        );
        let compiled = image.compiled.clone();
        let in_use = InUse::new(&self.in_use, &image.artifact.wasm_digest);
        let memory = metering::ContainerMemory::new(
            start.memory_limit_bytes,
            start.usage.clone(),
            self.pods_memory.clone(),
        );
        if let code::Code::Proxy(pre) = &compiled.code {
            let max_concurrent =
                serve::max_concurrent(&start.annotations).map_err(|message| ContainerError {
                    reason: "InvalidAnnotation".into(),
                    message,
                    fatal: true,
                })?;
            let serving = serve::listen(
                serve::Served {
                    engine: compiled.engine.clone(),
                    pre: pre.clone(),
                    room: self.request_room.clone(),
                },
                plan,
                start,
                self.serve_address,
                max_concurrent,
                memory,
            )
            .await?;
            return Ok(tokio::spawn(async move {
                let _in_use = in_use;
                serving.await
            }));
        }
        if !start.ports.is_empty() && matches!(compiled.code, code::Code::Module(_)) {
            // The port is the pod's (admission claimed it) but nothing will answer there: a
            // command component may listen itself, a module cannot.
            let ports: Vec<String> = start.ports.iter().map(ToString::to_string).collect();
            let note = format!(
                "wasmlet: containerPort {} is declared, but a module is not served and cannot listen (WASI preview 1 has no sockets)\n",
                ports.join(", ")
            );
            let _ = tokio::io::AsyncWriteExt::write_all(&mut start.stderr, note.as_bytes()).await;
        }
        Ok(tokio::spawn(async move {
            let _in_use = in_use;
            guest::run(compiled, plan, start, memory).await
        }))
    }

    async fn collect_garbage(&self, images: &HashSet<String>) {
        let in_use: HashSet<String> = self
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        // Every period, whatever the disk: code in memory is for what runs.
        self.code.forget_idle(|digest| in_use.contains(digest));
        let store = self.puller.store();
        let Ok(disk) = kubelet::host::DiskUsage::of(store.root()) else {
            return;
        };
        let usage = oci::gc::DiskUsage {
            capacity_bytes: disk.total_bytes,
            available_bytes: disk.available_bytes,
        };
        match self
            .puller
            .collect_garbage(&in_use, images, usage, oci::gc::GcPolicy::default())
            .await
        {
            Ok(report) if !report.removed.is_empty() => {
                tracing::info!(removed = ?report.removed, freed_bytes = report.freed_bytes, "collected unused images");
                // Reading the code cache's directory and unlinking its files block.
                let (code, store) = (self.code.clone(), Arc::clone(store));
                let forgotten = tokio::task::spawn_blocking(move || {
                    code.retain(|digest| store.has_blob(digest));
                });
                if let Err(err) = forgotten.await {
                    tracing::warn!(%err, "cannot forget the code of collected images");
                }
            }
            Ok(report) if report.deferred => {
                tracing::debug!("image garbage collection deferred: pulls are under way");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "image garbage collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_version_names_the_resolved_wasmtime() {
        assert!(
            RUNTIME_VERSION.starts_with("wasmtime://48."),
            "{RUNTIME_VERSION}"
        );
    }
}
