//! `--device SPEC`: one device a wasmlet node grants to pods, named by a label.
//!
//! ```text
//! LABEL=gpio:sim:LINE:in|out          a simulated GPIO line
//! LABEL=gpio:CHIP:LINE:in|out         line LINE of the GPIO chip DEV/CHIP (e.g. gpiochip0),
//!                                      through the GPIO character device
//! LABEL=i2c:sim:tmp102@ADDRESS        a simulated I2C bus with a TMP102 sensor at ADDRESS
//! LABEL=i2c:BUS                        the I2C bus DEV/BUS (e.g. i2c-1), through i2c-dev
//! LABEL=serial:PORT[:BAUD]             the serial port DEV/PORT (e.g. ttyUSB0), raw, at BAUD
//!                                      bits per second (or the speed it has)
//! LABEL=serial:sim                     a simulated serial port: a pty pair
//! LABEL=sensor:hwmon:PATH              a hwmon input below SYSFS/class/hwmon, e.g.
//!                                      hwmon0/temp1_input
//! LABEL=sensor:iio:DEVICE/CHANNEL      an IIO channel below SYSFS/bus/iio/devices, e.g.
//!                                      iio:device0/in_temp (reads _input, or _raw with
//!                                      _offset and _scale)
//! ```
//!
//! SYSFS is `/sys` and DEV is `/dev`, or `--sysfs-root` and `--dev-root` for fake trees.
//!
//! The label is what the guest asks for and what the pod requests, as the extended resource
//! `peripherals.wasmlet.dev/LABEL`, so it is a DNS-1123 label: lowercase letters, digits and
//! `-`, at most 63 characters, starting and ending with a letter or digit. ADDRESS is a 7-bit
//! I2C address, decimal or `0x` hex.

#![deny(missing_docs)]

use std::fmt;

/// One `--device` flag, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The name pods and guests use.
    pub label: String,
    /// What it is and how it is reached.
    pub kind: DeviceKind,
}

/// A device class and its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A simulated GPIO line.
    SimGpio {
        /// Its line number on the simulated chip.
        line: u32,
        /// Output (the guest drives it) or input (the outside drives it).
        direction: Direction,
    },
    /// A line of a real GPIO chip.
    Gpio {
        /// The chip's device file, below the /dev root (`gpiochip0`).
        chip: String,
        /// The line's offset on the chip.
        line: u32,
        /// Output (the guest drives it) or input (the guest reads it).
        direction: Direction,
    },
    /// A real I2C bus, every address on it.
    I2cBus {
        /// The bus's device file, below the /dev root (`i2c-1`).
        bus: String,
    },
    /// A simulated I2C bus with one TMP102 temperature sensor on it.
    SimI2cTmp102 {
        /// The sensor's 7-bit address.
        address: u16,
    },
    /// A simulated serial port.
    SimSerial,
    /// A real serial port.
    Serial {
        /// The tty's device file, below the /dev root (`ttyUSB0`).
        port: String,
        /// Its speed in bits per second, if the spec sets one.
        baud: Option<u32>,
    },
    /// A sensor the kernel reads, in sysfs.
    Sensor {
        /// Its kind of interface.
        source: SensorSource,
        /// Its path below the source's sysfs directory: relative, without `..`.
        path: String,
    },
}

/// Where in sysfs a sensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorSource {
    /// A hwmon input file (`class/hwmon/hwmonN/temp1_input`).
    Hwmon,
    /// An IIO channel (`bus/iio/devices/iio:deviceN/in_temp`).
    Iio,
}

/// Which way a GPIO line goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read by the guest.
    In,
    /// Driven by the guest.
    Out,
}

/// A `--device` value that does not parse: says what was wrong in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--device {spec:?}: {why}")]
pub struct SpecError {
    spec: String,
    why: String,
}

