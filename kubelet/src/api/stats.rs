//! `/stats/summary` and `/metrics/resource`: CPU and memory per node, pod and container, in
//! the shapes metrics-server reads (and so `kubectl top`).
//!
//! Container figures are what the provider accounted in each instance's
//! [`ContainerUsage`](crate::usage::ContainerUsage); node figures are the host's.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::Serialize;

use super::ApiState;
use crate::host;
use crate::pod::table::PodEntry;

/// Two CPU samples closer than this give no new rate; the previous one stands.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// CPU usage rates (`usageNanoCores`) from successive cumulative readings.
#[derive(Debug, Default)]
pub struct CpuRates {
    samples: Mutex<HashMap<String, Sample>>,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    cpu_nanos: u64,
    nano_cores: Option<u64>,
}

impl CpuRates {
    /// Records `cpu_nanos` for `key` at `now` and returns its rate, once there are two
    /// readings at least [`MIN_RATE_WINDOW`] apart.
    fn observe(&self, key: &str, cpu_nanos: u64, now: Instant) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match samples.get_mut(key) {
            Some(s) if now.duration_since(s.at) >= MIN_RATE_WINDOW => {
                let used = cpu_nanos.saturating_sub(s.cpu_nanos) as f64;
                s.nano_cores = Some((used / now.duration_since(s.at).as_secs_f64()) as u64);
                s.at = now;
                s.cpu_nanos = cpu_nanos;
                s.nano_cores
            }
            Some(s) => s.nano_cores,
            None => {
                samples.insert(
                    key.to_string(),
                    Sample {
                        at: now,
                        cpu_nanos,
                        nano_cores: None,
                    },
                );
                None
            }
        }
    }

    /// Forgets every key not in `live`.
    fn retain(&self, live: &HashSet<String>) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|k, _| live.contains(k));
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    node: NodeStats,
    pods: Vec<PodStats>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStats {
    node_name: String,
    cpu: CpuStats,
    memory: MemoryStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStats {
    pod_ref: PodReference,
    start_time: Timestamp,
    containers: Vec<ContainerStats>,
    cpu: CpuStats,
    memory: MemoryStats,
}

#[derive(Serialize)]
struct PodReference {
    name: String,
    namespace: String,
    uid: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStats {
    name: String,
    start_time: Timestamp,
    cpu: CpuStats,
    memory: MemoryStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CpuStats {
    time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_nano_cores: Option<u64>,
    usage_core_nano_seconds: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemoryStats {
    time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_bytes: Option<u64>,
    usage_bytes: u64,
    working_set_bytes: u64,
    rss_bytes: u64,
}

impl MemoryStats {
    fn of(time: Timestamp, bytes: u64, available_bytes: Option<u64>) -> Self {
        Self {
            time,
            available_bytes,
            usage_bytes: bytes,
            working_set_bytes: bytes,
            rss_bytes: bytes,
        }
    }
}

/// One pod's figures, summed from its running containers.
struct PodUsage<'a> {
    entry: &'a PodEntry,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    containers: Vec<ContainerUsageNow<'a>>,
}

/// One running container's figures at the time of the request.
struct ContainerUsageNow<'a> {
    name: &'a str,
    started: Timestamp,
    cpu_nanos: u64,
    memory_bytes: u64,
}

impl<'a> PodUsage<'a> {
    fn of(entry: &'a PodEntry) -> Self {
        let meta = &entry.pod.metadata;
        Self {
            entry,
            namespace: meta.namespace.as_deref().unwrap_or_default(),
            name: meta.name.as_deref().unwrap_or_default(),
            uid: meta.uid.as_deref().unwrap_or_default(),
            containers: entry
                .running
                .iter()
                .map(|(name, c)| ContainerUsageNow {
                    name,
                    started: c.started,
                    cpu_nanos: c.usage.cpu_nanos(),
                    memory_bytes: c.usage.memory_bytes(),
                })
                .collect(),
        }
    }

    fn cpu_nanos(&self) -> u64 {
        self.containers.iter().map(|c| c.cpu_nanos).sum()
    }

    fn memory_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_bytes).sum()
    }
}

#[derive(Default)]
struct NodeUsage {
    cpu_nanos: u64,
    memory_used: u64,
    memory_available: Option<u64>,
}

/// The host's CPU and memory figures: three reads of /proc, off the runtime's threads.
async fn node_usage() -> NodeUsage {
    tokio::task::spawn_blocking(|| {
        let total = host::memory_total_bytes().unwrap_or(0);
        let available = host::memory_available_bytes();
        NodeUsage {
            cpu_nanos: host::cpu_busy_nanos().unwrap_or(0),
            memory_used: available.map_or(0, |a| total.saturating_sub(a)),
            memory_available: available,
        }
    })
    .await
    .unwrap_or_default()
}

