//! Accounting a guest's CPU time and memory into its [`ContainerUsage`], which the kubelet
//! API reports (`kubectl top`), and holding the guest to its CPU limit.
//!
//! Guest code only runs while its future is being polled, so the thread CPU time spent in
//! those polls is the guest's CPU time (plus the WASI host calls it makes, which it asked
//! for). Memory is what the store's linear memories have grown to, seen by the limiter that
//! already approves every growth.
//!
//! A CPU limit is enforced where the CPU time is measured: after a poll that takes the guest
//! past its share of the current period, it is not polled again until enough periods have
//! passed to pay for what it used ([`CpuQuota`]). A guest yields at every epoch tick, so one
//! poll is at most about one tick of CPU and the share holds to within a tick per period.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use kubelet::usage::ContainerUsage;
use tokio::time::Instant;

use crate::node_memory::PodsMemory;
use wasmtime::{ResourceLimiter, StoreLimits};

/// A container's CPU quota, shared by every instance it runs at once (an HTTP server's
/// requests), so the limit holds for the container, not per instance.
pub(crate) type SharedQuota = Arc<Mutex<CpuQuota>>;

/// Runs `future`, adding the CPU time of each poll to `usage` and, under a `quota`, holding
/// it back while it is over its share.
pub(crate) async fn cpu_metered<F: Future>(
    future: F,
    usage: &ContainerUsage,
    quota: Option<SharedQuota>,
) -> F::Output {
    metered_with(future, usage, quota, thread_cpu_nanos).await
}

/// [`cpu_metered`] with the CPU clock passed in, so tests can say how much CPU a poll used.
async fn metered_with<F: Future>(
    future: F,
    usage: &ContainerUsage,
    quota: Option<SharedQuota>,
    mut cpu_nanos: impl FnMut() -> u64,
) -> F::Output {
    let mut future = std::pin::pin!(future);
    // One timer for the guest's whole life, re-armed whenever it goes over its quota.
    let mut throttle = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut throttled = false;
    std::future::poll_fn(|cx| {
        // A wake-up while throttled (the guest's own yield, or I/O it waits on) only
        // re-arms the timer; the guest runs again when the timer fires.
        if throttled {
            std::task::ready!(throttle.as_mut().poll(cx));
            throttled = false;
        }
        let before = cpu_nanos();
        let poll = future.as_mut().poll(cx);
        let used = cpu_nanos().saturating_sub(before);
        usage.add_cpu_nanos(used);
        if let (Poll::Pending, Some(quota)) = (&poll, quota.as_ref())
            && let Some(until) = quota
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge(used, Instant::now())
        {
            throttle.as_mut().reset(until);
            throttled = true;
        }
        poll
    })
    .await
}

/// A CPU limit (`resources.limits.cpu`) as the kernel's CFS bandwidth control applies it to a
/// container: in every [`PERIOD`](Self::PERIOD) the guest may use `limit/1000 × PERIOD` of
/// CPU time. Time used beyond that is owed, and paid back out of the following periods, so
/// the long-run share is the limit even though a single poll may overshoot it. Unused quota
/// is not banked: an idle guest cannot save up for a burst.
#[derive(Debug)]
pub(crate) struct CpuQuota {
    quota_nanos: u64,
    period_start: Instant,
    used_nanos: u64,
}

impl CpuQuota {
    /// The kubelet's default CFS period.
    pub(crate) const PERIOD: Duration = Duration::from_millis(100);
    /// The smallest quota the kubelet sets (`MinQuotaPeriod`), whatever the limit.
    const MIN_QUOTA: Duration = Duration::from_millis(1);

    /// A quota for a limit of `millicores`, its first period starting `now`. A limit of zero
    /// means no limit, as it does to the kubelet.
    pub(crate) fn new(millicores: u64, now: Instant) -> Option<Self> {
        if millicores == 0 {
            return None;
        }
        let period_nanos = Self::PERIOD.as_nanos() as u64;
        let quota_nanos =
            (millicores.saturating_mul(period_nanos) / 1000).max(Self::MIN_QUOTA.as_nanos() as u64);
        Some(Self {
            quota_nanos,
            period_start: now,
            used_nanos: 0,
        })
    }

    /// [`new`](Self::new), to be shared by the container's instances.
    pub(crate) fn shared(millicores: u64, now: Instant) -> Option<SharedQuota> {
        Self::new(millicores, now).map(|quota| Arc::new(Mutex::new(quota)))
    }

