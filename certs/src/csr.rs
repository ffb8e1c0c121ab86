//! What a node asks the cluster to sign: the PKCS #10 request, the CertificateSigningRequest
//! object around it, and its deterministic name.

use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};

use crate::x509::CertInfo;
use crate::{Error, Result};

/// The signer of kubelet serving certificates; the cluster's approvers decide (in most
/// clusters an administrator with `kubectl certificate approve`).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer of kubelet client certificates; kube-controller-manager approves them for
/// bootstrappers (`nodeclient`) and for nodes renewing their own (`selfnodeclient`).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Which of its two certificates a node asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The kubelet API's serving certificate.
    Serving,
    /// The node's client certificate for the API server.
    Client,
}

/// A node certificate to request: the subject is always `system:node:<name>` in
/// `system:nodes`, as the Node authorizer and both kubelet signers require.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    kind: Kind,
    node_name: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

impl NodeCertificate {
    /// A serving certificate for the node's host name(s) and address(es).
    pub fn serving(node_name: &str, dns_names: &[String], ip_addresses: &[IpAddr]) -> Self {
        let mut dns: Vec<String> = Vec::new();
        for name in dns_names {
            if !name.is_empty() && !dns.contains(name) {
                dns.push(name.clone());
            }
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in ip_addresses {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        Self {
            kind: Kind::Serving,
            node_name: node_name.to_string(),
            dns_names: dns,
            ip_addresses: ips,
        }
    }

    /// A client certificate; the client signer forbids subject alternative names.
    pub fn client(node_name: &str) -> Self {
        Self {
            kind: Kind::Client,
            node_name: node_name.to_string(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// Serving or client.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The signer name the CSR addresses.
    pub fn signer(&self) -> &'static str {
        match self.kind {
            Kind::Serving => KUBELET_SERVING_SIGNER,
            Kind::Client => KUBELET_CLIENT_SIGNER,
        }
    }

    /// `system:node:<name>`.
    pub fn common_name(&self) -> String {
        format!("system:node:{}", self.node_name)
    }

    /// What the certificate is called in logs.
    pub fn what(&self) -> &'static str {
        match self.kind {
            Kind::Serving => "serving certificate",
            Kind::Client => "client certificate",
        }
    }

    /// The usages the signers insist on, exactly.
    pub fn usages(&self) -> Vec<String> {
        let purpose = match self.kind {
            Kind::Serving => "server auth",
            Kind::Client => "client auth",
        };
        ["digital signature", "key encipherment", purpose]
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The CSR object's name: a digest of the signer, the node and the public key, so a
    /// restart that still holds the same pending key finds the CSR it already submitted.
    /// Client CSRs are called `node-csr-…` as the kubelet's are.
    pub fn csr_name(&self, key: &KeyPair) -> String {
        use ring::digest::{Context, SHA256};
        let mut digest = Context::new(&SHA256);
        for part in [
            self.signer().as_bytes(),
            self.node_name.as_bytes(),
            &key.subject_public_key_info(),
        ] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        let hex: String = digest.finish().as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match self.kind {
            Kind::Serving => format!("kubelet-serving-{hex}"),
            Kind::Client => format!("node-csr-{hex}"),
        }
    }

    /// The PKCS #10 request, signed with `key`, PEM encoded.
    pub fn request_pem(&self, key: &KeyPair) -> Result<String> {
        let what = || format!("certificate request for {}", self.common_name());
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "system:nodes");
        name.push(DnType::CommonName, self.common_name());
        params.distinguished_name = name;
        for dns in &self.dns_names {
            let san = dns
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| Error::Generate {
                    what: format!("DNS name {dns:?} of the {}", self.what()),
                    source,
                })?;
            params.subject_alt_names.push(san);
        }
        params
            .subject_alt_names
            .extend(self.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let request = params
            .serialize_request(key)
            .map_err(|source| Error::Generate {
                what: what(),
                source,
            })?;
        request.pem().map_err(|source| Error::Generate {
            what: what(),
            source,
        })
    }

    /// The CertificateSigningRequest to create.
    pub fn object(&self, key: &KeyPair) -> Result<CertificateSigningRequest> {
        Ok(CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(self.csr_name(key)),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(self.request_pem(key)?.into_bytes()),
                signer_name: self.signer().to_string(),
                usages: Some(self.usages()),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        })
    }

    /// Whether an existing certificate says what a new one would: the same subject and at
    /// least the wanted names. A node whose address changed needs a new serving certificate.
    pub fn is_satisfied_by(&self, info: &CertInfo) -> bool {
        info.common_name == self.common_name()
            && info.organizations.iter().any(|o| o == "system:nodes")
            && self.dns_names.iter().all(|d| info.dns_names.contains(d))
            && self
                .ip_addresses
                .iter()
                .all(|ip| info.ip_addresses.contains(ip))
    }
}

/// The raw public key of `key`, as a certificate's SubjectPublicKeyInfo carries it.
pub(crate) fn public_key(key: &KeyPair) -> Vec<u8> {
    key.der_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    fn serving() -> NodeCertificate {
        NodeCertificate::serving(
            "edge-1",
            &["edge-1.lab".to_string()],
            &["10.0.0.7".parse().unwrap()],
        )
    }

    fn parse_request(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        pem.contents
    }

    #[test]
    fn serving_request_has_the_node_subject_and_its_names() {
        let key = KeyPair::generate().unwrap();
        let der = parse_request(&serving().request_pem(&key).unwrap());
        let (_, request) = X509CertificationRequest::from_der(&der).unwrap();
        request
            .verify_signature()
            .expect("self-signed with the key");
        let info = &request.certification_request_info;
        assert_eq!(
            info.subject.to_string(),
            "O=system:nodes, CN=system:node:edge-1"
        );
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            public_key(&key).as_slice()
        );
        let sans: Vec<String> = request
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, vec!["dns:edge-1.lab", "ip:[10, 0, 0, 7]"]);
    }

