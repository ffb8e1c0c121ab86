use std::path::PathBuf;

/// What can stop the node agent from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data dir could not be created, written or locked.
    #[error("data dir {path} is not usable: {reason}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// Why it is not usable.
        reason: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet API could not listen on its address.
    #[error("cannot listen on {address}{hint}")]
    Listen {
        /// The address, e.g. `0.0.0.0:10250`.
        address: std::net::SocketAddr,
        /// A hint for the operator, e.g. " (the port is already in use)".
        hint: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The serving certificate could not be made or loaded.
    #[error("serving certificate")]
    ServingCert(#[source] certs::Error),
    /// A node label given on the command line is malformed.
    #[error("invalid node label {label:?}: {reason}")]
    InvalidLabel {
        /// The label as given.
        label: String,
        /// Why it is rejected.
        reason: String,
    },
    /// An `--eviction-hard` threshold is malformed.
    #[error("invalid eviction threshold {threshold:?}: {reason}")]
    InvalidEvictionThreshold {
        /// The threshold as given.
        threshold: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A `--system-reserved` item is malformed.
    #[error("invalid system reservation {item:?}: {reason}")]
    InvalidReservation {
        /// The item as given.
        item: String,
        /// Why it is rejected.
        reason: String,
    },
}
