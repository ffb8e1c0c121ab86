//! Media types of Wasm OCI artifacts, and telling an image's shape from its layers.

use serde::{Deserialize, Serialize};

/// wasm-to-oci's layer.
pub const WASM_TO_OCI_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// wasm-to-oci's config.
pub const WASM_TO_OCI_CONFIG: &str = "application/vnd.wasm.config.v1+json";
/// The CNCF Wasm artifact's config.
pub const CNCF_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm artifact's layer.
pub const CNCF_LAYER: &str = "application/wasm";
/// The Bytecode Alliance component layer.
pub const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// An OCI image config (compat images).
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Uncompressed tar layers, OCI and Docker.
const TAR_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
/// Gzip-compressed tar layers, OCI and Docker.
const TAR_GZIP_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// The manifest types a pull accepts: OCI and Docker manifests and indexes.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// How an image carries its Wasm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// One `application/vnd.wasm.content.layer.v1+wasm` layer.
    WasmToOci,
    /// The CNCF artifact: one `application/wasm` layer.
    CncfArtifact,
    /// One component layer.
    ComponentLayer,
    /// Tar layers with a `.wasm` file inside, named by the entrypoint.
    Compat,
}

/// How a compat layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TarCompression {
    None,
    Gzip,
}

pub(crate) fn tar_compression(media_type: &str) -> Option<TarCompression> {
    if TAR_LAYERS.contains(&media_type) {
        Some(TarCompression::None)
    } else if TAR_GZIP_LAYERS.contains(&media_type) {
        Some(TarCompression::Gzip)
    } else {
        None
    }
}

/// The shape of an image from its layers' media types, and the index of its Wasm layer
/// (for the single-layer shapes). `None` when nothing in it is Wasm.
pub(crate) fn classify(layer_media_types: &[&str]) -> Option<(Shape, Option<usize>)> {
    let find = |wanted: &str| layer_media_types.iter().position(|m| *m == wanted);
    if let Some(i) = find(COMPONENT_LAYER) {
        return Some((Shape::ComponentLayer, Some(i)));
    }
    if let Some(i) = find(CNCF_LAYER) {
        return Some((Shape::CncfArtifact, Some(i)));
    }
    if let Some(i) = find(WASM_TO_OCI_LAYER) {
        return Some((Shape::WasmToOci, Some(i)));
    }
    let all_tar = !layer_media_types.is_empty()
        && layer_media_types
            .iter()
            .all(|m| tar_compression(m).is_some());
    all_tar.then_some((Shape::Compat, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_is_recognised_by_its_layer() {
        assert_eq!(
            classify(&[WASM_TO_OCI_LAYER]),
            Some((Shape::WasmToOci, Some(0)))
        );
        assert_eq!(
            classify(&[CNCF_LAYER]),
            Some((Shape::CncfArtifact, Some(0)))
        );
        assert_eq!(
            classify(&["x", COMPONENT_LAYER]),
            Some((Shape::ComponentLayer, Some(1)))
        );
        assert_eq!(
            classify(&["application/vnd.docker.image.rootfs.diff.tar.gzip"]),
            Some((Shape::Compat, None))
        );
    }

    #[test]
    fn unknown_layers_are_not_wasm() {
        assert_eq!(
            classify(&["application/vnd.cncf.helm.chart.content.v1.tar+gzip"]),
            None
        );
        assert_eq!(classify(&[]), None);
    }
}
