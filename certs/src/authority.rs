use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// A certificate and the PEM of its private key.
#[derive(Clone, Debug)]
pub struct KeyedCertificate {
    /// The certificate, PEM encoded.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM encoded.
    pub key_pem: String,
}

/// A bare signing key pair, e.g. for service-account tokens.
#[derive(Clone, Debug)]
pub struct SigningKeyPair {
    /// The private key, PKCS#8 PEM encoded.
    pub private_pem: String,
    /// The public key, PKIX PEM encoded.
    pub public_pem: String,
}

impl SigningKeyPair {
    /// Generates a fresh ECDSA P-256 key pair.
    pub fn generate() -> Result<Self> {
        let key = generate_key("signing key")?;
        Ok(Self {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }
}

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication only.
    Client,
    /// TLS server authentication only.
    Server,
    /// Both client and server authentication (e.g. etcd peers).
    ClientAndServer,
}

/// The subject and names of a certificate to issue.
#[derive(Clone, Debug)]
pub struct CertificateSpec {
    /// The subject's common name; Kubernetes reads it as the user name.
    pub common_name: String,
    /// The subject's organizations; Kubernetes reads them as the groups.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// What the certificate may be used for.
    pub usage: Usage,
}

impl CertificateSpec {
    /// A client certificate for `common_name` in the given groups.
    pub fn client(common_name: impl Into<String>, organizations: &[&str]) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        }
    }

    /// A serving certificate for the given names and addresses.
    pub fn server(common_name: impl Into<String>, dns_names: &[&str], ips: &[IpAddr]) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: Vec::new(),
            dns_names: dns_names.iter().map(|d| d.to_string()).collect(),
            ip_addresses: ips.to_vec(),
            usage: Usage::Server,
        }
    }

    fn params(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&self.common_name, &self.organizations);
        params.subject_alt_names = self
            .dns_names
            .iter()
            .map(|name| {
                name.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| Error::Generate {
                        what: format!("DNS name {name:?}"),
                        source,
                    })
            })
            .chain(
                self.ip_addresses
                    .iter()
                    .map(|ip| Ok(SanType::IpAddress(*ip))),
            )
            .collect::<Result<_>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match self.usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ClientAndServer => vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A certificate authority: a self-signed CA certificate and its key.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Generates a new CA with the given common name.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = generate_key("CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(|source| Error::Generate {
            what: format!("CA certificate {common_name:?}"),
            source,
        })?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM encoded (controllers that sign CSRs need it).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a PKCS #10 request as a cluster signer would, keeping the requester's key.
    #[cfg(test)]
    pub(crate) fn sign_request(
        &self,
        request: &rcgen::CertificateSigningRequestParams,
    ) -> Result<String> {
        request
            .signed_by(&self.issuer)
            .map(|cert| cert.pem())
            .map_err(|source| Error::Generate {
                what: "certificate for a request".into(),
                source,
            })
    }

    /// Issues a certificate for `spec` that expired long ago.
    #[cfg(test)]
    pub(crate) fn issue_expired(&self, spec: &CertificateSpec) -> Result<KeyedCertificate> {
        let mut params = spec.params()?;
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params, &spec.common_name)
    }

    /// Issues a certificate for `spec` valid from now for `lifetime` only: one a test
    /// watches expire.
    pub fn issue_valid_for(
        &self,
        spec: &CertificateSpec,
        lifetime: std::time::Duration,
    ) -> Result<KeyedCertificate> {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
        let mut params = spec.params()?;
        params.not_before = now;
        params.not_after = now + lifetime;
        self.sign(params, &spec.common_name)
    }

    /// Issues a certificate for `spec` with a freshly generated key.
    pub fn issue(&self, spec: &CertificateSpec) -> Result<KeyedCertificate> {
        self.sign(spec.params()?, &spec.common_name)
    }

    /// Signs `params` for a freshly generated key.
    fn sign(&self, params: CertificateParams, common_name: &str) -> Result<KeyedCertificate> {
        let key = generate_key(&format!("key for {common_name}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| Error::Generate {
                what: format!("certificate for {common_name}"),
                source,
            })?;
        Ok(KeyedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Issues a self-signed certificate for `spec`, the way a kubelet without a configured
/// serving certificate makes its own.
pub fn self_signed(spec: &CertificateSpec) -> Result<KeyedCertificate> {
    let key = generate_key(&format!("key for {}", spec.common_name))?;
    let cert = spec
        .params()?
        .self_signed(&key)
        .map_err(|source| Error::Generate {
            what: format!("self-signed certificate for {}", spec.common_name),
            source,
        })?;
    Ok(KeyedCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn generate_key(what: &str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|source| Error::Generate {
        what: what.to_string(),
        source,
    })
}

fn distinguished_name(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for org in organizations {
        name.push(DnType::OrganizationName, org.as_str());
    }
    name.push(DnType::CommonName, common_name);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::{parse_x509_certificate, pem::parse_x509_pem};

    fn parse(pem: &str) -> Vec<u8> {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("valid PEM");
        pem.contents
    }

    #[test]
    fn issued_client_certificate_carries_user_and_groups_and_chains_to_the_ca() {
        let ca = Authority::generate("test-ca").unwrap();
        let issued = ca
            .issue(&CertificateSpec::client(
                "system:node:edge-1",
                &["system:nodes"],
            ))
            .unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let subject = cert.subject().to_string();
        assert!(subject.contains("CN=system:node:edge-1"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
        let ca_der = parse(ca.cert_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn serving_certificate_lists_dns_and_ip_names() {
        let ca = Authority::generate("test-ca").unwrap();
        let issued = ca
            .issue(&CertificateSpec::server(
                "kube-apiserver",
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
            ))
            .unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(
            sans.contains(&GeneralName::DNSName("localhost")),
            "{sans:?}"
        );
        assert!(
            sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "{sans:?}"
        );
    }

    #[test]
    fn invalid_dns_name_is_an_error_not_a_panic() {
        let spec = CertificateSpec::server("x", &["bäd.example"], &[]);
        assert!(self_signed(&spec).is_err());
    }
}
