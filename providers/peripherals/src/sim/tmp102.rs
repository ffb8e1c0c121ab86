//! A simulated I2C bus with a TMP102 temperature sensor on it, modelled at the register level
//! (TI datasheet SBOS397): a pointer register selects one of four 16-bit registers, which are
//! read and written most significant byte first. The temperature comes from outside (the
//! simulator's directory); the guest reads it as it would from the real chip.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::i2c::{BusError, NoAck, Operation};

const TEMPERATURE: u8 = 0x00;
const CONFIG: u8 = 0x01;
const T_LOW: u8 = 0x02;
const T_HIGH: u8 = 0x03;
/// The most bytes one read may ask for: the chip repeats its two bytes, so more is never
/// useful, and the guest's length is not trusted.
pub(crate) const MAX_READ: u64 = 256;

/// The chip's registers.
#[derive(Debug)]
struct Registers {
    pointer: u8,
    config: u16,
    t_low: u16,
    t_high: u16,
    /// The temperature in units of 1/16 °C (the 12-bit reading).
    sixteenths: i16,
}

/// A TMP102 at `address` on its own simulated bus.
#[derive(Debug)]
pub struct SimTmp102 {
    address: u16,
    registers: Mutex<Registers>,
    present: AtomicBool,
}

impl SimTmp102 {
    /// A sensor at `address` reading 21 °C, with the power-on register values.
    pub fn new(address: u16) -> Self {
        Self {
            address,
            registers: Mutex::new(Registers {
                pointer: TEMPERATURE,
                config: 0x60a0,
                // 75 °C and 80 °C, the power-on alert limits.
                t_low: 0x4b00,
                t_high: 0x5000,
                sixteenths: 21 * 16,
            }),
            present: AtomicBool::new(true),
        }
    }

    /// Whether the bus is plugged in: an unplugged bus fails every transaction.
    pub fn presence(&self) -> &AtomicBool {
        &self.present
    }

    /// Sets the temperature the sensor measures, clamped to its range (-55 to 150 °C) and
    /// resolution (0.0625 °C).
    pub fn set_celsius(&self, celsius: f64) {
        let sixteenths = (celsius.clamp(-55.0, 150.0) * 16.0).round() as i16;
        self.lock().sixteenths = sixteenths;
    }

    /// The temperature it measures.
    pub fn celsius(&self) -> f64 {
        f64::from(self.lock().sixteenths) / 16.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registers> {
        self.registers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one I2C transaction: its operations in order, with repeated starts between them.
    pub fn transaction(
        &self,
        address: u16,
        operations: &[Operation],
    ) -> Result<Vec<Vec<u8>>, BusError> {
        if !self.present.load(Ordering::Relaxed) {
            return Err(BusError::Bus);
        }
        if address != self.address {
            return Err(BusError::NoAcknowledge(NoAck::Address));
        }
        let mut registers = self.lock();
        let mut reads = Vec::new();
        for operation in operations {
            match operation {
                Operation::Write(bytes) => registers.write(bytes)?,
                Operation::Read(len) => reads.push(registers.read(*len)?),
            }
        }
        Ok(reads)
    }
}

impl Registers {
    fn value(&self, register: u8) -> u16 {
        match register {
            TEMPERATURE => (self.sixteenths as u16) << 4,
            CONFIG => self.config,
            T_LOW => self.t_low,
            _ => self.t_high,
        }
    }

    /// The first byte sets the pointer; two more write the register it points at.
    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError> {
        let Some((&pointer, data)) = bytes.split_first() else {
            return Ok(());
        };
        if pointer > T_HIGH {
            return Err(BusError::NoAcknowledge(NoAck::Data));
        }
        self.pointer = pointer;
        match data {
            [] => Ok(()),
            [high, low] => {
                let value = u16::from_be_bytes([*high, *low]);
                match pointer {
                    // The temperature register is read-only; the chip ignores the write.
                    TEMPERATURE => {}
                    // The conversion-ready and resolution bits are read-only.
                    CONFIG => self.config = (value & !0x6000) | 0x6000,
                    T_LOW => self.t_low = value & 0xfff0,
                    _ => self.t_high = value & 0xfff0,
                }
                Ok(())
            }
            _ => Err(BusError::NoAcknowledge(NoAck::Data)),
        }
    }

    /// The pointed-at register, most significant byte first, repeated as the chip does.
    fn read(&self, len: u64) -> Result<Vec<u8>, BusError> {
        if len > MAX_READ {
            return Err(BusError::Overrun);
        }
        let bytes = self.value(self.pointer).to_be_bytes();
        Ok(bytes.iter().copied().cycle().take(len as usize).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_register(chip: &SimTmp102, register: u8) -> Vec<u8> {
        let mut reads = chip
            .transaction(
                0x48,
                &[Operation::Write(vec![register]), Operation::Read(2)],
            )
            .unwrap();
        reads.remove(0)
    }

    #[test]
    fn the_temperature_reads_as_the_datasheet_lays_it_out() {
        let chip = SimTmp102::new(0x48);
        // 21 °C = 336/16: 0x150 << 4.
        assert_eq!(read_register(&chip, TEMPERATURE), [0x15, 0x00]);
        chip.set_celsius(25.0625);
        assert_eq!(read_register(&chip, TEMPERATURE), [0x19, 0x10]);
        chip.set_celsius(-25.0);
        // Two's complement: -400 sixteenths = 0xE70 in 12 bits.
        assert_eq!(read_register(&chip, TEMPERATURE), [0xe7, 0x00]);
        chip.set_celsius(1000.0);
        assert_eq!(chip.celsius(), 150.0);
    }

    #[test]
    fn registers_are_written_through_the_pointer() {
        let chip = SimTmp102::new(0x48);
        assert_eq!(read_register(&chip, CONFIG), [0x60, 0xa0]);
        assert_eq!(read_register(&chip, T_HIGH), [0x50, 0x00]);
        chip.transaction(0x48, &[Operation::Write(vec![T_HIGH, 0x1e, 0x0f])])
            .unwrap();
        // The low four bits do not exist.
        assert_eq!(read_register(&chip, T_HIGH), [0x1e, 0x00]);
        // Writing the temperature is ignored; a read without a pointer reads the last one.
        chip.transaction(0x48, &[Operation::Write(vec![TEMPERATURE, 0, 0])])
            .unwrap();
        let reads = chip.transaction(0x48, &[Operation::Read(4)]).unwrap();
        assert_eq!(reads, [vec![0x15, 0x00, 0x15, 0x00]]);
    }

    #[test]
    fn what_the_chip_would_not_acknowledge_is_an_error() {
        let chip = SimTmp102::new(0x48);
        assert_eq!(
            chip.transaction(0x49, &[Operation::Read(2)]),
            Err(BusError::NoAcknowledge(NoAck::Address))
        );
        assert_eq!(
            chip.transaction(0x48, &[Operation::Write(vec![0x07])]),
            Err(BusError::NoAcknowledge(NoAck::Data))
        );
        assert_eq!(
            chip.transaction(0x48, &[Operation::Write(vec![CONFIG, 1])]),
            Err(BusError::NoAcknowledge(NoAck::Data))
        );
        assert_eq!(
            chip.transaction(0x48, &[Operation::Read(MAX_READ + 1)]),
            Err(BusError::Overrun)
        );
    }
}
