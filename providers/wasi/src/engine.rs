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
    /// The host's address space cannot hold a memory of the least size for every pod.
    #[error(
        "this host gives wasmlet {} MiB of address space, enough for the Wasm memories of {fit} pods, not of --max-pods={max_pods}; lower --max-pods or raise the address space limit (ulimit -v)",
        available >> 20
    )]
    AddressSpace {
        /// The largest reservation the process could make.
        available: u64,
        /// The pods asked for.
        max_pods: u32,
        /// The pods that would fit.
        fit: u64,
    },
}

/// Each pod may hold a few instances (a component is several core instances); the pool is
/// sized so that `max_pods` pods fit with room for init containers.
const INSTANCES_PER_POD: u32 = 4;
/// How often the epoch advances: a guest that never yields gives the CPU back this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a linear memory reserves by default on a 64-bit host (wasmtime's default): with the
/// guard after it, code for 32-bit memories needs no bounds checks.
const FULL_RESERVATION: u64 = 4 << 30;
/// The unmapped guard after each memory's reservation (wasmtime's default on 64-bit hosts).
const GUARD: u64 = 32 << 20;
/// The least a memory may reserve: below it, a host is told to run fewer pods instead.
const LEAST_RESERVATION: u64 = 64 << 20;

/// How the node's linear memories sit in its address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryLayout {
    /// Instances, memories, tables and stacks in the Cranelift engine's pool.
    slots: u32,
    /// What each memory reserves, which is also the most it may hold; `None` is wasmtime's
    /// default of 4 GiB.
    largest_memory: Option<u64>,
}

impl MemoryLayout {
    /// The layout for `max_pods` on this host: wasmtime's defaults where the address space
    /// holds them, smaller memories where it does not.
    pub(crate) fn for_host(max_pods: u32) -> Result<Self, EngineError> {
        let want = reservations(max_pods).saturating_mul(FULL_RESERVATION + GUARD);
        Self::plan(max_pods, crate::address_space::largest_reservation(want))
    }

    /// The layout for `max_pods` when `available` bytes can be reserved in one piece. That
    /// piece must hold the pool, which is one mapping, and one memory per pod beside it for
    /// pods whose code is still the baseline tier's (allocated on demand, elsewhere if
    /// there is room, but counted here so that the pool never takes the last of it). The
    /// reservation is cut to a power of two, which reads plainly in the log.
    fn plan(max_pods: u32, available: u64) -> Result<Self, EngineError> {
        let slots = max_pods
            .saturating_mul(INSTANCES_PER_POD)
            .max(INSTANCES_PER_POD);
        let per_memory = available / reservations(max_pods);
        if per_memory >= FULL_RESERVATION + GUARD {
            return Ok(Self {
                slots,
                largest_memory: None,
            });
        }
        let reservation = match per_memory.saturating_sub(GUARD) {
            0 => 0,
            bytes => 1 << bytes.ilog2(),
        };
        if reservation < LEAST_RESERVATION {
            return Err(EngineError::AddressSpace {
                available,
                max_pods,
                fit: available / (LEAST_RESERVATION + GUARD) / u64::from(INSTANCES_PER_POD + 1),
            });
        }
        Ok(Self {
            slots,
            largest_memory: Some(reservation),
        })
    }

    /// The most one linear memory may hold, when the host's address space sets it.
    pub(crate) fn largest_memory(&self) -> Option<u64> {
        self.largest_memory
    }
}

/// The pool's last slots, kept for pods' own instances: a served request's instance is not
/// started while the pool is within them of full. Otherwise a flood of requests to one
/// served pod (each request is an instance) could take every slot, and the next pod to
/// start would fail to instantiate. Checked just before instantiating, so requests
/// instantiating at that very moment may pass together; the reserve is sized well past
/// that.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolRoom {
    slots: u32,
    reserve: u32,
}

impl PoolRoom {
    /// The room in a pool of `layout`'s slots: an eighth of them kept, at least enough for
    /// eight pods' instances and at most half.
    pub(crate) fn of(layout: &MemoryLayout) -> Self {
        let slots = layout.slots;
        Self {
            slots,
            reserve: (slots / 8).max(8 * INSTANCES_PER_POD).min(slots / 2),
        }
    }

    /// Whether a request may have an instance of `engine` now; why not, if not. An engine
    /// with no pool allocates on demand and always has room.
    pub(crate) fn for_request(&self, engine: &Engine) -> Result<(), String> {
        let Some(pool) = engine.pooling_allocator_metrics() else {
            return Ok(());
        };
        let ceiling = u64::from(self.slots.saturating_sub(self.reserve));
        let live = pool
            .core_instances()
            .max(pool.component_instances())
            .max(pool.memories() as u64);
        if live >= ceiling {
            return Err(format!(
                "the node's instance pool is nearly full ({live} of {} slots in use); its last {} are kept for starting pods",
                self.slots, self.reserve
            ));
        }
        Ok(())
    }
}

