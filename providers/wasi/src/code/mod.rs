//! Compiled code for each Wasm digest, compiled once for every pod that wants it.
//!
//! A digest the node has never run is compiled by Winch first (the baseline tier: one pass,
//! ready at once) and by Cranelift in the background; instances started after that (restarts,
//! new pods) get the optimised code, while running ones keep what they started with. Both
//! tiers' code is cached on disk (see `disk`), so after a process restart the best code
//! there is loaded, not compiled. Compilation may begin while the pull is still finishing
//! ([`CodeCache::prefetch`]), and pods that ask for the same digest together share one
//! compile.

mod background;
mod disk;
mod tier;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kubelet::ContainerError;
use wasmtime::{Engine, InstancePre};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::guest::{P1Host, P2Host};
pub(crate) use tier::Tier;
pub use tier::TierKind;

/// How new code is compiled: the node's `--compile-tiering` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tiering {
    /// Winch first so the pod starts at once, then Cranelift in the background for later
    /// instances.
    #[default]
    BaselineThenOptimised,
    /// Cranelift only: the slowest first start, the fastest code from the first instance.
    Optimised,
    /// Winch only: the fastest first start and the least compile CPU, slower code.
    Baseline,
}

impl Tiering {
    /// Every setting, by the name the flag takes.
    pub const NAMES: [&'static str; 3] = ["baseline-then-optimised", "optimised", "baseline"];
}

impl std::str::FromStr for Tiering {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "baseline-then-optimised" => Ok(Self::BaselineThenOptimised),
            "optimised" => Ok(Self::Optimised),
            "baseline" => Ok(Self::Baseline),
            other => Err(format!(
                "{other:?} is not a tiering; use one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// A compiled, pre-linked Wasm binary, with the engine it must run in. Cheap to clone.
#[derive(Clone)]
pub struct Compiled {
    pub(crate) engine: Engine,
    pub(crate) code: Code,
    tier: TierKind,
}

impl Compiled {
    /// Which compiler produced it.
    pub fn tier(&self) -> TierKind {
        self.tier
    }
}

/// The linked code, by kind.
#[derive(Clone)]
pub(crate) enum Code {
    /// A WASI preview 1 module.
    Module(InstancePre<P1Host>),
    /// A `wasi:cli/command` component.
    Component(CommandPre<P2Host>),
    /// A `wasi:http/proxy` component, served one instance per request.
    Proxy(ProxyPre<P2Host>),
}

type Pending = Shared<BoxFuture<'static, Result<Compiled, ContainerError>>>;

/// What is known about one digest's code.
#[derive(Default)]
struct Slot {
    /// The best code ready now.
    best: Option<Compiled>,
    /// The first code, while it is being loaded or compiled; every pod that asks waits on it.
    pending: Option<Pending>,
    /// Cranelift is making this digest's optimised code: the slot is kept until it is done.
    optimising: bool,
}

/// Code for every digest the node runs.
#[derive(Clone)]
pub(crate) struct CodeCache {
    inner: Arc<Inner>,
}

struct Inner {
    tiering: Tiering,
    baseline: Tier,
    optimised: Tier,
    slots: Mutex<HashMap<String, Slot>>,
    /// One background optimisation at a time, so a burst of new images leaves a core to
    /// the pods already running.
    optimiser: tokio::sync::Semaphore,
}

enum Lookup {
    Ready(Compiled),
    Pending(Pending),
}

impl CodeCache {
    /// The cache over both tiers. Code that other engine configurations left in
    /// `cache_root` is removed.
    pub(crate) fn new(
        tiering: Tiering,
        baseline: Tier,
        optimised: Tier,
        cache_root: &Path,
    ) -> Self {
        disk::remove_others(cache_root, &[baseline.dir_name(), optimised.dir_name()]);
        Self {
            inner: Arc::new(Inner {
                tiering,
                baseline,
                optimised,
                slots: Mutex::new(HashMap::new()),
                optimiser: tokio::sync::Semaphore::new(1),
            }),
        }
    }

    /// The engines whose epochs must advance.
    pub(crate) fn engines(&self) -> [&Engine; 2] {
        [self.inner.baseline.engine(), self.inner.optimised.engine()]
    }

    /// Starts loading or compiling `artifact`'s code, if nothing has yet, without waiting:
    /// the pull calls this the moment the Wasm bytes are verified.
    pub(crate) fn prefetch(&self, artifact: &oci::WasmArtifact) {
        let _ = self.lookup(artifact);
    }

    /// The best code for `artifact` that is ready, or the first code once it is.
    pub(crate) async fn get(
        &self,
        artifact: &oci::WasmArtifact,
    ) -> Result<Compiled, ContainerError> {
        match self.lookup(artifact) {
            Lookup::Ready(code) => Ok(code),
            Lookup::Pending(pending) => pending.await,
        }
    }

    fn lookup(&self, artifact: &oci::WasmArtifact) -> Lookup {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(artifact.wasm_digest.clone()).or_default();
        if let Some(best) = &slot.best {
            return Lookup::Ready(best.clone());
        }
        if let Some(pending) = &slot.pending {
            return Lookup::Pending(pending.clone());
        }
        // A task of its own, so the work goes on whether or not anyone is polling yet.
        let task = tokio::spawn(self.inner.clone().first_code(artifact.clone()));
        let pending = async move { task.await.unwrap_or_else(|err| Err(compiler_failed(err))) }
            .boxed()
            .shared();
        slot.pending = Some(pending.clone());
        Lookup::Pending(pending)
    }

    /// Lets go of the in-memory code of digests no container runs now (`running` refuses),
    /// so memory holds what runs, however many images the node has run; their code stays on
    /// disk, and the next start loads it from there in milliseconds. Code still being made
    /// is kept.
    pub(crate) fn forget_idle(&self, running: impl Fn(&str) -> bool) {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|digest, slot| running(digest) || slot.pending.is_some() || slot.optimising);
    }

    /// Forgets the code of digests `keep` refuses, in memory and on disk (their images
    /// were collected).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|digest, _| keep(digest));
        for tier in [&self.inner.baseline, &self.inner.optimised] {
            tier.retain(&keep);
        }
    }
}

impl Inner {
    /// Loads or compiles the first code for `artifact` and records it for the next pods.
    async fn first_code(
        self: Arc<Self>,
        artifact: oci::WasmArtifact,
    ) -> Result<Compiled, ContainerError> {
        let this = self.clone();
        let work = artifact.clone();
        let result = tokio::task::spawn_blocking(move || this.first_code_blocking(&work))
            .await
            .unwrap_or_else(|err| Err(compiler_failed(err)));
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(code) => {
                // Gone only if its image was collected meanwhile: then nothing is kept.
                if let Some(slot) = slots.get_mut(&artifact.wasm_digest) {
                    slot.pending = None;
                    slot.best = Some(code.clone());
                    let optimise = code.tier == TierKind::Baseline
                        && self.tiering == Tiering::BaselineThenOptimised
                        && !slot.optimising;
                    if optimise {
                        slot.optimising = true;
                        tokio::spawn(self.clone().optimise(artifact));
                    }
                }
            }
            // The next pod that asks tries again (the registry may have been fixed).
            Err(_) => {
                slots.remove(&artifact.wasm_digest);
            }
        }
        result
    }

