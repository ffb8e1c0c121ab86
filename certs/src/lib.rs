//! Keys, certificates, the kubelet's certificate signing requests, and rustls
//! configurations for wasmlet.
//!
//! - [`Authority`]: a certificate authority that issues client and serving certificates
//!   (the e2e harness builds a whole cluster PKI with it);
//! - [`serving`]: the kubelet API's serving certificate: self-signed from the first second,
//!   then requested from the cluster (`kubernetes.io/kubelet-serving`) and swapped in;
//! - [`discovery`]: `kubeadm join`'s token discovery of the cluster's address and CA, which
//!   writes the bootstrap kubeconfig;
//! - [`bootstrap`]: TLS bootstrap from a bootstrap token to the node's client certificate
//!   (`kubernetes.io/kube-apiserver-client-kubelet`) and kubeconfig;
//! - [`client`]: the node's API client whose client certificate rotates while it runs;
//! - [`CertificateManager`]: the one loop that requests, stores, presents and renews a node
//!   certificate, for both of the above;
//! - [`rotating`], [`rotation`], [`store`], [`csr`], [`x509`]: the pieces it is made of;
//! - [`tls`]: rustls configurations built from PEM.
//!
//! This crate talks to the API server only about CertificateSigningRequests, through the
//! client it is handed, and (in discovery, anonymously) to read `kube-public/cluster-info`. Key material is written to temporary files and renamed into place;
//! a certificate is written only after it has been parsed and its public key matched to
//! the key it is stored with.
#![deny(missing_docs)]

mod authority;
pub mod bootstrap;
pub mod client;
pub mod csr;
pub mod discovery;
mod error;
mod files;
mod manager;
pub mod rate_limit;
mod request;
pub mod rotating;
pub mod rotation;
pub mod serving;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod x509;

pub use authority::{
    Authority, CertificateSpec, KeyedCertificate, SigningKeyPair, Usage, self_signed,
};
pub use error::Error;
pub use manager::CertificateManager;

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