impl DeviceSpec {
    /// Parses one `--device` value.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let fail = |why: String| SpecError {
            spec: spec.to_string(),
            why,
        };
        let (label, rest) = spec.split_once('=').ok_or_else(|| {
            fail("expected LABEL=CLASS:BACKEND:..., e.g. fan=gpio:sim:17:out".into())
        })?;
        check_label(label).map_err(fail)?;
        for (prefix, source) in [
            ("sensor:hwmon:", SensorSource::Hwmon),
            ("sensor:iio:", SensorSource::Iio),
        ] {
            if let Some(path) = rest.strip_prefix(prefix) {
                check_relative(path).map_err(fail)?;
                return Ok(Self {
                    label: label.to_string(),
                    kind: DeviceKind::Sensor {
                        source,
                        path: path.to_string(),
                    },
                });
            }
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let line_and_direction = |line: &str, direction: &str| {
            let line = line
                .parse()
                .map_err(|_| fail(format!("GPIO line {line:?} is not a line number")))?;
            let direction = match direction {
                "in" => Direction::In,
                "out" => Direction::Out,
                other => {
                    return Err(fail(format!(
                        "GPIO direction {other:?} is neither \"in\" nor \"out\""
                    )));
                }
            };
            Ok((line, direction))
        };
        let kind = match parts.as_slice() {
            ["gpio", "sim", line, direction] => {
                let (line, direction) = line_and_direction(line, direction)?;
                DeviceKind::SimGpio { line, direction }
            }
            ["gpio", "sim", ..] => return Err(fail("expected gpio:sim:LINE:in|out".into())),
            ["gpio", chip, line, direction] => {
                check_device_file(chip).map_err(fail)?;
                let (line, direction) = line_and_direction(line, direction)?;
                DeviceKind::Gpio {
                    chip: chip.to_string(),
                    line,
                    direction,
                }
            }
            ["gpio", ..] => {
                return Err(fail(
                    "expected gpio:CHIP:LINE:in|out (CHIP e.g. gpiochip0, or sim)".into(),
                ));
            }
            ["i2c", "sim", chip] => {
                let (model, address) = chip
                    .split_once('@')
                    .ok_or_else(|| fail("expected i2c:sim:tmp102@ADDRESS".into()))?;
                if model != "tmp102" {
                    return Err(fail(format!(
                        "no simulated I2C chip {model:?}; the simulator has tmp102"
                    )));
                }
                DeviceKind::SimI2cTmp102 {
                    address: parse_address(address).map_err(fail)?,
                }
            }
            ["i2c", "sim", ..] => return Err(fail("expected i2c:sim:tmp102@ADDRESS".into())),
            ["i2c", bus] => {
                check_device_file(bus).map_err(fail)?;
                DeviceKind::I2cBus {
                    bus: bus.to_string(),
                }
            }
            ["i2c", ..] => {
                return Err(fail(
                    "expected i2c:BUS (BUS e.g. i2c-1) or i2c:sim:tmp102@ADDRESS".into(),
                ));
            }
            ["serial", "sim"] => DeviceKind::SimSerial,
            ["serial", port] if *port != "sim" => {
                check_device_file(port).map_err(fail)?;
                DeviceKind::Serial {
                    port: port.to_string(),
                    baud: None,
                }
            }
            ["serial", port, baud] if *port != "sim" => {
                check_device_file(port).map_err(fail)?;
                let speed = baud.parse().ok().filter(|speed| *speed > 0);
                DeviceKind::Serial {
                    port: port.to_string(),
                    baud: Some(
                        speed.ok_or_else(|| fail(format!("baud rate {baud:?} is not a speed")))?,
                    ),
                }
            }
            ["serial", ..] => {
                return Err(fail(
                    "expected serial:PORT[:BAUD] (PORT e.g. ttyUSB0) or serial:sim".into(),
                ));
            }
            ["sensor", ..] => {
                return Err(fail(
                    "expected sensor:hwmon:PATH or sensor:iio:DEVICE/CHANNEL".into(),
                ));
            }
            [class, ..] => {
                return Err(fail(format!(
                    "unknown device class {class:?}; expected gpio, i2c, sensor or serial"
                )));
            }
            [] => return Err(fail("empty device".into())),
        };
        Ok(Self {
            label: label.to_string(),
            kind,
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DeviceKind::SimGpio { line, direction } => {
                let direction = match direction {
                    Direction::In => "in",
                    Direction::Out => "out",
                };
                write!(f, "{}=gpio:sim:{line}:{direction}", self.label)
            }
            DeviceKind::Gpio {
                chip,
                line,
                direction,
            } => {
                let direction = match direction {
                    Direction::In => "in",
                    Direction::Out => "out",
                };
                write!(f, "{}=gpio:{chip}:{line}:{direction}", self.label)
            }
            DeviceKind::I2cBus { bus } => write!(f, "{}=i2c:{bus}", self.label),
            DeviceKind::SimI2cTmp102 { address } => {
                write!(f, "{}=i2c:sim:tmp102@{address:#04x}", self.label)
            }
            DeviceKind::SimSerial => write!(f, "{}=serial:sim", self.label),
            DeviceKind::Serial { port, baud: None } => write!(f, "{}=serial:{port}", self.label),
            DeviceKind::Serial {
                port,
                baud: Some(baud),
            } => write!(f, "{}=serial:{port}:{baud}", self.label),
            DeviceKind::Sensor { source, path } => {
                let source = match source {
                    SensorSource::Hwmon => "hwmon",
                    SensorSource::Iio => "iio",
                };
                write!(f, "{}=sensor:{source}:{path}", self.label)
            }
        }
    }
}

