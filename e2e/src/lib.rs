//! A real local Kubernetes control plane for wasmlet's end-to-end tests.
//!
//! [`ControlPlane`] starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//! (built from Debian's `kubernetes` source by `e2e/scripts/install-deps.sh`) on 127.0.0.1
//! and free ports, with a fresh PKI in a private temp dir. [`WasmletNode`] runs the wasmlet
//! binary against it, and [`Kubectl`] drives it the way a person would. Every type stops what
//! it started when dropped, so planes can run side by side and never outlive their test.
//! [`Registry`] runs Debian's `docker-registry` the same way (open, behind Basic auth, or over
//! HTTPS behind a [`TokenService`]'s Bearer tokens), and [`oci_layout`] builds images by hand
//! and publishes them with skopeo.

mod cluster;
mod control_plane;
pub mod demos;
mod kubeconfig;
mod kubectl;
mod link;
mod null_agent;
pub mod oci_layout;
mod pki;
mod ports;
mod process;
mod registry;
pub mod status;
mod token_service;
mod wait;
mod wasmlet;

pub use cluster::{WasmCluster, status_summary, wasm_pod};
pub use control_plane::ControlPlane;
pub use kubectl::Kubectl;
pub use link::CloudLink;
pub use null_agent::NullAgent;
pub use ports::free_port;
pub use process::rss_kib;
pub use registry::{REGISTRY_PASSWORD, REGISTRY_USER, Registry};
pub use token_service::{IssuedToken, TokenService};
pub use wait::wait_for;
pub use wasmlet::{
    StandaloneWasmlet, WasmletNode, WasmletOptions, emulated_aarch64_wasmlet, join_arguments,
    ps_row, wasmlet_binary,
};
