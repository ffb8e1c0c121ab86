//! The guest's side: `wasi:i2c`, `wasi:gpio` (digital) and `wasmlet:peripherals`, linked into
//! every component the WASI provider runs. An instance sees exactly the devices its pod was
//! granted: every other label is refused (`pin-not-allowed`, `not-granted`), never opened.
//! No device file is ever preopened into the guest's filesystem; the guest holds handles
//! (component resources) in its bounded resource table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasi_provider::{ExtensionView, Grant, HostExtension, P2Host};
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, HasData, Lift, Linker, Resource, WasmList};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::gpio::Line;
use crate::i2c::{Bus, BusError, NoAck, Operation as BusOperation};
use crate::registry::{Device, Peripherals};
use crate::serial::Serial;

wasmtime::component::bindgen!({
    path: "wit",
    world: "wasmlet:peripherals/peripherals-guest",
    imports: {
        // A real bus's transfer waits on the wire, on a blocking thread: the guest awaits it.
        "wasi:i2c/i2c.[method]i2c.transaction": async | trappable,
        "wasi:i2c/i2c.[method]i2c.read": async | trappable,
        "wasi:i2c/i2c.[method]i2c.write": async | trappable,
        "wasi:i2c/i2c.[method]i2c.write-read": async | trappable,
        default: trappable,
    },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:i2c/i2c.i2c": I2cBus,
        "wasi:gpio/digital.digital-out-pin": OutPin,
        "wasi:gpio/digital.stateful-digital-out-pin": StatefulOutPin,
        "wasi:gpio/digital.digital-in-pin": InPin,
        "wasi:gpio/digital.digital-in-out-pin": InOutPin,
        "wasmlet:peripherals/serial.port": SerialPort,
    },
});

use wasi::gpio::digital::{self, DigitalConfig, DigitalFlag, PinState};
use wasi::gpio::general::{self, ActiveLevel, GpioError, PinMode};
use wasi::i2c::i2c::{self, ErrorCode, NoAcknowledgeSource, Operation};
use wasmlet::peripherals::{devices, sensor, serial};

/// Operations in one I2C transaction: each read is bounded, so this bounds its answer.
const MAX_OPERATIONS: usize = 64;
/// The most bytes one write of a transaction carries (a real bus's message limit, and far
/// more than a simulated chip takes), so one transaction copies at most 64 × 4 KiB.
const MAX_WRITE: usize = crate::i2c::dev::MAX_TRANSFER as usize;

/// What one instance may open: the devices its pod holds, by label.
pub struct Granted {
    devices: BTreeMap<String, Arc<Device>>,
}

/// An open I2C bus.
pub struct I2cBus {
    bus: Arc<Bus>,
}

/// An open GPIO line, with the label it was opened by and its active level: what every
/// kind of pin handle holds.
pub struct Pin {
    label: String,
    line: Arc<Line>,
    active_low: bool,
}

/// A GPIO line the guest drives.
pub struct OutPin(Pin);

/// An output line that also reports what it was set to.
pub struct StatefulOutPin(Pin);

/// A GPIO line the guest reads.
pub struct InPin(Pin);

/// An open serial port.
pub struct SerialPort {
    port: Arc<Serial>,
}

/// A serial port's pollable: ready when there is something to read.
struct SerialReadable {
    port: Arc<Serial>,
}

#[async_trait::async_trait]
impl Pollable for SerialReadable {
    async fn ready(&mut self) {
        // An unplugged port refuses reads whatever is waiting: being ready then would only
        // make a retrying guest spin.
        if !self.port.presence().load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        self.port.readable().await;
    }
}

/// In-out lines are not offered: a line is an input or an output (`--device`), so this is
/// never made, and its methods are unreachable from a guest.
pub struct InOutPin;

/// What a `watch-*` pollable waits for.
struct Watch {
    line: Arc<Line>,
    kind: WatchKind,
    /// A level, once reached, keeps the pollable ready.
    seen: bool,
}

