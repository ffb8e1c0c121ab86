//! Publishing a `.wasm` file as an OCI artifact.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use oci_client::Reference;
use oci_client::client::{ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

use crate::client::{new_client, off_runtime};
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

/// How much of the Wasm layer the registry has taken: `(sent, total)` bytes.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// The size of the pieces the layer is uploaded in, and so how often progress is reported.
const UPLOAD_PIECE: usize = 1 << 20;

/// Publishes `file` to `image`. `insecure` speaks plain HTTP to the registry.
pub async fn push(
    file: &Path,
    image: &str,
    format: PushFormat,
    auth: &RegistryAuth,
    insecure: bool,
) -> Result<Pushed> {
    push_with_progress(file, image, format, auth, insecure, Arc::new(|_, _| {})).await
}

/// [`push`], reporting the layer's upload to `progress` as each piece of it goes.
pub async fn push_with_progress(
    file: &Path,
    image: &str,
    format: PushFormat,
    auth: &RegistryAuth,
    insecure: bool,
    progress: Progress,
) -> Result<Pushed> {
    let reference: Reference =
        image
            .parse()
            .map_err(|e: oci_client::ParseError| Error::InvalidReference {
                reference: image.to_string(),
                reason: e.to_string(),
            })?;
    // The file is the user's, not the store's: name it plainly so a typo in the path reads
    // as one.
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|source| Error::ReadFile {
            path: file.to_path_buf(),
            source,
        })?;
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
    let client = off_runtime(&reference, move || new_client(protocol)).await?;
    let layer = ImageLayer {
        data: bytes.into(),
        media_type: layer_type.into(),
        annotations: None,
    };
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    let fail = |e| map_push_error(&reference, e);
    // What `Client::push` does, with the layer streamed in pieces so its progress shows.
    client
        .store_auth_if_needed(reference.resolve_registry(), auth)
        .await;
    let data = layer.data;
    let total = data.len() as u64;
    let pieces = (0..data.len()).step_by(UPLOAD_PIECE).map(move |start| {
        let end = start.saturating_add(UPLOAD_PIECE).min(data.len());
        (start as u64, data.slice(start..end))
    });
    let report = progress.clone();
    let stream = futures::stream::iter(pieces).map(move |(sent, piece)| {
        // A piece is asked for once the one before it was taken.
        report(sent, total);
        Ok(piece)
    });
    client
        .push_blob_stream(&reference, stream, &layer_digest, Some(total))
        .await
        .map_err(fail)?;
    progress(total, total);
    client
        .push_blob(&reference, config.data, &manifest.config.digest)
        .await
        .map_err(fail)?;
    let manifest_url = client
        .push_manifest(&reference, &manifest.into())
        .await
        .map_err(fail)?;
    Ok(Pushed {
        kind,
        layer_digest,
        manifest_url,
    })
}

/// Names the push failures a person can do something about: a registry that cannot be
/// reached (wrong host or port, registry down) and one that refuses the credentials. Pull's
/// mapping is not reused: its messages speak of pulls and imagePullSecrets.
fn map_push_error(reference: &Reference, err: OciDistributionError) -> Error {
    let registry = reference.resolve_registry().to_string();
    let unauthorized = |registry| Error::PushUnauthorized {
        reference: reference.whole(),
        registry,
    };
    match err {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            crate::client::no_answer(&registry, &e)
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(registry),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            unauthorized(registry)
        }
        other => Error::Registry {
            reference: reference.whole(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `bytes` (or nothing, when `None`: the file is missing) to `image`.
    async fn push_file(bytes: Option<&[u8]>, image: &str) -> (std::path::PathBuf, Error) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.wasm");
        if let Some(bytes) = bytes {
            std::fs::write(&file, bytes).unwrap();
        }
        let err = push(
            &file,
            image,
            PushFormat::Cncf,
            &RegistryAuth::Anonymous,
            true,
        )
        .await
        .unwrap_err();
        (file, err)
    }

    // Port 1 on loopback: nothing listens there and an unprivileged test cannot bind it, so
    // a connection is refused at once. The file checks must fail before any connection.
    const CLOSED: &str = "127.0.0.1:1/demo/app:v1";

    #[tokio::test]
    async fn a_file_that_is_not_wasm_is_refused_before_the_registry_is_contacted() {
        for (bytes, looks_like) in [
            (&b"#!/bin/sh\necho hi\n"[..], "a shell script"),
            (b"\x7fELF\x02\x01\x01\0\0\0", "an ELF executable"),
            (b"", "only 0 bytes"),
        ] {
            let (file, err) = push_file(Some(bytes), CLOSED).await;
            assert!(matches!(err, Error::NotWasmFile { .. }), "{err}");
            let message = err.to_string();
            assert!(message.contains(&file.display().to_string()), "{message}");
            assert!(message.contains(looks_like), "{message}");
        }
    }

    #[tokio::test]
    async fn a_missing_file_is_named_and_not_blamed_on_the_store() {
        let (file, err) = push_file(None, CLOSED).await;
        assert!(matches!(err, Error::ReadFile { .. }), "{err}");
        assert_eq!(err.to_string(), format!("cannot read {}", file.display()));
        let cause = std::error::Error::source(&err).map(|s| s.to_string());
        assert!(
            cause.as_deref().is_some_and(|c| c.contains("No such file")),
            "{cause:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_an_unreachable_registry() {
        let (_, err) = push_file(Some(b"\0asm\x01\0\0\0"), CLOSED).await;
        assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "registry 127.0.0.1:1 is unreachable: Connection refused (os error 111)"
        );
    }

    #[test]
    fn refusals_name_the_push_and_the_registry() {
        let reference: Reference = "reg.example:5000/demo/app:v1".parse().unwrap();
        for err in [
            OciDistributionError::UnauthorizedError {
                url: "http://reg.example:5000/v2/".into(),
            },
            OciDistributionError::ServerError {
                code: 403,
                url: "http://reg.example:5000/v2/".into(),
                message: "denied".into(),
            },
        ] {
            let mapped = map_push_error(&reference, err);
            assert!(matches!(mapped, Error::PushUnauthorized { .. }), "{mapped}");
            let message = mapped.to_string();
            assert!(
                message.contains("push reg.example:5000/demo/app:v1")
                    && message.contains("refused the credentials"),
                "{message}"
            );
        }
        let other = map_push_error(
            &reference,
            OciDistributionError::ServerError {
                code: 500,
                url: "http://reg.example:5000/v2/".into(),
                message: "boom".into(),
            },
        );
        assert!(matches!(other, Error::Registry { .. }), "{other}");
    }
}
