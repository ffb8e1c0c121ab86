//! Entry points for the fuzz targets in `fuzz/` (not part of the API): each hands bytes from
//! outside (a registry's manifest or image config, a compat image's layers) to the parser the
//! puller uses, the way the puller uses it. A panic or a hang here is a bug.

use std::path::Path;

use oci_client::Reference;
use oci_client::manifest::OciManifest;

use crate::compat::{self, Layer};
use crate::media::{self, TarCompression};
use crate::pull::{ImageConfig, pick_wasm_platform};
use crate::wasm::{WasmKind, describe_non_wasm};

/// A manifest, an index or an image config, as a registry may send any of them.
pub fn manifest(bytes: &[u8]) {
    let reference = Reference::with_tag("registry.example".into(), "fuzz".into(), "1".into());
    if let Ok(manifest) = serde_json::from_slice::<OciManifest>(bytes) {
        match manifest {
            OciManifest::ImageIndex(index) => {
                let _ = pick_wasm_platform(&reference, &index);
            }
            OciManifest::Image(image) => {
                let types: Vec<&str> = image.layers.iter().map(|l| l.media_type.as_str()).collect();
                let _ = media::classify(&types);
                for layer in &image.layers {
                    let _ = media::tar_compression(&layer.media_type);
                }
            }
        }
    }
    let _ = serde_json::from_slice::<ImageConfig>(bytes);
    if WasmKind::detect(bytes).is_none() {
        let _ = describe_non_wasm(bytes);
    }
}

/// A compat image: `data` is cut into up to four layers at each `\n--layer--\n`; a layer that
/// starts with gzip's magic is read as gzip. The entrypoint is looked up as the puller looks
/// it up, relative to a working directory. Layer files are written under `dir`.
pub fn compat_layers(data: &[u8], dir: &Path) {
    const SEPARATOR: &[u8] = b"\n--layer--\n";
    let mut layers = Vec::new();
    let mut rest = data;
    for i in 0..4 {
        let (layer, next) = match find(rest, SEPARATOR) {
            Some(at) if i < 3 => (&rest[..at], &rest[at + SEPARATOR.len()..]),
            _ => (rest, &[][..]),
        };
        let path = dir.join(format!("layer-{i}"));
        if std::fs::write(&path, layer).is_err() {
            return;
        }
        layers.push(Layer {
            path,
            digest: format!("sha256:{i}"),
            compression: if layer.starts_with(&[0x1f, 0x8b]) {
                TarCompression::Gzip
            } else {
                TarCompression::None
            },
        });
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    for entry in ["app.wasm", "/bin/app.wasm", "../../etc/passwd"] {
        let _ = compat::read_entry("registry.example/fuzz:1", &layers, entry, "/srv", 1 << 20);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_take_seeds_and_garbage_alike() {
        manifest(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        manifest(b"\0asm\x01\0\0\0");
        manifest(b"{{{{");
        let dir = tempfile::tempdir().unwrap();
        compat_layers(b"not a tar\n--layer--\n\x1f\x8bnot gzip", dir.path());
        compat_layers(&[], dir.path());
    }
}