    #[test]
    fn client_request_has_no_alternative_names() {
        let key = KeyPair::generate().unwrap();
        let der = parse_request(&NodeCertificate::client("edge-1").request_pem(&key).unwrap());
        let (_, request) = X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(
            request.certification_request_info.subject.to_string(),
            "O=system:nodes, CN=system:node:edge-1"
        );
        let has_san = request
            .requested_extensions()
            .into_iter()
            .flatten()
            .any(|ext| matches!(ext, ParsedExtension::SubjectAlternativeName(_)));
        assert!(!has_san);
    }

    #[test]
    fn object_names_the_signer_and_the_exact_usages() {
        let key = KeyPair::generate().unwrap();
        let csr = serving().object(&key).unwrap();
        assert_eq!(csr.spec.signer_name, "kubernetes.io/kubelet-serving");
        assert_eq!(
            csr.spec.usages.unwrap(),
            vec!["digital signature", "key encipherment", "server auth"]
        );
        assert!(
            csr.spec.expiration_seconds.is_none(),
            "1.20 does not know it"
        );
        let client = NodeCertificate::client("edge-1").object(&key).unwrap();
        assert_eq!(
            client.spec.signer_name,
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            client.spec.usages.unwrap(),
            vec!["digital signature", "key encipherment", "client auth"]
        );
        assert!(client.metadata.name.unwrap().starts_with("node-csr-"));
    }

    #[test]
    fn name_depends_on_key_signer_and_node_only() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let name = serving().csr_name(&key);
        assert!(name.starts_with("kubelet-serving-"), "{name}");
        assert_eq!(name, serving().csr_name(&key), "same key, same name");
        let reloaded = KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(name, serving().csr_name(&reloaded), "survives a restart");
        assert_ne!(name, serving().csr_name(&other));
        assert_ne!(
            name,
            NodeCertificate::serving("edge-2", &[], &[]).csr_name(&key)
        );
        assert_ne!(
            name.trim_start_matches("kubelet-serving-"),
            NodeCertificate::client("edge-1")
                .csr_name(&key)
                .trim_start_matches("node-csr-")
        );
    }

    #[test]
    fn a_certificate_for_another_address_does_not_satisfy() {
        let ca = crate::Authority::generate("ca").unwrap();
        let mut spec = crate::CertificateSpec::server(
            "system:node:edge-1",
            &["edge-1.lab"],
            &["10.0.0.7".parse().unwrap()],
        );
        spec.organizations = vec!["system:nodes".into()];
        let good = CertInfo::from_pem(&ca.issue(&spec).unwrap().cert_pem).unwrap();
        assert!(serving().is_satisfied_by(&good));
        spec.ip_addresses = vec!["10.0.0.8".parse().unwrap()];
        let moved = CertInfo::from_pem(&ca.issue(&spec).unwrap().cert_pem).unwrap();
        assert!(!serving().is_satisfied_by(&moved));
    }
}
