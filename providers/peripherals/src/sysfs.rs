//! Sensors the kernel already reads, through sysfs: hwmon inputs and IIO channels. Their
//! readings are sampled by one task (see [`run`]) and kept, so a guest's read never touches
//! the filesystem; a sensor whose files go away is unplugged until they return.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registry::{Device, Peripherals};
use peripherals_spec::SensorSource;

/// How often every sensor is read.
pub const PERIOD: Duration = Duration::from_millis(100);

/// What a sensor measures, from its file or channel name: how its sysfs value becomes the SI
/// base unit the guest gets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Measure {
    /// Millidegrees Celsius, read as kelvin.
    Temperature,
    /// Millivolts, read as volts.
    Voltage,
    /// Milliamperes, read as amperes.
    Current,
    /// Microwatts, read as watts.
    Power,
    /// Kilopascals (IIO), read as pascals.
    Pressure,
    /// Milli-percent relative humidity, read as a fraction.
    Humidity,
    /// Revolutions per minute, read as hertz.
    Fan,
    /// Anything else, as the kernel gives it.
    Raw,
}

impl Measure {
    fn of(name: &str) -> Self {
        let name = name.strip_prefix("in_").unwrap_or(name);
        let starts = |prefix: &str| name.starts_with(prefix);
        if starts("temp") {
            Measure::Temperature
        } else if starts("humidity") {
            Measure::Humidity
        } else if starts("pressure") {
            Measure::Pressure
        } else if starts("voltage") || is_hwmon_voltage(name) {
            Measure::Voltage
        } else if starts("curr") || starts("current") {
            Measure::Current
        } else if starts("power") {
            Measure::Power
        } else if starts("fan") {
            Measure::Fan
        } else {
            Measure::Raw
        }
    }

    fn si(self, value: f64) -> f64 {
        match self {
            Measure::Temperature => value / 1000.0 + 273.15,
            Measure::Voltage | Measure::Current => value / 1000.0,
            Measure::Power => value / 1e6,
            Measure::Pressure => value * 1000.0,
            Measure::Humidity => value / 100_000.0,
            Measure::Fan => value / 60.0,
            Measure::Raw => value,
        }
    }

    /// The unit of [`Measure::si`]'s result.
    fn unit(self) -> &'static str {
        match self {
            Measure::Temperature => "kelvin",
            Measure::Voltage => "volt",
            Measure::Current => "ampere",
            Measure::Power => "watt",
            Measure::Pressure => "pascal",
            Measure::Humidity => "relative humidity (fraction)",
            Measure::Fan => "hertz",
            Measure::Raw => "raw",
        }
    }
}

/// A hwmon voltage input is `in` and its index (`in0_input`); IIO's `in_illuminance` and
/// the like are not voltages.
fn is_hwmon_voltage(name: &str) -> bool {
    name.strip_prefix("in")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Failed reads in a row before a sensor counts as unplugged: one bad read is noise, and
/// flapping would flood the pod's events.
const FAILURES_TO_UNPLUG: u32 = 3;

/// One sysfs sensor and its latest reading.
#[derive(Debug)]
pub struct SysfsSensor {
    source: SensorSource,
    /// The hwmon input file, or the IIO channel's path without its `_input`/`_raw` suffix.
    path: PathBuf,
    measure: Measure,
    /// The latest reading in SI units (`f64` bits); meaningful once `read` is set.
    value: AtomicU64,
    read: AtomicBool,
    present: AtomicBool,
}

impl SysfsSensor {
    /// The sensor at `path` below `sysfs_root` (`class/hwmon` or `bus/iio/devices`).
    pub fn new(sysfs_root: &Path, source: SensorSource, path: &str) -> Self {
        let base = match source {
            SensorSource::Hwmon => sysfs_root.join("class/hwmon"),
            SensorSource::Iio => sysfs_root.join("bus/iio/devices"),
        };
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        Self {
            source,
            measure: Measure::of(name),
            path: base.join(path),
            value: AtomicU64::new(0),
            read: AtomicBool::new(false),
            present: AtomicBool::new(true),
        }
    }

    /// Whether the sensor answers.
    pub fn presence(&self) -> &AtomicBool {
        &self.present
    }

    /// The latest reading in SI units, once there is one.
    pub fn reading(&self) -> Option<f64> {
        self.read
            .load(Ordering::Acquire)
            .then(|| f64::from_bits(self.value.load(Ordering::Relaxed)))
    }

    /// The unit of [`reading`](Self::reading).
    pub fn unit(&self) -> &'static str {
        self.measure.unit()
    }

    /// Reads the sensor now and keeps the reading.
    pub async fn sample(&self) -> Result<f64, String> {
        let raw = match self.source {
            SensorSource::Hwmon => number(&self.path).await?,
            SensorSource::Iio => self.iio().await?,
        };
        let value = self.measure.si(raw);
        self.value.store(value.to_bits(), Ordering::Relaxed);
        self.read.store(true, Ordering::Release);
        Ok(value)
    }

    /// `<channel>_input` if the driver gives it; else `(<channel>_raw + _offset) * _scale`.
    async fn iio(&self) -> Result<f64, String> {
        let file = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        if let Ok(value) = number(&file("_input")).await {
            return Ok(value);
        }
        let raw = number(&file("_raw")).await?;
        let offset = number(&file("_offset")).await.unwrap_or(0.0);
        let scale = number(&file("_scale")).await.unwrap_or(1.0);
        Ok((raw + offset) * scale)
    }
}

