//! The node's devices by label, who holds each, and the extended resources they make.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubelet::events::{EventRecorder, EventType};
use kubelet::{Allocation, ContainerError, DeviceProvider, PodKey};

use crate::gpio::Line;
use crate::i2c::Bus;
use crate::i2c::dev::DevBus;
use crate::serial::Serial;
use crate::sim::SimTmp102;
use crate::sysfs::SysfsSensor;
use peripherals_spec::{DeviceKind, DeviceSpec, Direction};

/// The domain of every device's extended resource: `peripherals.wasmlet.dev/<label>`.
pub const RESOURCE_DOMAIN: &str = "peripherals.wasmlet.dev";
/// The environment variable listing the labels granted to a container, comma-separated.
pub const DEVICES_ENV: &str = "WASMLET_DEVICES";

/// One device and its backend.
#[derive(Debug)]
pub enum Device {
    /// A GPIO line the guest drives.
    GpioOut(Arc<Line>),
    /// A GPIO line the guest reads.
    GpioIn(Arc<Line>),
    /// An I2C bus.
    I2c(Arc<Bus>),
    /// A sensor read through sysfs.
    Sensor(Arc<SysfsSensor>),
    /// A serial port.
    Serial(Arc<Serial>),
}

impl Device {
    /// Whether the device is on the node now: an unplugged device is left out of the
    /// node's capacity, and calls to it fail.
    pub fn is_present(&self) -> bool {
        self.presence().load(Ordering::Relaxed)
    }

    /// Whether the device is the simulator's: its state is kept in step with its file.
    pub fn is_simulated(&self) -> bool {
        match self {
            Device::GpioOut(line) | Device::GpioIn(line) => line.is_simulated(),
            Device::I2c(bus) => matches!(bus.as_ref(), Bus::Simulated(_)),
            Device::Serial(port) => port.is_simulated(),
            Device::Sensor(_) => false,
        }
    }

    /// Marks the device plugged in or out; true if that changed anything.
    pub fn set_present(&self, present: bool) -> bool {
        self.presence().swap(present, Ordering::Relaxed) != present
    }

    fn presence(&self) -> &AtomicBool {
        match self {
            Device::GpioOut(line) | Device::GpioIn(line) => line.presence(),
            Device::I2c(bus) => bus.presence(),
            Device::Sensor(sensor) => sensor.presence(),
            Device::Serial(port) => port.presence(),
        }
    }
}

/// The devices the node was given with `--device`, and their grants.
#[derive(Debug)]
pub struct Peripherals {
    devices: BTreeMap<String, Arc<Device>>,
    /// Which pod holds each granted label: every device is exclusive.
    holders: Mutex<HashMap<String, PodKey>>,
    /// Where events about the pods holding devices go, once the agent has started.
    events: OnceLock<EventRecorder>,
}

/// Where the host's device trees are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// sysfs, for sensors (`/sys`).
    pub sysfs: PathBuf,
    /// The device files, for GPIO chips and I2C buses (`/dev`).
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            sysfs: "/sys".into(),
            dev: "/dev".into(),
        }
    }
}

/// `--device` flags that do not make a set of devices.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Two devices share a label.
    #[error("--device: label {0:?} is given twice")]
    DuplicateLabel(String),
    /// Two devices are one GPIO line.
    #[error("--device: GPIO line {line} of {chip} is given twice")]
    DuplicateLine {
        /// The chip: `the simulated chip`, or its device file.
        chip: String,
        /// The line.
        line: u32,
    },
    /// Two devices are one I2C bus or serial port.
    #[error("--device: {0} is given twice")]
    DuplicateFile(String),
    /// A device could not be opened.
    #[error("--device {spec}: {why}")]
    Device {
        /// The device's spec.
        spec: String,
        /// Why, in one line.
        why: String,
    },
}

/// Checks that `specs` name each label, GPIO line, I2C bus and serial port once, without
/// opening anything.
fn check_unique(specs: &[DeviceSpec]) -> Result<(), SetupError> {
    let mut labels = HashSet::new();
    let mut lines = HashSet::new();
    let mut files = HashSet::new();
    for spec in specs {
        if !labels.insert(spec.label.as_str()) {
            return Err(SetupError::DuplicateLabel(spec.label.clone()));
        }
        let line = match &spec.kind {
            DeviceKind::SimGpio { line, .. } => Some(("the simulated chip", *line)),
            DeviceKind::Gpio { chip, line, .. } => Some((chip.as_str(), *line)),
            _ => None,
        };
        if let Some((chip, line)) = line
            && !lines.insert((chip, line))
        {
            return Err(SetupError::DuplicateLine {
                chip: chip.to_string(),
                line,
            });
        }
        let file = match &spec.kind {
            DeviceKind::I2cBus { bus } => Some(bus),
            DeviceKind::Serial { port, .. } => Some(port),
            _ => None,
        };
        if let Some(file) = file
            && !files.insert(file.as_str())
        {
            return Err(SetupError::DuplicateFile(file.clone()));
        }
    }
    Ok(())
}

impl Peripherals {
    /// The devices `specs` declare, on the host's own device trees.
    pub fn new(specs: &[DeviceSpec]) -> Result<Self, SetupError> {
        Self::with_roots(specs, &Roots::default())
    }

