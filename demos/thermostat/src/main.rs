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

use std::time::{Duration, Instant};

use wasi::gpio::digital::{DigitalFlag, DigitalInPin, DigitalOutPin, PinState};
use wasi::i2c::i2c::{ErrorCode, I2c, Operation};
use wasmlet::peripherals::{devices, sensor, serial};

/// The TMP102's address with its ADD0 pin to ground.
const SENSOR: u16 = 0x48;
/// Its temperature register.
const TEMPERATURE: u8 = 0x00;
const HYSTERESIS: f64 = 0.5;
const DEFAULT_THRESHOLD: f64 = 25.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("probe") => {
            for label in &args[2..] {
                probe(label);
            }
            return;
        }
        Some("button") => {
            let label = args.get(2).map_or("button", String::as_str);
            let presses = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2);
            if let Err(why) = wait_for_presses(label, presses) {
                eprintln!("thermostat: {why}");
                std::process::exit(1);
            }
            return;
        }
        Some("serial") => {
            let label = args.get(2).map_or("console", String::as_str);
            if let Err(why) = talk(label) {
                eprintln!("thermostat: {why}");
                std::process::exit(1);
            }
            return;
        }
        Some("bench") => {
            let calls = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            if let Err(why) = bench(calls) {
                eprintln!("thermostat: {why}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
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
    let mut sensor_ok = true;
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
            Err(err) => {
                if sensor_ok {
                    eprintln!("cannot read the sensor: {err:?}");
                }
                sensor_ok = false;
                continue_after_pause();
                continue;
            }
        }
        if !sensor_ok {
            println!("the sensor answers again");
            sensor_ok = true;
        }
        continue_after_pause();
    }
}

/// The pause between rounds.
fn continue_after_pause() {
    std::thread::sleep(Duration::from_millis(200));
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

/// Waits, without spinning, for `presses` presses (a rising edge, then a falling one) on the
/// input line `label`, logging each edge.
fn wait_for_presses(label: &str, presses: u32) -> Result<(), String> {
    let button = DigitalInPin::get(label, &[DigitalFlag::ACTIVE_HIGH])
        .map_err(|e| format!("cannot open GPIO line {label}: {e:?}"))?;
    println!("{label}: waiting for {presses} presses");
    for n in 1..=presses {
        let edge = button
            .watch_rising_edge()
            .map_err(|e| format!("cannot watch {label}: {e:?}"))?;
        edge.block();
        println!("{label}: pressed ({n})");
        let edge = button
            .watch_falling_edge()
            .map_err(|e| format!("cannot watch {label}: {e:?}"))?;
        edge.block();
        println!("{label}: released ({n})");
    }
    Ok(())
}

/// Greets whoever is on the serial port `label`, waits (without spinning) for one line back,
/// logs it and says goodbye.
fn talk(label: &str) -> Result<(), String> {
    let port = serial::open(label).map_err(|e| format!("cannot open serial port {label}: {e:?}"))?;
    let mut pending: &[u8] = b"hello from the guest\n";
    while !pending.is_empty() {
        let n = port.write(pending).map_err(|e| format!("write: {e:?}"))?;
        pending = &pending[n as usize..];
    }
    println!("{label}: said hello");
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        port.subscribe().block();
        line.extend(port.read(256).map_err(|e| format!("read: {e:?}"))?);
    }
    println!("{label}: got {:?}", String::from_utf8_lossy(&line).trim_end());
    port.write(b"bye\n").map_err(|e| format!("write: {e:?}"))?;
    Ok(())
}