/// `GET /stats/summary`.
pub(super) async fn summary(State(state): State<ApiState>) -> impl IntoResponse {
    let now = Timestamp::now();
    let instant = Instant::now();
    let rates = &state.rates;
    let entries = state.pods.table.snapshot();
    let mut live = HashSet::new();
    let mut cpu = |key: String, nanos: u64| {
        let rate = rates.observe(&key, nanos, instant);
        live.insert(key);
        CpuStats {
            time: now,
            usage_nano_cores: rate,
            usage_core_nano_seconds: nanos,
        }
    };
    let node = node_usage().await;
    let node_stats = NodeStats {
        node_name: state.node_name.clone(),
        cpu: cpu("node".into(), node.cpu_nanos),
        memory: MemoryStats::of(now, node.memory_used, node.memory_available),
    };
    let pods = entries
        .iter()
        .map(PodUsage::of)
        .map(|pod| PodStats {
            pod_ref: PodReference {
                name: pod.name.into(),
                namespace: pod.namespace.into(),
                uid: pod.uid.into(),
            },
            start_time: pod.entry.started,
            containers: pod
                .containers
                .iter()
                .map(|c| ContainerStats {
                    name: c.name.into(),
                    start_time: c.started,
                    cpu: cpu(format!("{}/{}", pod.uid, c.name), c.cpu_nanos),
                    memory: MemoryStats::of(now, c.memory_bytes, None),
                })
                .collect(),
            cpu: cpu(pod.uid.to_string(), pod.cpu_nanos()),
            memory: MemoryStats::of(now, pod.memory_bytes(), None),
        })
        .collect();
    rates.retain(&live);
    Json(Summary {
        node: node_stats,
        pods,
    })
}

/// `GET /metrics/resource`: the Prometheus text metrics-server scrapes, with explicit
/// timestamps as the kubelet's carry.
pub(super) async fn resource_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let entries = state.pods.table.snapshot();
    let pods: Vec<PodUsage> = entries.iter().map(PodUsage::of).collect();
    let node = node_usage().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_resource_metrics(&pods, &node, Timestamp::now().as_millisecond()),
    )
}

fn render_resource_metrics(pods: &[PodUsage], node: &NodeUsage, millis: i64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} [ALPHA] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {millis}");
        }
    };
    let container_samples = |value: &dyn Fn(&ContainerUsageNow) -> f64| {
        pods.iter()
            .flat_map(|p| {
                p.containers.iter().map(move |c| {
                    (
                        labels(&[
                            ("container", c.name),
                            ("namespace", p.namespace),
                            ("pod", p.name),
                        ]),
                        value(c),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let pod_samples = |value: &dyn Fn(&PodUsage) -> f64| {
        pods.iter()
            .map(|p| {
                (
                    labels(&[("namespace", p.namespace), ("pod", p.name)]),
                    value(p),
                )
            })
            .collect::<Vec<_>>()
    };
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        container_samples(&|c| seconds(c.cpu_nanos)),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        container_samples(&|c| c.memory_bytes as f64),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        container_samples(&|c| c.started.as_millisecond() as f64 / 1e3),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        vec![(String::new(), seconds(node.cpu_nanos))],
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        vec![(String::new(), node.memory_used as f64)],
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pod_samples(&|p| seconds(p.cpu_nanos())),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pod_samples(&|p| p.memory_bytes() as f64),
    );
    let _ = writeln!(
        out,
        "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE scrape_error gauge");
    let _ = writeln!(out, "scrape_error 0");
    out
}

/// `{k="v",…}` with Prometheus escaping.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_readings_a_second_apart() {
        let rates = CpuRates::default();
        let t0 = Instant::now();
        assert_eq!(rates.observe("c", 0, t0), None);
        assert_eq!(
            rates.observe("c", 1_000, t0 + Duration::from_millis(10)),
            None
        );
        assert_eq!(
            rates.observe("c", 500_000_000, t0 + Duration::from_secs(2)),
            Some(250_000_000),
            "0.5 core-seconds over 2 s is a quarter core"
        );
        assert_eq!(
            rates.observe("c", 900_000_000, t0 + Duration::from_millis(2100)),
            Some(250_000_000),
            "too soon for a new rate"
        );
        rates.retain(&HashSet::new());
        assert_eq!(rates.observe("c", 0, t0), None, "forgotten");
    }

    #[test]
    fn resource_metrics_have_the_names_metrics_server_reads() {
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        pod.metadata.namespace = Some("default".into());
        pod.metadata.name = Some("web".into());
        let mut entry = PodEntry {
            pod: std::sync::Arc::new(pod),
            started: Timestamp::from_second(1_700_000_000).unwrap(),
            running: Default::default(),
        };
        let usage = std::sync::Arc::new(crate::usage::ContainerUsage::default());
        usage.add_cpu_nanos(1_500_000_000);
        usage.set_memory_bytes(2 << 20);
        entry.running.insert(
            "app".into(),
            crate::pod::table::RunningContainer {
                started: Timestamp::from_second(1_700_000_000).unwrap(),
                usage,
            },
        );
        let node = NodeUsage {
            cpu_nanos: 10_000_000_000,
            memory_used: 1 << 30,
            memory_available: Some(1 << 30),
        };
        let text = render_resource_metrics(&[PodUsage::of(&entry)], &node, 42);
        for line in [
            r#"container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 1.5 42"#,
            r#"container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 2097152 42"#,
            r#"container_start_time_seconds{container="app",namespace="default",pod="web"} 1700000000 42"#,
            "node_cpu_usage_seconds_total 10 42",
            "node_memory_working_set_bytes 1073741824 42",
            r#"pod_cpu_usage_seconds_total{namespace="default",pod="web"} 1.5 42"#,
            r#"pod_memory_working_set_bytes{namespace="default",pod="web"} 2097152 42"#,
            "scrape_error 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert_eq!(labels(&[("a", "x\"y")]), r#"{a="x\"y"}"#);
    }
}
