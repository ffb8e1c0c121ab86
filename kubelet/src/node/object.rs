//! The desired Node: labels, taints, capacity, addresses and node info.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::NodeConfig;
use crate::host::HostFacts;
use crate::node::allocatable::{self, Allocatable};
use crate::provider::NodeContribution;

/// The architecture wasmlet nodes advertise, in labels, taints and node info.
pub const WASM_ARCH: &str = "wasm32-wasi";
/// The taint key that keeps Linux pods off a Wasm node.
pub const ARCH_TAINT_KEY: &str = "kubernetes.io/arch";

/// The labels wasmlet always sets, plus the operator's. The `beta.` forms are kept because
/// Krustlet set them and its manifests select on them.
pub fn labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels = config.extra_labels.clone();
    for (key, value) in [
        ("kubernetes.io/arch", WASM_ARCH),
        ("kubernetes.io/os", WASM_ARCH),
        ("beta.kubernetes.io/arch", WASM_ARCH),
        ("beta.kubernetes.io/os", WASM_ARCH),
        ("kubernetes.io/hostname", config.hostname.as_str()),
    ] {
        labels.insert(key.to_string(), value.to_string());
    }
    labels
}

/// `kubernetes.io/arch=wasm32-wasi` with both NoSchedule and NoExecute, so only pods that
/// tolerate Wasm land here and nothing else is left running here.
pub fn taints() -> Vec<Taint> {
    ["NoSchedule", "NoExecute"]
        .into_iter()
        .map(|effect| Taint {
            key: ARCH_TAINT_KEY.to_string(),
            value: Some(WASM_ARCH.to_string()),
            effect: effect.to_string(),
            time_added: None,
        })
        .collect()
}

/// The resources this node offers: host CPUs, memory and data-dir storage, `pods` from
/// max-pods, and the provider's extended resources. Allocatable is the same less
/// `--system-reserved` and the eviction thresholds ([`Allocatable`]).
pub fn capacity(
    config: &NodeConfig,
    host: &HostFacts,
    ephemeral_storage_bytes: u64,
    contribution: &NodeContribution,
) -> BTreeMap<String, Quantity> {
    let mut capacity = contribution.extended_resources.clone();
    capacity.insert("cpu".into(), Quantity(host.cpus.to_string()));
    capacity.insert("memory".into(), kib(host.memory_bytes));
    capacity.insert("ephemeral-storage".into(), kib(ephemeral_storage_bytes));
    capacity.insert("pods".into(), Quantity(config.max_pods.to_string()));
    capacity
}

/// `bytes` as a quantity in whole KiB (rounded down), as the kubelet reports memory and
/// storage.
fn kib(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

/// The full status this node reports, given its current conditions.
pub fn status(
    config: &NodeConfig,
    host: &HostFacts,
    ephemeral_storage_bytes: u64,
    contribution: &NodeContribution,
    conditions: Vec<NodeCondition>,
) -> NodeStatus {
    let capacity = capacity(config, host, ephemeral_storage_bytes, contribution);
    let mut allocatable = capacity.clone();
    let pods = Allocatable::of(host, config.system_reserved, &config.pressure);
    // In the API server's canonical form: whole cores as a plain number.
    let cpu = match pods.cpu_millis % 1000 {
        0 => (pods.cpu_millis / 1000).to_string(),
        _ => format!("{}m", pods.cpu_millis),
    };
    allocatable.insert("cpu".into(), Quantity(cpu));
    allocatable.insert("memory".into(), kib(pods.memory_bytes));
    let storage = allocatable::ephemeral_storage_bytes(
        ephemeral_storage_bytes,
        config.system_reserved,
        &config.pressure,
    );
    allocatable.insert("ephemeral-storage".into(), kib(storage));
    NodeStatus {
        allocatable: Some(allocatable),
        capacity: Some(capacity),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.hostname.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: WASM_ARCH.into(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: contribution.runtime_version.clone(),
            kernel_version: host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version(),
            machine_id: host.machine_id.clone(),
            operating_system: host.operating_system.clone(),
            os_image: host.os_image.clone(),
            system_uuid: host.system_uuid.clone(),
            swap: None,
        }),
        conditions: Some(conditions),
        ..Default::default()
    }
}

