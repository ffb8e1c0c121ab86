use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Shape, WasmKind};

/// A pulled, verified Wasm module or component and what its image says about running it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmArtifact {
    /// The reference it was pulled by.
    pub reference: String,
    /// The digest of the image manifest it came from.
    pub manifest_digest: String,
    /// The digest of the Wasm bytes themselves: the key for compiled-code caches.
    pub wasm_digest: String,
    /// Where the Wasm bytes are in the store.
    pub wasm_path: PathBuf,
    /// Module or component.
    pub kind: WasmKind,
    /// How the image carried it.
    pub shape: Shape,
    /// The image's entrypoint (compat images), for the container's `command` default.
    pub entrypoint: Vec<String>,
    /// The image's `Cmd`, for the container's `args` default.
    pub args: Vec<String>,
    /// The image's environment, `K=V`.
    pub env: Vec<String>,
}
