//! TLS bootstrap: from a bootstrap kubeconfig (a bootstrap token) to the node's own
//! client certificate and kubeconfig, as `kubelet --bootstrap-kubeconfig` does.
//!
//! The bootstrap identity (`system:bootstrap:<token-id>`, in `system:bootstrappers`) may
//! only create and watch CSRs. It submits a `kubernetes.io/kube-apiserver-client-kubelet`
//! request for `system:node:<name>`; kube-controller-manager approves it when the group is
//! bound to the `nodeclient` ClusterRole, and signs it. The certificate and its key go to
//! `<pki>/kubelet-client-current.pem`, and the kubeconfig written to `--kubeconfig` names that
//! file and carries the bootstrap kubeconfig's server and CA.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::csr::NodeCertificate;
use crate::files::write_atomically;
use crate::manager::{Requester, obtain};
use crate::rate_limit::ApiRateLimit;
use crate::store::CertStore;
use crate::x509::CertInfo;
use crate::{Error, Result};

/// Why the kubeconfig at `path` cannot be used as it is (missing, unreadable, or a client
/// certificate that is unreadable or outside its validity), or `None` when it can. A
/// kubeconfig without a client certificate (a token, say) is usable.
pub fn kubeconfig_unusable(path: &Path) -> Option<String> {
    let kubeconfig = match Kubeconfig::read_from(path) {
        Ok(kubeconfig) => kubeconfig,
        Err(e) => return Some(format!("cannot read it ({e})")),
    };
    let Some(user) = current_user(&kubeconfig) else {
        return Some("its current context names no user".into());
    };
    let pem = if let Some(data) = &user.client_certificate_data {
        match base64::engine::general_purpose::STANDARD.decode(data.trim()) {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("its client-certificate-data is not base64 ({e})")),
        }
    } else if let Some(file) = &user.client_certificate {
        match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("cannot read its client certificate {file} ({e})")),
        }
    } else {
        return None;
    };
    let info = match CertInfo::from_pem(&String::from_utf8_lossy(&pem)) {
        Ok(info) => info,
        Err(e) => return Some(format!("its client certificate is unreadable ({e})")),
    };
    if !info.is_valid_at(SystemTime::now()) {
        let until = jiff::Timestamp::try_from(info.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default();
        return Some(format!(
            "its client certificate is not valid now (valid until {until})"
        ));
    }
    None
}

/// A bootstrap kubeconfig, read and checked at start-up (before any request).
#[derive(Clone, Debug)]
pub struct Bootstrap {
    path: PathBuf,
    kubeconfig: Kubeconfig,
    cluster: Cluster,
}

impl Bootstrap {
    /// Reads the bootstrap kubeconfig at `path`; it must name a cluster with a server.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Kubeconfig {
            path: path.to_path_buf(),
            reason,
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let cluster = current_cluster(&kubeconfig)
            .ok_or_else(|| bad("its current context names no cluster".into()))?;
        if cluster.server.as_deref().is_none_or(str::is_empty) {
            return Err(bad("its cluster has no server".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            kubeconfig,
            cluster,
        })
    }

    /// Obtains the node's client certificate with the bootstrap credentials (or reuses a
    /// valid one stored by an earlier run) and writes the node kubeconfig to `kubeconfig`.
    /// Waits as long as it takes; `false` when cancelled first.
    pub async fn run(
        &self,
        kubeconfig: &Path,
        pki_dir: &Path,
        node_name: &str,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let cert = NodeCertificate::client(node_name);
        let store = CertStore::client(pki_dir);
        let reusable = store.load_current().filter(|stored| {
            stored.info.is_valid_at(SystemTime::now()) && cert.is_satisfied_by(&stored.info)
        });
        if reusable.is_some() {
            info!(path = %store.current_path().display(), "reusing the client certificate issued earlier");
        } else {
            let client = self.client(ApiRateLimit::default()).await?;
            info!(
                bootstrap_kubeconfig = %self.path.display(),
                "requesting a client certificate for {} with the bootstrap credentials",
                cert.common_name()
            );
            let api = kube::Api::all(client);
            if obtain(&Requester::only(&api), &cert, &store, cancel)
                .await
                .is_none()
            {
                return Ok(false);
            }
        }
        self.write_kubeconfig(kubeconfig, &store.current_path())?;
        info!(kubeconfig = %kubeconfig.display(), "wrote the node kubeconfig");
        Ok(true)
    }

    /// A client with the bootstrap credentials, over the API connector and within `limit`.
    /// It makes no request.
    pub async fn client(&self, limit: ApiRateLimit) -> Result<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            self.kubeconfig.clone(),
            &KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| Error::Kubeconfig {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        crate::client::api_client(&config, limit)
    }

