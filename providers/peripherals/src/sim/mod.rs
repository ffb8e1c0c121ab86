//! Simulated devices: an I2C temperature sensor, and (with simulated GPIO lines and serial
//! ports, [`crate::gpio::Line::simulated`], [`crate::serial::Serial::simulated`]) their
//! window to the outside, files the outside reads and drives (see [`mirror`]).

pub mod mirror;
mod tmp102;

pub use tmp102::SimTmp102;
