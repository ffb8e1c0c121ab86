use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};

use crate::{ControlPlane, Kubectl, Registry, WasmletNode, WasmletOptions, wait_for};

/// A control plane, an open registry and one wasmlet node that may pull from it: what most
/// pod tests need. Dropping it stops everything, node first.
pub struct WasmCluster {
    /// The node.
    pub node: WasmletNode,
    /// The registry.
    pub registry: Registry,
    /// kubectl as the cluster admin.
    pub kubectl: Kubectl,
    /// The control plane.
    pub plane: ControlPlane,
}

impl WasmCluster {
    /// Each running pod's cumulative CPU time in nanoseconds and the node's clock when it
    /// was read, from `/stats/summary` through the API server's node proxy, as
    /// metrics-server reads it.
    pub fn cpu_by_pod(&self) -> anyhow::Result<HashMap<String, (u64, jiff::Timestamp)>> {
        let url = format!("/api/v1/nodes/{}/proxy/stats/summary", self.node.name);
        let summary: serde_json::Value =
            serde_json::from_str(&self.kubectl.run(&["get", "--raw", &url])?)?;
        let mut cpu = HashMap::new();
        for pod in summary["pods"].as_array().into_iter().flatten() {
            let name = pod["podRef"]["name"].as_str().unwrap_or_default();
            let nanos = pod["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0);
            let time: jiff::Timestamp = pod["cpu"]["time"].as_str().unwrap_or_default().parse()?;
            cpu.insert(name.to_string(), (nanos, time));
        }
        Ok(cpu)
    }

    /// Starts everything and waits for the node to be Ready.
    pub async fn start(node_name: &str, max_pods: u32) -> anyhow::Result<Self> {
        Self::start_with_registries(node_name, max_pods, &[]).await
    }

    /// Like [`start`](Self::start), with the node also allowed to pull over plain HTTP from
    /// `extra_registries` (e.g. a private one the test runs itself).
    pub async fn start_with_registries(
        node_name: &str,
        max_pods: u32,
        extra_registries: &[String],
    ) -> anyhow::Result<Self> {
        let mut options = WasmletOptions {
            max_pods,
            ..WasmletOptions::named(node_name)
        };
        options
            .insecure_registries
            .extend_from_slice(extra_registries);
        Self::start_with_options(options).await
    }

    /// Starts everything with the node started as `options` say; the cluster's registry is
    /// added to its insecure registries.
    pub async fn start_with_options(mut options: WasmletOptions) -> anyhow::Result<Self> {
        let node_name = options.node_name.clone();
        let plane = ControlPlane::start().await?;
        let registry = Registry::start()?;
        let kubectl = Kubectl::new(&plane.admin_kubeconfig());
        options.insecure_registries.insert(0, registry.host());
        let started = std::time::Instant::now();
        let node = WasmletNode::start(&plane, &options)?;
        let cluster = Self {
            node,
            registry,
            kubectl,
            plane,
        };
        cluster
            .node
            .wait_ready(&cluster.kubectl, Duration::from_secs(15))
            .await?;
        // The API server verifies the kubelet's serving certificate, so `kubectl logs` and
        // friends work only once the node's serving CSR is approved and its cert served.
        cluster
            .node
            .approve_serving_certificate(&cluster.plane, &cluster.kubectl, Duration::from_secs(15))
            .await?;
        eprintln!(
            "node {node_name} Ready and serving a cluster-signed certificate {:.2} s after start",
            started.elapsed().as_secs_f64()
        );
        Ok(cluster)
    }

    /// The pod as the API has it.
    pub fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        self.kubectl.get_json(&["get", "pod", name])
    }

