use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::Signal;

use crate::control_plane::ControlPlane;
use crate::kubectl::Kubectl;
use crate::link::CloudLink;
use crate::ports::free_port;
use crate::process::Supervised;
use crate::wait::wait_for;

/// The arguments of a `kubeadm join …` line (as `kubeadm token create
/// --print-join-command` prints it, continuation backslashes and all) after `kubeadm join`.
pub fn join_arguments(line: &str) -> anyhow::Result<Vec<String>> {
    let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "\\").collect();
    match words.as_slice() {
        ["kubeadm", "join", rest @ ..] => Ok(rest.iter().map(|w| w.to_string()).collect()),
        _ => bail!("not a kubeadm join line: {line}"),
    }
}

/// How a test wants its node started.
#[derive(Clone, Debug)]
pub struct WasmletOptions {
    /// The Node's name; also names its data dir, so a restart with the same name reuses it.
    pub node_name: String,
    /// `--node-labels`.
    pub node_labels: String,
    /// `--max-pods`.
    pub max_pods: u32,
    /// `--insecure-registries`.
    pub insecure_registries: Vec<String>,
    /// `--eviction-hard`.
    pub eviction_hard: String,
    /// `--system-reserved`; `None` reserves nothing.
    pub system_reserved: Option<String>,
    /// Join with only this bootstrap kubeconfig (`--bootstrap-kubeconfig`): wasmlet requests
    /// its client certificate and writes its own kubeconfig. `None`: the plane issues the
    /// node's kubeconfig directly.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Join with `wasmlet join` and the line `kubeadm token create --print-join-command`
    /// printed ([`ControlPlane::join_command`]), `kubeadm join` and all: wasmlet finds the
    /// cluster, writes its bootstrap kubeconfig and kubeconfig in its data dir, and gets its
    /// client certificate. Only the node's own flags (name, address, port, data dir) are
    /// added.
    pub join_line: Option<String>,
    /// `--sync-frequency`; `None` keeps wasmlet's default (1m).
    pub sync_frequency: Option<String>,
    /// Reach the API server through a [`CloudLink`] the node owns, so a test can cut the
    /// node off while the control plane runs on ([`WasmletNode::uplink`]).
    pub behind_link: bool,
    /// `--data-dir`; `None`: a directory of the plane's, named after the node.
    pub data_dir: Option<PathBuf>,
    /// `--static-pods`.
    pub static_pods: Option<PathBuf>,
    /// `--outbound-http-allow-networks`: tests that serve HTTP on 127.0.0.1 open it.
    pub outbound_http_allow_networks: Option<String>,
    /// `--device`, once per entry.
    pub devices: Vec<String>,
    /// `--sysfs-root`.
    pub sysfs_root: Option<PathBuf>,
    /// `RUST_LOG`: by default the agent's and the WASI provider's debug lines, which tests
    /// wait for; a benchmark asks for less, since each line costs CPU.
    pub log_filter: String,
    /// The address space wasmlet may take, in bytes (`ulimit -v`, set by `prlimit`); `None`
    /// leaves the test's own.
    pub address_space: Option<u64>,
    /// `SSL_CERT_FILE`: the CA certificates wasmlet trusts for registries, in place of the
    /// system's, as an operator whose registry has a private CA may set it.
    pub ca_certificates: Option<PathBuf>,
}

/// What tests log: the agent's and the WASI provider's debug lines.
const TEST_LOG: &str = "info,kubelet=debug,wasi_provider=debug";

impl WasmletOptions {
    /// Defaults for a node called `name`.
    pub fn named(name: &str) -> Self {
        Self {
            node_name: name.to_string(),
            node_labels: String::new(),
            max_pods: 110,
            insecure_registries: Vec::new(),
            // The kubelet's 10% default would follow the shared disk the tests run on:
            // CI machines have been seen with under 10% of it free, which is DiskPressure,
            // a taint, and pods that never schedule. Tests that want pressure ask for it.
            eviction_hard: "nodefs.available<64Mi".into(),
            system_reserved: None,
            bootstrap_kubeconfig: None,
            join_line: None,
            sync_frequency: None,
            behind_link: false,
            data_dir: None,
            static_pods: None,
            outbound_http_allow_networks: None,
            devices: Vec::new(),
            sysfs_root: None,
            log_filter: TEST_LOG.into(),
            address_space: None,
            ca_certificates: None,
        }
    }
}

