//! The memory every guest on the node holds together. All pods run in wasmlet's one
//! process, so a pod with no memory limit must not take the memory the host, wasmlet and the
//! other pods run in: the kernel's OOM killer would end them all at once. Two bounds hold,
//! and a growth past either is refused, which is the asking container's OOM kill:
//!
//! - **Allocatable memory**: the guests together hold at most what the node tells the
//!   scheduler its pods may have (capacity less `--system-reserved` and the eviction
//!   threshold). The kubepods cgroup holds pods to a little more (it leaves the threshold
//!   in); wasmlet has no eviction manager to free that margin again, so it keeps it.
//! - **The memory.available threshold**: a growth that would leave the host with less
//!   available than the eviction threshold is refused, whatever allocatable says: the
//!   kubelet would evict at that point, and without a `--system-reserved` sized for the
//!   host's other processes, allocatable alone is nearly all of the host's memory.
//!
//! A third bound is on each memory alone, where the host's address space sets one: every
//! linear memory reserves its whole range up front, and a host with little address space
//! gives each a smaller range than wasmtime's 4 GiB (see `pool::MemoryLayout`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metering::GROW_REFUSED;

/// How a refusal by the node, not by the container's own limit, words its reason.
pub(crate) const NODE_MEMORY_USED_UP: &str = "the node's memory for pods is used up";

/// How a refusal by a memory's reservation begins and ends its reason.
const PAST_RESERVATION: (&str, &str) = (
    "a Wasm memory of ",
    " bytes this node's address space gives one memory",
);

/// How long one reading of the host's available memory stands for: growths in between are
/// counted against it, so a guest growing page by page does not read `/proc/meminfo` each
/// time.
const READING_LASTS: Duration = Duration::from_millis(10);

/// What the host has available, in bytes, if it can tell.
type AvailableMemory = fn() -> Option<u64>;

/// The reason a memory's reservation gave for refusing it, found in an error's `text`.
pub(crate) fn past_reservation(text: &str) -> Option<&str> {
    let (begins, ends) = PAST_RESERVATION;
    let from = text.find(begins)?;
    let to = from + text[from..].find(ends)? + ends.len();
    text.get(from..to)
}

/// The node's account of its guests' memory.
#[derive(Debug)]
pub(crate) struct PodsMemory {
    /// Allocatable memory, if known.
    limit: Option<u64>,
    /// What the host must keep available (`memory.available`'s hard eviction threshold).
    keep_available: u64,
    /// The most one linear memory may hold, if the address space sets it.
    largest_memory: Option<u64>,
    available: AvailableMemory,
    account: Mutex<Account>,
}

#[derive(Debug, Default)]
struct Account {
    /// What the guests hold, in bytes.
    used: u64,
    last_reading: Option<Reading>,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    /// The host's available memory then, if it could tell.
    available: Option<u64>,
    /// What the guests held then.
    used: u64,
}

impl PodsMemory {
    /// Guests held to `limit` bytes together (none if the host's memory is unknown), the
    /// host kept with `keep_available` bytes available, each memory held to
    /// `largest_memory` bytes.
    pub(crate) fn new(
        limit: Option<u64>,
        keep_available: u64,
        largest_memory: Option<u64>,
    ) -> Arc<Self> {
        Self::with_reader(
            limit,
            keep_available,
            largest_memory,
            kubelet::host::memory_available_bytes,
        )
    }

