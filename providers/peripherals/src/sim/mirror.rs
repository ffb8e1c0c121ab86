//! The simulator's window to the outside: one file per simulated device in a directory, so
//! tests, demos and people can watch and drive the devices with `cat` and `echo`.
//!
//! - an output line's file holds `0` or `1`, rewritten (atomically) when the guest changes it;
//! - an input line's file is read: write `1` into it to drive the line high;
//! - a temperature sensor's file holds degrees Celsius (`21.5`): write a new value into it.
//!
//! Polled every [`PERIOD`] by one task, so device calls never touch the filesystem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::registry::{Device, Peripherals};

/// How often files and devices are brought in step.
pub const PERIOD: Duration = Duration::from_millis(50);

/// Keeps `dir` and the simulated devices in step until `cancel` fires. A device whose file
/// is removed is unplugged (left out of the node's capacity; calls to it fail; its pod gets
/// an event) until the file is back.
pub async fn run(peripherals: Arc<Peripherals>, dir: PathBuf, cancel: CancellationToken) {
    if let Err(err) = tokio::fs::create_dir_all(&dir).await {
        return warn!(dir = %dir.display(), %err, "cannot create the device simulator's directory");
    }
    let mut written: HashMap<String, &'static str> = HashMap::new();
    let mut first = true;
    let mut ticks = tokio::time::interval(PERIOD);
    while crate::next_tick(&mut ticks, &cancel).await {
        for (label, device) in peripherals.devices() {
            if !device.is_simulated() {
                // The kernel's: sensors are read by `sysfs::run`, lines and buses are real.
                continue;
            }
            let path = dir.join(label);
            if first && let Device::Serial(port) = device.as_ref() {
                // A pty is new with every start: the file from a last run names another.
                write_atomically(&path, &format!("{}\n", port.path().display())).await;
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                // Made on the first pass; gone later means unplugged.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && first => {
                    let initial = initial(device);
                    write_atomically(&path, &initial).await;
                    initial
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    peripherals.set_present(label, false);
                    written.remove(label);
                    continue;
                }
                Err(_) => continue,
            };
            peripherals.set_present(label, true);
            match device.as_ref() {
                Device::GpioOut(line) => {
                    let level = if line.is_high() { "1\n" } else { "0\n" };
                    if written.get(label).copied() != Some(level)
                        && write_atomically(&path, level).await
                    {
                        written.insert(label.clone(), level);
                    }
                }
                Device::GpioIn(line) => match text.trim() {
                    "1" => line.observe(true),
                    "0" => line.observe(false),
                    _ => {}
                },
                // Skipped above, or nothing to do: a port's file names its pty.
                Device::Sensor(_) | Device::Serial(_) => {}
                Device::I2c(bus) => {
                    if let crate::i2c::Bus::Simulated(chip) = bus.as_ref()
                        && let Some(celsius) =
                            text.trim().parse::<f64>().ok().filter(|c| c.is_finite())
                    {
                        chip.set_celsius(celsius);
                    }
                }
            }
        }
        first = false;
    }
}

/// What a device's file holds when the simulator starts.
fn initial(device: &Device) -> String {
    match device {
        Device::GpioOut(_) | Device::GpioIn(_) => "0\n".into(),
        Device::I2c(_) => "21.0\n".into(),
        Device::Serial(port) => format!("{}\n", port.path().display()),
        Device::Sensor(_) => String::new(),
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a value.
async fn write_atomically(path: &Path, text: &str) -> bool {
    let temporary = path.with_extension("tmp");
    let written = tokio::fs::write(&temporary, text).await.is_ok()
        && tokio::fs::rename(&temporary, path).await.is_ok();
    if !written {
        warn!(path = %path.display(), "cannot write the simulated device's state");
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use peripherals_spec::DeviceSpec;

    async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(PERIOD).await;
        }
    }

    #[tokio::test]
    async fn the_outside_sees_outputs_and_drives_inputs_and_the_temperature() {
        let specs: Vec<DeviceSpec> = [
            "fan=gpio:sim:17:out",
            "button=gpio:sim:4:in",
            "temp=i2c:sim:tmp102@0x48",
        ]
        .iter()
        .map(|s| DeviceSpec::parse(s).unwrap())
        .collect();
        let peripherals = Arc::new(Peripherals::new(&specs).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            peripherals.clone(),
            dir.path().to_path_buf(),
            cancel.clone(),
        ));
        let file = |label: &str| dir.path().join(label);
        let read = async |label: &str| {
            tokio::fs::read_to_string(file(label))
                .await
                .unwrap_or_default()
        };
        until("initial files", async || {
            read("fan").await == "0\n"
                && read("button").await == "0\n"
                && read("temp").await == "21.0\n"
        })
        .await;

        let Device::GpioOut(fan) = peripherals.devices()["fan"].as_ref() else {
            panic!("fan is an output")
        };
        fan.set(true).unwrap();
        until("the fan's file follows the line", async || {
            read("fan").await == "1\n"
        })
        .await;

        let Device::GpioIn(button) = peripherals.devices()["button"].as_ref() else {
            panic!("button is an input")
        };
        tokio::fs::write(file("button"), "1\n").await.unwrap();
        until("the button follows its file", async || button.is_high()).await;

        let Device::I2c(bus) = peripherals.devices()["temp"].as_ref() else {
            panic!("temp is a bus")
        };
        let crate::i2c::Bus::Simulated(temp) = bus.as_ref() else {
            panic!("temp is simulated")
        };
        tokio::fs::write(file("temp"), "30.5").await.unwrap();
        until("the sensor follows its file", async || {
            temp.celsius() == 30.5
        })
        .await;
        // Garbage in the file leaves the last good reading.
        tokio::fs::write(file("temp"), "warm").await.unwrap();
        // Two passes of the mirror later (each seen through the fan's file, which it writes
        // before it reads the sensor's), the garbage has been read and ignored.
        for level in [false, true] {
            fan.set(level).unwrap();
            let want = if level { "1\n" } else { "0\n" };
            until("a pass of the mirror", async || read("fan").await == want).await;
        }
        assert_eq!(temp.celsius(), 30.5);

        // Removing a device's file unplugs it: out of the node's resources, calls fail; the
        // file back plugs it in again.
        use kubelet::DeviceProvider;
        tokio::fs::remove_file(file("temp")).await.unwrap();
        until("the sensor is unplugged", async || {
            !peripherals.devices()["temp"].is_present()
        })
        .await;
        let temp_count = || {
            peripherals.extended_resources()["peripherals.wasmlet.dev/temp"]
                .0
                .clone()
        };
        assert_eq!(temp_count(), "0");
        let read = vec![crate::i2c::Operation::Read(2)];
        assert!(bus.clone().transaction(0x48, read).await.is_err());
        tokio::fs::write(file("temp"), "22.5").await.unwrap();
        until("the sensor is back", async || {
            peripherals.devices()["temp"].is_present()
        })
        .await;
        assert_eq!(temp_count(), "1");

        cancel.cancel();
        task.await.unwrap();
    }
}
