//! Peripherals end to end: a node started with `--device` advertises each device as an
//! extended resource; the thermostat demo, granted the simulated temperature sensor and fan
//! line, switches the fan as the temperature crosses its ConfigMap's threshold (asserted
//! from outside, through the simulator's files); a pod without the grant cannot touch
//! either device; a second pod asking for a held device waits, and runs once it is free.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::demos::push_demo;
use e2e::status::{condition, phase};
use e2e::{WasmCluster, WasmletOptions, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::Node;

const FAN: &str = "peripherals.wasmlet.dev/fan";
const TEMP: &str = "peripherals.wasmlet.dev/temp";

/// A pod running the thermostat image with `args`, asking for `devices`.
fn thermostat_pod(name: &str, image: &str, args: &[&str], devices: &[&str]) -> String {
    let limits: String = devices
        .iter()
        .map(|d| format!("\n        {d}: \"1\""))
        .collect();
    let resources = if devices.is_empty() {
        String::new()
    } else {
        format!("\n    resources:\n      limits:{limits}")
    };
    let args = args
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    wasm_pod(
        name,
        &format!(
            r#"  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: app
    image: {image}
    args: [{args}]{resources}
    volumeMounts:
    - {{name: config, mountPath: /etc/thermostat}}
  volumes:
  - name: config
    configMap: {{name: thermostat}}
"#
        ),
    )
}

/// Waits until the simulator's file for `label` reads `want`.
async fn until_file(dir: &Path, label: &str, want: &str, timeout: Duration) {
    let path = dir.join(label);
    wait_for(&format!("{label} to read {want}"), timeout, || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move {
            if text.trim() == want {
                Ok(Some(()))
            } else {
                Err(format!("{label} reads {:?}", text.trim()))
            }
        }
    })
    .await
    .unwrap();
}

fn set_temperature(dir: &Path, celsius: f64) {
    std::fs::write(dir.join("temp"), format!("{celsius}\n")).unwrap();
}

/// A cluster whose node has the simulated fan line and temperature sensor, and a hwmon
/// sensor `board` (42.5 °C) in a fake sysfs tree (kept by the returned directory); the
/// thermostat image pushed, and the thermostat's ConfigMap (threshold 25 °C).
async fn devices_cluster(node: &str) -> (WasmCluster, String, tempfile::TempDir) {
    let sysfs = tempfile::tempdir().unwrap();
    let hwmon = sysfs.path().join("class/hwmon/hwmon0");
    std::fs::create_dir_all(&hwmon).unwrap();
    std::fs::write(hwmon.join("temp1_input"), "42500\n").unwrap();
    let cluster = WasmCluster::start_with_options(WasmletOptions {
        devices: vec![
            "fan=gpio:sim:17:out".into(),
            "temp=i2c:sim:tmp102@0x48".into(),
            "board=sensor:hwmon:hwmon0/temp1_input".into(),
            "console=serial:sim".into(),
            "button=gpio:sim:4:in".into(),
        ],
        sysfs_root: Some(sysfs.path().to_path_buf()),
        ..WasmletOptions::named(node)
    })
    .await
    .unwrap();
    let image = push_demo(&cluster.registry.host(), "thermostat").unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "configmap",
            "thermostat",
            "--from-literal=threshold=25.0",
        ])
        .unwrap();
    (cluster, image, sysfs)
}

/// Applies `manifest` and waits for pod `name` to reach `want`.
async fn run_until(cluster: &WasmCluster, manifest: &str, name: &str, want: &str) {
    cluster.kubectl.apply(manifest).unwrap();
    cluster
        .wait_pod(name, want, Duration::from_secs(60), |p| phase(p) == want)
        .await
        .unwrap();
}

