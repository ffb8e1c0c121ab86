//! The node's devices by label, who holds each, and the extended resources they make.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubelet::{Allocation, ContainerError, DeviceProvider, PodKey};

use crate::sim::{SimLine, SimTmp102};
use crate::spec::{DeviceKind, DeviceSpec, Direction};

/// The domain of every device's extended resource: `peripherals.wasmlet.dev/<label>`.
pub const RESOURCE_DOMAIN: &str = "peripherals.wasmlet.dev";
/// The environment variable listing the labels granted to a container, comma-separated.
pub const DEVICES_ENV: &str = "WASMLET_DEVICES";

/// One device and its backend.
#[derive(Debug)]
pub enum Device {
    /// A GPIO line the guest drives.
    GpioOut(Arc<SimLine>),
    /// A GPIO line the guest reads.
    GpioIn(Arc<SimLine>),
    /// An I2C bus.
    I2c(Arc<SimTmp102>),
}

/// The devices the node was given with `--device`, and their grants.
#[derive(Debug)]
pub struct Peripherals {
    devices: BTreeMap<String, Arc<Device>>,
    /// Which pod (by UID) holds each granted label: every device is exclusive.
    holders: Mutex<HashMap<String, String>>,
}

/// `--device` flags that do not make a set of devices.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Two devices share a label.
    #[error("--device: label {0:?} is given twice")]
    DuplicateLabel(String),
    /// Two devices are one simulated GPIO line.
    #[error("--device: GPIO line {0} of the simulated chip is given twice")]
    DuplicateLine(u32),
}

impl Peripherals {
    /// The devices `specs` declare.
    pub fn new(specs: &[DeviceSpec]) -> Result<Self, SetupError> {
        let mut devices = BTreeMap::new();
        let mut lines = std::collections::HashSet::new();
        for spec in specs {
            let device = match spec.kind {
                DeviceKind::SimGpio { line, direction } => {
                    if !lines.insert(line) {
                        return Err(SetupError::DuplicateLine(line));
                    }
                    let line = Arc::new(SimLine::default());
                    match direction {
                        Direction::Out => Device::GpioOut(line),
                        Direction::In => Device::GpioIn(line),
                    }
                }
                DeviceKind::SimI2cTmp102 { address } => {
                    Device::I2c(Arc::new(SimTmp102::new(address)))
                }
            };
            if devices
                .insert(spec.label.clone(), Arc::new(device))
                .is_some()
            {
                return Err(SetupError::DuplicateLabel(spec.label.clone()));
            }
        }
        Ok(Self {
            devices,
            holders: Mutex::new(HashMap::new()),
        })
    }

    /// The devices, by label.
    pub fn devices(&self) -> &BTreeMap<String, Arc<Device>> {
        &self.devices
    }