    /// Waits until `check` accepts the pod, failing with the pod's status and wasmlet's log.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let result = wait_for(&format!("pod {name}: {what}"), timeout, || {
            let pod = self.pod(name);
            let verdict = pod.map(|p| {
                if check(&p) {
                    Ok(Some(p))
                } else {
                    Err(status_summary(&p))
                }
            });
            async move { verdict.map_err(|e| e.to_string())? }
        })
        .await;
        result.map_err(|e| anyhow::anyhow!("{e:#}\nwasmlet log:\n{}", self.node.log_tail(25)))
    }

    /// The pod's events, oldest first.
    pub fn events(&self, pod: &str) -> anyhow::Result<Vec<Event>> {
        let selector = format!("involvedObject.name={pod}");
        let mut events: Vec<Event> =
            self.kubectl
                .get_items(&["events", "--field-selector", &selector])?;
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        Ok(events)
    }

    /// Waits for an event with `reason` about `pod` and returns its message.
    pub async fn wait_event(
        &self,
        pod: &str,
        reason: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait_events(pod, &format!("a {reason} event"), timeout, |events| {
            events
                .iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.message.clone().unwrap_or_default())
        })
        .await
    }

    /// Waits until `check` finds what it looks for in `pod`'s events (oldest first) and
    /// returns it. wasmlet writes events in the background, so one may come a moment after
    /// the status that reports the same thing. On time-out the error lists the events seen.
    pub async fn wait_events<T>(
        &self,
        pod: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Event]) -> Option<T>,
    ) -> anyhow::Result<T> {
        wait_for(&format!("{what} for {pod}"), timeout, || {
            let verdict = self.events(pod).map(|events| match check(&events) {
                Some(found) => Ok(Some(found)),
                None => Err(format!(
                    "events so far: {:?}",
                    events
                        .iter()
                        .map(|e| format!(
                            "{} {}: {}",
                            e.type_.as_deref().unwrap_or_default(),
                            e.reason.as_deref().unwrap_or_default(),
                            e.message.as_deref().unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                )),
            });
            async move { verdict.map_err(|e| e.to_string())? }
        })
        .await
    }

    /// The names of the pods the node itself lists on its `/pods`, read through the API
    /// server's node proxy.
    pub fn node_pods(&self) -> anyhow::Result<Vec<String>> {
        let url = format!("/api/v1/nodes/{}/proxy/pods", self.node.name);
        let listed: serde_json::Value =
            serde_json::from_str(&self.kubectl.run(&["get", "--raw", &url])?)?;
        Ok(listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    }

    /// What one container instance wrote, as stored on the node (CRI log lines).
    pub fn container_log(&self, pod: &Pod, container: &str, restart: u32) -> String {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        std::fs::read_to_string(self.node.container_log_path(&uid, container, restart))
            .unwrap_or_default()
    }
}

/// One line about a pod's phase and container states, for failure messages.
pub fn status_summary(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let containers: Vec<String> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let s = if let Some(w) = state.waiting {
                format!(
                    "waiting {} {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            } else if state.running.is_some() {
                "running".into()
            } else if let Some(t) = state.terminated {
                format!(
                    "terminated {} {} {}",
                    t.exit_code,
                    t.reason.unwrap_or_default(),
                    t.message.unwrap_or_default()
                )
            } else {
                "unknown".into()
            };
            format!("{}: {s} (restarts {})", c.name, c.restart_count)
        })
        .collect();
    let mut summary = format!("phase {}", status.phase.unwrap_or_default());
    for (label, value) in [("reason", status.reason), ("message", status.message)] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            summary.push_str(&format!(", {label} {value}"));
        }
    }
    format!("{summary}; {}", containers.join("; "))
}

/// A pod manifest that targets wasm32-wasi nodes, with `spec` lines (already indented by
/// two spaces) added to the spec.
pub fn wasm_pod(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector:\n    kubernetes.io/arch: wasm32-wasi\n  tolerations:\n  - {{key: kubernetes.io/arch, operator: Equal, value: wasm32-wasi, effect: NoSchedule}}\n  - {{key: kubernetes.io/arch, operator: Equal, value: wasm32-wasi, effect: NoExecute}}\n{spec}"
    )
}
