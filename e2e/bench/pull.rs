//! Pull benchmark: a fresh pull of a 2 MB and a 50 MB module from the local registry, and
//! the cached lookup that every later pod start pays. Prints JSON and writes it to
//! `e2e/bench/results/pull.json`. It asserts no times; it fails if a pull does not happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::Registry;
use e2e::oci_layout::wasm_module_of_size;
use oci::push::{PushFormat, push};
use oci::{PullPolicy, PullRequest, Puller, PullerConfig, RegistryAuth, Store};
use serde_json::json;

const FRESH_RUNS: usize = 5;
const CACHED_RUNS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let work = tempfile::tempdir()?;
    let mut results = Vec::new();
    for (label, size) in [("2MB", 2 * 1024 * 1024), ("50MB", 50 * 1024 * 1024)] {
        let file = work.path().join(format!("{label}.wasm"));
        let wasm = wasm_module_of_size(size);
        std::fs::write(&file, &wasm)?;
        let image = format!(
            "{}/bench/module-{}:v1",
            registry.host(),
            label.to_lowercase()
        );
        push(
            &file,
            &image,
            PushFormat::Cncf,
            &RegistryAuth::Anonymous,
            true,
        )
        .await?;
        let request = PullRequest {
            image: &image,
            policy: PullPolicy::IfNotPresent,
            auth: RegistryAuth::Anonymous,
            entry: None,
            on_verified: None,
        };

        let mut fresh = Vec::new();
        let mut puller = None;
        for run in 0..FRESH_RUNS {
            let store = Arc::new(Store::open(
                &work.path().join(format!("store-{label}-{run}")),
            )?);
            let p = Puller::new(
                store,
                PullerConfig {
                    insecure_registries: vec![registry.host()],
                    ..Default::default()
                },
            );
            let started = Instant::now();
            let artifact = p.pull(&request).await?;
            fresh.push(started.elapsed());
            anyhow::ensure!(
                std::fs::metadata(&artifact.wasm_path)?.len() == wasm.len() as u64,
                "pulled artifact has the wrong size"
            );
            puller = Some(p);
        }
        let puller = puller.ok_or_else(|| anyhow::anyhow!("no pull ran"))?;
        let mut cached = Vec::new();
        for _ in 0..CACHED_RUNS {
            let started = Instant::now();
            puller.pull(&request).await?;
            cached.push(started.elapsed());
        }
        results.push(json!({
            "artifact": label,
            "bytes": wasm.len(),
            "fresh_pull_ms": summary(&mut fresh),
            "cached_lookup_ms": summary(&mut cached),
        }));
    }
    let report = json!({
        "benchmark": "oci-pull",
        "registry": "docker-registry (Debian) on 127.0.0.1, plain HTTP",
        "cpus": std::thread::available_parallelism()?.get(),
        "results": results,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/pull.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

fn summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 1e2;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({"runs": samples.len(), "p50": ms(at(0.5)), "p99": ms(at(0.99)), "min": ms(samples[0]), "max": ms(at(1.0))})
}