/// A finite number from a sysfs file.
async fn number(path: &Path) -> Result<f64, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|err| format!("{}: {err}", path.display()))?;
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("{}: {:?} is not a number", path.display(), text.trim()))
}

/// Samples every sysfs sensor each [`PERIOD`] until `cancel` fires; a sensor that cannot be
/// read is unplugged until it can.
pub async fn run(peripherals: Arc<Peripherals>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(PERIOD);
    // Failed reads in a row, by label; bounded by the devices.
    let mut failures: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    while crate::next_tick(&mut ticks, &cancel).await {
        for (label, device) in peripherals.devices() {
            if let Device::Sensor(sensor) = device.as_ref() {
                match sensor.sample().await {
                    Ok(_) => {
                        failures.remove(label.as_str());
                        peripherals.set_present(label, true);
                    }
                    Err(why) => {
                        let count = failures.entry(label).or_default();
                        *count = count.saturating_add(1);
                        if *count == FAILURES_TO_UNPLUG {
                            tracing::warn!(sensor = label, %why, "sensor unreadable");
                            peripherals.set_present(label, false);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hwmon_and_iio_readings_come_in_si_units() {
        let sys = tempfile::tempdir().unwrap();
        let hwmon = sys.path().join("class/hwmon/hwmon0");
        let iio = sys.path().join("bus/iio/devices/iio:device0");
        std::fs::create_dir_all(&hwmon).unwrap();
        std::fs::create_dir_all(&iio).unwrap();
        std::fs::write(hwmon.join("temp1_input"), "42500\n").unwrap();
        std::fs::write(hwmon.join("in0_input"), "3300\n").unwrap();
        std::fs::write(hwmon.join("fan1_input"), "1200\n").unwrap();
        std::fs::write(iio.join("in_illuminance_input"), "250\n").unwrap();
        // A raw channel with offset and scale, as a BME280 driver gives it.
        std::fs::write(iio.join("in_temp_raw"), "1000\n").unwrap();
        std::fs::write(iio.join("in_temp_offset"), "10\n").unwrap();
        std::fs::write(iio.join("in_temp_scale"), "0.5\n").unwrap();
        // A processed one.
        std::fs::write(iio.join("in_pressure_input"), "101.325\n").unwrap();

        let read = async |source, path: &str| {
            let sensor = SysfsSensor::new(sys.path(), source, path);
            assert_eq!(sensor.reading(), None, "nothing before the first sample");
            let value = sensor.sample().await.unwrap();
            assert_eq!(sensor.reading(), Some(value));
            (value, sensor.unit())
        };
        let close = |(got, unit): (f64, &str), want: f64, want_unit: &str| {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
            assert_eq!(unit, want_unit);
        };
        close(
            read(SensorSource::Hwmon, "hwmon0/temp1_input").await,
            315.65,
            "kelvin",
        );
        close(
            read(SensorSource::Hwmon, "hwmon0/in0_input").await,
            3.3,
            "volt",
        );
        close(
            read(SensorSource::Hwmon, "hwmon0/fan1_input").await,
            20.0,
            "hertz",
        );
        close(
            read(SensorSource::Iio, "iio:device0/in_temp").await,
            273.655,
            "kelvin",
        );
        close(
            read(SensorSource::Iio, "iio:device0/in_pressure").await,
            101_325.0,
            "pascal",
        );
        close(
            read(SensorSource::Iio, "iio:device0/in_illuminance").await,
            250.0,
            "raw",
        );

        // Missing or garbage: an error naming the file, never a made-up number.
        std::fs::write(hwmon.join("temp2_input"), "hot\n").unwrap();
        let garbage = SysfsSensor::new(sys.path(), SensorSource::Hwmon, "hwmon0/temp2_input");
        assert!(garbage.sample().await.unwrap_err().contains("temp2_input"));
        let missing = SysfsSensor::new(sys.path(), SensorSource::Iio, "iio:device1/in_temp");
        assert!(missing.sample().await.is_err());
        assert_eq!(missing.reading(), None);
    }
}
