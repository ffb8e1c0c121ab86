//! A real I2C bus through the kernel's i2c-dev interface (`/dev/i2c-N`, by `i2cdev`).
//!
//! A transaction is one `I2C_RDWR` ioctl: every operation a message to the one address, with
//! repeated starts between them, as `wasi:i2c` defines it. An adapter that speaks only SMBus
//! (many PC chipsets, and the kernel's i2c-stub), as the kernel says when the bus is opened
//! (`I2C_FUNCS`), carries the transactions that have an SMBus form (a byte read or write, a
//! register write, a register read of up to 32 bytes, as SMBus I2C-block commands) as those,
//! and refuses the others.
//!
//! The ioctls block for as long as the wire takes, so they run on tokio's blocking threads,
//! one at a time per bus: a guest that waits for the bus waits in the reactor, and a bus
//! never holds more than one blocking thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use i2cdev::core::{I2CDevice, I2CMessage, I2CTransfer};
use i2cdev::linux::{LinuxI2CBus, LinuxI2CDevice, LinuxI2CError, LinuxI2CMessage};
use rustix::io::Errno;
use tokio::sync::Mutex;

use super::{BusError, NoAck, Operation};

/// The most bytes one read or write may carry: a message's length is 16 bits, and the
/// guest's length is not trusted.
pub const MAX_TRANSFER: u64 = 4096;
/// The most messages the kernel takes in one `I2C_RDWR` (`I2C_RDWR_IOCTL_MAX_MSGS`).
const MAX_MESSAGES: usize = 42;
/// The most bytes an SMBus block carries.
const SMBUS_BLOCK: usize = 32;
/// The ioctl that says what an adapter can do, and the bit for plain I2C transfers
/// (`linux/i2c-dev.h`, `linux/i2c.h`).
const I2C_FUNCS: rustix::ioctl::Opcode = 0x0705;
const I2C_FUNC_I2C: std::ffi::c_ulong = 0x1;
/// The highest 7-bit address: the kernel would send a larger one without the ten-bit flag,
/// cut to seven bits, to another device.
const MAX_ADDRESS: u16 = 0x7f;

/// An i2c-dev bus.
#[derive(Debug)]
pub struct DevBus {
    path: PathBuf,
    wire: Arc<Mutex<Wire>>,
    present: AtomicBool,
}

/// The bus's file, and what it was found to speak.
#[derive(Debug)]
struct Wire {
    bus: LinuxI2CBus,
    /// Set once the adapter refused `I2C_RDWR`.
    smbus_only: bool,
    /// The SMBus device, at the address it was last pointed at.
    smbus: Option<LinuxI2CDevice>,
}

/// A bus that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its file is not there, or cannot be opened.
    #[error("{}: {source}", path.display())]
    Open {
        /// The bus's file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its file is not a character device, or not an I2C adapter.
    #[error("{} is not an i2c-dev character device", .0.display())]
    NotADevice(PathBuf),
}

/// Whether the adapter behind `file` takes plain I2C transfers (`I2C_RDWR`), not only SMBus
/// commands; `None` if it is no adapter.
fn speaks_i2c(file: &std::fs::File) -> Option<bool> {
    // SAFETY: I2C_FUNCS writes one `unsigned long` of functionality bits.
    let getter = unsafe { rustix::ioctl::Getter::<I2C_FUNCS, std::ffi::c_ulong>::new() };
    // SAFETY: the descriptor is open for the call, and the getter matches the ioctl.
    let funcs = unsafe { rustix::ioctl::ioctl(file, getter) }.ok()?;
    Some(funcs & I2C_FUNC_I2C != 0)
}