/// Applies `manifest` and waits for pod `name` to be unschedulable; its condition's message.
async fn unschedulable(cluster: &WasmCluster, manifest: &str, name: &str) -> String {
    cluster.kubectl.apply(manifest).unwrap();
    let pending = cluster
        .wait_pod(name, "unschedulable", Duration::from_secs(30), |p| {
            condition(p, "PodScheduled").as_deref() == Some("False")
        })
        .await
        .unwrap();
    pending
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default()
}

/// Waits until the node's allocatable has `resource` at `want`.
async fn until_allocatable(cluster: &WasmCluster, resource: &str, want: Option<&str>) {
    wait_for(
        &format!("{resource} in allocatable to be {want:?}"),
        Duration::from_secs(40),
        || {
            let node: anyhow::Result<Node> =
                cluster
                    .kubectl
                    .get_json(&["get", "node", &cluster.node.name]);
            async move {
                let node = node.map_err(|e| e.to_string())?;
                let quantity = node
                    .status
                    .and_then(|s| s.allocatable)
                    .and_then(|a| a.get(resource).map(|q| q.0.clone()));
                if quantity.as_deref() == want {
                    Ok(Some(()))
                } else {
                    Err(format!("{resource} is {quantity:?}"))
                }
            }
        },
    )
    .await
    .unwrap();
}

/// One line from a serial port's outside end (blocking reads, on a blocking thread), within
/// 30 s; the port comes back for the next exchange.
async fn read_line(mut port: std::fs::File) -> (String, std::fs::File) {
    let reading = tokio::task::spawn_blocking(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            let n = std::io::Read::read(&mut port, &mut byte).unwrap();
            line.extend_from_slice(&byte[..n]);
        }
        (String::from_utf8_lossy(&line).into_owned(), port)
    });
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("a line from the serial port within 30 s")
        .unwrap()
}

