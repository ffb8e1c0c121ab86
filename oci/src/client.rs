//! The one place registry clients are made.

use std::time::Duration;

use oci_client::Client;
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use tokio_rustls::rustls;
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

/// Why a request got no answer (it could not connect, or timed out).
pub(crate) enum NoAnswer {
    /// rustls refused the server's certificate: what it found wrong, and for an unknown CA
    /// what to do.
    Certificate(String),
    /// Anything else, as its deepest cause says it ("Connection refused"): the outer
    /// layers only say which request failed.
    Unreachable(String),
}

impl NoAnswer {
    pub(crate) fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        match refused_certificate(err) {
            Some(
                refused
                @ rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ) => Self::Certificate(format!(
                "{refused} (the CA that issued it is not among the node's CA certificates)"
            )),
            Some(refused) => Self::Certificate(refused.to_string()),
            None => Self::Unreachable(
                std::iter::successors(Some(err), |err| err.source())
                    .last()
                    .unwrap_or(err)
                    .to_string(),
            ),
        }
    }
}

/// The error for a request to `registry` that got no answer: a refused certificate, or
/// else an unreachable registry.
pub(crate) fn no_answer(registry: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    let registry = registry.to_string();
    match NoAnswer::of(err) {
        NoAnswer::Certificate(reason) => Error::UntrustedCertificate { registry, reason },
        NoAnswer::Unreachable(reason) => Error::RegistryUnreachable { registry, reason },
    }
}

/// The certificate error rustls ended the handshake with, if it did. The connectors wrap it
/// in `io::Error`s, whose `source` skips the error they wrap, so those are looked into.
fn refused_certificate<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_)).then_some(tls);
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
pub(crate) mod tests {
    use std::sync::Arc;

    use oci_client::secrets::RegistryAuth;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// `host:port` of a TLS server on 127.0.0.1 whose certificate is self-signed, so no CA
    /// the system knows issued it. It only answers handshakes: every client here refuses it.
    pub(crate) async fn self_signed_server() -> String {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let chain = vec![CertificateDer::from(certified.cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { acceptor.accept(stream).await });
            }
        });
        host
    }

    pub(crate) const UNKNOWN_CA: &str = "invalid peer certificate: UnknownIssuer (the CA that issued it is not among the node's CA certificates)";

    #[tokio::test]
    async fn a_certificate_no_known_ca_issued_is_refused_by_pull_and_push_not_unreachable() {
        let host = self_signed_server().await;
        let image = format!("{host}/app:1");
        let expected = format!("the certificate of registry {host} is refused: {UNKNOWN_CA}");

        let registry = crate::registry::Registry::new(new_http().unwrap(), Vec::new());
        let err = registry
            .manifest(&image.parse().unwrap(), &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UntrustedCertificate { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
        assert!(err.is_transient());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
        let err = crate::push::push(
            &file,
            &image,
            crate::push::PushFormat::Cncf,
            &RegistryAuth::Anonymous,
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::UntrustedCertificate { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn a_refused_certificate_is_found_under_the_io_errors_that_wrap_it_and_only_then() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refused,
        ));
        match NoAnswer::of(&wrapped) {
            NoAnswer::Certificate(why) => assert_eq!(why, "invalid peer certificate: Expired"),
            NoAnswer::Unreachable(why) => panic!("not found under the io errors: {why}"),
        }
        let refused_connection = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        match NoAnswer::of(&refused_connection) {
            NoAnswer::Unreachable(why) => assert_eq!(why, "connection refused"),
            NoAnswer::Certificate(why) => panic!("a refused connection is no certificate: {why}"),
        }
        // Another TLS failure is no verdict on the certificate.
        let protocol = std::io::Error::other(rustls::Error::DecryptError);
        assert!(matches!(NoAnswer::of(&protocol), NoAnswer::Unreachable(_)));
    }

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