impl DevBus {
    /// Opens the bus at `path` (`/dev/i2c-1`).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        use std::os::unix::fs::FileTypeExt;
        let fail = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        if !std::fs::metadata(path)
            .map_err(fail)?
            .file_type()
            .is_char_device()
        {
            return Err(OpenError::NotADevice(path.to_path_buf()));
        }
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(fail)?;
        let speaks_i2c =
            speaks_i2c(&file).ok_or_else(|| OpenError::NotADevice(path.to_path_buf()))?;
        if !speaks_i2c {
            tracing::info!(bus = %path.display(), "the adapter speaks only SMBus: transactions with an SMBus form go as those");
        }
        let bus = LinuxI2CBus::new(path).map_err(|err| fail(err.into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            wire: Arc::new(Mutex::new(Wire {
                bus,
                smbus_only: !speaks_i2c,
                smbus: None,
            })),
            present: AtomicBool::new(true),
        })
    }

    /// Whether the bus is plugged in.
    pub fn presence(&self) -> &AtomicBool {
        &self.present
    }

    /// Runs one transaction (see [`super::Bus::transaction`]).
    pub async fn transaction(
        &self,
        address: u16,
        operations: Vec<Operation>,
    ) -> Result<Vec<Vec<u8>>, BusError> {
        if address > MAX_ADDRESS {
            return Err(BusError::Other);
        }
        if operations.len() > MAX_MESSAGES || operations.iter().any(too_long) {
            return Err(BusError::Overrun);
        }
        let mut wire = self.wire.clone().lock_owned().await;
        let path = self.path.clone();
        let transfer =
            tokio::task::spawn_blocking(move || wire.transfer(&path, address, &operations));
        // A transfer that panicked is a fault of the bus, not of the guest.
        transfer.await.unwrap_or(Err(BusError::Other))
    }
}

fn too_long(operation: &Operation) -> bool {
    match operation {
        Operation::Read(len) => *len > MAX_TRANSFER,
        Operation::Write(bytes) => bytes.len() as u64 > MAX_TRANSFER,
    }
}

impl Wire {
    fn transfer(
        &mut self,
        path: &Path,
        address: u16,
        operations: &[Operation],
    ) -> Result<Vec<Vec<u8>>, BusError> {
        if !self.smbus_only {
            // An adapter that takes I2C may still refuse one transfer's shape (its quirks):
            // that transfer fails, and the next is tried as I2C again.
            return rdwr(&mut self.bus, address, operations).map_err(|err| bus_error(&err));
        }
        let shape = SmbusShape::of(operations).ok_or(BusError::Other)?;
        let device = match &mut self.smbus {
            Some(device) => {
                device
                    .set_slave_address(address)
                    .map_err(|err| bus_error(&err))?;
                device
            }
            None => self
                .smbus
                .insert(LinuxI2CDevice::new(path, address).map_err(|err| bus_error(&err))?),
        };
        shape.run(device).map_err(|err| bus_error(&err))
    }
}

/// One `I2C_RDWR`: every operation a message to `address`.
fn rdwr(
    bus: &mut LinuxI2CBus,
    address: u16,
    operations: &[Operation],
) -> Result<Vec<Vec<u8>>, LinuxI2CError> {
    let mut reads: Vec<Vec<u8>> = operations
        .iter()
        .filter_map(|operation| match operation {
            // Bounded by MAX_TRANSFER, checked before.
            Operation::Read(len) => Some(vec![0; *len as usize]),
            Operation::Write(_) => None,
        })
        .collect();
    let mut buffers = reads.iter_mut();
    let mut messages: Vec<LinuxI2CMessage<'_>> = operations
        .iter()
        .filter_map(|operation| match operation {
            Operation::Read(_) => buffers.next().map(|buffer| LinuxI2CMessage::read(buffer)),
            Operation::Write(bytes) => Some(LinuxI2CMessage::write(bytes)),
        })
        .map(|message| message.with_address(address))
        .collect();
    bus.transfer(&mut messages)?;
    drop(messages);
    Ok(reads)
}

/// A transaction that has an SMBus form.
#[derive(Debug, PartialEq, Eq)]
enum SmbusShape<'a> {
    /// One byte read.
    ReadByte,
    /// One byte written.
    WriteByte(u8),
    /// A register written with 1 to 32 bytes.
    WriteBlock(u8, &'a [u8]),
    /// A register read for 1 to 32 bytes (the register written, then a repeated start).
    ReadBlock(u8, u8),
}