    /// Records `cpu_nanos` used by a poll that ended at `now`. Returns when the guest may
    /// run again if it is now over its quota, or `None` if it may go on at once.
    pub(crate) fn charge(&mut self, cpu_nanos: u64, now: Instant) -> Option<Instant> {
        self.start_periods_until(now);
        self.used_nanos = self.used_nanos.saturating_add(cpu_nanos);
        if self.used_nanos < self.quota_nanos {
            return None;
        }
        // Each period boundary forgives one quota; wait for the first boundary after which
        // what is still owed is less than a quota.
        let periods = self.used_nanos / self.quota_nanos;
        let period_nanos = Self::PERIOD.as_nanos() as u64;
        Some(self.period_start + Duration::from_nanos(periods.saturating_mul(period_nanos)))
    }

    /// Moves to the period that holds `now`, forgiving one quota per period boundary passed.
    fn start_periods_until(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.period_start);
        let period_nanos = Self::PERIOD.as_nanos();
        let periods = elapsed.as_nanos() / period_nanos;
        if periods == 0 {
            return;
        }
        self.period_start = now - Duration::from_nanos((elapsed.as_nanos() % period_nanos) as u64);
        let forgiven = self
            .quota_nanos
            .saturating_mul(u64::try_from(periods).unwrap_or(u64::MAX));
        self.used_nanos = self.used_nanos.saturating_sub(forgiven);
    }
}

fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// How a refused growth begins its error, as wasmtime's own `StoreLimits` words it with
/// `trap_on_grow_failure`, so that every refusal reads as the container's OOM kill.
pub(crate) const GROW_REFUSED: &str = "forcing trap when growing memory";

/// What the host keeps per table element (a function reference), counted as memory.
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

/// A container's memory: every linear memory and table of every instance it runs at once
/// (an HTTP server's requests each have one) counted together and held to its
/// `resources.limits.memory`, as the container's cgroup holds all its processes, and taken
/// from the node's [`PodsMemory`].
pub(crate) struct ContainerMemory {
    /// The container's `resources.limits.memory`, if any.
    limit: Option<u64>,
    /// Linear memories' bytes plus tables' elements, as bytes, across its instances.
    used: Mutex<u64>,
    usage: Arc<ContainerUsage>,
    node: Arc<PodsMemory>,
}

impl ContainerMemory {
    pub(crate) fn new(
        limit: Option<u64>,
        usage: Arc<ContainerUsage>,
        node: Arc<PodsMemory>,
    ) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: Mutex::new(0),
            usage,
            node,
        })
    }

    /// The container's memory limit, if any.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Takes `growth` more bytes if the container's total stays within its limit.
    fn grow(&self, growth: u64, what: &str) -> wasmtime::Result<()> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let total = used.saturating_add(growth);
        if let Some(limit) = self.limit
            && total > limit
        {
            return Err(wasmtime::format_err!(
                "{GROW_REFUSED}: the container's memories and tables would come to {total} bytes with this {what}, over its limit of {limit}"
            ));
        }
        // Taken under the container's lock, so its total and the node's move together.
        self.node.take(growth, what)?;
        *used = total;
        self.usage.set_memory_bytes(total);
        Ok(())
    }

    /// Gives back what an instance that ended held.
    fn release(&self, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(bytes);
        self.node.give_back(bytes);
        self.usage.set_memory_bytes(*used);
    }
}

/// One instance's store limits: each memory and table is checked alone, and every growth is
/// also taken from the container's [`ContainerMemory`] (a component with several memories,
/// or a server with several requests, would otherwise get the limit once per memory or per
/// request). What the instance held goes back to the container when it is dropped.
pub(crate) struct MeteredLimits {
    limits: StoreLimits,
    container: Arc<ContainerMemory>,
    /// What this instance took from the container.
    memory_bytes: u64,
}

impl MeteredLimits {
    pub(crate) fn new(limits: StoreLimits, container: Arc<ContainerMemory>) -> Self {
        Self {
            limits,
            container,
            memory_bytes: 0,
        }
    }

    fn grow_total(&mut self, growth: u64, what: &str) -> wasmtime::Result<()> {
        self.container.grow(growth, what)?;
        self.memory_bytes = self.memory_bytes.saturating_add(growth);
        Ok(())
    }
}

