//! A real local Kubernetes control plane for wasmlet's end-to-end tests.
//!
//! [`ControlPlane`] starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//! (built from Debian's `kubernetes` source by `e2e/scripts/install-deps.sh`) on 127.0.0.1
//! and free ports, with a fresh PKI in a private temp dir. [`WasmletNode`] runs the wasmlet
//! binary against it, and [`Kubectl`] drives it the way a person would. Every type stops what
//! it started when dropped, so planes can run side by side and never outlive their test.

mod control_plane;
mod kubeconfig;
mod kubectl;
mod pki;
mod ports;
mod process;
mod wait;
mod wasmlet;

pub use control_plane::ControlPlane;
pub use kubectl::Kubectl;
pub use wait::wait_for;
pub use wasmlet::{WasmletNode, WasmletOptions};
