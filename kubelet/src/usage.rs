//! What a running container consumes, as its provider measures it.
//!
//! The agent hands each container instance a fresh [`ContainerUsage`] and reads it for
//! `/stats/summary` and `/metrics/resource`; the provider only adds to it. Atomics, so the
//! runtime's hot path never takes a lock to account.

use std::sync::atomic::{AtomicU64, Ordering};

/// CPU time and memory of one container instance.
#[derive(Debug, Default)]
pub struct ContainerUsage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
}

impl ContainerUsage {
    /// Adds CPU time the guest spent running.
    pub fn add_cpu_nanos(&self, nanos: u64) {
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records the guest's memory footprint now (linear memories and tables).
    pub fn set_memory_bytes(&self, bytes: u64) {
        self.memory_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Cumulative CPU time, in nanoseconds.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    /// The memory footprint last recorded, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}