/// A running `wasmlet` process joined to a [`ControlPlane`] with a node identity
/// (`system:node:<name>`). Dropping it stops it.
pub struct WasmletNode {
    // Dropped first, so wasmlet stops before its link does.
    process: Supervised,
    link: Option<CloudLink>,
    /// The kubelet API port.
    pub port: u16,
    /// The node's name.
    pub name: String,
    data_dir: PathBuf,
    kubeconfig: PathBuf,
    /// How it was started, for [`WasmletNode::restart_with`].
    args: Vec<std::ffi::OsString>,
    address_space: Option<u64>,
    /// Its environment (`RUST_LOG`, `SSL_CERT_FILE`).
    env: Vec<(String, std::ffi::OsString)>,
    log: PathBuf,
}

impl WasmletNode {
    /// Starts wasmlet for `options` against `plane`. It does not wait for the node to
    /// register; tests wait for what they want to see.
    pub fn start(plane: &ControlPlane, options: &WasmletOptions) -> anyhow::Result<Self> {
        let name = &options.node_name;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| plane.dir().join("nodes").join(name));
        let link = options
            .behind_link
            .then(|| CloudLink::to(plane.api_addr()))
            .transpose()?;
        let kubeconfig = match (&options.join_line, &options.bootstrap_kubeconfig) {
            // `wasmlet join` writes it in the data dir.
            (Some(_), _) => data_dir.join("kubeconfig"),
            // wasmlet writes this one itself.
            (None, Some(_)) => plane.dir().join("nodes").join(format!("{name}.kubeconfig")),
            (None, None) => match &link {
                Some(link) => plane.node_kubeconfig_via(name, &link.url())?,
                None => plane.node_kubeconfig(name)?,
            },
        };
        let port = free_port()?;
        let mut cmd = wasmlet_command(options.address_space)?;
        let wrapper_args = cmd.get_args().count();
        let mut env = vec![("RUST_LOG".to_string(), options.log_filter.clone().into())];
        if let Some(certificates) = &options.ca_certificates {
            env.push((
                "SSL_CERT_FILE".into(),
                certificates.clone().into_os_string(),
            ));
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        match &options.join_line {
            Some(line) => {
                cmd.arg("join").args(join_arguments(line)?);
            }
            None => {
                cmd.arg("--kubeconfig").arg(&kubeconfig);
            }
        }
        if let Some(bootstrap) = &options.bootstrap_kubeconfig {
            cmd.arg("--bootstrap-kubeconfig").arg(bootstrap);
        }
        if let Some(manifests) = &options.static_pods {
            cmd.arg("--static-pods").arg(manifests);
        }
        if let Some(networks) = &options.outbound_http_allow_networks {
            cmd.arg(format!("--outbound-http-allow-networks={networks}"));
        }
        for device in &options.devices {
            cmd.arg("--device").arg(device);
        }
        if let Some(root) = &options.sysfs_root {
            cmd.arg("--sysfs-root").arg(root);
        }
        cmd.args([
            "--node-name",
            name,
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
        ])
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--max-pods")
        .arg(options.max_pods.to_string())
        .arg("--node-labels")
        .arg(&options.node_labels)
        .arg(format!(
            "--insecure-registries={}",
            options.insecure_registries.join(",")
        ))
        .arg(format!("--eviction-hard={}", options.eviction_hard))
        .args(
            options
                .system_reserved
                .iter()
                .map(|reserved| format!("--system-reserved={reserved}")),
        )
        .args(
            options
                .sync_frequency
                .iter()
                .map(|period| format!("--sync-frequency={period}")),
        );
        let args = cmd
            .get_args()
            .skip(wrapper_args)
            .map(ToOwned::to_owned)
            .collect();
        let log = plane.dir().join(format!("wasmlet-{name}-{port}.log"));
        let process = Supervised::spawn("wasmlet", cmd, &log)?;
        Ok(Self {
            process,
            link,
            port,
            name: name.clone(),
            data_dir,
            kubeconfig,
            args,
            address_space: options.address_space,
            env,
            log,
        })
    }

