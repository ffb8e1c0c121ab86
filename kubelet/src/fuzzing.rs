//! Entry points for the fuzz targets in `fuzz/` (not part of the API): each hands input from
//! outside (a pod spec's quantities, a log request's parameters, the node's flags, a static
//! pod manifest, a port-forward client's frames) to the parser the agent uses, the way the
//! agent uses it. A panic or a hang here is a bug.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pod::admission::{Capacity, Requests, admit};
use crate::pod::{quantity, storage::StorageLimits};

/// A quantity, read each way a pod spec's quantities are read.
pub fn quantity(text: &str) {
    let q = Quantity(text.to_string());
    let _ = quantity::parse(&q);
    let _ = quantity::bytes(&q);
    let _ = quantity::cpu_millis(&q);
}

/// The query of a container log request: `name=value` pairs separated by `&`.
pub fn log_query(text: &str) {
    let params: HashMap<String, String> = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = crate::logs::LogQuery::parse(&params, jiff::Timestamp::UNIX_EPOCH);
}

/// What a `kubectl port-forward` client sends once its connection is upgraded: SPDY frames,
/// their compressed header blocks and the stream openings in them.
pub fn port_forward(data: &[u8]) {
    crate::api::port_forward::parse_client_bytes(data);
}

/// `--node-labels` and `--eviction-hard`.
pub fn node_flags(text: &str) {
    let _ = crate::config::parse_labels(text);
    let _ = crate::node::pressure::PressureThresholds::parse(text);
}

/// A static pod manifest (YAML or JSON, one or more documents), then what admission and a
/// container's launch read from each pod in it: requests against a node, storage limits,
/// memory and CPU limits, and each volume mount's guest path and `subPathExpr`.
pub fn static_pod(text: &str) {
    let node = Capacity {
        pods: 110,
        cpu_millis: 2000,
        memory_bytes: 1 << 32,
        ephemeral_storage_bytes: 1 << 36,
    };
    let parsed =
        crate::static_pods::manifest::parse_documents(text, Path::new("fuzz.yaml"), "edge-1");
    for pod in parsed.into_iter().flatten() {
        let _ = Requests::of(&pod);
        let _ = admit(&pod, &[], node, &Default::default());
        let _ = StorageLimits::of(&pod);
        let spec = pod.spec.iter();
        for container in spec.flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        {
            let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
            for q in limits.into_iter().flat_map(|l| l.values()) {
                let _ = quantity::bytes(q);
                let _ = quantity::cpu_millis(q);
            }
            for mount in container.volume_mounts.iter().flatten() {
                let _ = crate::volumes::guest_path(&mount.mount_path);
                if let Some(expr) = &mount.sub_path_expr {
                    let _ = crate::volumes::expand(expr, &[("POD".into(), "p".into())]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_take_seeds_and_garbage_alike() {
        for text in ["", "1Gi", "-0.5e-3", "9999999999999999999999Ei", "\u{0}"] {
            quantity(text);
            log_query(text);
            node_flags(text);
        }
        static_pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: x}]\n",
        );
        static_pod("{\"kind\": [}");
    }
}