    fn first_code_blocking(
        &self,
        artifact: &oci::WasmArtifact,
    ) -> Result<Compiled, ContainerError> {
        if self.tiering != Tiering::Baseline
            && let Some(code) = self.optimised.load(artifact)
        {
            return Ok(code);
        }
        if self.tiering == Tiering::Optimised {
            return self.optimised.compile(artifact, &read_wasm(artifact)?);
        }
        if let Some(code) = self.baseline.load(artifact) {
            return Ok(code);
        }
        let bytes = read_wasm(artifact)?;
        match self.baseline.compile(artifact, &bytes) {
            Ok(code) => Ok(code),
            Err(err) => {
                tracing::info!(digest = %artifact.wasm_digest, reason = %err.message, "winch cannot compile it; compiling with cranelift");
                match self.optimised.load(artifact) {
                    Some(code) => Ok(code),
                    None => self.optimised.compile(artifact, &bytes),
                }
            }
        }
    }

    /// Compiles `artifact` with Cranelift in the background; later instances get it.
    async fn optimise(self: Arc<Self>, artifact: oci::WasmArtifact) {
        let Ok(_permit) = self.optimiser.acquire().await else {
            return;
        };
        let this = self.clone();
        let work = artifact.clone();
        // Nobody waits for it: it gives the CPU way to pods and the node.
        let compiled =
            background::at_low_priority(move || this.optimised.compile(&work, &read_wasm(&work)?))
                .await
                .unwrap_or_else(|err| Err(compiler_failed(err)));
        if let Err(err) = &compiled {
            tracing::warn!(digest = %artifact.wasm_digest, reason = %err.message, "cranelift cannot compile what winch did; pods keep the baseline code");
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(&artifact.wasm_digest) {
            // Done either way, so the slot is let go when idle like any other (after a
            // failure, Cranelift is asked again only by a start that finds no code in memory).
            slot.optimising = false;
            if let Ok(code) = compiled {
                slot.best = Some(code);
                tracing::info!(digest = %artifact.wasm_digest, "new instances get the optimised code");
            }
        }
    }
}

fn read_wasm(artifact: &oci::WasmArtifact) -> Result<Vec<u8>, ContainerError> {
    std::fs::read(&artifact.wasm_path).map_err(|e| ContainerError {
        reason: "CreateContainerError".into(),
        message: format!("cannot read {}: {e}", artifact.wasm_path.display()),
        fatal: false,
    })
}

fn compiler_failed(err: impl std::fmt::Display) -> ContainerError {
    ContainerError {
        reason: "CreateContainerError".into(),
        message: format!("the compiler task failed: {err}"),
        fatal: false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::WasiProviderConfig;

    /// A module Winch compiles; its code is several functions so the compile is real.
    const PLAIN: &str = r#"(module (func (export "_start")) (func (param i32) (result i32) local.get 0 i32.const 1 i32.add))"#;
    /// A module only Cranelift compiles: Winch has no tail calls.
    const TAIL_CALLS: &str = r#"(module (func $f (result i32) i32.const 1) (func (export "_start") (drop (call $g))) (func $g (result i32) return_call $f))"#;

    struct Node {
        dir: tempfile::TempDir,
        wasm: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                wasm: tempfile::tempdir().unwrap(),
            }
        }

        fn cache_root(&self) -> std::path::PathBuf {
            self.dir.path().join("cache")
        }

        /// One run of the node's code cache (a new process, as far as the cache can tell).
        fn start(&self, tiering: Tiering) -> CodeCache {
            let config = WasiProviderConfig {
                cache_dir: self.cache_root(),
                store_dir: self.dir.path().join("store"),
                max_pods: 4,
                insecure_registries: vec![],
                tiering,
                egress: Default::default(),
                serve_address: std::net::Ipv4Addr::LOCALHOST.into(),
                pods_memory_bytes: None,
                keep_memory_available_bytes: 0,
            };
            let layout = crate::pool::MemoryLayout::for_host(config.max_pods).unwrap();
            let tier = |kind| {
                Tier::new(
                    kind,
                    crate::engine::build(&config, &layout, kind).unwrap(),
                    &config.cache_dir,
                    &[],
                )
                .unwrap()
            };
            CodeCache::new(
                tiering,
                tier(TierKind::Baseline),
                tier(TierKind::Optimised),
                &config.cache_dir,
            )
        }

        /// An artifact holding `wat` (the test engines take WAT as they take Wasm).
        fn artifact(&self, wat: &str) -> oci::WasmArtifact {
            let path = self.wasm.path().join(format!("{}.wat", wat.len()));
            std::fs::write(&path, wat).unwrap();
            oci::WasmArtifact {
                reference: "test.example/app:v1".into(),
                manifest_digest: oci::store::digest_of(wat.as_bytes()),
                wasm_digest: oci::store::digest_of(wat.as_bytes()),
                wasm_path: path,
                kind: oci::WasmKind::Module,
                shape: oci::Shape::CncfArtifact,
                entrypoint: vec![],
                args: vec![],
                env: vec![],
            }
        }

        /// The one cached file of `tier` for `artifact`.
        fn entry(
            &self,
            cache: &CodeCache,
            tier: TierKind,
            artifact: &oci::WasmArtifact,
        ) -> std::path::PathBuf {
            let tier = match tier {
                TierKind::Baseline => &cache.inner.baseline,
                TierKind::Optimised => &cache.inner.optimised,
            };
            let hex = artifact.wasm_digest.trim_start_matches("sha256:");
            self.cache_root().join(tier.dir_name()).join(hex)
        }
    }

