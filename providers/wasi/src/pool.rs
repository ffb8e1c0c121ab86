//! The node's instances in its address space: how much each Wasm memory reserves, how many
//! slots the Cranelift engine's pool has, and how much of them served requests may take.
//!
//! Every linear memory reserves its whole range up front: wasmtime's 4 GiB plus guards by
//! default, so that code for 32-bit memories needs no bounds checks. The pool reserves every
//! slot's range at once, in one mapping. A host whose address space cannot hold that for
//! `--max-pods` (a 39-bit aarch64 kernel gives a process 512 GiB, `ulimit -v` may give it
//! less) gets smaller reservations for both engines, or is told how many pods would fit.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;

/// Each pod may hold a few instances (a component is several core instances); the pool is
/// sized so that `max_pods` pods fit with room for init containers.
pub(crate) const INSTANCES_PER_POD: u32 = 4;
/// What a linear memory reserves by default on a 64-bit host (wasmtime's default).
const FULL_RESERVATION: u64 = 4 << 30;
/// The unmapped guard beside a memory's reservation (wasmtime's default on 64-bit hosts).
/// The pool puts one after each slot and one before the first; a memory allocated on demand
/// has one on each side.
const GUARD: u64 = 32 << 20;
/// What a pool slot reserves besides its memory: an async stack (2 MiB), a table (20,000
/// elements), with room to spare.
const SLOT_EXTRA: u64 = 4 << 20;
/// The least a memory may reserve: below it, the host is told to run fewer pods instead.
const LEAST_RESERVATION: u64 = 64 << 20;

/// The address space cannot give every pod's memories the least reservation.
#[derive(Debug, thiserror::Error)]
#[error(
    "this host gives wasmlet {} MiB of address space, enough for the Wasm memories of {fit} pods, not of --max-pods={max_pods}; lower --max-pods or raise the address space limit (ulimit -v)",
    available >> 20
)]
pub struct AddressSpaceError {
    /// The largest reservation the process could make.
    available: u64,
    /// The pods asked for.
    max_pods: u32,
    /// The most pods that would fit.
    fit: u32,
}

/// How the node's instances sit in its address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryLayout {
    /// The pods' share of the pool: [`INSTANCES_PER_POD`] slots per pod.
    pods_slots: u32,
    /// Slots beyond the pods' share, which served requests may never take: a pod always
    /// finds room to start in, however many requests are in flight.
    kept_slots: u32,
    /// What each memory reserves, which is also the most it may hold; `None` is wasmtime's
    /// default.
    largest_memory: Option<u64>,
}

/// What a layout's memories can reserve, given the address space.
enum Reservation {
    /// wasmtime's default.
    Full,
    /// This many bytes, a power of two (which reads plainly in the log).
    Smaller(u64),
    /// Not even [`LEAST_RESERVATION`].
    TooLittle,
}

impl MemoryLayout {
    /// The layout for `max_pods` on this host. Where the address space is short, the
    /// layout leaves some of it (a thirty-second, at least 1 GiB) for everything else the
    /// process maps later (thread stacks, the allocator's arenas, compiled code): under
    /// `ulimit -v` these count against the same limit, and a failed allocation would end
    /// the node.
    pub(crate) fn for_host(max_pods: u32) -> Result<Self, AddressSpaceError> {
        let want = Self::shape(max_pods).bytes(FULL_RESERVATION);
        let margin = |bytes: u64| (bytes / 32).max(1 << 30);
        let asked = want.saturating_add(margin(want));
        let found = crate::address_space::largest_reservation(asked);
        let usable = if found >= asked {
            want
        } else {
            found.saturating_sub(margin(found))
        };
        Self::plan(max_pods, usable)
    }