#[derive(Clone, Copy)]
enum WatchKind {
    Level(bool),
    /// The next rise (`true`) or fall of the line after it had happened this many times:
    /// counted, so an edge that came while the guest was not polling is still seen.
    Edge(bool, u64),
}

#[async_trait::async_trait]
impl Pollable for Watch {
    async fn ready(&mut self) {
        match self.kind {
            WatchKind::Level(_) if self.seen => {}
            WatchKind::Level(high) => {
                self.line.wait_for(high).await;
                self.seen = true;
            }
            WatchKind::Edge(rising, seen) => self.line.wait_for_edge(rising, seen).await,
        }
    }
}

/// The view host functions get: this instance's grant and resource table.
type View<'a> = ExtensionView<'a, Granted>;

struct Data;

impl HasData for Data {
    type Data<'a> = View<'a>;
}

fn view(host: &mut P2Host) -> View<'_> {
    host.extension::<Granted>()
}

impl HostExtension for Peripherals {
    fn add_to_linker(&self, linker: &mut Linker<P2Host>) -> wasmtime::Result<()> {
        i2c::add_to_linker::<_, Data>(linker, view)?;
        link_bounded_transaction(linker)?;
        general::add_to_linker::<_, Data>(linker, view)?;
        digital::add_to_linker::<_, Data>(linker, view)?;
        devices::add_to_linker::<_, Data>(linker, view)?;
        sensor::add_to_linker::<_, Data>(linker, view)?;
        serial::add_to_linker::<_, Data>(linker, view)?;
        Ok(())
    }

    fn instance_state(&self, grant: &Grant) -> Box<dyn std::any::Any + Send> {
        Box::new(Granted {
            devices: self.held_by(&grant.pod.uid, &grant.devices),
        })
    }
}

/// `wasi:i2c`'s operation as the guest's memory holds it, its bytes not yet copied. A guest
/// can point every write of a transaction at the same memory, so lifting a list of
/// operations eagerly (as `bindgen!` does) would let a few megabytes of guest memory cost
/// the host terabytes; the count and every length are checked before a byte is copied.
#[derive(ComponentType, Lift)]
#[component(variant)]
enum GuestOperation {
    #[component(name = "read")]
    Read(u64),
    #[component(name = "write")]
    Write(WasmList<u8>),
}

/// Replaces `bindgen!`'s `[method]i2c.transaction` with one that checks before it copies.
/// `read`, `write` and `write-read` carry one list each, which cannot alias.
fn link_bounded_transaction(linker: &mut Linker<P2Host>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = linker
        .instance("wasi:i2c/i2c@0.2.0-draft")
        .and_then(|mut i2c| {
            i2c.func_wrap_async(
                "[method]i2c.transaction",
                |mut store: StoreContextMut<'_, P2Host>,
                 (bus, address, operations): (Resource<I2cBus>, u16, WasmList<GuestOperation>)| {
                    Box::new(async move {
                        let operations = match copy_operations(&mut store, &operations)? {
                            Ok(operations) => operations,
                            Err(code) => return Ok((Err(code),)),
                        };
                        let bus = view(store.data_mut()).table.get(&bus)?.bus.clone();
                        let answer = bus.transaction(address, operations).await;
                        Ok((answer.map_err(error_code),))
                    })
                },
            )
        });
    linker.allow_shadowing(false);
    linked
}

