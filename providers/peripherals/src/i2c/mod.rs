//! An I2C bus as a guest sees it, whatever the backend: a simulated bus with one chip on it,
//! or a real bus through i2c-dev ([`dev`]).

pub mod dev;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::sim::SimTmp102;

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read this many bytes.
    Read(u64),
    /// Write these bytes.
    Write(Vec<u8>),
}

/// What went wrong on the bus: `wasi:i2c`'s error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A bus error (misplaced start or stop).
    Bus,
    /// Another controller won the bus.
    ArbitrationLoss,
    /// Nobody acknowledged.
    NoAcknowledge(NoAck),
    /// More was asked for than the bus could carry.
    Overrun,
    /// Anything else.
    Other,
}

/// Which part of a transfer was not acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoAck {
    /// The address: no device there.
    Address,
    /// A data byte.
    Data,
    /// The adapter does not say which.
    Unknown,
}

/// A bus a guest may be granted.
#[derive(Debug)]
pub enum Bus {
    /// The simulator's bus, with a TMP102 on it.
    Simulated(SimTmp102),
    /// A real bus, through i2c-dev.
    Dev(dev::DevBus),
}

impl Bus {
    /// Whether the bus is plugged in.
    pub fn presence(&self) -> &AtomicBool {
        match self {
            Bus::Simulated(chip) => chip.presence(),
            Bus::Dev(bus) => bus.presence(),
        }
    }

    /// Runs one transaction on the bus: its operations in order, with repeated starts between
    /// them; what each read returned. A real bus's transfer runs on a blocking thread, one
    /// at a time per bus, so the guest's thread never waits on the wire.
    pub async fn transaction(
        self: Arc<Self>,
        address: u16,
        operations: Vec<Operation>,
    ) -> Result<Vec<Vec<u8>>, BusError> {
        match self.as_ref() {
            Bus::Simulated(chip) => chip.transaction(address, &operations),
            Bus::Dev(bus) => bus.transaction(address, operations).await,
        }
    }
}
