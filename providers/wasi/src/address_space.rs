//! How much address space the process can still reserve. Every linear memory reserves its
//! whole range up front (the pooling allocator reserves every slot's at once, in one
//! mapping), and address space is scarcer than it looks: an aarch64 kernel built with 39-bit
//! virtual addresses, as Raspberry Pi kernels may be, gives a process 512 GiB, and
//! `ulimit -v` (RLIMIT_AS) may give it less. Asking the kernel is the one answer that counts
//! both, and whatever else the process has mapped.

use std::ffi::c_void;

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// How finely [`largest_reservation`] searches.
const GRAIN: u64 = 64 << 20;

/// The largest single reservation, up to `want` bytes, that the kernel grants the process
/// now, to within [`GRAIN`]; `want` itself when that much fits.
pub(crate) fn largest_reservation(want: u64) -> u64 {
    if can_reserve(want) {
        return want;
    }
    largest_where(want, GRAIN, can_reserve)
}

/// The largest value below `high`, to within `grain`, for which `fits` holds, where `fits`
/// holds for 0 and, once it fails, fails for every larger value: a binary search.
pub(crate) fn largest_where(high: u64, grain: u64, mut fits: impl FnMut(u64) -> bool) -> u64 {
    // Invariant: `low` fits (0 by the caller's word), `high` does not.
    let (mut low, mut high) = (0, high);
    while high - low > grain {
        let middle = low + (high - low) / 2;
        if fits(middle) {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

/// Whether a mapping of `bytes` with no access and no swap reserved can be made: it takes
/// address space only, no memory, and is unmapped again at once.
fn can_reserve(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    // SAFETY: a new private anonymous mapping at an address the kernel picks overlaps
    // nothing the process uses; it is never read or written, and unmapped with the length
    // it was made with.
    let Ok(at) = (unsafe {
        mmap_anonymous(
            std::ptr::null_mut::<c_void>(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }) else {
        return false;
    };
    // SAFETY: `at` and `len` are the mapping just made, which nothing else refers to.
    if let Err(err) = unsafe { munmap(at, len) } {
        tracing::warn!(%err, bytes, "cannot unmap an address space probe");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_reservation_fits_whole() {
        assert_eq!(largest_reservation(GRAIN * 4), GRAIN * 4);
        assert_eq!(largest_reservation(0), 0);
    }

    #[test]
    fn more_than_any_address_space_is_cut_to_what_fits() {
        // No 64-bit process has 2^63 bytes of user address space.
        let want = 1u64 << 63;
        let found = largest_reservation(want);
        assert!(found < want, "{found}");
        assert!(
            found >= GRAIN,
            "a process has some address space left: {found}"
        );
        // No more than that: other tests in the same process (under `cargo test`) map and
        // unmap pools while it searches. The e2e tests under `prlimit --as` check the size.
    }
}
