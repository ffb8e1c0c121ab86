//! The agent's own Prometheus metrics, served at `/metrics`.
//!
//! Counts that already live elsewhere (pods by phase) are read at scrape time from the
//! [`crate::pod::table::PodTable`] rather than kept twice.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pod::table::PodTable;

/// The `phase` label of `wasmlet_pods`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// The agent's metrics. One per agent, shared by its workers and the API.
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    pods: Family<PhaseLabel, Gauge>,
    pod_start: Histogram,
    image_pull: Histogram,
    container_start: Histogram,
    status_patch: Histogram,
    log_followers: Gauge,
    token_request_retries: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmlet");
        let pods = Family::<PhaseLabel, Gauge>::default();
        registry.register("pods", "Pods on this node by phase", pods.clone());
        // 1 ms to about 65 s: a cached start takes milliseconds, a cold pull seconds.
        let pod_start = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "pod_start_duration_seconds",
            "From the pod's watch event to its containers running, that status accepted by the API server",
            pod_start.clone(),
        );
        let image_pull = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "image_pull_duration_seconds",
            "Time to pull (or find locally) one container's image",
            image_pull.clone(),
        );
        // The stages of a start after the pull, finer: 0.1 ms to about 6.5 s.
        let container_start = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "container_start_duration_seconds",
            "Time for one container instance to start: env, log and root dir, provider start",
            container_start.clone(),
        );
        let status_patch = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "pod_status_patch_duration_seconds",
            "Time for the API server to accept one pod status patch",
            status_patch.clone(),
        );
        let log_followers = Gauge::default();
        registry.register(
            "log_followers",
            "Open `kubectl logs -f` streams",
            log_followers.clone(),
        );
        let token_request_retries = Counter::default();
        registry.register(
            "token_request_retries",
            "Service account token requests sent again because the API server had not yet seen the pod bound to this node",
            token_request_retries.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            pods,
            pod_start,
            image_pull,
            container_start,
            status_patch,
            log_followers,
            token_request_retries,
        }
    }
}

impl AgentMetrics {
    /// Records how long a pod took to start.
    pub fn observe_pod_start(&self, took: Duration) {
        self.pod_start.observe(took.as_secs_f64());
    }

    /// Records how long one image pull took.
    pub fn observe_image_pull(&self, took: Duration) {
        self.image_pull.observe(took.as_secs_f64());
    }

    /// Records how long one container instance took to start.
    pub fn observe_container_start(&self, took: Duration) {
        self.container_start.observe(took.as_secs_f64());
    }

    /// Records how long one pod status patch took.
    pub fn observe_status_patch(&self, took: Duration) {
        self.status_patch.observe(took.as_secs_f64());
    }

    /// Counts a token request sent again because the API server had not caught up.
    pub fn count_token_retry(&self) {
        self.token_request_retries.inc();
    }

    /// Counts an open log follower until the guard is dropped.
    pub fn follower(&self) -> FollowerGuard {
        self.log_followers.inc();
        FollowerGuard(self.log_followers.clone())
    }

    /// The exposition text, with pod phases as of now.
    pub fn render(&self, table: &PodTable) -> String {
        self.pods.clear();
        for phase in ["Pending", "Running", "Succeeded", "Failed", "Unknown"] {
            self.pods
                .get_or_create(&PhaseLabel {
                    phase: phase.into(),
                })
                .set(0);
        }
        for entry in table.snapshot() {
            let phase = entry
                .pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into());
            self.pods.get_or_create(&PhaseLabel { phase }).inc();
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// Decrements the follower gauge when the follow stream is dropped.
pub struct FollowerGuard(Gauge);

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodStatus};

    #[test]
    fn phases_latencies_and_followers_are_exposed() {
        let metrics = AgentMetrics::default();
        let table = PodTable::default();
        table.put("u", Pod::default());
        table.set_status(
            "u",
            PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            },
        );
        metrics.observe_pod_start(Duration::from_millis(15));
        metrics.observe_image_pull(Duration::from_millis(3));
        metrics.observe_container_start(Duration::from_millis(2));
        metrics.observe_status_patch(Duration::from_millis(4));
        let guard = metrics.follower();
        let text = metrics.render(&table);
        assert!(
            text.contains(r#"wasmlet_pods{phase="Running"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"wasmlet_pods{phase="Failed"} 0"#), "{text}");
        assert!(
            text.contains("wasmlet_pod_start_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("wasmlet_image_pull_duration_seconds_sum 0.003"),
            "{text}"
        );
        assert!(text.contains("wasmlet_log_followers 1"), "{text}");
        assert!(
            text.contains("wasmlet_container_start_duration_seconds_sum 0.002"),
            "{text}"
        );
        assert!(
            text.contains("wasmlet_pod_status_patch_duration_seconds_sum 0.004"),
            "{text}"
        );
        drop(guard);
        assert!(metrics.render(&table).contains("wasmlet_log_followers 0"));
    }
}