    /// The layout for `max_pods` when `available` bytes can be reserved in one piece.
    fn plan(max_pods: u32, available: u64) -> Result<Self, AddressSpaceError> {
        let shape = Self::shape(max_pods);
        let largest_memory = match shape.reservation(available) {
            Reservation::Full => None,
            Reservation::Smaller(bytes) => Some(bytes),
            Reservation::TooLittle => {
                return Err(AddressSpaceError {
                    available,
                    max_pods,
                    fit: Self::pods_that_fit(available, max_pods),
                });
            }
        };
        Ok(Self {
            largest_memory,
            ..shape
        })
    }

    /// The slots for `max_pods`: theirs, and an eighth more kept for starts (32 to 256, 32
    /// being enough for eight pods at once, but never more than theirs).
    fn shape(max_pods: u32) -> Self {
        let pods_slots = max_pods.max(1).saturating_mul(INSTANCES_PER_POD);
        Self {
            pods_slots,
            kept_slots: (pods_slots / 8).clamp(32, 256).min(pods_slots),
            largest_memory: None,
        }
    }

    /// The pool's slots.
    pub(crate) fn slots(&self) -> u32 {
        self.pods_slots.saturating_add(self.kept_slots)
    }

    /// Memories allocated on demand that the address space must hold beside the pool: one
    /// per pod whose code is still the baseline tier's, and served requests' up to
    /// [`RequestRoom`]'s bound.
    fn on_demand_memories(&self) -> u64 {
        u64::from(self.pods_slots / INSTANCES_PER_POD) + u64::from(self.kept_slots)
    }

    /// The address space this layout takes with memories of `reservation` bytes.
    fn bytes(&self, reservation: u64) -> u64 {
        let slots = u64::from(self.slots());
        let pool = slots
            .saturating_mul(reservation + GUARD + SLOT_EXTRA)
            .saturating_add(GUARD);
        let on_demand = self
            .on_demand_memories()
            .saturating_mul(reservation + 2 * GUARD);
        pool.saturating_add(on_demand)
    }

    fn reservation(&self, available: u64) -> Reservation {
        if self.bytes(FULL_RESERVATION) <= available {
            return Reservation::Full;
        }
        // `bytes` is linear in the reservation: solve for the largest that fits.
        let memories = u64::from(self.slots()) + self.on_demand_memories();
        let overhead = self.bytes(0);
        let per_memory = available.saturating_sub(overhead) / memories;
        match per_memory.checked_ilog2().map(|log| 1 << log) {
            Some(bytes) if bytes >= LEAST_RESERVATION => Reservation::Smaller(bytes),
            _ => Reservation::TooLittle,
        }
    }

    /// The most pods, below `max_pods`, whose memories fit in `available` bytes.
    fn pods_that_fit(available: u64, max_pods: u32) -> u32 {
        // Every value searched is below `max_pods`, so it converts back.
        let fits = |pods: u64| {
            u32::try_from(pods).is_ok_and(|pods| {
                !matches!(
                    Self::shape(pods).reservation(available),
                    Reservation::TooLittle
                )
            })
        };
        let fit = crate::address_space::largest_where(u64::from(max_pods), 1, fits);
        u32::try_from(fit).unwrap_or(0)
    }

    /// The most one linear memory may hold, when the host's address space sets it.
    pub(crate) fn largest_memory(&self) -> Option<u64> {
        self.largest_memory
    }
}

/// What served requests may take, so that a flood of requests to one served pod (each
/// request is an instance, up to 1024 at once) cannot leave the next pod to start without
/// an instance slot or address space:
///
/// - from the pool (Cranelift's code), no more than the pods' share: a request is refused
///   if its instance could take the pool's live instances past it (counting it as a pod's
///   [`INSTANCES_PER_POD`] core instances, or its memories or tables if more), so the kept
///   slots stay the pods';
/// - on demand (Winch's code), on a host whose address space set the layout, no more
///   memories than the kept slots, which the layout reserved address space for.
///
/// A request checks just before it instantiates, so requests instantiating at the very
/// same moment may pass together, each within the pods' share; the kept slots (32 where
/// the pods' share is at least that) are sized well past it.
#[derive(Clone, Debug)]
pub(crate) struct RequestRoom {
    pods_slots: u32,
    /// Permits for memories allocated on demand, when the address space is short, and how
    /// many there are.
    on_demand: Option<(Arc<Semaphore>, u32)>,
}