/// The guest's operations, copied once their count and lengths are known to be in bounds;
/// `overrun` if they are not.
fn copy_operations(
    store: &mut StoreContextMut<'_, P2Host>,
    operations: &WasmList<GuestOperation>,
) -> wasmtime::Result<Result<Vec<BusOperation>, ErrorCode>> {
    if operations.len() > MAX_OPERATIONS {
        return Ok(Err(ErrorCode::Overrun));
    }
    let mut copied = Vec::with_capacity(operations.len());
    for index in 0..operations.len() {
        let Some(operation) = operations.get(&mut *store, index) else {
            break;
        };
        copied.push(match operation? {
            GuestOperation::Read(len) => BusOperation::Read(len),
            GuestOperation::Write(bytes) if bytes.len() > MAX_WRITE => {
                return Ok(Err(ErrorCode::Overrun));
            }
            GuestOperation::Write(bytes) => {
                BusOperation::Write(bytes.as_le_slice(&*store).to_vec())
            }
        });
    }
    Ok(Ok(copied))
}

/// The granted device called `label`, if any.
fn granted<'a>(view: &'a View<'_>, label: &str) -> Option<&'a Device> {
    view.state.as_ref()?.devices.get(label).map(Arc::as_ref)
}

impl i2c::Host for View<'_> {}

impl i2c::HostI2c for View<'_> {
    async fn transaction(
        &mut self,
        bus: Resource<I2cBus>,
        address: u16,
        operations: Vec<Operation>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, ErrorCode>> {
        // Reached only from `read`, `write` and `write-read` below, with one or two
        // operations: a guest's own transaction goes through `link_bounded_transaction`.
        let operations: Vec<BusOperation> = operations
            .into_iter()
            .map(|operation| match operation {
                Operation::Read(len) => BusOperation::Read(len),
                Operation::Write(bytes) => BusOperation::Write(bytes),
            })
            .collect();
        let bus = self.table.get(&bus)?.bus.clone();
        Ok(bus
            .transaction(address, operations)
            .await
            .map_err(error_code))
    }

    async fn read(
        &mut self,
        bus: Resource<I2cBus>,
        address: u16,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let reads = self
            .transaction(bus, address, vec![Operation::Read(len)])
            .await?;
        Ok(reads.map(|mut reads| reads.pop().unwrap_or_default()))
    }

    async fn write(
        &mut self,
        bus: Resource<I2cBus>,
        address: u16,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let written = self
            .transaction(bus, address, vec![Operation::Write(data)])
            .await?;
        Ok(written.map(|_| ()))
    }

    async fn write_read(
        &mut self,
        bus: Resource<I2cBus>,
        address: u16,
        write: Vec<u8>,
        read_len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let operations = vec![Operation::Write(write), Operation::Read(read_len)];
        let reads = self.transaction(bus, address, operations).await?;
        Ok(reads.map(|mut reads| reads.pop().unwrap_or_default()))
    }

    fn drop(&mut self, bus: Resource<I2cBus>) -> wasmtime::Result<()> {
        self.table.delete(bus)?;
        Ok(())
    }
}

fn error_code(err: BusError) -> ErrorCode {
    match err {
        BusError::Bus => ErrorCode::Bus,
        BusError::ArbitrationLoss => ErrorCode::ArbitrationLoss,
        BusError::NoAcknowledge(NoAck::Address) => {
            ErrorCode::NoAcknowledge(NoAcknowledgeSource::Address)
        }
        BusError::NoAcknowledge(NoAck::Data) => ErrorCode::NoAcknowledge(NoAcknowledgeSource::Data),
        BusError::NoAcknowledge(NoAck::Unknown) => {
            ErrorCode::NoAcknowledge(NoAcknowledgeSource::Unknown)
        }
        BusError::Overrun => ErrorCode::Overrun,
        BusError::Other => ErrorCode::Other,
    }
}

impl devices::Host for View<'_> {
    fn open_i2c(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<I2cBus>, devices::OpenError>> {
        let Some(Device::I2c(bus)) = granted(self, &label) else {
            return Ok(Err(devices::OpenError::NotGranted));
        };
        let bus = I2cBus { bus: bus.clone() };
        Ok(Ok(self.table.push(bus)?))
    }
}

