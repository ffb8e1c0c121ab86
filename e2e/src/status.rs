//! Reading what the API says about pods and the node's Lease, for tests' conditions.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::Kubectl;

/// The pod's phase, or "" before it has one.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The status of container `name`, app or init.
pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// Whether container `name` is running.
pub fn running(pod: &Pod, name: &str) -> bool {
    container(pod, name)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// Container `name`'s exit code, reason and message, once it has terminated.
pub fn terminated(pod: &Pod, name: &str) -> Option<(i32, String, String)> {
    let state = container(pod, name)?.state.as_ref()?.terminated.as_ref()?;
    Some((
        state.exit_code,
        state.reason.clone().unwrap_or_default(),
        state.message.clone().unwrap_or_default(),
    ))
}

/// Container `name`'s reason and message while it is waiting.
pub fn waiting(pod: &Pod, name: &str) -> Option<(String, String)> {
    let state = container(pod, name)?.state.as_ref()?.waiting.as_ref()?;
    Some((
        state.reason.clone().unwrap_or_default(),
        state.message.clone().unwrap_or_default(),
    ))
}

/// The status ("True", "False", "Unknown") of the pod's condition `type_`.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The node's Lease in `kube-node-lease`.
pub fn lease(kubectl: &Kubectl, node: &str) -> Result<Lease, String> {
    kubectl
        .get_json(&["get", "lease", "-n", "kube-node-lease", node])
        .map_err(|e| e.to_string())
}

/// When the Lease was last renewed.
pub fn renew_time(lease: &Lease) -> Option<jiff::Timestamp> {
    lease.spec.as_ref()?.renew_time.as_ref().map(|t| t.0)
}