impl Drop for MeteredLimits {
    fn drop(&mut self) {
        self.container.release(self.memory_bytes);
    }
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The container's own limit first: a refusal names the limit the pod spec set.
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.container.node.check_memory_size(desired)?;
            self.grow_total(desired.saturating_sub(current) as u64, "memory")?;
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
        let allowed = self.limits.table_growing(current, desired, maximum)?;
        if allowed {
            let elements = desired.saturating_sub(current) as u64;
            self.grow_total(elements.saturating_mul(TABLE_ELEMENT_BYTES), "table")?;
        }
        Ok(allowed)
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
        let mut metered = MeteredLimits::new(
            limits,
            ContainerMemory::new(None, usage.clone(), unlimited()),
        );
        assert!(metered.memory_growing(0, 65536, None).unwrap());
        assert!(metered.memory_growing(65536, 131072, None).unwrap());
        assert_eq!(usage.memory_bytes(), 131072);
        assert!(!metered.memory_growing(131072, 2 << 20, None).unwrap());
        assert_eq!(usage.memory_bytes(), 131072);
    }

    #[test]
    fn every_memory_and_table_of_the_container_counts_against_one_limit() {
        // Two memories of two pages each and a table, against a limit of three pages.
        let wat = r#"(module
            (memory 2) (memory 2)
            (table 16 funcref))"#;
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let instantiate = |limit: u64| {
            let usage = Arc::new(ContainerUsage::default());
            let limits = StoreLimitsBuilder::new().trap_on_grow_failure(true).build();
            let container = ContainerMemory::new(Some(limit), usage.clone(), unlimited());
            let metered = MeteredLimits::new(limits, container);
            let mut store = wasmtime::Store::new(&engine, metered);
            store.limiter(|limits| limits);
            wasmtime::Instance::new(&mut store, &module, &[])
                .map(|_| usage.memory_bytes())
                .map_err(|err| format!("{err:#}"))
        };
        const PAGE: u64 = 65536;
        let err = instantiate(3 * PAGE).unwrap_err();
        assert!(err.contains(GROW_REFUSED), "{err}");
        assert!(err.contains("over its limit of 196608"), "{err}");
        // Both memories and the table's 16 elements, counted together.
        let needed = 4 * PAGE + 16 * TABLE_ELEMENT_BYTES;
        assert_eq!(instantiate(needed), Ok(needed));
        assert!(
            instantiate(needed - 1).is_err(),
            "one byte short is refused"
        );
    }

    fn unlimited() -> Arc<PodsMemory> {
        PodsMemory::unbounded()
    }

    /// A served component's requests each run an instance of their own: the container's
    /// limit holds for them together, and an instance that ends gives its memory back.
    #[test]
    fn instances_of_one_container_share_its_limit_and_give_back_what_they_held() {
        const PAGE: usize = 65536;
        let usage = Arc::new(ContainerUsage::default());
        let container = ContainerMemory::new(Some(3 * PAGE as u64), usage.clone(), unlimited());
        let instance = || {
            let limits = StoreLimitsBuilder::new().trap_on_grow_failure(true).build();
            MeteredLimits::new(limits, container.clone())
        };
        let mut first = instance();
        let mut second = instance();
        assert!(first.memory_growing(0, 2 * PAGE, None).unwrap());
        let err = second.memory_growing(0, 2 * PAGE, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("over its limit of 196608"),
            "{err:#}"
        );
        assert!(second.memory_growing(0, PAGE, None).unwrap());
        assert_eq!(usage.memory_bytes(), 3 * PAGE as u64);

        drop(first);
        assert_eq!(usage.memory_bytes(), PAGE as u64);
        assert!(second.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        assert_eq!(usage.memory_bytes(), 3 * PAGE as u64);
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
            None,
        )
        .await;
        let used = usage.cpu_nanos();
        assert!((20_000_000..1_000_000_000).contains(&used), "{used} ns");
    }

    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_guest_within_its_quota_is_never_held() {
        let t0 = Instant::now();
        let mut quota = CpuQuota::new(200, t0).unwrap();
        for i in 1..=3 {
            assert_eq!(quota.charge(5 * MS, t0 + ms(i)), None);
        }
    }

    #[test]
    fn a_guest_over_its_quota_waits_for_the_next_period() {
        let t0 = Instant::now();
        let mut quota = CpuQuota::new(200, t0).unwrap();
        assert_eq!(quota.charge(10 * MS, t0 + ms(10)), None);
        assert_eq!(quota.charge(10 * MS, t0 + ms(25)), Some(t0 + ms(100)));
        // A new period, a new quota.
        assert_eq!(quota.charge(10 * MS, t0 + ms(110)), None);
    }

    #[test]
    fn an_overshoot_is_paid_back_from_later_periods() {
        let t0 = Instant::now();
        let mut quota = CpuQuota::new(100, t0).unwrap();
        // 35 ms against 10 ms a period: three periods pay for 30 ms of it.
        assert_eq!(quota.charge(35 * MS, t0 + ms(40)), Some(t0 + ms(300)));
        // The 5 ms still owed come out of the fourth period's 10.
        assert_eq!(quota.charge(0, t0 + ms(300)), None);
        assert_eq!(quota.charge(5 * MS, t0 + ms(305)), Some(t0 + ms(400)));
    }

    #[test]
    fn idle_periods_are_not_banked_for_a_burst() {
        let t0 = Instant::now();
        let mut quota = CpuQuota::new(100, t0).unwrap();
        assert_eq!(quota.charge(0, t0 + ms(1000)), None);
        assert_eq!(
            quota.charge(15 * MS, t0 + ms(1020)),
            Some(t0 + ms(1100)),
            "ten idle periods still allow only one period's quota"
        );
    }

    #[test]
    fn a_zero_limit_is_no_limit_and_a_tiny_one_gets_the_kubelets_minimum() {
        let t0 = Instant::now();
        assert!(CpuQuota::new(0, t0).is_none());
        let mut quota = CpuQuota::new(1, t0).unwrap();
        assert_eq!(quota.charge(MS - 1, t0), None);
        assert_eq!(quota.charge(1, t0), Some(t0 + ms(100)));
    }

    #[test]
    fn a_guest_that_always_runs_a_whole_tick_gets_its_share_over_time() {
        // Simulated time: every poll burns one 10 ms epoch tick, the guest's worst case.
        let t0 = Instant::now();
        let mut quota = CpuQuota::new(250, t0).unwrap();
        let (mut now, mut cpu) = (t0, Duration::ZERO);
        while now < t0 + Duration::from_secs(10) {
            now += ms(10);
            cpu += ms(10);
            if let Some(until) = quota.charge(10 * MS, now) {
                now = until;
            }
        }
        let share = cpu.as_secs_f64() / (now - t0).as_secs_f64();
        assert!((0.24..=0.26).contains(&share), "share {share}");
    }

    #[tokio::test]
    async fn a_throttled_future_resumes_only_after_its_periods_have_passed() {
        // A fake CPU clock: each poll of the future "uses" 10 ms, instantly.
        let fake_cpu = std::sync::atomic::AtomicU64::new(0);
        let usage = ContainerUsage::default();
        let started = std::time::Instant::now();
        let polls = metered_with(
            async {
                for _ in 0..10 {
                    fake_cpu.fetch_add(10 * MS, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            },
            &usage,
            CpuQuota::shared(200, Instant::now()),
            || fake_cpu.load(std::sync::atomic::Ordering::Relaxed),
        );
        polls.await;
        assert_eq!(usage.cpu_nanos(), 100 * MS);
        // Two polls fill each period's 20 ms, so the ten polls fill five periods and the
        // poll that finishes comes when the fifth has passed.
        let took = started.elapsed();
        assert!(took >= ms(500), "finished after {took:?}");
    }

    #[tokio::test]
    async fn a_throttled_future_can_still_be_stopped_at_once() {
        let usage = ContainerUsage::default();
        // One poll "uses" a whole second against a 1 ms quota: held for a thousand periods.
        let mut cpu = 0;
        let held = metered_with(
            std::future::pending::<()>(),
            &usage,
            CpuQuota::shared(10, Instant::now()),
            || {
                cpu += 1_000 * MS;
                cpu
            },
        );
        let stop = tokio::time::sleep(ms(20));
        let started = std::time::Instant::now();
        tokio::select! {
            () = held => panic!("a pending future finished"),
            () = stop => {}
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_spinning_future_limited_to_200m_uses_a_fifth_of_a_core() {
        let usage = ContainerUsage::default();
        let started = std::time::Instant::now();
        // Burns 300 ms of this thread's CPU in 1 ms slices, yielding after each as a guest
        // yields at every epoch tick.
        let spin = async {
            let begun = thread_cpu_nanos();
            while thread_cpu_nanos() - begun < 300 * MS {
                let slice = thread_cpu_nanos();
                let mut x = 0u64;
                while thread_cpu_nanos() - slice < MS {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                tokio::task::yield_now().await;
            }
        };
        cpu_metered(spin, &usage, CpuQuota::shared(200, Instant::now())).await;
        let cpu = usage.cpu_nanos() as f64 / 1e9;
        let wall = started.elapsed().as_secs_f64();
        let share = cpu / wall;
        eprintln!("{cpu:.3} s of CPU in {wall:.3} s: {share:.3} of a core");
        // The future's own clock also counts the runtime's work between its polls, which
        // is not the guest's, so the metered time is a little under 300 ms.
        assert!(cpu >= 0.25, "the work was done: {cpu} s");
        // At most the limit, plus the first period's quota (used before any wait) and one
        // 1 ms slice per period: 0.2 + 0.02/1.5 + 0.01 ≈ 0.223, so 0.25 is a clear bound.
        assert!(share <= 0.25, "{share} of a core under a 200m limit");
        // A loaded machine can only stretch the wall time, not shorten it; but if this
        // thread gets a fifth of a core at all, the share stays near 0.2, not far below.
        assert!(
            share >= 0.1,
            "{share} of a core: throttled far past the limit"
        );
    }
}