impl sensor::Host for View<'_> {
    fn read(&mut self, label: String) -> wasmtime::Result<Result<f64, devices::OpenError>> {
        // A temperature sensor on a granted bus reads in kelvin, the SI base unit.
        Ok(match granted(self, &label) {
            Some(Device::I2c(bus)) => match bus.as_ref() {
                Bus::Simulated(chip) => Ok(chip.celsius() + 273.15),
                Bus::Dev(_) => Err(devices::OpenError::Unavailable(format!(
                    "{label} is a bus, not a sensor: open it with open-i2c"
                ))),
            },
            Some(Device::Sensor(sensor)) if !sensor.presence().load(Ordering::Relaxed) => Err(
                devices::OpenError::Unavailable(format!("sensor {label} is not answering")),
            ),
            Some(Device::Sensor(sensor)) => sensor.reading().ok_or_else(|| {
                devices::OpenError::Unavailable(format!("sensor {label} has no reading yet"))
            }),
            _ => Err(devices::OpenError::NotGranted),
        })
    }

    fn describe(&mut self, label: String) -> wasmtime::Result<Result<String, devices::OpenError>> {
        Ok(match granted(self, &label) {
            Some(Device::I2c(bus)) if matches!(bus.as_ref(), Bus::Simulated(_)) => {
                Ok("kelvin".into())
            }
            Some(Device::I2c(_)) => Err(devices::OpenError::Unavailable(format!(
                "{label} is a bus, not a sensor: open it with open-i2c"
            ))),
            Some(Device::Sensor(sensor)) => Ok(sensor.unit().into()),
            _ => Err(devices::OpenError::NotGranted),
        })
    }
}

impl serial::Host for View<'_> {
    fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SerialPort>, devices::OpenError>> {
        let Some(Device::Serial(port)) = granted(self, &label) else {
            return Ok(Err(devices::OpenError::NotGranted));
        };
        let port = SerialPort { port: port.clone() };
        Ok(Ok(self.table.push(port)?))
    }
}

/// An unplugged port, or one the kernel refuses, fails the call with why.
fn port_error(err: impl std::fmt::Display) -> devices::OpenError {
    devices::OpenError::Unavailable(err.to_string())
}

impl serial::HostPort for View<'_> {
    fn write(
        &mut self,
        port: Resource<SerialPort>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, devices::OpenError>> {
        let port = &self.table.get(&port)?.port;
        if !port.presence().load(Ordering::Relaxed) {
            return Ok(Err(port_error("the serial port is unplugged")));
        }
        Ok(port.write(&data).map(|n| n as u64).map_err(port_error))
    }

    fn read(
        &mut self,
        port: Resource<SerialPort>,
        max: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, devices::OpenError>> {
        let port = &self.table.get(&port)?.port;
        if !port.presence().load(Ordering::Relaxed) {
            return Ok(Err(port_error("the serial port is unplugged")));
        }
        Ok(port.read(max).map_err(port_error))
    }

    fn subscribe(&mut self, port: Resource<SerialPort>) -> wasmtime::Result<Resource<DynPollable>> {
        let port = self.table.get(&port)?.port.clone();
        let readable = self.table.push(SerialReadable { port })?;
        subscribe(self.table, readable)
    }

    fn drop(&mut self, port: Resource<SerialPort>) -> wasmtime::Result<()> {
        self.table.delete(port)?;
        Ok(())
    }
}

impl general::Host for View<'_> {}

impl digital::Host for View<'_> {}

/// Opens the granted line `label` in the wanted direction and puts its handle, made by
/// `wrap`, in the instance's table.
fn push_pin<T: Send + 'static>(
    view: &mut View<'_>,
    label: String,
    flags: &[DigitalFlag],
    output: bool,
    wrap: fn(Pin) -> T,
) -> wasmtime::Result<Result<Resource<T>, GpioError>> {
    let pin = match open_line(view, &label, flags, output) {
        Ok((line, active_low)) => Pin {
            label,
            line,
            active_low,
        },
        Err(err) => return Ok(Err(err)),
    };
    Ok(Ok(view.table.push(wrap(pin))?))
}