/// Memories the node reserves address space for: the pool's slots and one on-demand
/// memory per pod.
fn reservations(max_pods: u32) -> u64 {
    u64::from(max_pods.max(1)) * u64::from(INSTANCES_PER_POD + 1)
}

/// The engine for `tier`. Both share the settings every guest relies on (epochs, the
/// component model, the memory layout); they differ in compiler and allocator.
pub(crate) fn build(
    config: &WasiProviderConfig,
    layout: &MemoryLayout,
    tier: TierKind,
) -> Result<Engine, EngineError> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true).wasm_component_model(true);
    if let Some(bytes) = layout.largest_memory {
        wasm.memory_reservation(bytes);
    }
    match tier {
        TierKind::Optimised => {
            let slots = layout.slots;
            let mut pool = PoolingAllocationConfig::default();
            pool.total_core_instances(slots)
                .total_component_instances(slots)
                .total_memories(slots)
                .total_tables(slots)
                .total_stacks(slots);
            if let Some(bytes) = layout.largest_memory {
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
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn config(dir: &std::path::Path, max_pods: u32) -> WasiProviderConfig {
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
    fn a_roomy_address_space_keeps_wasmtimes_full_reservations() {
        // x86_64's 47-bit user address space.
        let layout = MemoryLayout::plan(110, 1 << 47).unwrap();
        assert_eq!(
            layout,
            MemoryLayout {
                slots: 440,
                largest_memory: None
            }
        );
    }

    #[test]
    fn a_39_bit_address_space_gets_smaller_memories_for_every_pod() {
        // What a 39-bit aarch64 kernel leaves in one piece below the binary.
        let layout = MemoryLayout::plan(110, 341 * GIB).unwrap();
        assert_eq!(layout.slots, 440);
        assert_eq!(layout.largest_memory(), Some(512 << 20));
        let reserved = reservations(110) * (512 * (1 << 20) + GUARD);
        assert!(reserved <= 341 * GIB, "{reserved}");
    }

    #[test]
    fn too_little_address_space_names_the_pods_that_would_fit() {
        let err = MemoryLayout::plan(110, 8 * GIB).unwrap_err();
        let EngineError::AddressSpace { fit, max_pods, .. } = err else {
            panic!("{err}");
        };
        assert_eq!((fit, max_pods), (17, 110));
        let message = err.to_string();
        assert!(
            message.contains("8192 MiB") && message.contains("--max-pods=110"),
            "{message}"
        );
        assert!(MemoryLayout::plan(fit as u32, 8 * GIB).is_ok());
        assert!(MemoryLayout::plan(1, 0).is_err());
    }

    #[test]
    fn requests_leave_the_pools_last_slots_to_pods() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4);
        let layout = MemoryLayout::plan(4, 1 << 47).unwrap();
        let room = PoolRoom::of(&layout);
        assert_eq!((room.slots, room.reserve), (16, 8));
        let pooled = build(&config, &layout, TierKind::Optimised).unwrap();
        let module = wasmtime::Module::new(&pooled, "(module (memory 1))").unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            room.for_request(&pooled).unwrap();
            let mut store = wasmtime::Store::new(&pooled, ());
            wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            held.push(store);
        }
        let refused = room.for_request(&pooled).unwrap_err();
        assert!(refused.contains("8 of 16 slots in use"), "{refused}");
        // A pod's own instance still gets one of the kept slots.
        let mut store = wasmtime::Store::new(&pooled, ());
        wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        drop(store);
        held.pop();
        room.for_request(&pooled).unwrap();

        let on_demand = build(&config, &layout, TierKind::Baseline).unwrap();
        room.for_request(&on_demand).unwrap();
        // A big node keeps an eighth.
        let big = PoolRoom::of(&MemoryLayout::plan(110, 1 << 47).unwrap());
        assert_eq!((big.slots, big.reserve), (440, 55));
    }

    #[test]
    fn a_smaller_reservation_is_the_most_a_memory_grows_to_in_either_engine() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 2);
        let cap = LEAST_RESERVATION;
        let layout = MemoryLayout {
            slots: 8,
            largest_memory: Some(cap),
        };
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
            if tier == TierKind::Optimised {
                assert_eq!(grow.call(&mut store, 1).unwrap(), -1, "past the slot");
            }
        }
    }
}
