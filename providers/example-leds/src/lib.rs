//! A minimal device provider, the one `providers/README.md` walks through: a strip of `n`
//! identical LEDs, advertised as the extended resource `example.com/led: n`. A container
//! asking for `example.com/led: 2` gets two free LEDs, told which in `LEDS=1,3`, and they
//! are free again when its pod ends.
//!
//! It uses nothing but the `kubelet` crate's public API: [`DeviceProvider`] for the
//! bookkeeping, and [`WithDevices`](kubelet::WithDevices) puts it beside any runtime.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubelet::{Allocation, ContainerError, DeviceProvider, PodKey};

/// The extended resource a pod requests.
pub const RESOURCE: &str = "example.com/led";

/// A strip of LEDs, each held by at most one pod.
pub struct LedStrip {
    /// The UID of the pod holding each LED, by index.
    holders: Mutex<Vec<Option<String>>>,
}

impl LedStrip {
    /// A strip of `n` LEDs, all free.
    pub fn new(n: usize) -> Self {
        Self {
            holders: Mutex::new(vec![None; n]),
        }
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Vec<Option<String>>> {
        // A panic elsewhere while holding the lock leaves the list itself consistent.
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceProvider for LedStrip {
    fn extended_resources(&self) -> BTreeMap<String, Quantity> {
        let n = self.holders().len();
        [(RESOURCE.to_string(), Quantity(n.to_string()))].into()
    }

    fn allocate(
        &self,
        pod: &PodKey,
        _container: &str,
        devices: &BTreeMap<String, u64>,
    ) -> Result<Allocation, ContainerError> {
        let Some(&wanted) = devices.get(RESOURCE) else {
            return Ok(Allocation::default());
        };
        let mut holders = self.holders();
        // A restarted container gets the LEDs its pod already holds.
        let mut given: Vec<usize> = (0..holders.len())
            .filter(|&i| holders[i].as_deref() == Some(pod.uid.as_str()))
            .collect();
        for i in 0..holders.len() {
            if given.len() as u64 >= wanted {
                break;
            }
            if holders[i].is_none() {
                holders[i] = Some(pod.uid.clone());
                given.push(i);
            }
        }
        if (given.len() as u64) < wanted {
            // Admission counted them free; losing that race is the kubelet's
            // UnexpectedAdmissionError, and the pod's next start tries again.
            return Err(ContainerError {
                reason: "UnexpectedAdmissionError".into(),
                message: format!("{wanted} LEDs asked for, {} free", given.len()),
                fatal: false,
            });
        }
        given.sort_unstable();
        let list: Vec<String> = given.iter().map(ToString::to_string).collect();
        Ok(Allocation {
            env: vec![("LEDS".into(), list.join(","))],
        })
    }

    fn release(&self, pod: &PodKey) {
        for holder in self.holders().iter_mut() {
            if holder.as_deref() == Some(pod.uid.as_str()) {
                *holder = None;
            }
        }
    }
}
