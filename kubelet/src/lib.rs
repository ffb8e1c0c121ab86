//! The provider-agnostic node agent of wasmlet.
//!
//! A [`Kubelet`] registers a Node for this host, holds the node's Lease, reports honest
//! status and serves the kubelet HTTPS API. Everything that is specific to how workloads run
//! sits behind the [`Provider`] trait, so this crate never names a runtime.
#![deny(missing_docs)]

mod agent;
pub mod api;
mod backoff;
pub mod config;
pub mod data_dir;
pub mod devices;
mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod link;
pub mod logs;
mod message;
pub mod metrics;
pub mod names;
pub mod node;
pub mod pod;
pub mod provider;
pub mod server;
pub mod static_pods;
pub mod store;
pub mod testing;
mod unread_reply;
pub mod usage;
pub mod volumes;

pub use agent::{ApiServing, Kubelet};
pub use config::NodeConfig;
pub use devices::{Allocation, DeviceProvider, WithDevices};
pub use error::Error;
pub use provider::{
    ContainerError, ContainerExit, ContainerStart, HeldPath, ImageRequest, Mount, NodeContribution,
    PodKey, Provider, PullSecret, PulledImage,
};

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
