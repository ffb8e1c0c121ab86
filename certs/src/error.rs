use std::path::PathBuf;

/// What can go wrong while making, reading, requesting or storing keys and certificates.
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
    /// A kubeconfig could not be read, used or written.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The API server refused or failed a request about a certificate signing request.
    #[error("{action} certificate signing request {name}")]
    Api {
        /// What was being done, e.g. "failed to create".
        action: &'static str,
        /// The CSR's name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A client for the API server could not be built.
    #[error("cannot build a client for {server}")]
    Client {
        /// The API server's URL.
        server: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}