/// The line and active level of a granted line of the wanted direction.
fn open_line(
    view: &View<'_>,
    label: &str,
    flags: &[DigitalFlag],
    output: bool,
) -> Result<(Arc<Line>, bool), GpioError> {
    let line = match (granted(view, label), output) {
        (Some(Device::GpioOut(line)), true) | (Some(Device::GpioIn(line)), false) => line,
        (Some(Device::GpioOut(_) | Device::GpioIn(_)), _) => {
            return Err(GpioError::PinModeNotAllowed);
        }
        _ => return Err(GpioError::PinNotAllowed),
    };
    plugged_in(line)?;
    let flags = flags
        .iter()
        .fold(DigitalFlag::empty(), |all, flag| all | *flag);
    if flags.contains(DigitalFlag::ACTIVE_HIGH | DigitalFlag::ACTIVE_LOW)
        || flags.contains(DigitalFlag::ACTIVE | DigitalFlag::INACTIVE)
        || flags.contains(DigitalFlag::INPUT | DigitalFlag::OUTPUT)
        || flags.contains(if output {
            DigitalFlag::INPUT
        } else {
            DigitalFlag::OUTPUT
        })
    {
        return Err(GpioError::InvalidFlag);
    }
    if flags.intersects(DigitalFlag::PULL_UP | DigitalFlag::PULL_DOWN) {
        // Bias is the node's to set (a line is requested once, as the operator declared it).
        return Err(GpioError::OperationNotSupported);
    }
    let active_low = flags.contains(DigitalFlag::ACTIVE_LOW);
    if output {
        let initial = if flags.contains(DigitalFlag::ACTIVE) {
            Some(!active_low)
        } else if flags.contains(DigitalFlag::INACTIVE) {
            Some(active_low)
        } else {
            None
        };
        if let Some(high) = initial {
            line.set(high).map_err(|_| GpioError::HardwareFault)?;
        }
    }
    Ok((line.clone(), active_low))
}

/// A line that was unplugged fails every call until it is back.
fn plugged_in(line: &Line) -> Result<(), GpioError> {
    if line.presence().load(std::sync::atomic::Ordering::Relaxed) {
        Ok(())
    } else {
        Err(GpioError::HardwareFault)
    }
}

impl Pin {
    /// The line level that means `state`, for the pin's active level.
    fn level(&self, state: PinState) -> bool {
        (state == PinState::Active) != self.active_low
    }

    /// The state the line's level means.
    fn state(&self) -> Result<PinState, GpioError> {
        plugged_in(&self.line)?;
        Ok(if self.line.is_high() == self.level(PinState::Active) {
            PinState::Active
        } else {
            PinState::Inactive
        })
    }

    /// Drives the line to `state`.
    fn set(&self, state: PinState) -> Result<(), GpioError> {
        plugged_in(&self.line)?;
        // The guest learns only that the hardware failed; a guest retrying in a loop must
        // not flood the node's log.
        self.line
            .set(self.level(state))
            .map_err(|_| GpioError::HardwareFault)
    }

    fn config(&self, mode: PinMode) -> DigitalConfig {
        DigitalConfig {
            label: self.label.clone(),
            pin_mode: mode,
            active_level: if self.active_low {
                ActiveLevel::ActiveLow
            } else {
                ActiveLevel::ActiveHigh
            },
            pull_resistor: None,
        }
    }
}

