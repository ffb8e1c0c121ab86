//! Pod benchmark: bound → Running latency with the image and compiled module cached, agent
//! RSS idle and with N idle pods, and the time to delete them all. Pods are created already
//! bound (`spec.nodeName`), so create → Running, observed on a watch, is bound → Running.
//! Prints JSON and writes `e2e/bench/results/pods.json`. Asserts no times; fails if a pod
//! never runs. `N` is the first argument (default 100).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, wait_for, wasm_pod};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let cluster = WasmCluster::start("bench", (count + 10) as u32).await?;
    let ticker = push_demo(&cluster.registry.host(), "ticker")?;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(cluster.plane.client().await?);
    let manifest = |name: &str| -> anyhow::Result<Pod> {
        let yaml = wasm_pod(
            name,
            &format!(
                "  nodeName: bench\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {ticker}\n    env: [{{name: INTERVAL_MS, value: \"600000\"}}]\n"
            ),
        );
        Ok(serde_yaml::from_str(&yaml)?)
    };
    // The first pod pulls and compiles; it is the "fresh module" figure.
    let mut watch = pods
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();
    let fresh = match time_to_running(&pods, &mut watch, vec![manifest("warm-up")?]).await {
        Ok(fresh) => fresh,
        Err(err) => {
            let pod = cluster.pod("warm-up").map(|p| e2e::status_summary(&p));
            anyhow::bail!(
                "{err:#}; warm-up pod: {pod:?}\nwasmlet log:\n{}",
                cluster.node.log_tail(30)
            );
        }
    };
    let idle_rss = rss_kib(cluster.node.pid())?;

    let batch: Vec<Pod> = (0..count)
        .map(|i| manifest(&format!("idle-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let mut latencies = time_to_running(&pods, &mut watch, batch).await?;
    let all_running = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // let allocator arenas settle before reading RSS
    let loaded_rss = rss_kib(cluster.node.pid())?;

    let deleting = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for("every pod to be gone", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(left.items.is_empty().then_some(()))
        }
    })
    .await?;
    let deleted = deleting.elapsed();

    latencies.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 1e2;
    let at = |q: f64| ms(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    let report = json!({
        "benchmark": "pods",
        "wasmlet_build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cpus": std::thread::available_parallelism()?.get(),
        "pods": count,
        "fresh_module_create_to_running_ms": ms(fresh[0]),
        "observed_by": "pod watch",
        "cached_create_to_running_ms": {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)},
        "all_running_after_ms": ms(all_running),
        "wasmlet_rss_kib": {"idle_with_1_pod": idle_rss, "with_pods": loaded_rss,
                             "per_extra_pod": (loaded_rss.saturating_sub(idle_rss)) as f64 / count as f64},
        "delete_all_ms": ms(deleted),
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/pods.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

/// Creates `batch` and returns, per pod, the time from its create call returning to the first
/// watch event that shows it Running.
async fn time_to_running(
    pods: &kube::Api<Pod>,
    watch: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
    batch: Vec<Pod>,
) -> anyhow::Result<Vec<Duration>> {
    let mut created: HashMap<String, Instant> = HashMap::new();
    for pod in &batch {
        pods.create(&PostParams::default(), pod).await?;
        created.insert(
            pod.metadata.name.clone().unwrap_or_default(),
            Instant::now(),
        );
    }
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while latencies.len() < batch.len() {
        let event = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => anyhow::bail!(
                "the pod watch ended after {} of {} pods",
                latencies.len(),
                batch.len()
            ),
            Err(_) => anyhow::bail!(
                "only {} of {} pods reached Running",
                latencies.len(),
                batch.len()
            ),
        };
        let seen = Instant::now();
        let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
            continue;
        };
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        // Only a Running sighting ends a pod's clock; earlier events leave it ticking.
        if running && let Some(at) = pod.metadata.name.as_ref().and_then(|n| created.remove(n)) {
            latencies.push(seen.saturating_duration_since(at));
        }
    }
    Ok(latencies)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}
