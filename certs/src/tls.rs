//! rustls configurations built from PEM.

use std::sync::Arc;

use tokio_rustls::rustls::{
    self, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer},
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    fn empty_certificate_is_rejected() {
        let pair = self_signed(&CertificateSpec::server("x", &["localhost"], &[])).unwrap();
        assert!(matches!(
            server_config("", &pair.key_pem),
            Err(Error::Pem { .. })
        ));
    }
}
