use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use certs::{Authority, CertificateSpec, KeyedCertificate, SigningKeyPair};

/// The certificates a control plane needs, written as PEM files into one directory.
pub(crate) struct ClusterPki {
    pub(crate) dir: PathBuf,
    pub(crate) ca: Authority,
}

impl ClusterPki {
    /// A fresh CA plus the apiserver's serving cert, the service-account keys, and client
    /// certs for the admin, controller-manager, scheduler and the apiserver-to-kubelet client.
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = Authority::generate("wasmlet-e2e-ca")?;
        write(&dir.join("ca.crt"), ca.cert_pem())?;
        write(&dir.join("ca.key"), &ca.key_pem())?;
        let loopback: IpAddr = "127.0.0.1".parse()?;
        let service_ip: IpAddr = "10.96.0.1".parse()?;
        let pki = Self {
            dir: dir.to_path_buf(),
            ca,
        };
        pki.issue_to(
            "apiserver",
            &CertificateSpec::server(
                "kube-apiserver",
                &[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                &[loopback, service_ip],
            ),
        )?;
        pki.issue_to(
            "admin",
            &CertificateSpec::client("kubernetes-admin", &["system:masters"]),
        )?;
        pki.issue_to(
            "controller-manager",
            &CertificateSpec::client("system:kube-controller-manager", &[]),
        )?;
        pki.issue_to(
            "scheduler",
            &CertificateSpec::client("system:kube-scheduler", &[]),
        )?;
        pki.issue_to(
            "apiserver-kubelet-client",
            &CertificateSpec::client("kube-apiserver-kubelet-client", &["system:masters"]),
        )?;
        let sa = SigningKeyPair::generate()?;
        write(&dir.join("sa.key"), &sa.private_pem)?;
        write(&dir.join("sa.pub"), &sa.public_pem)?;
        Ok(pki)
    }

    /// Issues `spec` and writes it as `<name>.crt` and `<name>.key`.
    pub(crate) fn issue_to(&self, name: &str, spec: &CertificateSpec) -> anyhow::Result<()> {
        let KeyedCertificate { cert_pem, key_pem } = self.ca.issue(spec)?;
        write(&self.cert(name), &cert_pem)?;
        write(&self.key(name), &key_pem)
    }

    pub(crate) fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    pub(crate) fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}