impl digital::HostDigitalOutPin for View<'_> {
    fn get(
        &mut self,
        label: String,
        flags: Vec<DigitalFlag>,
    ) -> wasmtime::Result<Result<Resource<OutPin>, GpioError>> {
        push_pin(self, label, &flags, true, OutPin)
    }

    fn get_config(&mut self, pin: Resource<OutPin>) -> wasmtime::Result<DigitalConfig> {
        Ok(self.table.get(&pin)?.0.config(PinMode::Out))
    }

    fn is_ready(&mut self, _: Resource<OutPin>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn set_state(
        &mut self,
        pin: Resource<OutPin>,
        state: PinState,
    ) -> wasmtime::Result<Result<(), GpioError>> {
        Ok(self.table.get(&pin)?.0.set(state))
    }

    fn set_active(&mut self, pin: Resource<OutPin>) -> wasmtime::Result<Result<(), GpioError>> {
        self.set_state(pin, PinState::Active)
    }

    fn set_inactive(&mut self, pin: Resource<OutPin>) -> wasmtime::Result<Result<(), GpioError>> {
        self.set_state(pin, PinState::Inactive)
    }

    fn drop(&mut self, pin: Resource<OutPin>) -> wasmtime::Result<()> {
        self.table.delete(pin)?;
        Ok(())
    }
}

impl digital::HostStatefulDigitalOutPin for View<'_> {
    fn get(
        &mut self,
        label: String,
        flags: Vec<DigitalFlag>,
    ) -> wasmtime::Result<Result<Resource<StatefulOutPin>, GpioError>> {
        push_pin(self, label, &flags, true, StatefulOutPin)
    }

    fn get_config(&mut self, pin: Resource<StatefulOutPin>) -> wasmtime::Result<DigitalConfig> {
        Ok(self.table.get(&pin)?.0.config(PinMode::Out))
    }

    fn is_ready(&mut self, _: Resource<StatefulOutPin>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn set_state(
        &mut self,
        pin: Resource<StatefulOutPin>,
        state: PinState,
    ) -> wasmtime::Result<Result<(), GpioError>> {
        Ok(self.table.get(&pin)?.0.set(state))
    }

    fn set_active(
        &mut self,
        pin: Resource<StatefulOutPin>,
    ) -> wasmtime::Result<Result<(), GpioError>> {
        self.set_state(pin, PinState::Active)
    }

    fn set_inactive(
        &mut self,
        pin: Resource<StatefulOutPin>,
    ) -> wasmtime::Result<Result<(), GpioError>> {
        self.set_state(pin, PinState::Inactive)
    }

    fn toggle(&mut self, pin: Resource<StatefulOutPin>) -> wasmtime::Result<Result<(), GpioError>> {
        let pin = &self.table.get(&pin)?.0;
        Ok(pin.state().and_then(|state| {
            pin.set(match state {
                PinState::Active => PinState::Inactive,
                PinState::Inactive => PinState::Active,
            })
        }))
    }

    fn is_set_active(
        &mut self,
        pin: Resource<StatefulOutPin>,
    ) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(self
            .table
            .get(&pin)?
            .0
            .state()
            .map(|s| s == PinState::Active))
    }

    fn is_set_inactive(
        &mut self,
        pin: Resource<StatefulOutPin>,
    ) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(self
            .table
            .get(&pin)?
            .0
            .state()
            .map(|s| s == PinState::Inactive))
    }

    fn get_state(
        &mut self,
        pin: Resource<StatefulOutPin>,
    ) -> wasmtime::Result<Result<PinState, GpioError>> {
        Ok(self.table.get(&pin)?.0.state())
    }

    fn drop(&mut self, pin: Resource<StatefulOutPin>) -> wasmtime::Result<()> {
        self.table.delete(pin)?;
        Ok(())
    }
}

/// A pollable, ready when `pin`'s line does what `kind` picks.
fn watch(
    view: &mut View<'_>,
    pin: &Resource<InPin>,
    kind: impl FnOnce(&Pin) -> WatchKind,
) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
    let pin = &view.table.get(pin)?.0;
    let watch = Watch {
        line: pin.line.clone(),
        kind: kind(pin),
        seen: false,
    };
    let watch = view.table.push(watch)?;
    Ok(Ok(subscribe(view.table, watch)?))
}