/// The version reported as `nodeInfo.kubeletVersion`: wasmlet's own, in semver form.
pub fn kubelet_version() -> String {
    format!("v{}-wasmlet", env!("CARGO_PKG_VERSION"))
}

/// The Node to create when none exists: labels, taints and status.
pub fn new_node(config: &NodeConfig, status: NodeStatus) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints()),
            ..Default::default()
        }),
        status: Some(status),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> NodeConfig {
        NodeConfig {
            node_name: "edge-1".into(),
            node_ip: "10.1.2.3".parse().unwrap(),
            hostname: "edge-1.local".into(),
            port: 10250,
            data_dir: "/tmp/x".into(),
            max_pods: 110,
            pressure: Default::default(),
            system_reserved: Default::default(),
            sync_frequency: std::time::Duration::from_secs(60),
            secrets_in_memory: false,
            event_limit: crate::events::default_limit(),
            extra_labels: [("site".to_string(), "lab".to_string())].into(),
        }
    }

    #[test]
    fn labels_carry_wasm_arch_in_both_forms_hostname_and_user_labels() {
        let labels = labels(&config());
        assert_eq!(labels["kubernetes.io/arch"], "wasm32-wasi");
        assert_eq!(labels["kubernetes.io/os"], "wasm32-wasi");
        assert_eq!(labels["beta.kubernetes.io/arch"], "wasm32-wasi");
        assert_eq!(labels["beta.kubernetes.io/os"], "wasm32-wasi");
        assert_eq!(labels["kubernetes.io/hostname"], "edge-1.local");
        assert_eq!(labels["site"], "lab");
    }

    #[test]
    fn user_labels_cannot_override_the_arch() {
        let mut cfg = config();
        cfg.extra_labels
            .insert("kubernetes.io/arch".into(), "amd64".into());
        assert_eq!(labels(&cfg)["kubernetes.io/arch"], "wasm32-wasi");
    }

    #[test]
    fn taints_are_no_schedule_and_no_execute_on_the_arch() {
        let effects: Vec<_> = taints()
            .into_iter()
            .map(|t| format!("{}={}:{}", t.key, t.value.unwrap_or_default(), t.effect))
            .collect();
        assert_eq!(
            effects,
            [
                "kubernetes.io/arch=wasm32-wasi:NoSchedule",
                "kubernetes.io/arch=wasm32-wasi:NoExecute"
            ]
        );
    }

    #[test]
    fn status_reports_host_capacity_addresses_endpoint_and_runtime() {
        let host = HostFacts {
            cpus: 2,
            memory_bytes: 4 * 1024 * 1024 * 1024,
            ..Default::default()
        };
        let contribution = NodeContribution {
            runtime_version: "wasmtime://48.0.8".into(),
            extended_resources: [("devices.wasmlet.dev/gpio".to_string(), Quantity("4".into()))]
                .into(),
        };
        let status = status(&config(), &host, 10 * 1024 * 1024, &contribution, vec![]);
        let capacity = status.capacity.unwrap();
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "4194304Ki");
        assert_eq!(capacity["ephemeral-storage"].0, "10240Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(capacity["devices.wasmlet.dev/gpio"].0, "4");
        let allocatable = status.allocatable.unwrap();
        assert_eq!(allocatable["cpu"].0, "2");
        // Less the 100 MiB eviction threshold, as the kubelet's.
        assert_eq!(allocatable["memory"].0, "4091904Ki");
        // Less the default nodefs.available threshold, 10% of 10 MiB.
        assert_eq!(allocatable["ephemeral-storage"].0, "9216Ki");
        for same in ["pods", "devices.wasmlet.dev/gpio"] {
            assert_eq!(allocatable[same], capacity[same]);
        }
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "10.1.2.3");
        assert_eq!(addresses[1].type_, "Hostname");
        let port = status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port;
        assert_eq!(port, 10250);
        let info = status.node_info.unwrap();
        assert_eq!(info.architecture, "wasm32-wasi");
        assert_eq!(info.container_runtime_version, "wasmtime://48.0.8");
    }
}
