//! A certificate that can be replaced while it is in use.
//!
//! rustls asks its resolver for a certificate at every handshake, so swapping the one held
//! here changes what the *next* handshake presents. Connections already established keep
//! the keys they negotiated and are never interrupted by a swap.

use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::SignatureScheme;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::{Error, Result};

/// The certificate and key to present, replaceable at any time. It resolves both server
/// certificates (the kubelet API) and client certificates (the node's identity towards the
/// API server).
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RotatingCert {
    /// Starts with the given PEM certificate chain and key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Ok(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        })
    }

    /// Presents `cert_pem` and `key_pem` from the next handshake on. A pair that does not
    /// parse, or whose key does not match the certificate, is refused and the current one
    /// stays.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let next = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// What the next handshake presents.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let (chain, key) = crate::tls::parse_pair(cert_pem, key_pem)?;
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(Error::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    fn loopback_cert(ca: &Authority, cn: &str) -> crate::KeyedCertificate {
        ca.issue(&CertificateSpec::server(
            cn,
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ))
        .unwrap()
    }

    #[test]
    fn mismatched_pair_is_refused_and_the_current_one_stays() {
        let ca = Authority::generate("ca").unwrap();
        let one = loopback_cert(&ca, "one");
        let two = loopback_cert(&ca, "two");
        let rotating = RotatingCert::new(&one.cert_pem, &one.key_pem).unwrap();
        let before = rotating.current();
        assert!(rotating.set(&two.cert_pem, &one.key_pem).is_err());
        assert!(rotating.set("", &two.key_pem).is_err());
        assert!(Arc::ptr_eq(&before, &rotating.current()));
    }

    /// A loopback TLS echo server on the kubelet's config: each connection echoes lines.
    async fn echo_server(rotating: Arc<RotatingCert>, ca_pem: &str) -> std::net::SocketAddr {
        let config = crate::tls::kubelet_server_config(rotating, ca_pem).unwrap();
        crate::testing::tls_server(config, |mut tls| async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
        .await
    }

    async fn connect(
        addr: std::net::SocketAddr,
        ca_pem: &str,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
            .await
            .unwrap()
    }

    fn presented(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
        let leaf: &CertificateDer = &tls.get_ref().1.peer_certificates().unwrap()[0];
        crate::x509::CertInfo::from_der(leaf).unwrap().common_name
    }

    async fn echo(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, text: &str) {
        tls.write_all(text.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; text.len()];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, text.as_bytes());
    }

    #[tokio::test]
    async fn a_swap_reaches_new_handshakes_and_leaves_open_connections_alone() {
        let ca = Authority::generate("ca").unwrap();
        let first = loopback_cert(&ca, "first");
        let second = loopback_cert(&ca, "second");
        let rotating = Arc::new(RotatingCert::new(&first.cert_pem, &first.key_pem).unwrap());
        let addr = echo_server(rotating.clone(), ca.cert_pem()).await;

        let mut old = connect(addr, ca.cert_pem()).await;
        assert_eq!(presented(&old), "first");
        echo(&mut old, "before").await;

        rotating.set(&second.cert_pem, &second.key_pem).unwrap();

        let mut new = connect(addr, ca.cert_pem()).await;
        assert_eq!(
            presented(&new),
            "second",
            "a new handshake gets the new cert"
        );
        echo(&mut new, "new").await;
        echo(&mut old, "still open").await;
        assert_eq!(presented(&old), "first");
    }
}
