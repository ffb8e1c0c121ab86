use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use oci::store::digest_of;
use serde_json::json;

/// A blob to put in an image: media type and bytes.
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of `media_type`.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            bytes,
        }
    }
}

/// One image manifest to write: config, layers, and the platform it is for (used in indexes).
pub struct Image {
    /// The config blob.
    pub config: Blob,
    /// The layers, in order.
    pub layers: Vec<Blob>,
    /// `(os, architecture)` for index entries.
    pub platform: Option<(String, String)>,
}

/// Writes `images` as an OCI image layout in `dir` (one image, or an index of several) and
/// copies it to `target` (`host/repo:tag`) with skopeo, the way someone publishing a
/// hand-built image would. Returns the digest of the top manifest.
pub fn publish_with_skopeo(dir: &Path, images: &[Image], target: &str) -> anyhow::Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let write_blob = |bytes: &[u8]| -> anyhow::Result<String> {
        let digest = digest_of(bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)?;
        Ok(digest)
    };
    let descriptor = |blob: &Blob, digest: &str| json!({"mediaType": blob.media_type, "digest": digest, "size": blob.bytes.len()});
    let mut manifests = Vec::new();
    for image in images {
        let config_digest = write_blob(&image.config.bytes)?;
        let mut layers = Vec::new();
        for layer in &image.layers {
            layers.push(descriptor(layer, &write_blob(&layer.bytes)?));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor(&image.config, &config_digest),
            "layers": layers,
        }))?;
        let digest = write_blob(&manifest)?;
        let mut entry = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": manifest.len(),
        });
        if let Some((os, arch)) = &image.platform {
            entry["platform"] = json!({"os": os, "architecture": arch});
        }
        manifests.push(entry);
    }
    let top = if let [single] = manifests.as_slice() {
        single.clone()
    } else {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))?;
        let digest = write_blob(&index)?;
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": index.len()})
    };
    let mut top_with_name = top.clone();
    top_with_name["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top_with_name]}))?,
    )?;
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--insecure-policy",
        ])
        .arg(format!("oci:{}:latest", dir.display()))
        .arg(format!("docker://{target}"))
        .output()
        .context("run skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    top["digest"].as_str().map(str::to_string).context("digest")
}

/// Publishes one image (no index) built from `config` and `layers`; see [`publish_with_skopeo`].
pub fn publish_image(
    dir: &Path,
    config: Blob,
    layers: Vec<Blob>,
    target: &str,
) -> anyhow::Result<String> {
    let image = Image {
        config,
        layers,
        platform: None,
    };
    publish_with_skopeo(dir, &[image], target)
}

/// A gzip-compressed tar of `(path, bytes)` files and `(path, target)` symlinks. Paths are
/// written raw, so tests can include hostile ones.
pub fn tar_gz(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut append = |name: &str, kind: tar::EntryType, link: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append(&header, data).map_err(anyhow::Error::from)
    };
    for (name, data) in files {
        append(name, tar::EntryType::Regular, "", data)?;
    }
    for (name, target) in symlinks {
        append(name, tar::EntryType::Symlink, target, &[])?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// An OCI image config whose entrypoint is `entrypoint`.
pub fn image_config(entrypoint: &[&str], cmd: &[&str]) -> anyhow::Result<Blob> {
    let config = json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["GREETING=hello"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    Ok(Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&config)?,
    ))
}

/// A valid core module of about `size` bytes: the 8-byte header plus one custom section of
/// padding, so size can be chosen for pull benchmarks.
pub fn wasm_module_of_size(size: usize) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    if size <= module.len() + 8 {
        return module;
    }
    let name = b"pad";
    let payload = size - module.len() - 8;
    let mut section = Vec::new();
    leb128(&mut section, name.len() as u64);
    section.extend_from_slice(name);
    section.resize(section.len() + payload, 0x2a);
    module.push(0); // custom section id
    leb128(&mut module, section.len() as u64);
    module.extend_from_slice(&section);
    module
}

/// A WASI preview 1 module of about `size` bytes that is nearly all code: a `_start` that
/// sleeps in `poll_oneoff` forever (a long-running pod), and filler functions of arithmetic
/// that are never called but, like any module's code, are compiled. For start benchmarks,
/// where a padded module would time the download but not the compiler.
pub fn sleeper_module_of_size(size: usize) -> anyhow::Result<Vec<u8>> {
    use std::fmt::Write;
    // One filler function is about 5 kB of code: 1,000 `i32.const; i32.xor` pairs of five
    // bytes each (constants below 2^21 take three LEB bytes).
    const PAIRS: u32 = 1000;
    let functions = size / 5000;
    let mut wat = String::from(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; One clock subscription at 0 (tag 0 = clock, id 1 = monotonic, an hour), its event
    ;; at 64, the count at 128.
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (loop $forever
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $forever)))
"#,
    );
    for f in 0..functions {
        write!(
            wat,
            "  (func $filler{f} (param i32) (result i32) local.get 0"
        )?;
        for k in 0..PAIRS {
            // Constants that need 3–4 LEB bytes and differ, so nothing folds away.
            write!(wat, " i32.const {} i32.xor", 100_000 + f as u32 * PAIRS + k)?;
        }
        wat.push_str(")\n");
    }
    wat.push(')');
    Ok(wat::parse_str(&wat)?)
}

/// `component` with a core module of about `size` bytes of code appended (a
/// [`sleeper_module_of_size`]): never instantiated, but compiled, as every module a component
/// holds is, so the component runs as `component` does and compiles as a large one.
pub fn component_with_code_of_size(component: &[u8], size: usize) -> anyhow::Result<Vec<u8>> {
    /// The component binary format's section id for a core module.
    const CORE_MODULE_SECTION: u8 = 1;
    let module = sleeper_module_of_size(size)?;
    let mut out = component.to_vec();
    out.push(CORE_MODULE_SECTION);
    leb128(&mut out, module.len().try_into()?);
    out.extend(module);
    Ok(out)
}

/// The smallest valid component.
pub fn empty_component() -> Vec<u8> {
    b"\0asm\x0d\0\x01\0".to_vec()
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_with_code_appended_is_a_valid_component_that_much_larger() {
        let base = empty_component();
        let big = component_with_code_of_size(&base, 50_000).unwrap();
        assert!(big.len() >= base.len() + 45_000, "{} bytes", big.len());
        let engine = wasmtime::Engine::default();
        wasmtime::component::Component::new(&engine, &big).unwrap();
    }
}
