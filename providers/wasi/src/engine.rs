//! The node's two Wasmtime engines, one per compiler tier, and the clock that drives epoch
//! interruption.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::WasiProviderConfig;
use crate::code::{TierKind, Tiering};

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
}

/// Each pod may hold a few instances (a component is several core instances); the pool is
/// sized so that `max_pods` pods fit with room for init containers.
const INSTANCES_PER_POD: u32 = 4;
/// How often the epoch advances: a guest that never yields gives the CPU back this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine for `tier`. Both share the settings every guest relies on (epochs, the
/// component model); they differ in compiler and allocator.
pub(crate) fn build(config: &WasiProviderConfig, tier: TierKind) -> Result<Engine, EngineError> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true).wasm_component_model(true);
    match tier {
        TierKind::Optimised => {
            let slots = config
                .max_pods
                .saturating_mul(INSTANCES_PER_POD)
                .max(INSTANCES_PER_POD);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_core_instances(slots)
                .total_component_instances(slots)
                .total_memories(slots)
                .total_tables(slots)
                .total_stacks(slots);
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
mod tests {
    use super::*;

    #[test]
    fn both_engines_build_for_a_dense_node_and_run_with_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let config = WasiProviderConfig {
            cache_dir: dir.path().join("cache"),
            store_dir: dir.path().join("store"),
            max_pods: 1000,
            insecure_registries: vec![],
            tiering: Tiering::default(),
            egress: Default::default(),
            serve_address: std::net::Ipv4Addr::LOCALHOST.into(),
            pods_memory_bytes: None,
            keep_memory_available_bytes: 0,
        };
        for tier in [TierKind::Baseline, TierKind::Optimised] {
            let engine = build(&config, tier).unwrap();
            let module = wasmtime::Module::new(&engine, "(module)").unwrap();
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(1);
            wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        }
    }
}
