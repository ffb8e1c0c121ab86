//! What the node's pods may have of it: its capacity less what the host keeps for itself
//! (`--system-reserved`) and, for memory, the hard eviction threshold, as the kubelet counts
//! allocatable. Admission, the downward API's unset limits, the Node's status and the
//! memory all guests may hold together (wasmlet's stand-in for the kubepods cgroup) use it.

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
        // A percentage is refused for memory.available when parsed; a byte count is kept.
        let eviction = match pressure.memory_available {
            Threshold::Bytes(bytes) => bytes,
            Threshold::Percent(_) => 0,
        };
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
    fn more_reserved_than_the_host_has_leaves_nothing_and_does_not_wrap() {
        let reserved = Reserved::parse("cpu=8,memory=1Ti").unwrap();
        let allocatable =
            Allocatable::of(&host(2, 1 << 30), reserved, &PressureThresholds::default());
        assert_eq!(allocatable.cpu_millis, 0);
        assert_eq!(allocatable.memory_bytes, 0);
    }

    #[test]
    fn only_cpu_and_memory_may_be_reserved_and_quantities_are_checked() {
        assert_eq!(Reserved::parse("").unwrap(), Reserved::default());
        for bad in ["memory", "memory=lots", "pid=100", "cpu=-1"] {
            let err = Reserved::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid system reservation"),
                "{bad}: {err}"
            );
        }
    }
}