async fn log_contains(cluster: &WasmCluster, pod: &str, text: &str) -> String {
    wait_for(
        &format!("{pod}'s log to say {text:?}"),
        Duration::from_secs(20),
        || {
            let log = cluster.kubectl.run(&["logs", pod]);
            async move {
                let log = log.map_err(|e| e.to_string())?;
                Ok(log.contains(text).then_some(log.clone()))
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_thermostat_drives_its_fan_and_no_other_pod_touches_its_devices() {
    let (cluster, image, _sysfs) = devices_cluster("edge-devices").await;
    let kubectl = &cluster.kubectl;
    let sim: PathBuf = cluster.node.data_dir().join("devices");

    // Advertised, in capacity and allocatable, one of each.
    let node: Node = kubectl.get_json(&["get", "node", "edge-devices"]).unwrap();
    let status = node.status.unwrap_or_default();
    for resource in [FAN, TEMP] {
        for (what, list) in [
            ("capacity", &status.capacity),
            ("allocatable", &status.allocatable),
        ] {
            let quantity = list
                .as_ref()
                .and_then(|l| l.get(resource))
                .map(|q| q.0.as_str());
            assert_eq!(quantity, Some("1"), "{resource} in {what}");
        }
    }

    until_file(&sim, "temp", "21.0", Duration::from_secs(10)).await;
    let thermostat = thermostat_pod("thermostat", &image, &[], &[FAN, TEMP]);
    run_until(&cluster, &thermostat, "thermostat", "Running").await;
    log_contains(&cluster, "thermostat", "thermostat: granted fan,temp;").await;
    log_contains(&cluster, "thermostat", "threshold 25.0 °C").await;
    until_file(&sim, "fan", "0", Duration::from_secs(5)).await;

    // Hotter than the threshold: the fan goes on; cooler: off again.
    set_temperature(&sim, 27.5);
    until_file(&sim, "fan", "1", Duration::from_secs(5)).await;
    log_contains(
        &cluster,
        "thermostat",
        "27.50 °C: fan on (threshold 25.0 °C)",
    )
    .await;
    set_temperature(&sim, 22.0);
    until_file(&sim, "fan", "0", Duration::from_secs(5)).await;
    log_contains(&cluster, "thermostat", "22.00 °C: fan off").await;

    // The sensor unplugged (its file removed): it leaves the node's allocatable, its pod is
    // told, and the guest's reads fail; back, and all three return.
    std::fs::remove_file(sim.join("temp")).unwrap();
    until_allocatable(&cluster, TEMP, Some("0")).await;
    cluster
        .wait_event("thermostat", "DeviceUnplugged", Duration::from_secs(20))
        .await
        .unwrap();
    log_contains(
        &cluster,
        "thermostat",
        "cannot read the sensor: ErrorCode::Bus",
    )
    .await;
    set_temperature(&sim, 21.0);
    until_allocatable(&cluster, TEMP, Some("1")).await;
    cluster
        .wait_event("thermostat", "DeviceReturned", Duration::from_secs(20))
        .await
        .unwrap();
    log_contains(&cluster, "thermostat", "the sensor answers again").await;

    // A pod granted nothing cannot open either device, and the fan stays as it was.
    let intruder = thermostat_pod("intruder", &image, &["probe", "fan", "temp"], &[]);
    run_until(&cluster, &intruder, "intruder", "Succeeded").await;
    let log = kubectl.run(&["logs", "intruder"]).unwrap();
    for line in [
        "fan: i2c refused: OpenError::NotGranted",
        "fan: gpio output refused: GpioError::PinNotAllowed",
        "temp: i2c refused: OpenError::NotGranted",
        "temp: gpio output refused: GpioError::PinNotAllowed",
    ] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }
    assert!(!log.contains("opened"), "{log}");
    assert_eq!(
        std::fs::read_to_string(sim.join("fan")).unwrap().trim(),
        "0"
    );

    // A second pod asking for the held fan is not scheduled while the thermostat holds it.
    let second = thermostat_pod("second", &image, &["probe", "fan"], &[FAN]);
    let message = unschedulable(&cluster, &second, "second").await;
    assert!(
        message.contains(&format!("Insufficient {FAN}")),
        "{message}"
    );

    // Once the thermostat is gone, its fan is free: the second pod gets it, and so may
    // drive it (its probe opens it), while it still may not open the sensor.
    kubectl
        .run(&[
            "delete",
            "pod",
            "thermostat",
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    cluster
        .wait_pod("second", "Succeeded", Duration::from_secs(60), |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    let log = kubectl.run(&["logs", "second"]).unwrap();
    assert!(log.contains("fan: gpio output opened"), "{log}");
    assert!(
        log.contains("fan: i2c refused: OpenError::NotGranted"),
        "{log}"
    );
}

#[tokio::test]
async fn device_requests_the_node_cannot_meet_are_refused_with_a_reason() {
    let (cluster, image, _sysfs) = devices_cluster("edge-devices-bad").await;

    // A device this node does not have: never scheduled.
    let pump = thermostat_pod("pump", &image, &[], &["peripherals.wasmlet.dev/pump"]);
    let message = unschedulable(&cluster, &pump, "pump").await;
    assert!(
        message.contains("Insufficient peripherals.wasmlet.dev/pump"),
        "{message}"
    );

    // Granted the bus: an address nobody answers on is the proposal's no-acknowledge. Granted
    // the hwmon sensor: it reads in kelvin, through sysfs; ungranted, it is refused.
    let prober = thermostat_pod(
        "prober",
        &image,
        &["probe", "temp", "board", "fan"],
        &[TEMP, "peripherals.wasmlet.dev/board"],
    );
    run_until(&cluster, &prober, "prober", "Succeeded").await;
    let log = cluster.kubectl.run(&["logs", "prober"]).unwrap();
    for line in [
        "temp: i2c opened, read [21, 0]",
        "temp: address 0x10: ErrorCode::NoAcknowledge(NoAcknowledgeSource::Address)",
        "temp: transaction read [[21, 0]]",
        // Operations that alias one buffer are refused before the node copies any: it would
        // otherwise try to allocate 200 GB, and die; 64 (the most operations) are refused for
        // their length, 1 MiB each.
        "temp: 200000 aliased writes: overrun",
        "temp: 64 aliased writes: overrun",
        "temp: gpio output refused: GpioError::PinNotAllowed",
        "temp: sensor reads 294.15 kelvin",
        "board: sensor reads 315.65 kelvin",
        "board: i2c refused: OpenError::NotGranted",
        "fan: sensor refused: OpenError::NotGranted",
    ] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }

    // The serial port: a pty whose other end the test opens, as one opens /dev/ttyUSB0. The
    // guest greets it, waits for a line without spinning, and logs what it heard.
    let tty = std::fs::read_to_string(cluster.node.data_dir().join("devices/console")).unwrap();
    let talker = thermostat_pod(
        "talker",
        &image,
        &["serial", "console"],
        &["peripherals.wasmlet.dev/console"],
    );
    cluster.kubectl.apply(&talker).unwrap();
    let outside = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tty.trim())
        .unwrap();
    let (heard, mut outside) = read_line(outside).await;
    assert_eq!(heard, "hello from the guest\n");
    std::io::Write::write_all(&mut outside, b"hi guest\n").unwrap();
    let (heard, _) = read_line(outside).await;
    assert_eq!(heard, "bye\n");
    cluster
        .wait_pod("talker", "Succeeded", Duration::from_secs(30), |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    log_contains(&cluster, "talker", "console: got \"hi guest\"").await;

    // An input line: the guest blocks on a rising-edge pollable, using no CPU while it waits,
    // and wakes on each press driven from outside.
    let devices = cluster.node.data_dir().join("devices");
    let presser = thermostat_pod(
        "presser",
        &image,
        &["button", "button", "2"],
        &["peripherals.wasmlet.dev/button"],
    );
    run_until(&cluster, &presser, "presser", "Running").await;
    log_contains(&cluster, "presser", "button: waiting for 2 presses").await;
    // Two seconds of waiting by the node's own clock (/stats/summary), in which a guest that
    // polled the line would burn most of a core: this one barely registers.
    let (before, at) = cluster.cpu_by_pod().unwrap()["presser"];
    let (after, _) = wait_for("2 s of the guest waiting", Duration::from_secs(20), || {
        let cpu = cluster.cpu_by_pod();
        async move {
            let (nanos, time) = cpu.map_err(|e| e.to_string())?["presser"];
            let waited = time.as_millisecond() - at.as_millisecond() >= 2000;
            Ok(waited.then_some((nanos, time)))
        }
    })
    .await
    .unwrap();
    let spent_ms = after.saturating_sub(before) / 1_000_000;
    assert!(
        spent_ms < 50,
        "a waiting guest used {spent_ms} ms of CPU in 2 s"
    );
    for n in 1..=2 {
        std::fs::write(devices.join("button"), "1\n").unwrap();
        log_contains(&cluster, "presser", &format!("button: pressed ({n})")).await;
        std::fs::write(devices.join("button"), "0\n").unwrap();
        log_contains(&cluster, "presser", &format!("button: released ({n})")).await;
    }
    cluster
        .wait_pod("presser", "Succeeded", Duration::from_secs(30), |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();

    // Bound to the node directly, past the scheduler, while the bus is held: the node's
    // own admission refuses it, with the kubelet's reason.
    let holder = thermostat_pod("holder", &image, &[], &[FAN, TEMP]);
    run_until(&cluster, &holder, "holder", "Running").await;
    let bound = thermostat_pod("bound", &image, &["probe", "temp"], &[TEMP])
        .replace("spec:\n", "spec:\n  nodeName: edge-devices-bad\n");
    run_until(&cluster, &bound, "bound", "Failed").await;
    let status = cluster.pod("bound").unwrap().status.unwrap_or_default();
    assert_eq!(
        status.reason.as_deref(),
        Some("OutOfperipherals.wasmlet.dev/temp"),
        "{:?}",
        status.message
    );
}
