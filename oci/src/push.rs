//! Publishing a `.wasm` file as an OCI artifact.

use std::path::Path;

use oci_client::Reference;
use oci_client::client::{ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

use crate::client::new_client;
use crate::media::{
    CNCF_CONFIG, CNCF_LAYER, COMPONENT_LAYER, WASM_TO_OCI_CONFIG, WASM_TO_OCI_LAYER,
};
use crate::store::digest_of;
use crate::wasm::describe_non_wasm;
use crate::{Error, Result, WasmKind};

/// Which artifact shape to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// The CNCF Wasm artifact; components get the component layer type.
    Cncf,
    /// The older wasm-to-oci shape.
    WasmToOci,
}

/// What was published.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// Module or component.
    pub kind: WasmKind,
    /// The digest of the Wasm layer.
    pub layer_digest: String,
    /// Where the registry put the manifest.
    pub manifest_url: String,
}

/// Publishes `file` to `image`. `insecure` speaks plain HTTP to the registry.
pub async fn push(
    file: &Path,
    image: &str,
    format: PushFormat,
    auth: &RegistryAuth,
    insecure: bool,
) -> Result<Pushed> {
    let reference: Reference =
        image
            .parse()
            .map_err(|e: oci_client::ParseError| Error::InvalidReference {
                reference: image.to_string(),
                reason: e.to_string(),
            })?;
    let bytes = tokio::fs::read(file)
        .await
        .map_err(Error::store("read", file))?;
    let kind = WasmKind::detect(&bytes).ok_or_else(|| Error::NotWasmFile {
        path: file.to_path_buf(),
        detail: describe_non_wasm(&bytes),
    })?;
    let layer_digest = digest_of(&bytes);
    let (config, layer_type) = match format {
        PushFormat::WasmToOci => (
            Config {
                data: bytes::Bytes::from_static(b"{}"),
                media_type: WASM_TO_OCI_CONFIG.into(),
                annotations: None,
            },
            WASM_TO_OCI_LAYER,
        ),
        PushFormat::Cncf => {
            let (os, layer_type) = match kind {
                WasmKind::Module => ("wasip1", CNCF_LAYER),
                WasmKind::Component => ("wasip2", COMPONENT_LAYER),
            };
            let config = serde_json::json!({
                "architecture": "wasm",
                "os": os,
                "layerDigests": [layer_digest],
            });
            (
                Config {
                    data: serde_json::to_vec(&config).unwrap_or_default().into(),
                    media_type: CNCF_CONFIG.into(),
                    annotations: None,
                },
                layer_type,
            )
        }
    };
    let protocol = if insecure {
        ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    let client = new_client(protocol);
    let layer = ImageLayer {
        data: bytes.into(),
        media_type: layer_type.into(),
        annotations: None,
    };
    let response = client
        .push(&reference, &[layer], config, auth, None)
        .await
        .map_err(|e| Error::Registry {
            reference: reference.whole(),
            message: e.to_string(),
        })?;
    Ok(Pushed {
        kind,
        layer_digest,
        manifest_url: response.manifest_url,
    })
}
