//! Accounting a guest's CPU time and memory into its [`ContainerUsage`], which the kubelet
//! API reports (`kubectl top`).
//!
//! Guest code only runs while its future is being polled, so the thread CPU time spent in
//! those polls is the guest's CPU time (plus the WASI host calls it makes, which it asked
//! for). Memory is what the store's linear memories have grown to, seen by the limiter that
//! already approves every growth.

use std::future::Future;
use std::sync::Arc;

use kubelet::usage::ContainerUsage;
use wasmtime::{ResourceLimiter, StoreLimits};

/// Runs `future`, adding the CPU time of each poll to `usage`.
pub(crate) async fn cpu_metered<F: Future>(future: F, usage: &ContainerUsage) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let before = thread_cpu_nanos();
        let poll = future.as_mut().poll(cx);
        usage.add_cpu_nanos(thread_cpu_nanos().saturating_sub(before));
        poll
    })
    .await
}

fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The store's limits, recording the memory they let the guest have.
pub(crate) struct MeteredLimits {
    limits: StoreLimits,
    usage: Arc<ContainerUsage>,
    memory_bytes: u64,
}

impl MeteredLimits {
    pub(crate) fn new(limits: StoreLimits, usage: Arc<ContainerUsage>) -> Self {
        Self {
            limits,
            usage,
            memory_bytes: 0,
        }
    }
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = self
                .memory_bytes
                .saturating_add(desired.saturating_sub(current) as u64);
            self.usage.set_memory_bytes(self.memory_bytes);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::StoreLimitsBuilder;

    #[test]
    fn granted_growth_is_recorded_and_refused_growth_is_not() {
        let usage = Arc::new(ContainerUsage::default());
        let limits = StoreLimitsBuilder::new().memory_size(1 << 20).build();
        let mut metered = MeteredLimits::new(limits, usage.clone());
        assert!(metered.memory_growing(0, 65536, None).unwrap());
        assert!(metered.memory_growing(65536, 131072, None).unwrap());
        assert_eq!(usage.memory_bytes(), 131072);
        assert!(!metered.memory_growing(131072, 2 << 20, None).unwrap());
        assert_eq!(usage.memory_bytes(), 131072);
    }

    #[tokio::test]
    async fn busy_polls_count_as_cpu_time() {
        let usage = ContainerUsage::default();
        // Spin until this thread has itself used 20 ms of CPU, however loaded the machine.
        cpu_metered(
            async {
                let started = thread_cpu_nanos();
                let mut x = 0u64;
                while thread_cpu_nanos() - started < 20_000_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            },
            &usage,
        )
        .await;
        let used = usage.cpu_nanos();
        assert!((20_000_000..1_000_000_000).contains(&used), "{used} ns");
    }
}