    /// The labels among `devices` (extended resource names) that are ours and held by the
    /// pod with `uid`, with their devices: what that pod's guest may open.
    pub(crate) fn held_by(
        &self,
        uid: &str,
        devices: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, Arc<Device>> {
        let holders = self.holders();
        devices
            .keys()
            .filter_map(|name| label_of(name))
            .filter(|label| holders.get(*label).is_some_and(|holder| holder == uid))
            .filter_map(|label| Some((label.to_string(), self.devices.get(label)?.clone())))
            .collect()
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The extended resource name of the device labelled `label`.
pub fn resource_name(label: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{label}")
}

/// The label of one of our extended resources.
fn label_of(resource: &str) -> Option<&str> {
    resource
        .strip_prefix(RESOURCE_DOMAIN)
        .and_then(|rest| rest.strip_prefix('/'))
}

impl DeviceProvider for Peripherals {
    fn extended_resources(&self) -> BTreeMap<String, Quantity> {
        self.devices
            .keys()
            .map(|label| (resource_name(label), Quantity("1".into())))
            .collect()
    }

    fn allocate(
        &self,
        pod: &PodKey,
        container: &str,
        devices: &BTreeMap<String, u64>,
    ) -> Result<Allocation, ContainerError> {
        let refuse = |message: String| ContainerError {
            reason: "UnexpectedAdmissionError".into(),
            message: format!("container {container}: {message}"),
            fatal: false,
        };
        let wanted: Vec<(&str, u64)> = devices
            .iter()
            .filter_map(|(name, count)| Some((label_of(name)?, *count)))
            .collect();
        let mut holders = self.holders();
        for (label, count) in &wanted {
            if !self.devices.contains_key(*label) {
                return Err(refuse(format!("no device {label:?} on this node")));
            }
            if *count > 1 {
                return Err(refuse(format!(
                    "device {label:?} is one device; {count} were asked for"
                )));
            }
            if let Some(holder) = holders.get(*label).filter(|h| **h != pod.uid) {
                return Err(refuse(format!("device {label:?} is held by pod {holder}")));
            }
        }
        let mut labels = Vec::new();
        for (label, _) in wanted {
            holders.insert(label.to_string(), pod.uid.clone());
            labels.push(label);
        }
        // The guest learns which labels it may open.
        Ok(Allocation {
            env: vec![(DEVICES_ENV.to_string(), labels.join(","))],
        })
    }

    fn release(&self, pod: &PodKey) {
        self.holders().retain(|_, holder| *holder != pod.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peripherals() -> Peripherals {
        let specs: Vec<DeviceSpec> = ["fan=gpio:sim:17:out", "temp=i2c:sim:tmp102@0x48"]
            .iter()
            .map(|s| DeviceSpec::parse(s).unwrap())
            .collect();
        Peripherals::new(&specs).unwrap()
    }

    fn pod(uid: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
        }
    }

    fn wants(labels: &[&str]) -> BTreeMap<String, u64> {
        labels.iter().map(|l| (resource_name(l), 1)).collect()
    }

    #[test]
    fn each_device_is_one_extended_resource() {
        let resources = peripherals().extended_resources();
        assert_eq!(
            resources.keys().collect::<Vec<_>>(),
            [
                "peripherals.wasmlet.dev/fan",
                "peripherals.wasmlet.dev/temp"
            ]
        );
        assert!(resources.values().all(|q| q.0 == "1"));
    }

    #[test]
    fn a_grant_is_exclusive_until_its_pod_ends() {
        let p = peripherals();
        let allocation = p
            .allocate(&pod("a"), "app", &wants(&["fan", "temp"]))
            .unwrap();
        assert_eq!(
            allocation.env,
            [("WASMLET_DEVICES".to_string(), "fan,temp".to_string())]
        );
        // Its container restarting gets them again.
        p.allocate(&pod("a"), "app", &wants(&["fan"])).unwrap();
        let refused = p.allocate(&pod("b"), "app", &wants(&["fan"])).unwrap_err();
        assert_eq!(
            refused.message,
            "container app: device \"fan\" is held by pod a"
        );
        assert_eq!(p.held_by("a", &wants(&["fan", "temp"])).len(), 2);
        assert!(p.held_by("b", &wants(&["fan"])).is_empty());
        p.release(&pod("a"));
        p.allocate(&pod("b"), "app", &wants(&["fan"])).unwrap();
        assert_eq!(
            p.held_by("b", &wants(&["fan", "temp"]))
                .keys()
                .collect::<Vec<_>>(),
            ["fan"],
            "only what was granted"
        );
    }

    #[test]
    fn what_does_not_exist_or_is_asked_twice_is_refused() {
        let p = peripherals();
        let err = p.allocate(&pod("a"), "app", &wants(&["pump"])).unwrap_err();
        assert!(
            err.message.contains("no device \"pump\""),
            "{}",
            err.message
        );
        let two = [(resource_name("fan"), 2)].into();
        assert!(p.allocate(&pod("a"), "app", &two).is_err());
        // Other resources are not ours to judge.
        let other = [("example.com/led".to_string(), 3)].into();
        p.allocate(&pod("a"), "app", &other).unwrap();

        let twice = |specs: &[&str]| {
            let specs: Vec<DeviceSpec> = specs
                .iter()
                .map(|s| DeviceSpec::parse(s).unwrap())
                .collect();
            Peripherals::new(&specs).unwrap_err().to_string()
        };
        assert_eq!(
            twice(&["fan=gpio:sim:1:out", "fan=gpio:sim:2:out"]),
            "--device: label \"fan\" is given twice"
        );
        assert_eq!(
            twice(&["fan=gpio:sim:1:out", "pump=gpio:sim:1:out"]),
            "--device: GPIO line 1 of the simulated chip is given twice"
        );
    }
}
