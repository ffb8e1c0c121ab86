//! The node-wide Wasmtime engine and the clock that drives epoch interruption.

use std::time::Duration;

use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use crate::WasiProviderConfig;

/// The engine could not be built with the node's settings.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The compiled-code cache could not be set up in its directory.
    #[error("cannot set up the compiled-module cache in {dir}")]
    Cache {
        /// The cache directory.
        dir: std::path::PathBuf,
        /// The cause.
        #[source]
        source: wasmtime::Error,
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

pub(crate) fn build(config: &WasiProviderConfig) -> Result<Engine, EngineError> {
    with_cache(config, disk_cache(config)?)
}

/// The on-disk cache of compiled code in `config.cache_dir`. Wasmtime keys each entry by the
/// Wasm bytes and the engine's settings, so a changed setting never loads stale code.
fn disk_cache(config: &WasiProviderConfig) -> Result<Cache, EngineError> {
    let mut cache_config = CacheConfig::new();
    cache_config.with_directory(&config.cache_dir);
    Cache::new(cache_config).map_err(|source| EngineError::Cache {
        dir: config.cache_dir.clone(),
        source,
    })
}

fn with_cache(config: &WasiProviderConfig, cache: Cache) -> Result<Engine, EngineError> {
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

    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .cache(Some(cache));
    Engine::new(&wasm).map_err(EngineError::Engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on one thread for the whole node (a
/// signal-safe atomic add; the thread ends when the engine is dropped).
pub(crate) struct EpochTicker;

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> Self {
        let weak = engine.weak();
        let spawned = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
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
    fn engine_builds_with_pooling_epochs_and_cache_for_a_dense_node() {
        let dir = tempfile::tempdir().unwrap();
        let engine = build(&WasiProviderConfig {
            cache_dir: dir.path().join("cache"),
            store_dir: dir.path().join("store"),
            max_pods: 1000,
            insecure_registries: vec![],
        })
        .unwrap();
        let module = wasmtime::Module::new(&engine, "(module)").unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1);
        wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    }

    #[test]
    fn compiled_code_is_cached_on_disk_and_loaded_by_the_next_engine() {
        let dir = tempfile::tempdir().unwrap();
        let config = WasiProviderConfig {
            cache_dir: dir.path().join("cache"),
            store_dir: dir.path().join("store"),
            max_pods: 10,
            insecure_registries: vec![],
        };
        let wasm = r#"(module (func (export "f") (result i32) i32.const 42))"#;
        // Two engines, as two runs of the node: the second must load what the first compiled.
        for (run, (hits, misses)) in [(0, 1), (1, 0)].into_iter().enumerate() {
            let cache = disk_cache(&config).unwrap();
            let engine = with_cache(&config, cache.clone()).unwrap();
            wasmtime::Module::new(&engine, wasm).unwrap();
            assert_eq!(
                (cache.cache_hits(), cache.cache_misses()),
                (hits, misses),
                "run {run}: (hits, misses)"
            );
        }
    }
}
