//! A thermostat: reads a TMP102 temperature sensor on the I2C bus granted as `temp` and
//! switches the GPIO line granted as `fan` on above a threshold (and off half a degree
//! below it), the threshold read from a file (a ConfigMap) on every round, so editing the
//! ConfigMap retunes it.
//!
//! `thermostat probe LABEL...` instead tries to open each label as an I2C bus and as an
//! output line and prints what the node answered: how a pod sees devices it was not granted.

wit_bindgen::generate!({
    path: "../../providers/peripherals/wit",
    world: "wasmlet:peripherals/peripherals-guest",
    generate_all,
});

use std::time::Duration;

use wasi::gpio::digital::{DigitalFlag, DigitalOutPin, PinState};
use wasi::i2c::i2c::{ErrorCode, I2c};
use wasmlet::peripherals::devices;

/// The TMP102's address with its ADD0 pin to ground.
const SENSOR: u16 = 0x48;
/// Its temperature register.
const TEMPERATURE: u8 = 0x00;
const HYSTERESIS: f64 = 0.5;
const DEFAULT_THRESHOLD: f64 = 25.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        for label in &args[2..] {
            probe(label);
        }
        return;
    }
    let threshold_file = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/etc/thermostat/threshold".into());
    if let Err(why) = run(&threshold_file) {
        eprintln!("thermostat: {why}");
        std::process::exit(1);
    }
}

fn run(threshold_file: &str) -> Result<(), String> {
    let bus = devices::open_i2c("temp").map_err(|e| format!("cannot open I2C bus temp: {e:?}"))?;
    let fan = DigitalOutPin::get("fan", &[DigitalFlag::ACTIVE_HIGH | DigitalFlag::INACTIVE])
        .map_err(|e| format!("cannot open GPIO line fan: {e:?}"))?;
    let mut on = false;
    let mut last_threshold = None;
    let granted = std::env::var("WASMLET_DEVICES").unwrap_or_default();
    println!(
        "thermostat: granted {granted}; sensor temp@{SENSOR:#04x}, fan line fan, threshold from {threshold_file}"
    );
    loop {
        let threshold = read_threshold(threshold_file);
        if last_threshold != Some(threshold) {
            println!("threshold {threshold:.1} °C");
            last_threshold = Some(threshold);
        }
        match celsius(&bus) {
            Ok(t) => {
                let want = if on {
                    t > threshold - HYSTERESIS
                } else {
                    t > threshold
                };
                if want != on {
                    let state = if want {
                        PinState::Active
                    } else {
                        PinState::Inactive
                    };
                    fan.set_state(state)
                        .map_err(|e| format!("cannot switch the fan: {e:?}"))?;
                    on = want;
                    println!(
                        "{t:.2} °C: fan {} (threshold {threshold:.1} °C)",
                        if on { "on" } else { "off" }
                    );
                }
            }
            Err(err) => eprintln!("cannot read the sensor: {err:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The temperature register: 12 bits, left-justified, two's complement, 1/16 °C each.
fn celsius(bus: &I2c) -> Result<f64, ErrorCode> {
    let bytes = bus.write_read(SENSOR, &[TEMPERATURE], 2)?;
    let raw = i16::from_be_bytes([bytes[0], bytes[1]]) >> 4;
    Ok(f64::from(raw) / 16.0)
}

fn read_threshold(file: &str) -> f64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_THRESHOLD)
}

fn probe(label: &str) {
    match devices::open_i2c(label) {
        Ok(bus) => match bus.write_read(SENSOR, &[TEMPERATURE], 2) {
            Ok(bytes) => println!("{label}: i2c opened, read {bytes:?}"),
            Err(err) => println!("{label}: i2c opened, transaction failed: {err:?}"),
        },
        Err(err) => println!("{label}: i2c refused: {err:?}"),
    }
    match DigitalOutPin::get(label, &[DigitalFlag::ACTIVE_HIGH]) {
        Ok(_) => println!("{label}: gpio output opened"),
        Err(err) => println!("{label}: gpio output refused: {err:?}"),
    }
    // An address nothing answers on, on a granted bus.
    if let Ok(bus) = devices::open_i2c(label) {
        match bus.read(0x10, 2) {
            Ok(bytes) => println!("{label}: address 0x10 answered {bytes:?}"),
            Err(err) => println!("{label}: address 0x10: {err:?}"),
        }
    }
}
