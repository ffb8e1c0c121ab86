use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certs::CertificateSpec;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{Cluster, KubeConfigOptions, Kubeconfig, NamedCluster};

use crate::kubeconfig::{write_cert_kubeconfig, write_token_kubeconfig};
use crate::pki::ClusterPki;
use crate::ports::free_port;
use crate::process::Supervised;

/// How long the node lifecycle controller waits for a heartbeat before marking a node
/// NotReady. The default is 40 s; tests want it short, but it must stay well above the
/// Lease's 10 s renew interval or healthy nodes would flap.
pub const NODE_MONITOR_GRACE_PERIOD: Duration = Duration::from_secs(16);

/// A running etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1.
/// Dropping it stops all four (by PID) and removes its directory.
pub struct ControlPlane {
    // Field order is drop order: processes stop before their directory goes.
    scheduler: Option<Supervised>,
    controller_manager: Option<Supervised>,
    apiserver: Option<Supervised>,
    etcd: Option<Supervised>,
    pki: ClusterPki,
    bin_dir: PathBuf,
    api_port: u16,
    etcd_port: u16,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts a control plane and waits until the apiserver's `/readyz` passes and the
    /// controllers are up.
    pub async fn start() -> anyhow::Result<Self> {
        // Ports are picked free and then handed to the processes, so a parallel test can take
        // one in between; that loses a race, not the test: start again on new ports.
        let mut attempt = 1;
        loop {
            match Self::start_on_fresh_ports().await {
                Err(err)
                    if attempt < 3 && format!("{err:#}").contains("address already in use") =>
                {
                    eprintln!(
                        "control plane lost a port race (attempt {attempt}); retrying: {err:#}"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_on_fresh_ports() -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin_dir = control_plane_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("wasmlet-e2e-").tempdir()?;
        let pki = ClusterPki::generate(&dir.path().join("pki"))?;
        let mut plane = Self {
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
            pki,
            bin_dir,
            api_port: free_port()?,
            etcd_port: free_port()?,
            dir,
        };
        plane.write_kubeconfigs()?;
        plane.etcd = Some(plane.spawn_etcd()?);
        plane.start_apiserver().await?;
        plane.controller_manager = Some(plane.spawn_controller_manager()?);
        plane.scheduler = Some(plane.spawn_scheduler()?);
        plane.wait_for_controllers().await?;
        plane.set_up_joining().await?;
        eprintln!(
            "control plane up on https://127.0.0.1:{} in {:.1} s (dir {})",
            plane.api_port,
            started.elapsed().as_secs_f64(),
            plane.dir.path().display()
        );
        Ok(plane)
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The apiserver's URL.
    pub fn server_url(&self) -> String {
        format!("https://{}", self.api_addr())
    }

    /// The apiserver's address, for a [`CloudLink`](crate::CloudLink) to relay to.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.api_port))
    }

    /// The directory that holds this plane's PKI, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for node `name` with a client cert in `system:nodes`, the identity
    /// Node authorization and NodeRestriction expect.
    pub fn node_kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.node_kubeconfig_via(name, &self.server_url())
    }

    /// [`node_kubeconfig`](Self::node_kubeconfig) reaching the apiserver at `server`, e.g.
    /// through a [`CloudLink`](crate::CloudLink).
    pub fn node_kubeconfig_via(&self, name: &str, server: &str) -> anyhow::Result<PathBuf> {
        let id = format!("node-{name}");
        self.pki.issue_to(
            &id,
            &CertificateSpec::client(format!("system:node:{name}"), &["system:nodes"]),
        )?;
        let path = self.dir.path().join(format!("{id}.kubeconfig"));
        write_cert_kubeconfig(
            &path,
            server,
            &self.pki.cert("ca"),
            &self.pki.cert(&id),
            &self.pki.key(&id),
        )?;
        Ok(path)
    }

    /// Leaves node `name` as TLS bootstrap would have, but with a client certificate that
    /// ends `lifetime` from now: the certificate and its key in
    /// `<data_dir>/pki/kubelet-client-current.pem`, where wasmlet keeps the one it was
    /// issued, and a kubeconfig at `kubeconfig` naming that file and reaching the apiserver
    /// at `server`. Returns when the certificate ends.
    pub fn node_with_expiring_certificate(
        &self,
        name: &str,
        data_dir: &Path,
        kubeconfig: &Path,
        server: &str,
        lifetime: std::time::Duration,
    ) -> anyhow::Result<std::time::SystemTime> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let issued = self.pki.ca.issue_valid_for(
            &CertificateSpec::client(format!("system:node:{name}"), &["system:nodes"]),
            lifetime,
        )?;
        let pki = data_dir.join("pki");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&pki)?;
        let current = std::path::absolute(pki.join("kubelet-client-current.pem"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&current)?;
        std::io::Write::write_all(
            &mut file,
            format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes(),
        )?;
        write_cert_kubeconfig(kubeconfig, server, &self.pki.cert("ca"), &current, &current)?;
        let info = certs::x509::CertInfo::from_pem(&issued.cert_pem)?;
        Ok(info.not_after)
    }

    /// The cluster CA certificate (it signs every client and serving certificate, including
    /// the ones the controller manager issues for approved CSRs).
    pub fn ca_cert(&self) -> PathBuf {
        self.pki.cert("ca")
    }

    /// What `kubeadm init` sets up for nodes to join: the `cluster-info` ConfigMap in
    /// `kube-public` (the API server's address and CA, which the bootstrap signer signs for
    /// each signing token), anonymous read access to it, and the ClusterRoleBindings that
    /// let bootstrap tokens request node client certificates that kube-controller-manager
    /// approves, and nodes renew their own.
    async fn set_up_joining(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        for (name, group, role) in BOOTSTRAP_BINDINGS {
            let binding = ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: role.to_string(),
                },
                subjects: Some(vec![Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Group".into(),
                    name: group.to_string(),
                    namespace: None,
                }]),
            };
            create_if_missing(&kube::Api::all(client.clone()), &binding).await?;
        }
        let ca = std::fs::read(self.pki.cert("ca"))?;
        let kubeconfig = Kubeconfig {
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            clusters: vec![NamedCluster {
                name: String::new(),
                cluster: Some(Cluster {
                    server: Some(self.server_url()),
                    certificate_authority_data: Some(STANDARD.encode(ca)),
                    ..Cluster::default()
                }),
                ..NamedCluster::default()
            }],
            ..Kubeconfig::default()
        };
        let public = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-public".into()),
            ..ObjectMeta::default()
        };
        let config_map = ConfigMap {
            metadata: public("cluster-info"),
            data: Some(BTreeMap::from([(
                "kubeconfig".to_string(),
                serde_yaml::to_string(&kubeconfig)?,
            )])),
            ..ConfigMap::default()
        };
        create_if_missing(
            &kube::Api::namespaced(client.clone(), "kube-public"),
            &config_map,
        )
        .await?;
        let role_name = "kubeadm:bootstrap-signer-clusterinfo";
        let role = Role {
            metadata: public(role_name),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec!["cluster-info".into()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            }]),
        };
        create_if_missing(&kube::Api::namespaced(client.clone(), "kube-public"), &role).await?;
        let binding = RoleBinding {
            metadata: public(role_name),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: role_name.into(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "User".into(),
                name: "system:anonymous".into(),
                namespace: None,
            }]),
        };
        create_if_missing(&kube::Api::namespaced(client, "kube-public"), &binding).await
    }

    /// The line `kubeadm token create --print-join-command` prints for this cluster (a new
    /// bootstrap token each call), from the real kubeadm built beside the control plane.
    pub fn join_command(&self) -> anyhow::Result<String> {
        let output = Command::new(self.bin_dir.join("kubeadm"))
            .args(["token", "create", "--print-join-command", "--kubeconfig"])
            .arg(self.admin_kubeconfig())
            .output()
            .context("run kubeadm (e2e/scripts/install-deps.sh builds it)")?;
        if !output.status.success() {
            bail!(
                "kubeadm token create failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    /// Writes a kubeconfig that authenticates with a new bootstrap token
    /// (`system:bootstrap:<id>`, groups `system:bootstrappers` and
    /// `system:bootstrappers:wasmlet`), as an operator who sets up TLS bootstrap by hand
    /// would. Calling it again adds another token.
    pub async fn bootstrap_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.bootstrap_kubeconfig_via(&self.server_url()).await
    }

    /// [`bootstrap_kubeconfig`](Self::bootstrap_kubeconfig) reaching the apiserver at
    /// `server`, e.g. through a [`CloudLink`](crate::CloudLink).
    pub async fn bootstrap_kubeconfig_via(&self, server: &str) -> anyhow::Result<PathBuf> {
        let client = self.client().await?;
        let id = random_token_chars(6)?;
        let secret = random_token_chars(16)?;
        let token = Secret {
            metadata: ObjectMeta {
                name: Some(format!("bootstrap-token-{id}")),
                namespace: Some("kube-system".into()),
                ..ObjectMeta::default()
            },
            type_: Some("bootstrap.kubernetes.io/token".into()),
            string_data: Some(BTreeMap::from([
                ("token-id".to_string(), id.clone()),
                ("token-secret".to_string(), secret.clone()),
                (
                    "usage-bootstrap-authentication".to_string(),
                    "true".to_string(),
                ),
                (
                    "auth-extra-groups".to_string(),
                    "system:bootstrappers:wasmlet".to_string(),
                ),
                (
                    "description".to_string(),
                    "wasmlet e2e bootstrap token".to_string(),
                ),
            ])),
            ..Secret::default()
        };
        create_if_missing(&kube::Api::namespaced(client, "kube-system"), &token).await?;
        let path = self.dir.path().join(format!("bootstrap-{id}.kubeconfig"));
        write_token_kubeconfig(
            &path,
            server,
            &self.pki.cert("ca"),
            &format!("{id}.{secret}"),
        )?;
        Ok(path)
    }

    /// The certificate signing requests for `signer` made by `username`, oldest first.
    pub async fn csrs(
        &self,
        signer: &str,
        username: &str,
    ) -> anyhow::Result<Vec<CertificateSigningRequest>> {
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(self.client().await?);
        let mut csrs: Vec<_> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|csr| {
                csr.spec.signer_name == signer && csr.spec.username.as_deref() == Some(username)
            })
            .collect();
        csrs.sort_by_key(|csr| csr.metadata.creation_timestamp.clone());
        Ok(csrs)
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(self.admin_kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops the apiserver, as a network partition or control-plane upgrade would.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.take();
    }

    /// Starts the apiserver again on the same port and waits for it to be ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            self.apiserver_command(),
            &self.log("kube-apiserver"),
        )?;
        self.apiserver = Some(apiserver);
        self.wait_for_readyz().await
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn write_kubeconfigs(&self) -> anyhow::Result<()> {
        for name in ["admin", "controller-manager", "scheduler"] {
            write_cert_kubeconfig(
                &self.dir.path().join(format!("{name}.kubeconfig")),
                &self.server_url(),
                &self.pki.cert("ca"),
                &self.pki.cert(name),
                &self.pki.key(name),
            )?;
        }
        Ok(())
    }

    fn spawn_etcd(&self) -> anyhow::Result<Supervised> {
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new("etcd");
        etcd.arg("--name=e2e")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("etcd").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            .arg("--log-level=warn")
            // Tests create and delete; fsync on every write only slows them.
            .arg("--unsafe-no-fsync");
        Supervised::spawn("etcd", etcd, &self.log("etcd"))
    }

    fn apiserver_command(&self) -> Command {
        let pki = &self.pki;
        let mut cmd = Command::new(self.bin_dir.join("kube-apiserver"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={}", self.api_port))
        // 1.20 still opens an unauthenticated port 8080 unless told not to, and two
        // planes side by side would fight over it.
        .arg("--insecure-port=0")
        .arg(format!(
            "--cert-dir={}",
            self.dir.path().join("apiserver-certs").display()
        ))
        .arg(format!(
            "--tls-cert-file={}",
            pki.cert("apiserver").display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.key("apiserver").display()
        ))
        .arg(format!("--client-ca-file={}", pki.cert("ca").display()))
        .arg("--authorization-mode=Node,RBAC")
        .arg("--enable-admission-plugins=NodeRestriction")
        .arg("--enable-bootstrap-token-auth=true")
        .arg(format!(
            "--kubelet-client-certificate={}",
            pki.cert("apiserver-kubelet-client").display()
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            pki.key("apiserver-kubelet-client").display()
        ))
        // Verify the kubelet's serving certificate, as a hardened cluster does: `kubectl logs`
        // works only once the node's kubelet-serving CSR is approved and its cert served.
        .arg(format!(
            "--kubelet-certificate-authority={}",
            pki.cert("ca").display()
        ))
        .arg("--kubelet-preferred-address-types=InternalIP,Hostname")
        .arg(format!(
            "--service-account-key-file={}",
            pki.dir.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.dir.join("sa.key").display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        // The `kubernetes` Service's endpoints would be 127.0.0.1, which validation rejects.
        .arg("--endpoint-reconciler-type=none")
        .arg("--allow-privileged=true")
        .arg("--profiling=false");
        cmd
    }

    fn spawn_controller_manager(&self) -> anyhow::Result<Supervised> {
        let pki = &self.pki;
        let mut cmd = Command::new(self.bin_dir.join("kube-controller-manager"));
        cmd.arg(format!(
            "--kubeconfig={}",
            self.dir
                .path()
                .join("controller-manager.kubeconfig")
                .display()
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()?))
        .arg("--port=0")
        .arg(format!(
            "--cert-dir={}",
            self.dir.path().join("controller-manager-certs").display()
        ))
        .arg("--leader-elect=false")
        .arg("--controllers=*,bootstrapsigner,tokencleaner")
        .arg(format!(
            "--cluster-signing-cert-file={}",
            pki.cert("ca").display()
        ))
        .arg(format!(
            "--cluster-signing-key-file={}",
            pki.key("ca").display()
        ))
        .arg(format!("--root-ca-file={}", pki.cert("ca").display()))
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.dir.join("sa.key").display()
        ))
        .arg("--use-service-account-credentials=true")
        .arg(format!(
            "--node-monitor-grace-period={}s",
            NODE_MONITOR_GRACE_PERIOD.as_secs()
        ))
        .arg("--node-monitor-period=2s")
        .arg("--cluster-name=wasmlet-e2e");
        Supervised::spawn(
            "kube-controller-manager",
            cmd,
            &self.log("kube-controller-manager"),
        )
    }

    fn spawn_scheduler(&self) -> anyhow::Result<Supervised> {
        let mut cmd = Command::new(self.bin_dir.join("kube-scheduler"));
        cmd.arg(format!(
            "--kubeconfig={}",
            self.dir.path().join("scheduler.kubeconfig").display()
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()?))
        .arg("--port=0")
        .arg(format!(
            "--cert-dir={}",
            self.dir.path().join("scheduler-certs").display()
        ))
        .arg("--leader-elect=false");
        Supervised::spawn("kube-scheduler", cmd, &self.log("kube-scheduler"))
    }

    async fn wait_for_readyz(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::new();
        while Instant::now() < deadline {
            for process in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
                if let Some(status) = process.exited() {
                    bail!(
                        "{} exited with {status} while starting; log {}:\n{}",
                        process.log_path().display(),
                        status,
                        process.log_tail(30)
                    );
                }
            }
            match self.readyz().await {
                Ok(()) => return Ok(()),
                Err(err) => last = format!("{err:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let tail = self
            .apiserver
            .as_ref()
            .map(|a| a.log_tail(30))
            .unwrap_or_default();
        bail!("kube-apiserver not ready after 90 s: {last}\n{tail}")
    }

    async fn readyz(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let request = http::Request::get("/readyz").body(Vec::new())?;
        let text = client.request_text(request).await.context("GET /readyz")?;
        if text.trim() == "ok" {
            Ok(())
        } else {
            bail!("/readyz says {text}")
        }
    }

    /// The controllers are up once the service-account controller has made the default
    /// ServiceAccount: pods cannot be created before that.
    async fn wait_for_controllers(&mut self) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.client().await?, "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for process in [&mut self.controller_manager, &mut self.scheduler]
                .into_iter()
                .flatten()
            {
                if let Some(status) = process.exited() {
                    bail!(
                        "{} exited with {status}:\n{}",
                        process.log_path().display(),
                        process.log_tail(30)
                    );
                }
            }
            if let Ok(Some(_)) = accounts.get_opt("default").await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the controller manager made no default ServiceAccount within 60 s")
    }

    /// PIDs of the running processes, for tools that report what they started.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [
            ("etcd", &self.etcd),
            ("kube-apiserver", &self.apiserver),
            ("kube-controller-manager", &self.controller_manager),
            ("kube-scheduler", &self.scheduler),
        ]
        .into_iter()
        .filter_map(|(name, p)| p.as_ref().map(|p| (name, p.pid())))
        .collect()
    }
}

/// The ClusterRoleBindings kubeadm creates for TLS bootstrap: (name, group, ClusterRole).
const BOOTSTRAP_BINDINGS: [(&str, &str, &str); 3] = [
    (
        "wasmlet:kubelet-bootstrap",
        "system:bootstrappers",
        "system:node-bootstrapper",
    ),
    (
        "wasmlet:node-autoapprove-bootstrap",
        "system:bootstrappers",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
    ),
    (
        "wasmlet:node-autoapprove-certificate-rotation",
        "system:nodes",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
    ),
];

async fn create_if_missing<K>(api: &kube::Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&Default::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e)
            .with_context(|| format!("create {}", object.meta().name.clone().unwrap_or_default())),
    }
}

/// `n` random characters of `[a-z0-9]`, the alphabet of bootstrap tokens.
fn random_token_chars(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Where the control-plane binaries are: `$WASMLET_K8S_BIN`, else the newest build in the
/// install script's cache.
fn control_plane_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMLET_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("WASMLET_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/wasmlet"),
    };
    let found = std::fs::read_dir(&cache)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("kube-apiserver").exists())
        .max();
    found.with_context(|| {
        format!(
            "no control-plane build in {}; run e2e/scripts/install-deps.sh first",
            cache.display()
        )
    })
}
