//! Simulated devices: an I2C temperature sensor and a serial port, and (with simulated GPIO
//! lines, [`crate::gpio::Line::simulated`]) their window to the outside, files the outside
//! reads and drives (see [`mirror`]).

pub mod mirror;
mod serial;
mod tmp102;

pub use serial::{SerialError, SimSerial};
pub use tmp102::SimTmp102;