    fn compiles(cache: &CodeCache) -> (u64, u64) {
        (
            cache.inner.baseline.compiles(),
            cache.inner.optimised.compiles(),
        )
    }

    /// Waits, up to a deadline, for the background compile to make `artifact` optimised.
    async fn optimised(cache: &CodeCache, artifact: &oci::WasmArtifact) -> Compiled {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let code = cache.get(artifact).await.unwrap();
            if code.tier() == TierKind::Optimised {
                return code;
            }
            assert!(Instant::now() < deadline, "no optimised code within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_code_starts_on_winch_and_later_pods_get_cranelift_code() {
        let node = Node::new();
        let cache = node.start(Tiering::BaselineThenOptimised);
        let app = node.artifact(PLAIN);
        assert_eq!(cache.get(&app).await.unwrap().tier(), TierKind::Baseline);
        optimised(&cache, &app).await;
        assert_eq!(compiles(&cache), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_that_start_together_share_one_compile() {
        let node = Node::new();
        let cache = Arc::new(node.start(Tiering::Optimised));
        let app = node.artifact(PLAIN);
        cache.prefetch(&app);
        let pods: Vec<_> = (0..8)
            .map(|_| {
                let (cache, app) = (cache.clone(), app.clone());
                tokio::spawn(async move { cache.get(&app).await.map(|c| c.tier()) })
            })
            .collect();
        for pod in pods {
            assert_eq!(pod.await.unwrap().unwrap(), TierKind::Optimised);
        }
        assert_eq!(compiles(&cache), (0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_loads_the_best_code_from_disk_without_compiling() {
        let node = Node::new();
        let app = node.artifact(PLAIN);
        {
            let first = node.start(Tiering::BaselineThenOptimised);
            first.get(&app).await.unwrap();
            optimised(&first, &app).await;
        }
        let second = node.start(Tiering::BaselineThenOptimised);
        assert_eq!(second.get(&app).await.unwrap().tier(), TierKind::Optimised);
        assert_eq!(compiles(&second), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_module_winch_rejects_is_compiled_by_cranelift() {
        let node = Node::new();
        let cache = node.start(Tiering::BaselineThenOptimised);
        let app = node.artifact(TAIL_CALLS);
        assert_eq!(cache.get(&app).await.unwrap().tier(), TierKind::Optimised);
        assert_eq!(compiles(&cache), (0, 1));
        // Baseline only: still runs, on the one compiler that can.
        let baseline = node.start(Tiering::Baseline);
        assert_eq!(
            baseline.get(&app).await.unwrap().tier(),
            TierKind::Optimised
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_or_truncated_cache_entry_is_recompiled_never_loaded() {
        let node = Node::new();
        let app = node.artifact(PLAIN);
        let first = node.start(Tiering::Optimised);
        first.get(&app).await.unwrap();
        let entry = node.entry(&first, TierKind::Optimised, &app);
        let whole = std::fs::read(&entry).unwrap();
        drop(first);
        let flipped = {
            let mut bytes = whole.clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            bytes
        };
        for damaged in [whole[..whole.len() / 2].to_vec(), flipped] {
            std::fs::write(&entry, &damaged).unwrap();
            let next = node.start(Tiering::Optimised);
            assert_eq!(next.get(&app).await.unwrap().tier(), TierKind::Optimised);
            assert_eq!(compiles(&next), (0, 1), "recompiled");
            assert_eq!(std::fs::read(&entry).unwrap(), whole, "rewritten whole");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_from_another_engine_configuration_is_compiled_again() {
        let node = Node::new();
        let app = node.artifact(PLAIN);
        let cache = node.start(Tiering::Optimised);
        cache.get(&app).await.unwrap();
        // Cranelift's entry, checksum intact, where Winch's code would be: wasmtime must
        // refuse it because the engine that wrote it was configured differently.
        let cranelift = node.entry(&cache, TierKind::Optimised, &app);
        let winch = node.entry(&cache, TierKind::Baseline, &app);
        std::fs::copy(&cranelift, &winch).unwrap();
        drop(cache);
        let baseline = node.start(Tiering::Baseline);
        assert_eq!(baseline.get(&app).await.unwrap().tier(), TierKind::Baseline);
        assert_eq!(compiles(&baseline), (1, 0));
        // A directory of another configuration (an older wasmtime, say) is cleared.
        let stale = node.cache_root().join("cranelift-0000000000000000");
        std::fs::create_dir_all(&stale).unwrap();
        node.start(Tiering::Baseline);
        assert!(!stale.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_costs_the_cache_entry_not_the_start() {
        let node = Node::new();
        let app = node.artifact(PLAIN);
        let mut cache = node.start(Tiering::Optimised);
        Arc::get_mut(&mut cache.inner)
            .unwrap()
            .optimised
            .disk_for_tests()
            .open = |_| std::fs::File::options().write(true).open("/dev/full");
        assert_eq!(cache.get(&app).await.unwrap().tier(), TierKind::Optimised);
        assert!(!node.entry(&cache, TierKind::Optimised, &app).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_nothing_runs_leaves_memory_and_comes_back_from_disk() {
        let node = Node::new();
        let cache = node.start(Tiering::Optimised);
        let (running, idle) = (node.artifact(PLAIN), node.artifact(TAIL_CALLS));
        cache.get(&running).await.unwrap();
        cache.get(&idle).await.unwrap();
        assert_eq!(compiles(&cache), (0, 2));

        cache.forget_idle(|digest| digest == running.wasm_digest);

        let held: Vec<String> = cache.inner.slots.lock().unwrap().keys().cloned().collect();
        assert_eq!(held, std::slice::from_ref(&running.wasm_digest));
        cache.get(&idle).await.unwrap();
        assert_eq!(
            compiles(&cache),
            (0, 2),
            "loaded from disk, not compiled again"
        );
    }

    /// A background compile that fails leaves the baseline code to be let go when idle, as
    /// any other: the slot is not held for a compile that is over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_background_compile_does_not_pin_the_code_in_memory() {
        let node = Node::new();
        let cache = node.start(Tiering::BaselineThenOptimised);
        let app = node.artifact(PLAIN);
        // The background compile waits for the optimiser while the file goes (its image
        // collected), so it fails to read it.
        let busy = cache.inner.optimiser.acquire().await.unwrap();
        assert_eq!(cache.get(&app).await.unwrap().tier(), TierKind::Baseline);
        std::fs::remove_file(&app.wasm_path).unwrap();
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.inner.slots.lock().unwrap()[&app.wasm_digest].optimising {
            assert!(
                Instant::now() < deadline,
                "the background compile never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        cache.forget_idle(|_| false);
        assert!(cache.inner.slots.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_wasm_is_refused_for_every_pod_and_not_remembered() {
        let node = Node::new();
        let cache = node.start(Tiering::BaselineThenOptimised);
        let app = node.artifact("(module (func (result i32)))");
        let err = cache.get(&app).await.err().unwrap();
        assert_eq!(err.reason, "InvalidWasm");
        assert!(err.fatal);
        assert!(cache.inner.slots.lock().unwrap().is_empty());
    }

    #[test]
    fn tiering_names_round_trip() {
        for name in Tiering::NAMES {
            assert!(name.parse::<Tiering>().is_ok(), "{name}");
        }
        assert!(
            "winch"
                .parse::<Tiering>()
                .unwrap_err()
                .contains("baseline-then-optimised")
        );
    }
}
