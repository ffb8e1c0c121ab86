//! rustls configurations built from PEM.

use std::sync::Arc;

use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::{ResolvesServerCert, WebPkiClientVerifier},
};

use crate::{Error, Result};

/// Parses a PEM certificate chain and private key into rustls types.
pub fn parse_pair(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what: "certificate".into(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| Error::Pem {
            what: "private key".into(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| Error::Pem {
            what: "private key".into(),
            reason: "no PRIVATE KEY block".into(),
        })?;
    Ok((certs, key))
}

/// A rustls server configuration that presents `cert_pem` and offers HTTP/2 and HTTP/1.1.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let (certs, key) = parse_pair(cert_pem, key_pem)?;
    let mut config = builder()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(Error::Tls)?;
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// The kubelet API's configuration: the certificate comes from `certificates` at each
/// handshake (so a rotated one is served without a restart), and a client certificate is
/// verified against `client_ca_pem` when one is offered. Clients without one are let through
/// the handshake: they may still carry a bearer token, and the API answers 401 otherwise.
pub fn kubelet_server_config(
    certificates: Arc<dyn ResolvesServerCert>,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Pem {
            what: "client CA".into(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(Error::Tls)?;
    }
    if roots.is_empty() {
        return Err(Error::Pem {
            what: "client CA".into(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Pem {
            what: "client CA".into(),
            reason: e.to_string(),
        })?;
    let mut config = builder()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// DER certificates as one PEM bundle.
pub fn pem_from_der(ders: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut pem = String::new();
    for der in ders {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)
}

fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateSpec, self_signed};

    #[test]
    fn server_config_accepts_a_generated_pair() {
        let pair = self_signed(&CertificateSpec::server("x", &["localhost"], &[])).unwrap();
        assert!(server_config(&pair.cert_pem, &pair.key_pem).is_ok());
    }

    #[test]
    fn der_certificates_round_trip_through_pem() {
        let pair = self_signed(&CertificateSpec::server("x", &["localhost"], &[])).unwrap();
        let der = crate::x509::first_certificate_der(&pair.cert_pem).unwrap();
        let pem = pem_from_der(&[der.clone(), der.clone()]);
        let back: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(back, vec![der.clone(), der]);
    }

    #[test]
    fn empty_certificate_is_rejected() {
        let pair = self_signed(&CertificateSpec::server("x", &["localhost"], &[])).unwrap();
        assert!(matches!(
            server_config("", &pair.key_pem),
            Err(Error::Pem { .. })
        ));
    }
}
