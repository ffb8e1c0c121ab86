//! The one place registry clients are made.

use std::time::Duration;

use oci_client::Client;
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};

use crate::Error;

/// A registry client speaking `protocol`, or why there can be none: a machine without CA
/// certificates, say (`Client::new` would then make a default client, which panics for the
/// same reason). Reads the system's CA certificates: blocking.
pub(crate) fn new_client(protocol: ClientProtocol) -> Result<Client, OciDistributionError> {
    install_crypto_provider();
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    })
}

/// The HTTP client a pull speaks to registries with ([`crate::registry`]), or why there can
/// be none. Reads the system's CA certificates: blocking.
pub(crate) fn new_http() -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("wasmlet/", env!("CARGO_PKG_VERSION")))
        .build()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// reqwest's rustls uses the process-wide crypto provider and panics without one, so this
/// installs ring's when none is set: a library must not make its callers remember that.
fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing one is fine: there is one either way.
        let _ = ring::default_provider().install_default();
    }
}

/// `make` (a client for pulling or pushing `reference`) on the blocking pool; the error says
/// why with its causes (reqwest's own says only "builder error").
pub(crate) async fn off_runtime<T, E>(
    reference: &Reference,
    make: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Error>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let why = |err: &dyn std::error::Error| Error::Registry {
        reference: reference.whole(),
        message: format!("cannot make a registry client: {}", causes(err)),
    };
    match tokio::task::spawn_blocking(make).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(why(&err)),
        Err(err) => Err(why(&err)),
    }
}

/// The error for a request to `registry` that got no answer (`err`: it could not connect,
/// or timed out): a refused certificate, or else an unreachable registry, each with the
/// deepest cause, which is what says what to fix ("Connection refused", "UnknownIssuer").
pub(crate) fn no_answer(registry: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    let registry = registry.to_string();
    match refused_certificate(err) {
        Some(refused) => Error::UntrustedCertificate {
            registry,
            reason: refused.to_string(),
        },
        None => Error::RegistryUnreachable {
            registry,
            reason: std::iter::successors(Some(err), |err| err.source())
                .last()
                .map_or_else(|| err.to_string(), ToString::to_string),
        },
    }
}

/// The certificate error rustls ended the handshake with, if it did. The connectors wrap it
/// in `io::Error`s, whose `source` skips the error they wrap, so those are looked into.
fn refused_certificate<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_rustls::rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<tokio_rustls::rustls::Error>() {
            return matches!(tls, tokio_rustls::rustls::Error::InvalidCertificate(_))
                .then_some(tls);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// `err` and its causes, as one line: reqwest's own errors name only what failed ("builder
/// error", "error sending request for url …"), their causes why.
pub(crate) fn causes(err: &dyn std::error::Error) -> String {
    let causes: Vec<String> = std::iter::successors(Some(err), |err| err.source())
        .map(ToString::to_string)
        .collect();
    causes.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process of the test below, which runs without CA certificates.
    const CHILD: &str = "WASMLET_OCI_TEST_NO_CA_CERTIFICATES";

    #[test]
    fn without_ca_certificates_there_is_no_client_and_no_panic() {
        if std::env::var_os(CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let reference: Reference = "registry.example/app:1".parse().unwrap();
            let err = runtime
                .block_on(off_runtime(&reference, || {
                    new_client(ClientProtocol::Https)
                }))
                .err()
                .expect("no push client without CA certificates");
            assert!(
                err.to_string().contains("No CA certificates were loaded"),
                "{err}"
            );
            let err = runtime
                .block_on(off_runtime(&reference, new_http))
                .expect_err("no pull client without CA certificates");
            assert!(
                err.to_string().contains("No CA certificates were loaded"),
                "{err}"
            );
            return;
        }
        // The CA certificates are read from these when they are set, and only from them.
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "client::tests::without_ca_certificates_there_is_no_client_and_no_panic",
                "--exact",
            ])
            .env(CHILD, "1")
            .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&child.stderr)
        );
    }
}