    /// The devices `specs` declare, found below `roots` (fake trees in tests). Real GPIO
    /// lines are requested from the kernel here, and held until this is dropped.
    pub fn with_roots(specs: &[DeviceSpec], roots: &Roots) -> Result<Self, SetupError> {
        check_unique(specs)?;
        let mut devices = BTreeMap::new();
        for spec in specs {
            let fail = |why: String| SetupError::Device {
                spec: spec.to_string(),
                why,
            };
            let device = match &spec.kind {
                DeviceKind::SimGpio { direction, .. } => gpio(Line::simulated(), *direction),
                DeviceKind::Gpio {
                    chip,
                    line,
                    direction,
                } => {
                    let consumer = format!("wasmlet:{}", spec.label);
                    let line = Line::open(&roots.dev.join(chip), *line, *direction, &consumer)
                        .map_err(|err| fail(err.to_string()))?;
                    gpio(line, *direction)
                }
                DeviceKind::SimI2cTmp102 { address } => {
                    Device::I2c(Arc::new(Bus::Simulated(SimTmp102::new(*address))))
                }
                DeviceKind::I2cBus { bus } => {
                    let bus =
                        DevBus::open(&roots.dev.join(bus)).map_err(|err| fail(err.to_string()))?;
                    Device::I2c(Arc::new(Bus::Dev(bus)))
                }
                DeviceKind::SimSerial => Device::Serial(Arc::new(
                    Serial::simulated().map_err(|err| fail(err.to_string()))?,
                )),
                DeviceKind::Serial { port, baud } => Device::Serial(Arc::new(
                    Serial::open_tty(&roots.dev.join(port), *baud)
                        .map_err(|err| fail(err.to_string()))?,
                )),
                DeviceKind::Sensor { source, path } => {
                    Device::Sensor(Arc::new(SysfsSensor::new(&roots.sysfs, *source, path)))
                }
            };
            devices.insert(spec.label.clone(), Arc::new(device));
        }
        Ok(Self {
            devices,
            holders: Mutex::new(HashMap::new()),
            events: OnceLock::new(),
        })
    }

    /// Plugs the device `label` in or out (the simulator's file came or went), telling the
    /// pod that holds it.
    pub fn set_present(&self, label: &str, present: bool) {
        let Some(device) = self.devices.get(label) else {
            return;
        };
        if !device.set_present(present) {
            return;
        }
        let holder = self.holders().get(label).cloned();
        tracing::warn!(device = label, present, holder = ?holder.as_ref().map(|p| &p.name), "device plugged in or out");
        if let (Some(pod), Some(events)) = (holder, self.events.get()) {
            let resource = resource_name(label);
            if present {
                let message = format!("device {label} ({resource}) is back on the node");
                events.record_for(&pod, EventType::Normal, "DeviceReturned", &message);
            } else {
                let message = format!(
                    "device {label} ({resource}) is gone from the node: calls to it fail until it returns"
                );
                events.record_for(&pod, EventType::Warning, "DeviceUnplugged", &message);
            }
        }
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
            .iter()
            .filter(|(_, count)| **count > 0)
            .filter_map(|(name, _)| label_of(name))
            .filter(|label| holders.get(*label).is_some_and(|holder| holder.uid == uid))
            .filter_map(|label| Some((label.to_string(), self.devices.get(label)?.clone())))
            .collect()
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodKey>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn gpio(line: Line, direction: Direction) -> Device {
    match direction {
        Direction::Out => Device::GpioOut(Arc::new(line)),
        Direction::In => Device::GpioIn(Arc::new(line)),
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
        // An unplugged device counts 0 rather than going from the map: the node status is a
        // merge patch, which keeps a key it does not name (the kubelet zeroes a resource whose
        // devices are gone, too).
        self.devices
            .iter()
            .map(|(label, device)| {
                let count = if device.is_present() { "1" } else { "0" };
                (resource_name(label), Quantity(count.into()))
            })
            .collect()
    }

    fn attach_events(&self, events: EventRecorder) {
        let _ = self.events.set(events);
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
        // A request of 0 is no request: it takes nothing.
        let wanted: Vec<(&str, u64)> = devices
            .iter()
            .filter(|(_, count)| **count > 0)
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
            if let Some(holder) = holders.get(*label).filter(|h| h.uid != pod.uid) {
                return Err(refuse(format!(
                    "device {label:?} is held by pod {}/{}",
                    holder.namespace, holder.name
                )));
            }
        }
        if wanted.is_empty() {
            return Ok(Allocation::default());
        }
        let mut labels = Vec::new();
        for (label, _) in wanted {
            holders.insert(label.to_string(), pod.clone());
            labels.push(label);
        }
        // The guest learns which labels it may open.
        Ok(Allocation {
            env: vec![(DEVICES_ENV.to_string(), labels.join(","))],
        })
    }

    fn release(&self, pod: &PodKey) {
        self.holders().retain(|_, holder| holder.uid != pod.uid);
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
            "container app: device \"fan\" is held by pod default/a"
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
        // Asking for 0 takes nothing.
        let none = [(resource_name("temp"), 0)].into();
        let allocation = p.allocate(&pod("z"), "app", &none).unwrap();
        assert!(allocation.env.is_empty());
        assert!(p.held_by("z", &none).is_empty());
        p.allocate(&pod("y"), "app", &wants(&["temp"])).unwrap();
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
        assert_eq!(
            twice(&[
                "a=gpio:gpiochip0:1:out",
                "b=gpio:gpiochip1:1:in",
                "c=gpio:gpiochip0:1:in"
            ]),
            "--device: GPIO line 1 of gpiochip0 is given twice"
        );
        assert_eq!(
            twice(&["a=i2c:i2c-1", "b=i2c:i2c-1"]),
            "--device: i2c-1 is given twice"
        );
        assert_eq!(
            twice(&["a=serial:ttyUSB0", "b=serial:ttyUSB0:9600"]),
            "--device: ttyUSB0 is given twice"
        );
    }
}
