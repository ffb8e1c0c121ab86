//! An I2C transaction as a bus sees it, whatever the backend.

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
}
