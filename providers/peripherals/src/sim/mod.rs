//! Simulated devices: GPIO lines and an I2C temperature sensor, whose state the outside
//! reads and drives through files (see [`mirror`]).

mod gpio;
pub mod mirror;
mod serial;
mod tmp102;

pub use gpio::SimLine;
pub use serial::{SerialError, SimSerial};
pub use tmp102::SimTmp102;