/// Times `calls` GPIO writes and `calls` I2C transactions (a temperature read) on the granted
/// `fan` and `temp`, each call on its own, and prints one line of JSON: per kind the mean (from
/// the total) and the median and 99th percentile (from each call, so they include a clock
/// read) in nanoseconds.
fn bench(calls: usize) -> Result<(), String> {
    let bus = devices::open_i2c("temp").map_err(|e| format!("cannot open temp: {e:?}"))?;
    let fan = DigitalOutPin::get("fan", &[DigitalFlag::ACTIVE_HIGH])
        .map_err(|e| format!("cannot open fan: {e:?}"))?;
    let gpio = time_calls(calls, |i| {
        let state = if i % 2 == 0 {
            PinState::Active
        } else {
            PinState::Inactive
        };
        fan.set_state(state).map_err(|e| format!("{e:?}"))
    })?;
    let i2c = time_calls(calls, |_| celsius(&bus).map(|_| ()).map_err(|e| format!("{e:?}")))?;
    println!("{{\"calls\":{calls},\"gpio_set\":{gpio},\"i2c_write_read\":{i2c}}}");
    Ok(())
}

/// `{"mean_ns":…,"p50_ns":…,"p99_ns":…}` for `calls` calls of `call`.
fn time_calls(
    calls: usize,
    mut call: impl FnMut(usize) -> Result<(), String>,
) -> Result<String, String> {
    let began = Instant::now();
    for i in 0..calls {
        call(i)?;
    }
    let mean = began.elapsed().as_nanos() / calls.max(1) as u128;
    let mut each = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        call(i)?;
        each.push(t.elapsed().as_nanos());
    }
    each.sort_unstable();
    let at = |q: f64| each.get(((each.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    Ok(format!(
        "{{\"mean_ns\":{mean},\"p50_ns\":{},\"p99_ns\":{}}}",
        at(0.5),
        at(0.99)
    ))
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
    match (sensor::read(label), sensor::describe(label)) {
        (Ok(value), Ok(unit)) => println!("{label}: sensor reads {value:.2} {unit}"),
        (Err(err), _) | (_, Err(err)) => println!("{label}: sensor refused: {err:?}"),
    }
    // An address nothing answers on, on a granted bus; a transaction of two operations; and
    // one laid out in memory as a hostile guest can.
    if let Ok(bus) = devices::open_i2c(label) {
        match bus.read(0x10, 2) {
            Ok(bytes) => println!("{label}: address 0x10 answered {bytes:?}"),
            Err(err) => println!("{label}: address 0x10: {err:?}"),
        }
        let operations = [Operation::Write(vec![TEMPERATURE]), Operation::Read(2)];
        match bus.transaction(SENSOR, &operations) {
            Ok(reads) => println!("{label}: transaction read {reads:?}"),
            Err(err) => println!("{label}: transaction failed: {err:?}"),
        }
        for writes in [200_000, 64] {
            let answer = aliased_writes(&bus, writes);
            println!("{label}: {writes} aliased writes: {answer}");
        }
    }
}

/// Calls `transaction` with what no binding would make: `writes` write operations that all
/// point at the same megabyte (200,000 of them are 3 MB of guest memory that read as 200 GB;
/// 64 are within the operation limit, but each is over the length limit), and says what the
/// node answered. A host that copied before it checked would run out of memory.
fn aliased_writes(bus: &I2c, writes: usize) -> String {
    #[link(wasm_import_module = "wasi:i2c/i2c@0.2.0-draft")]
    unsafe extern "C" {
        #[link_name = "[method]i2c.transaction"]
        fn transaction(bus: i32, address: i32, operations: *mut u8, len: usize, answer: *mut u8);
    }
    let megabyte = vec![0u8; 1 << 20];
    // The canonical ABI's layout of `operation`: 16 bytes, the case (1: write) in the first
    // byte, the list's address and length at offset 8.
    let write = ((megabyte.len() as u64) << 32) | megabyte.as_ptr() as u64;
    let mut operations: Vec<u64> = [1, write].repeat(writes);
    // `result<list<list<u8>>, error-code>`: the case at 0, the error's case at 4.
    let mut answer = [0u32; 3];
    unsafe {
        transaction(
            bus.handle() as i32,
            i32::from(SENSOR),
            operations.as_mut_ptr().cast(),
            writes,
            answer.as_mut_ptr().cast(),
        );
    }
    match (answer[0] & 0xff, answer[1] & 0xff) {
        (0, _) => "answered".into(),
        (1, 3) => "overrun".into(),
        (_, code) => format!("error code {code}"),
    }
}