    /// The node kubeconfig: the bootstrap cluster (its CA inlined, so the file does not
    /// depend on the bootstrap kubeconfig staying around) and the client certificate file.
    fn write_kubeconfig(&self, path: &Path, cert_file: &Path) -> Result<()> {
        let bad = |reason: String| Error::Kubeconfig {
            path: path.to_path_buf(),
            reason,
        };
        let mut cluster = self.cluster.clone();
        if let Some(ca_file) = cluster.certificate_authority.take() {
            let ca = std::fs::read(&ca_file).map_err(|source| Error::Io {
                action: "failed to read the bootstrap CA",
                path: PathBuf::from(&ca_file),
                source,
            })?;
            cluster.certificate_authority_data =
                Some(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let cert_file = std::path::absolute(cert_file)
            .map_err(|e| {
                bad(format!(
                    "cannot make {} absolute ({e})",
                    cert_file.display()
                ))
            })?
            .display()
            .to_string();
        let user = AuthInfo {
            client_certificate: Some(cert_file.clone()),
            client_key: Some(cert_file),
            ..AuthInfo::default()
        };
        write_single_kubeconfig(path, cluster, user)
    }
}

/// Writes (owner-only, atomically) a kubeconfig with one cluster, one user and the context
/// that joins them.
pub(crate) fn write_single_kubeconfig(path: &Path, cluster: Cluster, user: AuthInfo) -> Result<()> {
    let kubeconfig = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(user),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("default-context".into()),
        ..Kubeconfig::default()
    };
    let text = serde_saphyr::to_string(&kubeconfig).map_err(|e| Error::Kubeconfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomically(path, &text)
}

fn current_context(kubeconfig: &Kubeconfig) -> Option<&Context> {
    let name = kubeconfig.current_context.as_deref()?;
    kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()
}

pub(crate) fn current_cluster(kubeconfig: &Kubeconfig) -> Option<Cluster> {
    let name = &current_context(kubeconfig)?.cluster;
    kubeconfig
        .clusters
        .iter()
        .find(|c| &c.name == name)?
        .cluster
        .clone()
}

fn current_user(kubeconfig: &Kubeconfig) -> Option<&AuthInfo> {
    let name = current_context(kubeconfig)?.user.as_deref()?;
    kubeconfig
        .auth_infos
        .iter()
        .find(|a| a.name == name)?
        .auth_info
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};

    fn bootstrap_file(dir: &Path, ca: &Authority) -> PathBuf {
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let path = dir.join("bootstrap.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: {}\nusers:\n- name: b\n  user:\n    token: abcdef.0123456789abcdef\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: b\ncurrent-context: x\n",
                ca_path.display()
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn a_missing_or_expired_kubeconfig_needs_bootstrap_and_a_token_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("ca").unwrap();
        assert!(kubeconfig_unusable(&dir.path().join("nope")).is_some());
        let bootstrap = bootstrap_file(dir.path(), &ca);
        assert_eq!(kubeconfig_unusable(&bootstrap), None, "a token is usable");
        std::fs::write(dir.path().join("junk"), "{{{").unwrap();
        assert!(kubeconfig_unusable(&dir.path().join("junk")).is_some());
    }

    #[tokio::test]
    async fn a_stored_certificate_is_reused_and_the_kubeconfig_points_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("ca").unwrap();
        let bootstrap = Bootstrap::read(&bootstrap_file(dir.path(), &ca)).unwrap();
        let pki = dir.path().join("pki");
        let store = CertStore::client(&pki);
        let issued = ca
            .issue(&CertificateSpec::client(
                "system:node:edge-1",
                &["system:nodes"],
            ))
            .unwrap();
        store
            .save_current(&issued.cert_pem, &issued.key_pem)
            .unwrap();
        let kubeconfig = dir.path().join("node.kubeconfig");
        assert!(kubeconfig_unusable(&kubeconfig).is_some());
        // No API server exists: the stored certificate must be enough.
        let done = bootstrap
            .run(&kubeconfig, &pki, "edge-1", &CancellationToken::new())
            .await
            .unwrap();
        assert!(done);
        assert_eq!(kubeconfig_unusable(&kubeconfig), None);
        let written = Kubeconfig::read_from(&kubeconfig).unwrap();
        let user = current_user(&written).unwrap();
        let path = std::path::absolute(store.current_path())
            .unwrap()
            .display()
            .to_string();
        assert_eq!(user.client_certificate.as_deref(), Some(path.as_str()));
        assert_eq!(user.client_key.as_deref(), Some(path.as_str()));
        let cluster = current_cluster(&written).unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert!(cluster.certificate_authority.is_none());
        assert!(cluster.certificate_authority_data.is_some(), "CA inlined");
        let config = kube::Config::from_custom_kubeconfig(written, &KubeConfigOptions::default())
            .await
            .expect("kube reads what was written");
        assert_eq!(config.root_cert.unwrap().len(), 1);
    }

    #[test]
    fn a_bootstrap_kubeconfig_without_a_server_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: none\n",
        )
        .unwrap();
        let err = Bootstrap::read(&path).unwrap_err().to_string();
        assert!(err.contains("names no cluster"), "{err}");
        assert!(Bootstrap::read(&dir.path().join("missing")).is_err());
    }
}
