//! The autonomy benchmark against the real control plane, with a wasmlet release build: for
//! each N (default 100 and 1000), N long-running pods on a node behind a link; the link is
//! cut and wasmlet restarted, and the benchmark measures the time from the new process's
//! start until every pod runs again from the local store (read with `wasmlet ps`, as an
//! operator on the device would); then the link is restored and it measures the time until
//! the API shows every pod Running and Ready with its restart counted. Also the store's size
//! on disk and the node's RSS. Prints JSON and writes `e2e/bench/results/autonomy.json`.
//! Asserts no times.

use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, WasmletOptions, rss_kib, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

const NODE: &str = "bench-autonomy";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts: Vec<usize> = match std::env::args().nth(1) {
        Some(arg) => arg.split(',').filter_map(|n| n.parse().ok()).collect(),
        None => vec![100, 1000],
    };
    let mut runs = Vec::new();
    for count in counts {
        let run = offline_restart(count).await?;
        eprintln!("{run}");
        runs.push(run);
    }
    let report = json!({ "offline_restart": runs });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/autonomy.json");
    std::fs::write(out, text + "\n")?;
    Ok(())
}

async fn offline_restart(count: usize) -> anyhow::Result<Value> {
    let mut cluster = WasmCluster::start_with_options(WasmletOptions {
        behind_link: true,
        max_pods: (count + 10) as u32,
        ..WasmletOptions::named(NODE)
    })
    .await?;
    let client = cluster.plane.client().await?;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(client);
    let ticker = push_demo(&cluster.registry.host(), "ticker")?;
    // Default pods: each mounts its service account token, which comes from the store when
    // the node restarts offline.
    for i in 0..count {
        let yaml = wasm_pod(
            &format!("idle-{i:04}"),
            &format!(
                "  nodeName: {NODE}\n  containers:\n  - name: app\n    image: {ticker}\n    env: [{{name: INTERVAL_MS, value: \"3600000\"}}]\n"
            ),
        );
        let pod: Pod = serde_yaml::from_str(&yaml)?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    all_ready(&pods, count, 0, Duration::from_secs(120 + count as u64 / 5)).await?;
    let store_bytes = store_bytes(cluster.node.data_dir());

    cluster.node.uplink()?.cut();
    cluster.node.restart_with(rustix::process::Signal::TERM)?;
    let started = Instant::now();
    wait_for(
        "every pod running again from the store",
        Duration::from_secs(60),
        || {
            let ps = cluster.node.tool(&["ps"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                // The new instances: Running, with the restart counted. The rows from
                // before the restart say Running too, with no restart.
                let running = ps
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .filter(|cols| cols.get(4) == Some(&"Running") && cols.get(5) == Some(&"1"))
                    .count();
                Ok((running >= count).then_some(()))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let offline_start_s = started.elapsed().as_secs_f64();
    let rss_kib = rss_kib(cluster.node.pid())?;

    cluster.node.uplink()?.restore();
    let restored = Instant::now();
    all_ready(&pods, count, 1, Duration::from_secs(120)).await?;
    let reconnect_s = restored.elapsed().as_secs_f64();
    Ok(json!({
        "pods": count,
        "offline_restart_all_running_s": round(offline_start_s),
        "reconnect_all_truthful_s": round(reconnect_s),
        "reconnect_measured_from": "the link's restore; the API answers at once, so this bounds the time after the first successful request",
        "store_bytes": store_bytes,
        "store_bytes_per_pod": store_bytes / count as u64,
        "rss_kib_after_offline_restart": rss_kib,
    }))
}

/// Waits until the API shows all `count` pods Running and Ready with `restarts` restarts.
async fn all_ready(
    pods: &kube::Api<Pod>,
    count: usize,
    restarts: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("all {count} pods Running and Ready with {restarts} restarts");
    wait_for(&what, timeout, || {
        let pods = pods.clone();
        async move {
            let listed = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let done = listed.items.iter().filter(|p| ready(p, restarts)).count();
            Ok((done == count).then_some(()))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))
}

/// Running and Ready, with this many restarts.
fn ready(pod: &Pod, restarts: i32) -> bool {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let counted = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().all(|c| c.restart_count == restarts));
    ready && counted
}

/// The store's files (database and write-ahead log) in bytes.
fn store_bytes(data_dir: &std::path::Path) -> u64 {
    ["store.db", "store.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