    /// Stops wasmlet with `signal` (SIGKILL for a crash) and starts it again with the same
    /// flags, data dir and link (still cut, if it was). Its log goes on in the same file.
    pub fn restart_with(&mut self, signal: Signal) -> anyhow::Result<()> {
        self.stop_with(signal)?;
        let mut cmd = wasmlet_command(self.address_space)?;
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args);
        let log = self.log.with_extension(format!(
            "restart-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ));
        self.process = Supervised::spawn("wasmlet", cmd, &log)?;
        self.log = log;
        Ok(())
    }

    /// Runs a wasmlet tool against this node's data dir (`ps`, `logs POD`), as an operator on
    /// the device would, and returns what it printed; fails with its stderr if it failed.
    pub fn tool(&self, args: &[&str]) -> anyhow::Result<String> {
        run_tool(&self.data_dir, args)
    }

    /// The kubeconfig it runs with (written by wasmlet itself when it bootstrapped).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where wasmlet keeps the serving certificate the cluster issued (certificate and key).
    pub fn serving_cert_path(&self) -> PathBuf {
        self.data_dir.join("pki").join("kubelet-server-current.pem")
    }

    /// Whether the kubelet API presents a certificate that chains to `ca` and names
    /// 127.0.0.1, i.e. what an API server started with `--kubelet-certificate-authority`
    /// accepts. An error means no TLS handshake could even start (nothing listening yet).
    pub async fn serves_cert_signed_by(&self, ca: &Path) -> anyhow::Result<bool> {
        use std::sync::Arc;
        use tokio_rustls::rustls::{self, pki_types::ServerName};
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
        match tokio::time::timeout(Duration::from_secs(5), handshake).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => bail!("TLS handshake with wasmlet timed out"),
        }
    }

