//! Wasm OCI artifacts: pull, verify, store, collect garbage, push.
//!
//! A pull turns an image reference into a [`WasmArtifact`]: a verified Wasm module or
//! component in the content-addressed [`Store`], plus the entrypoint and arguments its image
//! declares. Every shape of Wasm image in use is accepted:
//! - wasm-to-oci (`application/vnd.wasm.content.layer.v1+wasm`);
//! - the CNCF Wasm artifact (config `application/vnd.wasm.config.v0+json`, layer
//!   `application/wasm`);
//! - component layers (`application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`);
//! - "compat" images: ordinary tar layers holding the `.wasm` that the entrypoint names;
//! - image indexes, from which the wasm/wasi platform entry is picked.
//!
//! This crate never talks to the Kubernetes API: pull secrets arrive as bytes.
#![deny(missing_docs)]

mod artifact;
pub mod auth;
mod client;
mod compat;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod media;
pub mod policy;
mod pull;
pub mod push;
mod registry;
pub mod store;
mod wasm;

pub use artifact::WasmArtifact;
pub use auth::RegistryCredentials;
pub use error::Error;
pub use media::Shape;
pub use oci_client::secrets::RegistryAuth;
pub use policy::PullPolicy;
pub use pull::{Origin, PullRequest, Puller, PullerConfig};
pub use store::Store;
pub use wasm::WasmKind;

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