impl digital::HostDigitalInPin for View<'_> {
    fn get(
        &mut self,
        label: String,
        flags: Vec<DigitalFlag>,
    ) -> wasmtime::Result<Result<Resource<InPin>, GpioError>> {
        push_pin(self, label, &flags, false, InPin)
    }

    fn get_config(&mut self, pin: Resource<InPin>) -> wasmtime::Result<DigitalConfig> {
        Ok(self.table.get(&pin)?.0.config(PinMode::In))
    }

    fn is_ready(&mut self, _: Resource<InPin>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn read(&mut self, pin: Resource<InPin>) -> wasmtime::Result<Result<PinState, GpioError>> {
        Ok(self.table.get(&pin)?.0.state())
    }

    fn is_active(&mut self, pin: Resource<InPin>) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(self
            .table
            .get(&pin)?
            .0
            .state()
            .map(|s| s == PinState::Active))
    }

    fn is_inactive(&mut self, pin: Resource<InPin>) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(self
            .table
            .get(&pin)?
            .0
            .state()
            .map(|s| s == PinState::Inactive))
    }

    fn watch_state(
        &mut self,
        pin: Resource<InPin>,
        state: PinState,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        watch(self, &pin, |pin| WatchKind::Level(pin.level(state)))
    }

    fn watch_active(
        &mut self,
        pin: Resource<InPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        self.watch_state(pin, PinState::Active)
    }

    fn watch_inactive(
        &mut self,
        pin: Resource<InPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        self.watch_state(pin, PinState::Inactive)
    }

    fn watch_falling_edge(
        &mut self,
        pin: Resource<InPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        // Edges are of the line's active state: falling is active to inactive.
        watch(self, &pin, |pin| {
            let rising = pin.active_low;
            WatchKind::Edge(rising, pin.line.edges(rising))
        })
    }

    fn watch_rising_edge(
        &mut self,
        pin: Resource<InPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        watch(self, &pin, |pin| {
            let rising = !pin.active_low;
            WatchKind::Edge(rising, pin.line.edges(rising))
        })
    }

    fn drop(&mut self, pin: Resource<InPin>) -> wasmtime::Result<()> {
        self.table.delete(pin)?;
        Ok(())
    }
}

/// Every method of an in-out pin: none can be reached, since `get` never makes one.
const NO_IN_OUT: GpioError = GpioError::PinModeNotAvailable;

impl digital::HostDigitalInOutPin for View<'_> {
    fn get(
        &mut self,
        _: String,
        _: Vec<DigitalFlag>,
    ) -> wasmtime::Result<Result<Resource<InOutPin>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn get_config(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<DigitalConfig> {
        Err(wasmtime::Error::msg("no in-out pins"))
    }

    fn is_ready(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<bool> {
        Ok(false)
    }

    fn set_state(
        &mut self,
        _: Resource<InOutPin>,
        _: PinState,
    ) -> wasmtime::Result<Result<(), GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn set_active(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<Result<(), GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn set_inactive(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<Result<(), GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn read(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<Result<PinState, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn is_active(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn is_inactive(&mut self, _: Resource<InOutPin>) -> wasmtime::Result<Result<bool, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn watch_state(
        &mut self,
        _: Resource<InOutPin>,
        _: PinState,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn watch_active(
        &mut self,
        _: Resource<InOutPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn watch_inactive(
        &mut self,
        _: Resource<InOutPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn watch_falling_edge(
        &mut self,
        _: Resource<InOutPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn watch_rising_edge(
        &mut self,
        _: Resource<InOutPin>,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, GpioError>> {
        Ok(Err(NO_IN_OUT))
    }

    fn drop(&mut self, pin: Resource<InOutPin>) -> wasmtime::Result<()> {
        self.table.delete(pin)?;
        Ok(())
    }
}
