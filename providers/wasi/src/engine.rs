//! The node's two Wasmtime engines, one per compiler tier, and the clock that drives epoch
//! interruption.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::WasiProviderConfig;
use crate::code::{TierKind, Tiering};
use crate::pool::{AddressSpaceError, MemoryLayout};

/// The engines could not be built with the node's settings.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The compiled-code cache could not be set up in its directory.
    #[error("cannot set up the compiled-code cache in {dir}")]
    Cache {
        /// The cache directory.
        dir: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Wasmtime rejected the configuration.
    #[error("cannot build the wasmtime engine")]
    Engine(#[source] wasmtime::Error),
    /// The host's address space cannot hold a memory of the least size for every pod.
    #[error(transparent)]
    AddressSpace(#[from] AddressSpaceError),
}

/// How often the epoch advances: a guest that never yields gives the CPU back this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine for `tier`. Both share the settings every guest relies on (epochs, the
/// component model, the memory layout); they differ in compiler and allocator.
pub(crate) fn build(
    config: &WasiProviderConfig,
    layout: &MemoryLayout,
    tier: TierKind,
) -> Result<Engine, EngineError> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true).wasm_component_model(true);
    if let Some(bytes) = layout.largest_memory() {
        // A memory on demand, too, stays within its reservation, as the pool's must: it
        // neither moves to grow nor reserves more for growth.
        wasm.memory_reservation(bytes)
            .memory_may_move(false)
            .memory_reservation_for_growth(0);
    }
    match tier {
        TierKind::Optimised => {
            let slots = layout.slots();
            let mut pool = PoolingAllocationConfig::default();
            pool.total_core_instances(slots)
                .total_component_instances(slots)
                .total_memories(slots)
                .total_tables(slots)
                .total_stacks(slots);
            if let Some(bytes) = layout.largest_memory() {
                pool.max_memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
            }
            wasm.strategy(Strategy::Cranelift)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
                // Tiered, Cranelift works in the background and leaves a core to the pods;
                // alone, it is what a new pod waits for, so it gets every core.
                .parallel_compilation(config.tiering == Tiering::Optimised);
        }
        TierKind::Baseline => {
            // Baseline code runs only until the optimised code is ready, so it does not get
            // a pool of its own (that would double the address space the node reserves);
            // its instances are allocated on demand.
            wasm.strategy(Strategy::Winch)
                .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                .parallel_compilation(true);
        }
    }
    Engine::new(&wasm).map_err(EngineError::Engine)
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on one thread for the whole node (a
/// signal-safe atomic add; the thread ends when the engines are dropped).
pub(crate) struct EpochTicker;

impl EpochTicker {
    pub(crate) fn start(engines: &[&Engine]) -> Self {
        let weak: Vec<_> = engines.iter().map(|e| e.weak()).collect();
        let spawned = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    let mut alive = false;
                    for engine in weak.iter().filter_map(|w| w.upgrade()) {
                        engine.increment_epoch();
                        alive = true;
                    }
                    if !alive {
                        break;
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the epoch thread; guests will not be preempted");
        }
        Self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A provider configuration for `max_pods` pods, its directories under `dir`.
    pub(crate) fn config(dir: &std::path::Path, max_pods: u32) -> WasiProviderConfig {
        WasiProviderConfig {
            cache_dir: dir.join("cache"),
            store_dir: dir.join("store"),
            max_pods,
            insecure_registries: vec![],
            tiering: Tiering::default(),
            egress: Default::default(),
            serve_address: std::net::Ipv4Addr::LOCALHOST.into(),
            pods_memory_bytes: None,
            keep_memory_available_bytes: 0,
        }
    }

    #[test]
    fn both_engines_build_for_a_dense_node_and_run_with_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1000);
        let layout = MemoryLayout::for_host(config.max_pods).unwrap();
        for tier in [TierKind::Baseline, TierKind::Optimised] {
            let engine = build(&config, &layout, tier).unwrap();
            let module = wasmtime::Module::new(&engine, "(module)").unwrap();
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(1);
            wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        }
    }

    #[test]
    fn a_smaller_reservation_is_the_most_a_memory_grows_to_in_either_engine() {
        let dir = tempfile::tempdir().unwrap();
        // Four pods in 64 GiB: memories of 1 GiB.
        let layout = crate::pool::tests::planned(4, 64 << 30);
        let cap = layout.largest_memory().unwrap();
        assert_eq!(cap, 1 << 30);
        let config = config(dir.path(), 4);
        let pages = i32::try_from(cap / 65536).unwrap();
        let wat = r#"(module (memory 1)
            (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#;
        for tier in [TierKind::Baseline, TierKind::Optimised] {
            let engine = build(&config, &layout, tier).unwrap();
            let module = wasmtime::Module::new(&engine, wat).unwrap();
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(u64::MAX);
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let grow = instance
                .get_typed_func::<i32, i32>(&mut store, "grow")
                .unwrap();
            assert_eq!(grow.call(&mut store, pages - 1).unwrap(), 1, "{tier:?}");
            assert_eq!(grow.call(&mut store, 1).unwrap(), -1, "{tier:?}: past it");
        }
    }
}
