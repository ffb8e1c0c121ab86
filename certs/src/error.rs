use std::path::PathBuf;

/// What can go wrong while making, reading or storing keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused to generate a key or certificate.
    #[error("failed to generate {what}")]
    Generate {
        /// The thing being generated, e.g. "certificate for system:node:edge-1".
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM document did not hold what was expected.
    #[error("invalid PEM in {what}: {reason}")]
    Pem {
        /// Where the PEM came from.
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. "failed to write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rustls rejected the certificate or key.
    #[error("invalid TLS configuration")]
    Tls(#[source] tokio_rustls::rustls::Error),
}
