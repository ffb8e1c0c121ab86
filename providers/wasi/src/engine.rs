//! The node-wide Wasmtime engine.

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

pub(crate) fn build(config: &WasiProviderConfig) -> Result<Engine, EngineError> {
    let mut cache_config = CacheConfig::new();
    cache_config.with_directory(&config.cache_dir);
    let cache = Cache::new(cache_config).map_err(|source| EngineError::Cache {
        dir: config.cache_dir.clone(),
        source,
    })?;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_builds_with_pooling_epochs_and_cache_for_a_dense_node() {
        let dir = tempfile::tempdir().unwrap();
        let engine = build(&WasiProviderConfig {
            cache_dir: dir.path().join("cache"),
            max_pods: 1000,
        })
        .unwrap();
        // An empty module instantiates through the pool.
        let module = wasmtime::Module::new(&engine, "(module)").unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1);
        wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    }
}
