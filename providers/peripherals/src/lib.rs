//! The peripherals provider: host devices (GPIO lines, I2C buses, sensors, serial ports),
//! real (the GPIO character device, i2c-dev, sysfs) or simulated,
//! declared with `--device`, advertised as one extended resource each (`peripherals.wasmlet.dev/<label>`), granted
//! exclusively to the pods that request them, and handed to their guests as typed WIT
//! handles (`wasi:i2c`, `wasi:gpio`, `wasmlet:peripherals`).
//!
//! It is built only on the public APIs of the `kubelet` crate (as a
//! [`DeviceProvider`](kubelet::DeviceProvider), composed with a runtime by
//! [`WithDevices`](kubelet::WithDevices)) and of the WASI provider (as a
//! [`HostExtension`](wasi_provider::HostExtension)), as a vendor's provider would be.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let wasi_config: wasi_provider::WasiProviderConfig = todo!();
//! use std::sync::Arc;
//! use peripherals_provider::{DeviceSpec, Peripherals};
//!
//! let specs = [DeviceSpec::parse("fan=gpio:sim:17:out")?];
//! let peripherals = Arc::new(Peripherals::new(&specs)?);
//! let wasi = wasi_provider::WasiProvider::with_extensions(&wasi_config, vec![peripherals.clone()])?;
//! let provider = kubelet::WithDevices::new(wasi, peripherals);
//! # let _ = provider; Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod discover;
pub mod gpio;
mod host;
pub mod i2c;
mod registry;
pub mod serial;
pub mod sim;
pub mod sysfs;

/// Waits for the next tick of `ticks`; false once `cancel` fires instead.
pub(crate) async fn next_tick(
    ticks: &mut tokio::time::Interval,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = ticks.tick() => true,
    }
}

pub use host::{Granted, I2cBus, InOutPin, InPin, OutPin, Pin, SerialPort, StatefulOutPin};
pub use peripherals_spec::{DeviceKind, DeviceSpec, Direction, SensorSource, SpecError};
pub use registry::{
    DEVICES_ENV, Device, Peripherals, RESOURCE_DOMAIN, Roots, SetupError, resource_name,
};
