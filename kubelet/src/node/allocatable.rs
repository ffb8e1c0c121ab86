//! What the node's pods may have of it: its capacity less what the host keeps for itself
//! (`--system-reserved`) and, for memory and ephemeral storage, the hard eviction
//! thresholds, as the kubelet counts allocatable. Admission, the downward API's unset
//! limits, the Node's status and the memory all guests may hold together use it.

use crate::config::Reserved;
use crate::host::HostFacts;
use crate::node::pressure::{PressureThresholds, Threshold};

/// The node's allocatable CPU and memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU, in millicores.
    pub cpu_millis: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

impl Allocatable {
    /// Allocatable on `host` with `reserved` kept back and the memory eviction threshold of
    /// `pressure` kept free.
    pub fn of(host: &HostFacts, reserved: Reserved, pressure: &PressureThresholds) -> Self {
        let eviction = memory_threshold_bytes(pressure);
        Self {
            cpu_millis: u64::from(host.cpus)
                .saturating_mul(1000)
                .saturating_sub(reserved.cpu_millis),
            memory_bytes: host
                .memory_bytes
                .saturating_sub(reserved.memory_bytes)
                .saturating_sub(eviction),
        }
    }
}

/// Allocatable ephemeral storage of a data-dir filesystem of `total_bytes`: less what is
/// reserved and what the `nodefs.available` threshold keeps free.
pub fn ephemeral_storage_bytes(
    total_bytes: u64,
    reserved: Reserved,
    pressure: &PressureThresholds,
) -> u64 {
    let eviction = match pressure.nodefs_available {
        Threshold::Bytes(bytes) => bytes,
        // Rounded down; a float to integer cast saturates.
        Threshold::Percent(percent) => (total_bytes as f64 * percent / 100.0) as u64,
    };
    total_bytes
        .saturating_sub(reserved.ephemeral_storage_bytes)
        .saturating_sub(eviction)
}

/// The memory `pressure`'s `memory.available` threshold keeps free, in bytes.
pub fn memory_threshold_bytes(pressure: &PressureThresholds) -> u64 {
    // A percentage is refused for memory.available when parsed; a byte count is kept.
    match pressure.memory_available {
        Threshold::Bytes(bytes) => bytes,
        Threshold::Percent(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: u32, memory_bytes: u64) -> HostFacts {
        HostFacts {
            cpus,
            memory_bytes,
            ..HostFacts::default()
        }
    }

    #[test]
    fn reserved_and_the_eviction_threshold_are_taken_off_capacity() {
        let reserved = Reserved::parse("cpu=500m,memory=1Gi").unwrap();
        let allocatable =
            Allocatable::of(&host(4, 8 << 30), reserved, &PressureThresholds::default());
        assert_eq!(
            allocatable,
            Allocatable {
                cpu_millis: 3500,
                memory_bytes: (7 << 30) - (100 << 20),
            }
        );
    }

    #[test]
    fn ephemeral_storage_keeps_the_nodefs_threshold_free_in_bytes_or_percent() {
        let reserved = Reserved::parse("ephemeral-storage=1Gi").unwrap();
        let percent = PressureThresholds::default();
        assert_eq!(
            ephemeral_storage_bytes(100 << 30, reserved, &percent),
            (100 << 30) - (1 << 30) - (10 << 30)
        );
        let bytes = PressureThresholds::parse("nodefs.available<64Mi").unwrap();
        assert_eq!(
            ephemeral_storage_bytes(1 << 30, Reserved::default(), &bytes),
            (1 << 30) - (64 << 20)
        );
        assert_eq!(ephemeral_storage_bytes(1 << 20, reserved, &bytes), 0);
    }

    #[test]
    fn more_reserved_than_the_host_has_leaves_nothing_and_does_not_wrap() {
        let reserved = Reserved::parse("cpu=8,memory=1Ti").unwrap();
        let allocatable =
            Allocatable::of(&host(2, 1 << 30), reserved, &PressureThresholds::default());
        assert_eq!(allocatable.cpu_millis, 0);
        assert_eq!(allocatable.memory_bytes, 0);
    }

    #[test]
    fn only_the_kubelet_s_resources_may_be_reserved_and_quantities_are_checked() {
        assert_eq!(Reserved::parse("").unwrap(), Reserved::default());
        // Wasm pods have no processes: a pid reservation, as a kubelet's flag may carry, is
        // taken and has nothing to keep back.
        assert_eq!(Reserved::parse("pid=1000").unwrap(), Reserved::default());
        for bad in ["memory", "memory=lots", "hugepages-2Mi=1Gi", "cpu=-1"] {
            let err = Reserved::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid system reservation"),
                "{bad}: {err}"
            );
        }
    }
}