/// A DNS-1123 label, as the name part of an extended resource needs.
fn check_label(label: &str) -> Result<(), String> {
    let valid_chars = label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edges = |b: Option<u8>| b.is_some_and(|b| b != b'-');
    if label.is_empty()
        || label.len() > 63
        || !valid_chars
        || !edges(label.bytes().next())
        || !edges(label.bytes().last())
    {
        return Err(format!(
            "label {label:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A path below a sysfs directory: relative, plain components only.
fn check_relative(path: &str) -> Result<(), String> {
    let plain = std::path::Path::new(path)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if path.is_empty() || !plain {
        return Err(format!(
            "sensor path {path:?} must be relative to its sysfs directory, without \"..\""
        ));
    }
    Ok(())
}

/// A device file's name, below the /dev root: one plain path component.
fn check_device_file(name: &str) -> Result<(), String> {
    let mut components = std::path::Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(std::path::Component::Normal(_)), None) if !name.contains('/') => Ok(()),
        _ => Err(format!(
            "device {name:?} must be a file name in the /dev root (e.g. gpiochip0, i2c-1, ttyUSB0)"
        )),
    }
}

/// A 7-bit I2C address: `72` or `0x48`.
fn parse_address(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(address) if address <= 0x7f => Ok(address),
        _ => Err(format!("I2C address {text:?} is not a 7-bit address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "fan=gpio:sim:17:out",
            "button=gpio:sim:4:in",
            "relay=gpio:gpiochip0:23:out",
            "door=gpio:gpiochip2:5:in",
            "bus=i2c:i2c-1",
            "temp=i2c:sim:tmp102@0x48",
            "cpu=sensor:hwmon:hwmon0/temp1_input",
            "air=sensor:iio:iio:device0/in_pressure",
            "console=serial:sim",
            "modem=serial:ttyUSB0:115200",
            "gps=serial:ttyAMA0",
        ] {
            assert_eq!(DeviceSpec::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            DeviceSpec::parse("t-2=i2c:sim:tmp102@73").unwrap().kind,
            DeviceKind::SimI2cTmp102 { address: 0x49 }
        );
    }

    #[test]
    fn a_bad_spec_says_what_is_wrong_in_one_line() {
        for (text, says) in [
            ("fan", "expected LABEL=CLASS:BACKEND"),
            ("Fan=gpio:sim:17:out", "label \"Fan\""),
            ("-fan=gpio:sim:17:out", "label \"-fan\""),
            ("=gpio:sim:17:out", "label \"\""),
            ("fan=gpio:sim:x:out", "GPIO line \"x\""),
            ("fan=gpio:sim:17:sideways", "neither \"in\" nor \"out\""),
            ("fan=gpio:sim:17", "expected gpio:sim:LINE:in|out"),
            (
                "temp=i2c:sim:bme280@0x76",
                "no simulated I2C chip \"bme280\"",
            ),
            ("temp=i2c:sim:tmp102@0x80", "not a 7-bit address"),
            ("temp=i2c:sim:tmp102", "expected i2c:sim:tmp102@ADDRESS"),
            ("fan=gpio:gpiochip0:x:out", "GPIO line \"x\""),
            ("fan=gpio:gpiochip0:17:up", "neither \"in\" nor \"out\""),
            ("fan=gpio:gpiochip0:17", "expected gpio:CHIP:LINE:in|out"),
            ("fan=gpio:..:17:out", "must be a file name in the /dev root"),
            ("fan=gpio:.:17:out", "must be a file name in the /dev root"),
            ("fan=gpio::17:out", "must be a file name in the /dev root"),
            ("bus=i2c:", "must be a file name in the /dev root"),
            ("bus=i2c:i2c-1:0x48", "expected i2c:BUS"),
            ("cam=usb:0", "unknown device class \"usb\""),
            ("cpu=sensor:hwmon:/sys/x", "must be relative"),
            ("cpu=sensor:hwmon:../etc/passwd", "without \"..\""),
            ("cpu=sensor:hwmon:", "must be relative"),
            ("cpu=sensor:thermal:zone0", "expected sensor:hwmon:PATH"),
            (
                "console=serial:/dev/ttyUSB0",
                "must be a file name in the /dev root",
            ),
            ("console=serial:ttyUSB0:fast", "baud rate \"fast\""),
            ("console=serial:ttyUSB0:0", "baud rate \"0\""),
            (
                "console=serial:ttyUSB0:9600:8N1",
                "expected serial:PORT[:BAUD]",
            ),
            ("console=serial:sim:9600", "expected serial:PORT[:BAUD]"),
            ("console=serial:..", "must be a file name in the /dev root"),
        ] {
            let err = DeviceSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.starts_with(&format!("--device {text:?}: ")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let long = format!("{}=gpio:sim:1:out", "a".repeat(64));
        assert!(DeviceSpec::parse(&long).is_err());
    }
}
