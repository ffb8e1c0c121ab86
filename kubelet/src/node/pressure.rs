//! The pressure thresholds behind MemoryPressure and DiskPressure, given as the kubelet's
//! `--eviction-hard` takes them (`memory.available<100Mi,nodefs.available<10%`).
//!
//! The defaults are the kubelet's. Operators of small devices lower them; the e2e suite
//! lowers `nodefs.available` so a shared CI disk that happens to be 91% full does not
//! taint its nodes.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::host::DiskUsage;
use crate::pod::quantity;
use crate::{Error, Result};

/// One signal's threshold: an absolute amount or a share of the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Pressure below this many bytes available.
    Bytes(u64),
    /// Pressure below this percentage of the total available.
    Percent(f64),
}

impl Threshold {
    /// Whether `available` out of `total` is below the threshold. A total of zero means the
    /// reading is meaningless, which is not pressure.
    pub fn is_crossed(self, available: u64, total: u64) -> bool {
        match self {
            Threshold::Bytes(min) => available < min,
            Threshold::Percent(min) => total > 0 && (available as f64) * 100.0 < total as f64 * min,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Bytes(b) if b % (1 << 30) == 0 && *b > 0 => write!(f, "{} GiB", b >> 30),
            Threshold::Bytes(b) if b % (1 << 20) == 0 && *b > 0 => write!(f, "{} MiB", b >> 20),
            Threshold::Bytes(b) => write!(f, "{b} bytes"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The thresholds for the two signals wasmlet measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PressureThresholds {
    /// `memory.available`: host memory.
    pub memory_available: Threshold,
    /// `nodefs.available`: the data dir's filesystem, which holds images, compiled
    /// modules, logs and volumes alike.
    pub nodefs_available: Threshold,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        Self {
            memory_available: Threshold::Bytes(100 << 20),
            nodefs_available: Threshold::Percent(10.0),
        }
    }
}

impl PressureThresholds {
    /// Whether the host's available memory is under pressure.
    pub fn memory_pressure(&self, available_bytes: u64) -> bool {
        // Total memory does not matter to a byte threshold, and a percentage of memory is
        // rare enough that measuring it against the available figure alone is refused at
        // parse time.
        self.memory_available.is_crossed(available_bytes, 0)
    }

    /// Whether the data dir's filesystem is under pressure.
    pub fn disk_pressure(&self, disk: DiskUsage) -> bool {
        self.nodefs_available
            .is_crossed(disk.available_bytes, disk.total_bytes)
    }

    /// Parses `signal<value,...`, starting from the defaults: a signal left out keeps its
    /// default, as the kubelet does.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut thresholds = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let invalid = |reason: String| Error::InvalidEvictionThreshold {
                threshold: item.to_string(),
                reason,
            };
            let (signal, value) = item.split_once('<').ok_or_else(|| {
                invalid("expected signal<value, e.g. nodefs.available<10%".into())
            })?;
            let value = value.trim();
            let threshold = match value.strip_suffix('%') {
                Some(percent) => match percent.trim().parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p),
                    _ => {
                        return Err(invalid(format!(
                            "{value:?} is not a percentage from 0 to 100"
                        )));
                    }
                },
                None => quantity::bytes(&Quantity(value.to_string()))
                    .map(Threshold::Bytes)
                    .map_err(|_| invalid(format!("{value:?} is not a quantity like 500Mi")))?,
            };
            match signal.trim() {
                "memory.available" => {
                    if let Threshold::Percent(_) = threshold {
                        return Err(invalid(
                            "memory.available takes a quantity, like 100Mi".into(),
                        ));
                    }
                    thresholds.memory_available = threshold;
                }
                "nodefs.available" | "imagefs.available" => thresholds.nodefs_available = threshold,
                other => {
                    return Err(invalid(format!(
                        "unknown signal {other:?}; wasmlet measures memory.available and \
                         nodefs.available (imagefs.available is the same filesystem)"
                    )));
                }
            }
        }
        Ok(thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(total: u64, available: u64) -> DiskUsage {
        DiskUsage {
            total_bytes: total,
            available_bytes: available,
        }
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let t = PressureThresholds::default();
        assert!(t.memory_pressure(99 << 20));
        assert!(!t.memory_pressure(100 << 20));
        assert!(t.disk_pressure(disk(100, 9)));
        assert!(!t.disk_pressure(disk(100, 10)));
        assert!(!t.disk_pressure(disk(0, 0)));
    }

    #[test]
    fn parse_overrides_only_the_signals_given() {
        let t = PressureThresholds::parse("nodefs.available<1Gi").unwrap();
        assert_eq!(t.nodefs_available, Threshold::Bytes(1 << 30));
        assert_eq!(t.memory_available, Threshold::Bytes(100 << 20));
        let t = PressureThresholds::parse(" memory.available<1Gi , imagefs.available<5% ").unwrap();
        assert_eq!(t.memory_available, Threshold::Bytes(1 << 30));
        assert_eq!(t.nodefs_available, Threshold::Percent(5.0));
        assert_eq!(
            PressureThresholds::parse("").unwrap(),
            PressureThresholds::default()
        );
    }

    #[test]
    fn bad_thresholds_say_what_is_wrong() {
        for (spec, needle) in [
            ("nodefs.available=10%", "expected signal<value"),
            ("nodefs.available<150%", "percentage"),
            ("nodefs.available<lots", "quantity"),
            ("memory.available<5%", "takes a quantity"),
            ("pid.available<10", "unknown signal"),
        ] {
            let err = PressureThresholds::parse(spec).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains(spec.split('<').next().unwrap()),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn thresholds_read_as_an_operator_wrote_them() {
        assert_eq!(Threshold::Bytes(100 << 20).to_string(), "100 MiB");
        assert_eq!(Threshold::Bytes(2 << 30).to_string(), "2 GiB");
        assert_eq!(Threshold::Bytes(1000).to_string(), "1000 bytes");
        assert_eq!(Threshold::Percent(10.0).to_string(), "10%");
    }
}
