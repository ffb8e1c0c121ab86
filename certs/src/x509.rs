//! Reading certificates and certificate requests: the facts wasmlet decides on (names,
//! validity, public key), parsed with an X.509 parser independent of the one that made them.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{Error, Result};

/// What wasmlet needs to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (the Kubernetes user name).
    pub common_name: String,
    /// The subject's organizations (the Kubernetes groups).
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// The start of validity.
    pub not_before: SystemTime,
    /// The end of validity.
    pub not_after: SystemTime,
    /// The subject public key (the bit string inside SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// Reads the first certificate of a PEM chain (the leaf).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = first_certificate_der(pem)?;
        Self::from_der(&der)
    }

    /// Reads one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Pem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
        let name = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            iter.filter_map(|attr| attr.as_str().ok().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(sans)) = cert.subject_alternative_name() {
            for general in &sans.value.general_names {
                match general {
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            common_name: name(&mut cert.subject().iter_common_name())
                .into_iter()
                .next()
                .unwrap_or_default(),
            organizations: name(&mut cert.subject().iter_organization()),
            dns_names,
            ip_addresses,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The DER of the first CERTIFICATE block in `pem`.
pub(crate) fn first_certificate_der(pem: &str) -> Result<Vec<u8>> {
    let first = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| Error::Pem {
            what: "certificate".into(),
            reason: "no CERTIFICATE block".into(),
        })?
        .map_err(|e| Error::Pem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
    Ok(first.to_vec())
}

/// The subject public key of a PEM certificate request (PKCS #10).
pub(crate) fn request_public_key(pem: &[u8]) -> Result<Vec<u8>> {
    let invalid = |reason: String| Error::Pem {
        what: "certificate request".into(),
        reason,
    };
    let mut reader = pem;
    let der = rustls_pemfile::read_all(&mut reader)
        .find_map(|item| match item {
            Ok(rustls_pemfile::Item::Csr(der)) => Some(Ok(der)),
            Ok(_) => None,
            Err(e) => Some(Err(invalid(e.to_string()))),
        })
        .unwrap_or_else(|| Err(invalid("no CERTIFICATE REQUEST block".into())))?;
    let (_, request) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|e| invalid(e.to_string()))?;
    Ok(request
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};

    #[test]
    fn reads_names_validity_and_key_of_an_issued_certificate() {
        let ca = Authority::generate("ca").unwrap();
        let issued = ca
            .issue(&CertificateSpec::server(
                "system:node:edge-1",
                &["edge-1"],
                &["127.0.0.1".parse().unwrap()],
            ))
            .unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.common_name, "system:node:edge-1");
        assert_eq!(info.dns_names, vec!["edge-1"]);
        assert_eq!(
            info.ip_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(info.is_valid_at(SystemTime::now()));
        let key = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(info.public_key, rcgen::PublicKeyData::der_bytes(&key));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CertInfo::from_pem("").is_err());
        assert!(
            CertInfo::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(request_public_key(b"nope").is_err());
    }
}