    /// Waits until the Node's Ready condition is True, failing with wasmlet's log.
    pub async fn wait_ready(&self, kubectl: &Kubectl, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("node {} to be Ready", self.name), timeout, || {
            let ready = kubectl.run(&[
                "get",
                "node",
                &self.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            async move {
                ready
                    .map(|s| (s == "True").then_some(()))
                    .map_err(|e| e.to_string())
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nwasmlet log:\n{}", self.log_tail(30)))
    }

    /// Waits for the node's pending kubelet-serving CSR (made as `system:node:<name>`),
    /// approves it with `kubectl certificate approve` as an administrator would, and waits
    /// until the kubelet API presents the issued certificate. Returns the CSR's name.
    pub async fn approve_serving_certificate(
        &self,
        plane: &ControlPlane,
        kubectl: &Kubectl,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let name = self.pending_serving_csr(plane, timeout).await?;
        kubectl.run(&["certificate", "approve", &name])?;
        self.wait_serving_issued_cert(plane, timeout).await?;
        Ok(name)
    }

    /// Waits until the kubelet API presents a certificate signed by the cluster CA.
    pub async fn wait_serving_issued_cert(
        &self,
        plane: &ControlPlane,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let ca = plane.ca_cert();
        wait_for(
            "wasmlet to serve a certificate the cluster signed",
            timeout,
            || async {
                match self.serves_cert_signed_by(&ca).await {
                    Ok(served) => Ok(served.then_some(())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nwasmlet log:\n{}", self.log_tail(30)))
    }

    /// Waits for a kubelet-serving CSR of this node that nobody has answered yet.
    pub async fn pending_serving_csr(
        &self,
        plane: &ControlPlane,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let username = format!("system:node:{}", self.name);
        wait_for("the node's serving CSR", timeout, || async {
            let csrs = plane
                .csrs(certs::csr::KUBELET_SERVING_SIGNER, &username)
                .await
                .map_err(|e| e.to_string())?;
            Ok(csrs
                .into_iter()
                .find(|csr| {
                    csr.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_none_or(|c| c.is_empty())
                })
                .and_then(|csr| csr.metadata.name))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nwasmlet log:\n{}", self.log_tail(20)))
    }

    /// Sends SIGTERM and returns the exit status, failing if wasmlet has not exited in 10 s.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.stop_with(Signal::TERM)
    }

    /// Sends `signal` and returns the exit status, failing if wasmlet has not exited in 10 s.
    pub fn stop_with(&mut self, signal: Signal) -> anyhow::Result<ExitStatus> {
        match self
            .process
            .signal_and_wait(signal, Duration::from_secs(10))
        {
            Some(status) => Ok(status),
            None => bail!(
                "wasmlet did not exit within 10 s of {signal:?}:\n{}",
                self.log_tail(20)
            ),
        }
    }

    /// The node's link to its API server, to cut and restore; only for a node started
    /// [`behind_link`](WasmletOptions::behind_link).
    pub fn uplink(&self) -> anyhow::Result<&CloudLink> {
        self.link
            .as_ref()
            .context("this node was not started behind_link")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.exited().is_none()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The log file of one container instance of pod `uid`, as wasmlet writes it.
    pub fn container_log_path(&self, uid: &str, container: &str, restart: u32) -> PathBuf {
        self.data_dir
            .join("pods")
            .join(uid)
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// The directory holding all of pod `uid`'s logs.
    pub fn pod_logs_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid).join("logs")
    }
}

/// The wasmlet binary: `$WASMLET_BIN`, else the one cargo built beside this test executable
/// (`target/<profile>/wasmlet`). The test command builds it first.
pub fn wasmlet_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("WASMLET_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let candidate = exe
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("wasmlet"))
        .find(|path| path.is_file())
        .context("no wasmlet binary near the test executable; run `cargo build --bin wasmlet` or set WASMLET_BIN")?;
    Ok(candidate)
}

/// Where Debian's cross toolchain keeps the aarch64 C library: the root qemu-user gives an
/// aarch64 binary.
const AARCH64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The aarch64 wasmlet under qemu-user: `$WASMLET_AARCH64_BIN`, else the CI build
/// (`target/aarch64-unknown-linux-gnu/aarch64-ci/wasmlet`) beside this test executable's
/// target directory. The test command builds it first.
pub fn emulated_aarch64_wasmlet() -> anyhow::Result<Command> {
    let binary = match std::env::var_os("WASMLET_AARCH64_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => std::env::current_exe()?
            .ancestors()
            .map(|dir| dir.join("aarch64-unknown-linux-gnu/aarch64-ci/wasmlet"))
            .find(|path| path.is_file())
            .context(
                "no aarch64 wasmlet in target/; run `cargo build --profile aarch64-ci \
                 --target aarch64-unknown-linux-gnu --bin wasmlet` or set WASMLET_AARCH64_BIN",
            )?,
    };
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg("-L").arg(AARCH64_SYSROOT).arg(binary);
    Ok(cmd)
}

/// The command that runs wasmlet, held to `address_space` bytes if given.
fn wasmlet_command(address_space: Option<u64>) -> anyhow::Result<Command> {
    Ok(match address_space {
        Some(bytes) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--as={bytes}"))
                .arg("--")
                .arg(wasmlet_binary()?);
            cmd
        }
        None => Command::new(wasmlet_binary()?),
    })
}

/// Runs `wasmlet <tool> --data-dir <data_dir> <rest>` and returns what it printed.
fn run_tool(data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let (command, rest) = args.split_first().context("no tool named")?;
    let output = Command::new(wasmlet_binary()?)
        .arg(command)
        .arg("--data-dir")
        .arg(data_dir)
        .args(rest)
        .output()?;
    if !output.status.success() {
        bail!(
            "wasmlet {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A `wasmlet` with no API server at all: it runs the static pods in its manifest directory.
/// Dropping it stops it and removes its directory.
pub struct StandaloneWasmlet {
    process: Supervised,
    dir: tempfile::TempDir,
}

impl StandaloneWasmlet {
    /// Starts `wasmlet --static-pods <dir>/manifests --data-dir <dir>/data` with no kubeconfig,
    /// as node `name`, pulling over plain HTTP from `insecure_registries`.
    pub fn start(name: &str, insecure_registries: &[String]) -> anyhow::Result<Self> {
        Self::start_as(Command::new(wasmlet_binary()?), name, insecure_registries)
    }

    /// As [`start`](Self::start), run by `cmd` instead of the native binary: an emulator
    /// with the binary it runs, say.
    pub fn start_as(
        mut cmd: Command,
        name: &str,
        insecure_registries: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("manifests"))?;
        cmd.env("RUST_LOG", "info,kubelet=debug")
            .env_remove("KUBECONFIG")
            .env("HOME", dir.path())
            .args(["--node-name", name, "--node-ip", "127.0.0.1"])
            .arg("--static-pods")
            .arg(dir.path().join("manifests"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg(format!(
                "--insecure-registries={}",
                insecure_registries.join(",")
            ));
        let process = Supervised::spawn("wasmlet", cmd, &dir.path().join("wasmlet.log"))?;
        Ok(Self { process, dir })
    }

    /// Where its static pod manifests go.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Its data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a wasmlet tool (`ps`, `logs POD`) against its data dir.
    pub fn tool(&self, args: &[&str]) -> anyhow::Result<String> {
        run_tool(&self.data_dir(), args)
    }

    /// Stops it with SIGTERM, leaving its directory for another wasmlet to take on; fails if
    /// it has not exited within 10 s.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.process
            .signal_and_wait(Signal::TERM, Duration::from_secs(10))
            .with_context(|| format!("wasmlet did not stop:\n{}", self.log_tail(20)))
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// The `wasmlet ps` row of `pod`'s (only) container, split into its columns: namespace, pod,
/// phase, container, state, restarts, age, source.
pub fn ps_row(ps: &str, pod: &str) -> Option<Vec<String>> {
    ps.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.get(1).map(String::as_str) == Some(pod))
}
