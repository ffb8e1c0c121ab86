//! What devices a host has, for `wasmlet devices`: hwmon inputs, IIO channels, I2C buses and
//! serial ports (ready to grant), and GPIO chips (whose lines are granted one by one). Reads sysfs and
//! /dev below configurable roots, so tests point it at fake trees. Blocking: call it off the
//! async runtime's threads.

use std::path::Path;

/// One device found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The `--device` spec that grants it, with a label to adapt (`None` if this build
    /// cannot grant it).
    pub spec: Option<String>,
    /// What it is, for a person.
    pub what: String,
}

/// The devices below `sysfs_root` (normally `/sys`) and `dev_root` (normally `/dev`), in a
/// stable order.
pub fn discover(sysfs_root: &Path, dev_root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for hwmon in entries(&sysfs_root.join("class/hwmon")) {
        let dir = sysfs_root.join("class/hwmon").join(&hwmon);
        let chip = read_trimmed(&dir.join("name")).unwrap_or_else(|| "?".into());
        for file in entries(&dir).into_iter().filter(|f| f.ends_with("_input")) {
            // The hwmon index keeps two chips of one name apart.
            let index = hwmon.trim_start_matches("hwmon");
            let label = format!("{chip}-{index}-{}", file.trim_end_matches("_input"));
            found.push(Found {
                spec: Some(format!("{}=sensor:hwmon:{hwmon}/{file}", label_of(&label))),
                what: format!("hwmon {chip} {file}"),
            });
        }
    }
    let iio = sysfs_root.join("bus/iio/devices");
    for device in entries(&iio) {
        let dir = iio.join(&device);
        let name = read_trimmed(&dir.join("name")).unwrap_or_else(|| "?".into());
        let channels: std::collections::BTreeSet<String> = entries(&dir)
            .into_iter()
            .filter(|f| f.starts_with("in_"))
            .filter_map(|f| {
                f.strip_suffix("_raw")
                    .or_else(|| f.strip_suffix("_input"))
                    .map(str::to_string)
            })
            .collect();
        let index = device.trim_start_matches("iio:device");
        for channel in channels {
            let label = format!("{name}-{index}-{}", channel.trim_start_matches("in_"));
            found.push(Found {
                spec: Some(format!(
                    "{}=sensor:iio:{device}/{channel}",
                    label_of(&label)
                )),
                what: format!("IIO {name} {channel}"),
            });
        }
    }
    for file in entries(dev_root) {
        let path = dev_root.join(&file).display().to_string();
        if file.starts_with("gpiochip") {
            let lines = gpiocdev::Chip::from_path(dev_root.join(&file))
                .and_then(|chip| chip.info())
                .map(|info| format!("{} lines \"{}\", ", info.num_lines, info.label))
                .unwrap_or_default();
            found.push(Found {
                spec: None,
                what: format!(
                    "{path} GPIO chip ({lines}granted a line at a time: LABEL=gpio:{file}:LINE:in|out)"
                ),
            });
        } else if file.starts_with("i2c-") {
            found.push(Found {
                spec: Some(format!("{}=i2c:{file}", label_of(&file))),
                what: format!("{path} I2C bus"),
            });
        } else if file.starts_with("ttyUSB")
            || file.starts_with("ttyACM")
            || file.starts_with("ttyAMA")
        {
            found.push(Found {
                spec: Some(format!("{}=serial:{file}", label_of(&file))),
                what: format!("{path} serial port"),
            });
        }
    }
    found
}

/// A DNS-1123 label made of `text`: lowercase, other characters as `-`, at most 63.
fn label_of(text: &str) -> String {
    let label: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    label.trim_matches('-').to_string()
}

/// The names in `dir`, sorted; none if it cannot be read.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use peripherals_spec::DeviceSpec;

    #[test]
    fn sensors_are_offered_as_specs_and_other_devices_listed() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let hwmon = sys.path().join("class/hwmon/hwmon0");
        let iio = sys.path().join("bus/iio/devices/iio:device0");
        std::fs::create_dir_all(&hwmon).unwrap();
        std::fs::create_dir_all(&iio).unwrap();
        std::fs::write(hwmon.join("name"), "cpu_thermal\n").unwrap();
        std::fs::write(hwmon.join("temp1_input"), "42000\n").unwrap();
        std::fs::write(hwmon.join("temp1_crit"), "90000\n").unwrap();
        std::fs::write(iio.join("name"), "bme280\n").unwrap();
        for file in ["in_temp_raw", "in_temp_scale", "in_pressure_input"] {
            std::fs::write(iio.join(file), "1\n").unwrap();
        }
        for file in ["gpiochip0", "i2c-1", "ttyUSB0", "null"] {
            std::fs::write(dev.path().join(file), "").unwrap();
        }

        let found = discover(sys.path(), dev.path());
        let specs: Vec<&str> = found.iter().filter_map(|f| f.spec.as_deref()).collect();
        assert_eq!(
            specs,
            [
                "cpu-thermal-0-temp1=sensor:hwmon:hwmon0/temp1_input",
                "bme280-0-pressure=sensor:iio:iio:device0/in_pressure",
                "bme280-0-temp=sensor:iio:iio:device0/in_temp",
                "i2c-1=i2c:i2c-1",
                "ttyusb0=serial:ttyUSB0",
            ]
        );
        // Every offered spec is one `--device` takes.
        for spec in &specs {
            DeviceSpec::parse(spec).unwrap();
        }
        let others: Vec<&str> = found
            .iter()
            .filter(|f| f.spec.is_none())
            .map(|f| f.what.as_str())
            .collect();
        assert_eq!(others.len(), 1, "{others:?}");
        assert!(
            others[0].ends_with(
                "gpiochip0 GPIO chip (granted a line at a time: LABEL=gpio:gpiochip0:LINE:in|out)"
            ),
            "{}",
            others[0]
        );
        // Roots that do not exist: nothing, no error.
        assert!(discover(&sys.path().join("nope"), &dev.path().join("nope")).is_empty());
    }
}
