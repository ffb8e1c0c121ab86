//! The seam between the node agent and the thing that runs workloads.
//!
//! A provider is a Rust type implementing [`Provider`]. The kubelet crate owns everything
//! that talks to the API server (node, lease, status, events, the kubelet API); a provider
//! only answers questions and acts on the host. That split is what lets a hardware vendor
//! write a provider without touching Kubernetes plumbing, and lets the WASI and peripheral
//! providers share the same agent.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What a provider adds to the Node object it runs under.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeContribution {
    /// Reported as `status.nodeInfo.containerRuntimeVersion`, e.g. `wasmtime://48.0.8`.
    pub runtime_version: String,
    /// Extended resources (e.g. `devices.wasmlet.dev/gpio`) added to capacity and allocatable.
    pub extended_resources: BTreeMap<String, Quantity>,
}

/// A workload runtime plugged into the node agent.
///
/// Implementations must be cheap to query: the agent asks every status period (10 s).
pub trait Provider: Send + Sync + 'static {
    /// What this provider contributes to the Node: runtime version and extended resources.
    fn node_contribution(&self) -> NodeContribution;

    /// Whether the provider can run pods right now. An `Err` carries the reason, and the
    /// node reports `Ready=False` with it until the provider recovers.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