impl<'a> SmbusShape<'a> {
    fn of(operations: &'a [Operation]) -> Option<Self> {
        let block = 1..=SMBUS_BLOCK;
        match operations {
            [Operation::Read(1)] => Some(Self::ReadByte),
            [Operation::Write(bytes)] => match bytes.as_slice() {
                [byte] => Some(Self::WriteByte(*byte)),
                [register, data @ ..] if block.contains(&data.len()) => {
                    Some(Self::WriteBlock(*register, data))
                }
                _ => None,
            },
            [Operation::Write(register), Operation::Read(len)] => match register.as_slice() {
                [register] => u8::try_from(*len)
                    .ok()
                    .filter(|len| block.contains(&usize::from(*len)))
                    .map(|len| Self::ReadBlock(*register, len)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The reads it returns, as `I2C_RDWR` would have.
    fn run(&self, device: &mut LinuxI2CDevice) -> Result<Vec<Vec<u8>>, LinuxI2CError> {
        Ok(match *self {
            Self::ReadByte => vec![vec![device.smbus_read_byte()?]],
            Self::WriteByte(byte) => {
                device.smbus_write_byte(byte)?;
                Vec::new()
            }
            Self::WriteBlock(register, data) => {
                device.smbus_write_i2c_block_data(register, data)?;
                Vec::new()
            }
            Self::ReadBlock(register, len) => {
                vec![device.smbus_read_i2c_block_data(register, len)?]
            }
        })
    }
}

fn errno(err: &LinuxI2CError) -> Option<Errno> {
    match err {
        LinuxI2CError::Errno(code) => Some(Errno::from_raw_os_error(*code)),
        LinuxI2CError::Io(err) => err.raw_os_error().map(Errno::from_raw_os_error),
    }
}

/// The `wasi:i2c` error for what the adapter's driver returned
/// (the kernel's Documentation/i2c/fault-codes.rst).
fn bus_error(err: &LinuxI2CError) -> BusError {
    match errno(err) {
        // No acknowledge of the address.
        Some(Errno::NXIO) => BusError::NoAcknowledge(NoAck::Address),
        // A missing acknowledge the driver does not place (the Raspberry Pi's, DesignWare's
        // and OMAP's say this for an empty address too), or "no such device" (SMBus
        // adapters for an empty address, but also an adapter that is gone).
        Some(Errno::REMOTEIO | Errno::NODEV) => BusError::NoAcknowledge(NoAck::Unknown),
        Some(Errno::AGAIN) => BusError::ArbitrationLoss,
        Some(Errno::PROTO | Errno::IO) => BusError::Bus,
        Some(Errno::OVERFLOW | Errno::MSGSIZE) => BusError::Overrun,
        _ => BusError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_with_an_smbus_form_map_to_it_and_others_do_not() {
        let write = |bytes: &[u8]| Operation::Write(bytes.to_vec());
        let cases: [(Vec<Operation>, Option<SmbusShape<'_>>); 9] = [
            (vec![Operation::Read(1)], Some(SmbusShape::ReadByte)),
            (vec![write(&[7])], Some(SmbusShape::WriteByte(7))),
            (
                vec![write(&[1, 0x60, 0xa0])],
                Some(SmbusShape::WriteBlock(1, &[0x60, 0xa0])),
            ),
            (
                vec![write(&[0]), Operation::Read(2)],
                Some(SmbusShape::ReadBlock(0, 2)),
            ),
            (vec![write(&[0]), Operation::Read(33)], None),
            (vec![write(&[0]), Operation::Read(0)], None),
            (vec![write(&[0, 1]), Operation::Read(2)], None),
            (vec![Operation::Read(2)], None),
            (vec![write(&[0; 34])], None),
        ];
        for (operations, shape) in &cases {
            assert_eq!(&SmbusShape::of(operations), shape, "{operations:?}");
        }
    }

    #[test]
    fn driver_errors_are_the_proposals_error_codes() {
        let code = |errno: Errno| bus_error(&LinuxI2CError::Errno(errno.raw_os_error()));
        assert_eq!(code(Errno::NXIO), BusError::NoAcknowledge(NoAck::Address));
        assert_eq!(
            code(Errno::REMOTEIO),
            BusError::NoAcknowledge(NoAck::Unknown)
        );
        assert_eq!(code(Errno::NODEV), BusError::NoAcknowledge(NoAck::Unknown));
        assert_eq!(code(Errno::AGAIN), BusError::ArbitrationLoss);
        assert_eq!(code(Errno::PROTO), BusError::Bus);
        assert_eq!(code(Errno::TIMEDOUT), BusError::Other);
        let io = LinuxI2CError::Io(std::io::Error::from_raw_os_error(
            Errno::NXIO.raw_os_error(),
        ));
        assert_eq!(bus_error(&io), BusError::NoAcknowledge(NoAck::Address));
    }

    #[tokio::test]
    async fn what_is_not_an_i2c_bus_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = DevBus::open(&dir.path().join("i2c-9")).unwrap_err();
        assert!(err.to_string().contains("i2c-9"), "{err}");
        let file = dir.path().join("i2c-8");
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            DevBus::open(&file).unwrap_err().to_string(),
            format!("{} is not an i2c-dev character device", file.display())
        );
        // /dev/null is a character device but no adapter: the kernel does not answer
        // I2C_FUNCS for it.
        assert_eq!(
            DevBus::open(Path::new("/dev/null"))
                .unwrap_err()
                .to_string(),
            "/dev/null is not an i2c-dev character device"
        );
    }

    #[tokio::test]
    async fn oversized_transfers_and_wide_addresses_never_reach_the_wire() {
        // A bus on /dev/null: any transfer that got as far as the ioctl would fail with
        // "not a tty" (other), so overrun proves the check came first.
        let wire = Wire {
            bus: LinuxI2CBus::new("/dev/null").unwrap(),
            smbus_only: false,
            smbus: None,
        };
        let bus = DevBus {
            path: "/dev/null".into(),
            wire: Arc::new(Mutex::new(wire)),
            present: AtomicBool::new(true),
        };
        let read = vec![Operation::Write(vec![0]), Operation::Read(2)];
        assert_eq!(
            bus.transaction(0x48, read.clone()).await,
            Err(BusError::Other)
        );
        assert_eq!(bus.transaction(0x148, read).await, Err(BusError::Other));
        for operations in [
            vec![Operation::Read(MAX_TRANSFER + 1)],
            vec![Operation::Write(vec![0; MAX_TRANSFER as usize + 1])],
            vec![Operation::Read(1); MAX_MESSAGES + 1],
        ] {
            assert_eq!(
                bus.transaction(0x48, operations).await,
                Err(BusError::Overrun)
            );
        }
    }

    /// Against the kernel's i2c-stub (an SMBus-only adapter that acts as a register file at
    /// the addresses it is loaded with): run by `e2e/test` where the kernel has it, loaded
    /// with `chip_addr=0x48`, reported there as skipped (with why) elsewhere.
    #[tokio::test]
    #[ignore = "needs root and the i2c-stub kernel module; e2e/test runs it where they are"]
    async fn kernel_bus_carries_register_writes_and_reads_and_reports_no_acknowledge() {
        let bus = stub_bus().expect("i2c-stub is loaded (e2e/test loads it with chip_addr=0x48)");
        let bus = DevBus::open(&bus).unwrap();
        let written = bus
            .transaction(0x48, vec![Operation::Write(vec![0x10, 0xbe, 0xef])])
            .await;
        assert_eq!(written, Ok(Vec::new()));
        let read = bus
            .transaction(0x48, vec![Operation::Write(vec![0x10]), Operation::Read(2)])
            .await;
        assert_eq!(read, Ok(vec![vec![0xbe, 0xef]]));
        // Nobody at 0x49: i2c-stub says "no such device".
        let nobody = bus
            .transaction(0x49, vec![Operation::Write(vec![0x10]), Operation::Read(2)])
            .await;
        assert_eq!(nobody, Err(BusError::NoAcknowledge(NoAck::Unknown)));
        // A transaction with no SMBus form is refused on an SMBus-only adapter.
        let long = bus
            .transaction(0x48, vec![Operation::Read(2), Operation::Read(2)])
            .await;
        assert_eq!(long, Err(BusError::Other));
    }

    /// The i2c-stub adapter's device file, found by its name in sysfs.
    fn stub_bus() -> Option<PathBuf> {
        std::fs::read_dir("/sys/class/i2c-dev")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
                name.contains("SMBus stub")
                    .then(|| Path::new("/dev").join(entry.file_name()))
            })
    }
}