    /// No bound at all, for tests of other things.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Arc<Self> {
        Self::with_reader(None, 0, None, || None)
    }

    fn with_reader(
        limit: Option<u64>,
        keep_available: u64,
        largest_memory: Option<u64>,
        available: AvailableMemory,
    ) -> Arc<Self> {
        Arc::new(Self {
            limit,
            keep_available,
            largest_memory,
            available,
            account: Mutex::new(Account::default()),
        })
    }

    /// Takes `growth` more bytes for a guest's `what` (memory or table), unless either bound
    /// refuses them.
    pub(crate) fn take(&self, growth: u64, what: &str) -> wasmtime::Result<()> {
        // Instantiating a memory or table of no pages asks for nothing: never refused, even
        // on a host already short of memory.
        if growth == 0 {
            return Ok(());
        }
        let mut account = self.lock();
        let total = account.used.saturating_add(growth);
        if let Some(limit) = self.limit
            && total > limit
        {
            return Err(wasmtime::format_err!(
                "{GROW_REFUSED}: {NODE_MEMORY_USED_UP}: its pods would hold {total} bytes with this {what}, over the node's allocatable memory of {limit}"
            ));
        }
        if let Some(available) = self.available_now(&mut account)
            && available.saturating_sub(growth) < self.keep_available
        {
            return Err(wasmtime::format_err!(
                "{GROW_REFUSED}: {NODE_MEMORY_USED_UP}: the host would have less than the {} bytes of memory.available it keeps with this {what} of {growth} bytes",
                self.keep_available
            ));
        }
        account.used = total;
        Ok(())
    }

    /// Refuses a linear memory of `desired` bytes that its reservation cannot hold: the
    /// pool refuses it too, but in words that do not say why.
    pub(crate) fn check_memory_size(&self, desired: usize) -> wasmtime::Result<()> {
        match self.largest_memory {
            Some(largest) if desired as u64 > largest => {
                let (begins, ends) = PAST_RESERVATION;
                Err(wasmtime::format_err!(
                    "{GROW_REFUSED}: {begins}{desired} bytes is more than the {largest}{ends}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Gives back what a guest instance that ended held.
    pub(crate) fn give_back(&self, bytes: u64) {
        let mut account = self.lock();
        account.used = account.used.saturating_sub(bytes);
    }

    /// The host's available memory now: the last reading if recent, less what the guests
    /// took since (what they gave back is not counted until the next reading). A host that
    /// cannot tell is asked again only once the reading has run out, too.
    fn available_now(&self, account: &mut Account) -> Option<u64> {
        let now = Instant::now();
        let reading = match account.last_reading {
            Some(reading) if now.saturating_duration_since(reading.at) < READING_LASTS => reading,
            _ => {
                let reading = Reading {
                    at: now,
                    available: (self.available)(),
                    used: account.used,
                };
                account.last_reading = Some(reading);
                reading
            }
        };
        reading
            .available
            .map(|available| available.saturating_sub(account.used.saturating_sub(reading.used)))
    }

    fn lock(&self) -> MutexGuard<'_, Account> {
        // Nothing panics while holding it; a poisoned account is still consistent.
        self.account.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn guests_are_held_to_allocatable_together_and_give_back_what_they_held() {
        let node = PodsMemory::with_reader(Some(4 * MIB), 0, None, || None);
        node.take(3 * MIB, "memory").unwrap();
        let err = format!("{:#}", node.take(2 * MIB, "memory").unwrap_err());
        assert!(err.contains(GROW_REFUSED), "{err}");
        assert!(err.contains(NODE_MEMORY_USED_UP), "{err}");
        assert!(
            err.contains(&format!(
                "over the node's allocatable memory of {}",
                4 * MIB
            )),
            "{err}"
        );
        node.give_back(3 * MIB);
        node.take(4 * MIB, "memory").unwrap();
    }

    static HOST_AVAILABLE: AtomicU64 = AtomicU64::new(0);

    /// With allocatable nearly the whole host (nothing reserved), the host's available
    /// memory is what stops a guest: growths that would leave less than the threshold are
    /// refused, counted between readings too.
    #[test]
    fn the_host_keeps_its_threshold_available_whatever_allocatable_says() {
        HOST_AVAILABLE.store(300 * MIB, Ordering::SeqCst);
        let node = PodsMemory::with_reader(Some(u64::MAX), 100 * MIB, None, || {
            Some(HOST_AVAILABLE.load(Ordering::SeqCst))
        });
        // 150 MiB in small growths, within one reading: 150 MiB still available.
        for _ in 0..150 {
            node.take(MIB, "memory").unwrap();
        }
        node.take(50 * MIB, "memory").unwrap();
        let err = format!("{:#}", node.take(MIB, "memory").unwrap_err());
        assert!(err.contains(NODE_MEMORY_USED_UP), "{err}");
        assert!(err.contains("memory.available"), "{err}");

        // The host freed memory meanwhile; the next reading lets the guest go on.
        HOST_AVAILABLE.store(400 * MIB, Ordering::SeqCst);
        node.lock().last_reading = None;
        node.take(MIB, "memory").unwrap();
    }

    /// A host whose memory cannot be read (no /proc/meminfo) has no allocatable memory to
    /// speak of: guests are not refused for it.
    #[test]
    fn a_host_whose_memory_cannot_be_read_does_not_refuse_guests() {
        let node = PodsMemory::with_reader(None, 100 * MIB, None, || None);
        node.take(u64::MAX / 2, "memory").unwrap();
    }

    /// An instance whose memories and tables start with no pages is started even on a host
    /// already below its threshold; any page more is refused.
    #[test]
    fn nothing_asked_is_never_refused() {
        let node = PodsMemory::with_reader(Some(u64::MAX), 100 * MIB, None, || Some(50 * MIB));
        node.take(0, "memory").unwrap();
        node.take(0, "table").unwrap();
        let err = format!("{:#}", node.take(1, "memory").unwrap_err());
        assert!(err.contains("memory.available"), "{err}");
    }

    /// Where the address space sets a largest memory, a memory past it is refused as an
    /// OOM kill that says so; one within it is the other bounds' to judge.
    #[test]
    fn a_memory_past_its_reservation_is_refused_in_words_that_say_why() {
        let node = PodsMemory::with_reader(None, 0, Some(64 * MIB), || None);
        node.check_memory_size(64 * MIB as usize).unwrap();
        let err = format!(
            "{:#}",
            node.check_memory_size(64 * MIB as usize + 1).unwrap_err()
        );
        assert!(err.contains(GROW_REFUSED), "{err}");
        assert_eq!(
            past_reservation(&format!("context: {err}; more")),
            Some(
                "a Wasm memory of 67108865 bytes is more than the 67108864 bytes this node's address space gives one memory"
            )
        );
        assert_eq!(past_reservation(GROW_REFUSED), None);
        PodsMemory::unbounded()
            .check_memory_size(usize::MAX)
            .unwrap();
    }
}
