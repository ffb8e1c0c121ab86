use std::path::PathBuf;

/// What can go wrong pulling, storing or pushing a Wasm artifact. Each message names the
/// image or blob and says what a person can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("image {reference} not found: the registry has no such repository, tag or digest")]
    NotFound {
        /// The image.
        reference: String,
    },
    /// The registry refused our credentials, or wants some and got none.
    #[error("not authorized to pull {reference}: check the imagePullSecrets for {registry}")]
    Unauthorized {
        /// The image.
        reference: String,
        /// The registry host.
        registry: String,
    },
    /// The registry could not be reached at all.
    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable {
        /// The registry host.
        registry: String,
        /// The deepest cause, as the system or the TLS library put it ("Connection refused").
        reason: String,
    },
    /// The registry's TLS certificate was refused: issued by a CA the node does not trust,
    /// for another name, or expired.
    #[error("the certificate of registry {registry} is refused: {reason}")]
    UntrustedCertificate {
        /// The registry host.
        registry: String,
        /// What rustls found wrong with it, and for an unknown CA what to do.
        reason: String,
    },
    /// The registry answered with an error we do not map to anything more specific.
    #[error("registry error for {reference}: {message}")]
    Registry {
        /// The image.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// The image holds no Wasm.
    #[error("{reference} is not a Wasm image: {detail} (layer media types: {})", media_types.join(", "))]
    NotWasm {
        /// The image.
        reference: String,
        /// The layer media types found.
        media_types: Vec<String>,
        /// What was looked for and what was found instead.
        detail: String,
    },
    /// An index lists no wasm/wasi platform.
    #[error("{reference} is an image index with no wasm/wasi platform (platforms: {})", platforms.join(", "))]
    NoWasmPlatform {
        /// The image.
        reference: String,
        /// The `os/architecture` pairs it offers.
        platforms: Vec<String>,
    },
    /// The Wasm layer's bytes are not a module or component.
    #[error("{reference} carries invalid Wasm: {detail}")]
    InvalidWasm {
        /// The image.
        reference: String,
        /// What the bytes look like.
        detail: String,
    },
    /// Content did not hash to its digest.
    #[error("blob {expected} failed verification: its content hashes to {actual}")]
    DigestMismatch {
        /// The digest the manifest promised.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// A digest is not `sha256:<64 hex digits>`.
    #[error("unsupported or malformed digest {0:?}")]
    InvalidDigest(String),
    /// A layer exceeds the size limit.
    #[error("layer {digest} of {reference} is {size} bytes, over the {limit}-byte limit")]
    LayerTooLarge {
        /// The image.
        reference: String,
        /// The layer.
        digest: String,
        /// Its size (or the size reached before the download stopped).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A compat layer's path or link points outside the image root.
    #[error("{reference}: layer entry {path:?} escapes the image root ({how})")]
    PathEscape {
        /// The image.
        reference: String,
        /// The offending entry.
        path: String,
        /// `..`, an absolute path, or a link target.
        how: String,
    },
    /// A compat image past one of the bounds on what is read of it: its layers, their
    /// entries, or what its gzip layers inflate to.
    #[error("{reference} is refused: {detail}")]
    CompatLimit {
        /// The image.
        reference: String,
        /// Which bound, and the image's figure.
        detail: String,
    },
    /// A compat layer is not a readable tar.
    #[error("{reference}: layer {digest} is not a readable tar")]
    BadLayer {
        /// The image.
        reference: String,
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `imagePullPolicy: Never` and the image is not in the store.
    #[error("{reference} is not present locally and imagePullPolicy is Never")]
    NeverPull {
        /// The image.
        reference: String,
    },
    /// A pull secret could not be read.
    #[error("invalid pull secret: {0}")]
    InvalidPullSecret(String),
    /// The file to push is not Wasm.
    #[error("{path} is not a Wasm module or component: {detail}")]
    NotWasmFile {
        /// The file.
        path: PathBuf,
        /// What it looks like.
        detail: String,
    },
    /// The file to push cannot be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry refused a push: no credentials where it wants some, wrong ones, or a
    /// user without push rights.
    #[error(
        "not authorized to push {reference}: {registry} refused the credentials given (or wants some); check the user name and password"
    )]
    PushUnauthorized {
        /// The image.
        reference: String,
        /// The registry host.
        registry: String,
    },
    /// The store could not be read or written.
    #[error("artifact store: cannot {action} {path}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The container waiting reason the kubelet uses for this failure.
    pub fn kubelet_reason(&self) -> &'static str {
        match self {
            Error::InvalidReference { .. } => "InvalidImageName",
            Error::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }

    /// Whether trying again later may succeed (registry down, network), as opposed to a
    /// verdict on the image itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RegistryUnreachable { .. }
                | Error::UntrustedCertificate { .. }
                | Error::Registry { .. }
                | Error::Store { .. }
        )
    }

    pub(crate) fn store(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Store {
            action,
            path,
            source,
        }
    }
}
