//! The cost of a host call from a guest to a granted device: the thermostat demo's `bench N`
//! mode, run through the real path (the WASI provider with the peripherals extension linked,
//! beside the peripherals provider, pulled from a local registry as on a node), times N GPIO
//! writes to the simulated `fan` line and N I2C write-read transactions (a temperature read)
//! on the simulated TMP102, in Cranelift's code.
//!
//! Prints JSON and writes `e2e/bench/results/peripherals.json`. Asserts no times; fails if
//! the guest does not exit 0 or report. Argument: calls per kind (default 100000).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use kubelet::{ImageRequest, PodKey, Provider, WithDevices};
use peripherals_provider::{DeviceSpec, Peripherals, resource_name};
use wasi_provider::{Tiering, WasiProvider, WasiProviderConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: u64 = std::env::args().nth(1).map_or(Ok(100_000), |n| n.parse())?;
    let work = tempfile::tempdir()?;
    let (registry, image) = e2e::demos::bench_registry("thermostat").await?;

    let specs = ["fan=gpio:sim:17:out", "temp=i2c:sim:tmp102@0x48"]
        .iter()
        .map(|s| DeviceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let peripherals = Arc::new(Peripherals::new(&specs)?);
    let wasi = WasiProvider::with_extensions(
        &WasiProviderConfig {
            cache_dir: work.path().join("cache"),
            store_dir: work.path().join("store"),
            max_pods: 10,
            insecure_registries: vec![registry.host()],
            tiering: Tiering::Optimised,
            egress: Default::default(),
            serve_address: std::net::Ipv4Addr::LOCALHOST.into(),
            pods_memory_bytes: None,
            keep_memory_available_bytes: 0,
        },
        vec![peripherals.clone()],
    )?;
    let provider = WithDevices::new(wasi, peripherals);
    let pod = PodKey {
        namespace: "default".into(),
        name: "bench".into(),
        uid: "bench".into(),
    };
    let pulled = provider
        .pull(ImageRequest {
            pod: &pod,
            image: &image,
            pull_policy: None,
            pull_secrets: &[],
            command: &[],
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))?;
    let devices = [(resource_name("fan"), 1), (resource_name("temp"), 1)].into();
    let mut start = kubelet::testing::container_start(work.path(), "bench", Vec::new(), devices)
        .await
        .context("set up the container")?;
    start.args = vec!["bench".into(), calls.to_string()];
    let log = work.path().join("bench.log");
    let task = provider
        .start(&pulled, start)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))?;
    let exit = task.await?;
    let printed = read_when_flushed(&log).await?;
    if exit.exit_code != 0 {
        bail!("the guest exited {exit:?}:\n{printed}");
    }
    let line = printed
        .lines()
        .find_map(|line| line.split_once(" F {").map(|(_, rest)| format!("{{{rest}")))
        .with_context(|| format!("the guest did not report:\n{printed}"))?;
    let measured: serde_json::Value = serde_json::from_str(&line)?;
    let per_second = |kind: &str| {
        let mean = measured[kind]["mean_ns"].as_f64().unwrap_or(0.0);
        if mean > 0.0 {
            (1e9 / mean).round()
        } else {
            0.0
        }
    };
    let report = serde_json::json!({
        "calls": calls,
        "gpio_set": measured["gpio_set"],
        "gpio_set_per_second": per_second("gpio_set"),
        "i2c_write_read": measured["i2c_write_read"],
        "i2c_write_read_per_second": per_second("i2c_write_read"),
        "compiler": "cranelift",
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/peripherals.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

/// The container log once its writer has flushed the guest's last line: the writer task is
/// the helper's, so wait (bounded) for the report to appear.
async fn read_when_flushed(log: &Path) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let printed = tokio::fs::read_to_string(log).await.unwrap_or_default();
        if printed.contains("\"calls\"") || tokio::time::Instant::now() >= deadline {
            return Ok(printed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