/// What one instance of a component takes: its linear memories and tables.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InstanceNeeds {
    pub(crate) memories: u32,
    pub(crate) tables: u32,
}

impl InstanceNeeds {
    /// A component's needs; one of each where wasmtime cannot tell (a component that
    /// imports core modules).
    pub(crate) fn of(component: &wasmtime::component::Component) -> Self {
        component.resources_required().map_or(
            Self {
                memories: 1,
                tables: 1,
            },
            |needs| Self {
                memories: needs.num_memories,
                tables: needs.num_tables,
            },
        )
    }
}

/// What a request holds of the room while its instance lives.
pub(crate) type RoomTaken = Option<OwnedSemaphorePermit>;

impl RequestRoom {
    pub(crate) fn of(layout: &MemoryLayout) -> Self {
        Self {
            pods_slots: layout.pods_slots,
            on_demand: layout.largest_memory.map(|_| {
                (
                    Arc::new(Semaphore::new(layout.kept_slots as usize)),
                    layout.kept_slots,
                )
            }),
        }
    }

    /// Room for an instance of `engine` that `needs` so much, or why there is none.
    pub(crate) fn take(&self, engine: &Engine, needs: InstanceNeeds) -> Result<RoomTaken, String> {
        if let Some(pool) = engine.pooling_allocator_metrics() {
            let live = pool
                .core_instances()
                .max(pool.component_instances())
                .max(pool.memories() as u64)
                .max(pool.tables() as u64);
            let slots = INSTANCES_PER_POD.max(needs.memories).max(needs.tables);
            if live + u64::from(slots) > u64::from(self.pods_slots) {
                return Err(format!(
                    "the node's instance pool is busy ({live} slots in use, {} for requests); the rest are kept for starting pods",
                    self.pods_slots
                ));
            }
            return Ok(None);
        }
        let Some((on_demand, total)) = &self.on_demand else {
            return Ok(None);
        };
        // A component with more memories than there are permits takes them all, one
        // request at a time, rather than never.
        let memories = needs.memories.clamp(1, *total);
        let free = on_demand.available_permits();
        on_demand
            .clone()
            .try_acquire_many_owned(memories)
            .map(Some)
            .map_err(|_| {
                format!(
                    "the node's address space for requests' memories is in use ({free} of their memories free, {memories} asked); the rest is kept for starting pods"
                )
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::code::TierKind;
    use crate::engine::{build, tests::config};

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// The layout for `max_pods` in `available` bytes of address space.
    pub(crate) fn planned(max_pods: u32, available: u64) -> MemoryLayout {
        MemoryLayout::plan(max_pods, available).unwrap()
    }

    #[test]
    fn a_roomy_address_space_keeps_wasmtimes_full_reservations() {
        // x86_64's 47-bit user address space.
        let layout = MemoryLayout::plan(110, 1 << 47).unwrap();
        assert_eq!(layout.largest_memory(), None);
        assert_eq!(
            (layout.pods_slots, layout.kept_slots, layout.slots()),
            (440, 55, 495)
        );
        // The benchmark's 3,000 pods fit too.
        assert_eq!(
            MemoryLayout::plan(3600, 85 << 40).unwrap().largest_memory(),
            None
        );
    }

    #[test]
    fn a_short_address_space_gets_smaller_memories_for_every_pod() {
        // `ulimit -v 512G`, less what the process has mapped.
        let layout = MemoryLayout::plan(110, 510 * GIB).unwrap();
        assert_eq!(layout.largest_memory(), Some(512 * MIB));
        assert!(layout.bytes(512 * MIB) <= 510 * GIB);
        // What a 39-bit kernel leaves in one piece below the binary.
        let layout = MemoryLayout::plan(110, 341 * GIB).unwrap();
        assert_eq!(layout.largest_memory(), Some(256 * MIB));
        assert!(layout.bytes(256 * MIB) <= 341 * GIB);
        assert!(layout.bytes(512 * MIB) > 341 * GIB, "the largest that fits");
    }

    #[test]
    fn too_little_address_space_names_the_pods_that_would_fit() {
        let err = MemoryLayout::plan(110, 8 * GIB).unwrap_err();
        assert!(MemoryLayout::plan(err.fit, 8 * GIB).is_ok(), "{err}");
        assert!(MemoryLayout::plan(err.fit + 1, 8 * GIB).is_err(), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("8192 MiB") && message.contains("--max-pods=110"),
            "{message}"
        );
        assert!(MemoryLayout::plan(1, 0).is_err());
        assert!(MemoryLayout::plan(1, 64 * MIB).is_err());
    }

    fn needs(memories: u32) -> InstanceNeeds {
        InstanceNeeds {
            memories,
            tables: 1,
        }
    }

    #[test]
    fn requests_leave_the_kept_slots_of_the_pool_to_pods() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4);
        let layout = MemoryLayout::plan(4, 1 << 47).unwrap();
        assert_eq!((layout.pods_slots, layout.slots()), (16, 32));
        let room = RequestRoom::of(&layout);
        let pooled = build(&config, &layout, TierKind::Optimised).unwrap();
        let module = wasmtime::Module::new(&pooled, "(module (memory 1))").unwrap();
        let instantiate = || {
            let mut store = wasmtime::Store::new(&pooled, ());
            wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            store
        };
        // A request counts as a pod's four slots: it may go in while 4 of the pods' 16
        // are free.
        let mut held = Vec::new();
        for _ in 0..13 {
            room.take(&pooled, needs(1)).unwrap();
            held.push(instantiate());
        }
        let refused = room.take(&pooled, needs(1)).unwrap_err();
        assert!(
            refused.contains("13 slots in use, 16 for requests"),
            "{refused}"
        );
        // A request with more memories than that counts them.
        held.pop();
        assert!(room.take(&pooled, needs(5)).is_err());
        room.take(&pooled, needs(1)).unwrap();
        // Every other slot is still there for pods' own instances.
        let pods: Vec<_> = (0..20).map(|_| instantiate()).collect();
        drop(pods);

        // A roomy host does not bound what requests allocate on demand.
        let on_demand = build(&config, &layout, TierKind::Baseline).unwrap();
        assert!(room.take(&on_demand, needs(1000)).unwrap().is_none());
    }

    #[test]
    fn on_a_short_address_space_requests_on_demand_take_at_most_the_kept_memories() {
        let layout = MemoryLayout::plan(4, 120 * GIB).unwrap();
        assert!(layout.largest_memory().is_some());
        assert_eq!(layout.kept_slots, 16);
        let dir = tempfile::tempdir().unwrap();
        let on_demand = build(&config(dir.path(), 4), &layout, TierKind::Baseline).unwrap();
        let room = RequestRoom::of(&layout);
        let first = room.take(&on_demand, needs(10)).unwrap();
        let refused = room.take(&on_demand, needs(7)).unwrap_err();
        assert!(refused.contains("6 of their memories free"), "{refused}");
        let second = room.take(&on_demand, needs(6)).unwrap();
        drop(first);
        room.take(&on_demand, needs(10)).unwrap();
        drop(second);
        // More memories than there are permits: all of them, one request at a time.
        let all = room.take(&on_demand, needs(100)).unwrap();
        assert!(room.take(&on_demand, needs(1)).is_err());
        drop(all);
        room.take(&on_demand, needs(100)).unwrap();
    }
}
