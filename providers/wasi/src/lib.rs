//! The Wasmtime/WASI provider for wasmlet.
//!
//! It owns one Wasmtime [`Engine`](wasmtime::Engine) for the whole node, configured the way
//! a dense edge node needs: async execution so pods are tasks rather than threads, epoch
//! interruption so a guest that never yields can still be preempted and stopped, the pooling
//! allocator so instantiation is cheap, and an on-disk cache of compiled code.
#![deny(missing_docs)]

mod engine;

use std::path::PathBuf;

use kubelet::{NodeContribution, Provider};

pub use engine::EngineError;

/// The runtime version the node reports, e.g. `wasmtime://48.0.8`.
pub const RUNTIME_VERSION: &str = concat!("wasmtime://", env!("WASMTIME_VERSION"));

/// How the provider is set up.
#[derive(Clone, Debug)]
pub struct WasiProviderConfig {
    /// Where compiled code is cached, below the node's data dir.
    pub cache_dir: PathBuf,
    /// The most pods the node runs; sizes the pooling allocator.
    pub max_pods: u32,
}

/// Runs pods as WASI modules and components on Wasmtime.
pub struct WasiProvider {
    engine: wasmtime::Engine,
}

impl WasiProvider {
    /// Builds the engine; fails when the host cannot support its configuration (e.g. not
    /// enough address space for the pool).
    pub fn new(config: &WasiProviderConfig) -> Result<Self, EngineError> {
        Ok(Self {
            engine: engine::build(config)?,
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }
}

impl Provider for WasiProvider {
    fn node_contribution(&self) -> NodeContribution {
        NodeContribution {
            runtime_version: RUNTIME_VERSION.to_string(),
            extended_resources: Default::default(),
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
