//! Keys, certificates and rustls configurations for wasmlet.
//!
//! This crate owns everything that turns key material into something a TLS stack can use:
//! - [`Authority`]: a certificate authority that issues client and serving certificates
//!   (the e2e harness builds a whole cluster PKI with it);
//! - [`serving`]: the kubelet's serving certificate, kept in the data dir;
//! - [`tls`]: rustls configurations built from PEM.
//!
//! It never talks to the API server; callers hand it bytes and get bytes back.
#![deny(missing_docs)]

mod authority;
mod error;
pub mod serving;
pub mod tls;

pub use authority::{
    Authority, CertificateSpec, KeyedCertificate, SigningKeyPair, Usage, self_signed,
};
pub use error::Error;

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
