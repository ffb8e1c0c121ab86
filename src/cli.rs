//! The command-line contract (see MISSION.md) and turning it into the agent's configuration.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use certs::rate_limit::ApiRateLimit;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubelet::NodeConfig;

/// A kubelet that runs WebAssembly pods.
#[derive(Debug, Parser)]
// A flag given twice keeps the last value: the config file's settings come first.
#[command(
    name = "wasmlet",
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    /// Run a tool instead of the node agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The node agent's settings.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The node agent's settings: the flags of `wasmlet` and of `wasmlet join`, and the keys of
/// the config file.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// A YAML file (apiVersion wasmlet.dev/v1alpha1, kind WasmletConfiguration) holding any of
    /// these settings by camelCase name; flags given here override it. `wasmlet config
    /// defaults` prints a complete one
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The kubeconfig the node uses to reach the API server [default: $KUBECONFIG, then ~/.kube/config]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig with a bootstrap token: when --kubeconfig is missing or its client
    /// certificate is unusable, request a client certificate with it and write --kubeconfig
    #[arg(long, value_name = "PATH")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// CA bundle that client certificates presented to the kubelet API must chain to
    /// [default: the cluster CA of the kubeconfig]
    #[arg(long, value_name = "PATH")]
    pub client_ca_file: Option<PathBuf>,
    /// Request the kubelet API's serving certificate from the cluster (a
    /// kubernetes.io/kubelet-serving CSR) and renew it before it expires; with false, serve
    /// only the self-signed certificate
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub rotate_server_certificates: bool,
    /// The Node's name [default: the host name, lower-cased]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The address reported as InternalIP [default: the address of the default route]
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// The port of the kubelet HTTPS API
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// The address the kubelet HTTPS API listens on
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub address: IpAddr,
    /// Where wasmlet keeps its state [default: ~/.wasmlet]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The most pods this node runs
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pods: u32,
    /// Extra node labels, k=v,k2=v2
    #[arg(long, value_name = "K=V,...", default_value = "")]
    pub node_labels: String,
    /// Registries (host:port) to pull from over plain HTTP
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// When to report MemoryPressure and DiskPressure, as the kubelet's flag takes it;
    /// signals left out keep their defaults
    #[arg(
        long,
        value_name = "SIGNAL<VALUE,...",
        default_value = "memory.available<100Mi,nodefs.available<10%"
    )]
    pub eviction_hard: String,
    /// What is kept back from pods for the host, as the kubelet's flag takes it
    /// (cpu=500m,memory=1Gi,ephemeral-storage=1Gi): allocatable is capacity less these and
    /// the eviction thresholds, and all pods' memory together is held to it
    #[arg(long, value_name = "RESOURCE=QUANTITY,...", default_value = "")]
    pub system_reserved: String,
    /// A directory of static pod manifests (YAML or JSON, one or more pods per file), run
    /// with or without an API server; with no kubeconfig the node is standalone
    #[arg(long, value_name = "DIR")]
    pub static_pods: Option<PathBuf>,
    /// How often running pods' ConfigMap, Secret and service account token volumes are
    /// brought up to date, e.g. 1m or 10s
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_period)]
    pub sync_frequency: std::time::Duration,
    /// How a module or component the node has not run before is compiled:
    /// baseline-then-optimised (Winch so the pod starts at once, Cranelift in the background
    /// for later instances), optimised (Cranelift only) or baseline (Winch only)
    #[arg(
        long,
        value_name = "TIERING",
        default_value = "baseline-then-optimised"
    )]
    pub compile_tiering: wasi_provider::Tiering,
    /// A device pods may be granted (repeat for more): LABEL=gpio:gpiochip0:LINE:in|out,
    /// LABEL=i2c:i2c-1, LABEL=serial:ttyUSB0[:BAUD], LABEL=sensor:hwmon:hwmon0/temp1_input,
    /// LABEL=sensor:iio:iio:device0/in_temp, or a simulated LABEL=gpio:sim:LINE:in|out,
    /// LABEL=i2c:sim:tmp102@ADDRESS or LABEL=serial:sim. It is advertised as the extended
    /// resource peripherals.wasmlet.dev/LABEL, which a pod requests in resources.limits; a
    /// simulated device's state is in the file DATA_DIR/devices/LABEL
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<String>,
    /// Where sysfs is, for --device sensor:hwmon and sensor:iio (a fake tree in tests)
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Where the device files are, for --device gpio:CHIP, i2c:BUS and serial:PORT
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Networks (CIDRs or addresses) that pods' outbound HTTP may reach although the node
    /// refuses them by default: loopback, link-local (cloud metadata) and the node's own
    /// addresses. A pod's allowed-domains list cannot open them
    #[arg(long, value_name = "CIDR,...", default_value = "", value_parser = wasi_provider::EgressPolicy::parse)]
    pub outbound_http_allow_networks: wasi_provider::EgressPolicy,
    /// Requests per second the node sends the API server on average, as the kubelet's
    /// --kube-api-qps (the kubelet's 50 is for 110 pods; this default is for 1,000)
    #[arg(long, value_name = "QPS", default_value_t = ApiRateLimit::default().qps)]
    pub kube_api_qps: NonZeroU32,
    /// Requests the node may send at once after a quiet spell, as the kubelet's
    /// --kube-api-burst
    #[arg(long, value_name = "N", default_value_t = ApiRateLimit::default().burst)]
    pub kube_api_burst: NonZeroU32,
    /// Events the node writes per second on average, as the kubelet's --event-qps; events
    /// past it wait (in order, with the time they happened), so that a storm of starts
    /// spends the API server on the starts
    #[arg(long, value_name = "QPS", default_value_t = kubelet::events::default_limit().qps)]
    pub event_qps: NonZeroU32,
    /// Events the node may write at once after a quiet spell, as the kubelet's --event-burst
    #[arg(long, value_name = "N", default_value_t = kubelet::events::default_limit().burst)]
    pub event_burst: NonZeroU32,
    /// Log verbosity, as the kubelet's: 0-2 what an operator needs, 3-4 debugging, 5 every
    /// step, 6-7 the API client's requests, 8 and up everything. RUST_LOG, when set, wins
    #[arg(short = 'v', long = "v", value_name = "LEVEL", default_value_t = 0)]
    pub verbosity: u8,
    /// Log lines as text for a person, or as one JSON object per line for a log shipper
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured at a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// A positive duration as the kubelet's flags take it (`1m`, `10s`, `1m30s`).
fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    let parsed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 1m or 10s: {e}"))?;
    std::time::Duration::try_from(parsed)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} must be a positive duration"))
}

/// Tools that share the binary with the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a .wasm file as an OCI artifact.
    Push(PushArgs),
    /// List the node's pods and containers from its data dir (works with the agent stopped
    /// and with the cluster unreachable).
    Ps(PsArgs),
    /// Print a container's log from the node's data dir.
    Logs(LogsArgs),
    /// Join a cluster as `kubeadm join` does, from the line `kubeadm token create
    /// --print-join-command` prints, then run the agent.
    // As at the top level: the config file's settings come before the command line's.
    #[command(args_override_self = true)]
    Join(Box<JoinArgs>),
    /// The config file (`--config`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the devices this host has, with the `--device` spec that grants each.
    Devices(DevicesArgs),
}

/// `wasmlet devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Where sysfs is
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Where the device files are
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev_root: PathBuf,
}

/// `wasmlet join API_HOST:PORT --token ID.SECRET --discovery-token-ca-cert-hash sha256:HEX`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The API server, HOST:PORT
    #[arg(value_name = "API_HOST:PORT")]
    pub endpoint: String,
    /// The bootstrap token, ID.SECRET
    #[arg(long, value_name = "ID.SECRET")]
    pub token: certs::discovery::JoinToken,
    /// The SHA-256 of the cluster CA's public key (SubjectPublicKeyInfo); give it more than
    /// once to accept any of several
    #[arg(long, value_name = "sha256:HEX")]
    pub discovery_token_ca_cert_hash: Vec<certs::discovery::CaPin>,
    /// Trust the cluster CA on the token's signature alone, without a pinned hash
    #[arg(long)]
    pub discovery_token_unsafe_skip_ca_verification: bool,
    /// How long to keep trying to reach the API server
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_period)]
    pub discovery_timeout: std::time::Duration,
    /// Write the bootstrap kubeconfig and exit instead of running the agent, for a service
    /// manager to start it (the package's wasmlet.service)
    #[arg(long)]
    pub write_only: bool,
    /// The agent's settings; --bootstrap-kubeconfig and --kubeconfig default to files in the
    /// data dir
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `wasmlet config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a complete config file: every setting, its help and its default.
    Defaults,
}

/// `wasmlet ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also list pods that have finished.
    #[arg(short, long)]
    pub all: bool,
    /// Which data dir to read.
    #[command(flatten)]
    pub source: DataDirArgs,
}

/// The file wasmlet.service runs the agent with (packaging/): on a packaged install the
/// node's state is where this file says.
pub const PACKAGE_CONFIG: &str = "/etc/wasmlet/config.yaml";

/// Where `wasmlet ps` and `wasmlet logs` find the agent's data dir.
#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// The agent's data dir [default: the dataDir of --config, else ~/.wasmlet]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The agent's config file, whose dataDir is the data dir to read [default:
    /// /etc/wasmlet/config.yaml if it exists, as wasmlet.service runs the agent with it]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data dir to read: `--data-dir`; else the `dataDir` of `--config`, or of the
    /// package's config file when there is one, since an operator on a packaged install
    /// means the service's node; else the agent's own default. Whether it exists is for the
    /// reader to say.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        self.resolve_with(Path::new(PACKAGE_CONFIG))
    }

    /// [`DataDirArgs::resolve`] with the package's config file at `package`.
    fn resolve_with(&self, package: &Path) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let config = match &self.config {
            Some(path) => Some(path.as_path()),
            None => package.exists().then_some(package),
        };
        let from_file = match config {
            Some(path) => data_dir_in(path)?,
            None => None,
        };
        match from_file {
            Some(dir) => Ok(dir),
            // A file without dataDir leaves the agent on its default too.
            None => Ok(home_dir()?.join(".wasmlet")),
        }
    }
}

/// The `dataDir` of the config file at `path`, read as `wasmlet --config` reads it, so a
/// file the agent would refuse is refused here with the same message.
fn data_dir_in(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    let args = vec![
        "wasmlet".into(),
        "--config".into(),
        path.as_os_str().to_owned(),
    ];
    Ok(crate::config_file::parse_cli(args)?.cli.agent.data_dir)
}

/// `wasmlet logs POD`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod's name.
    pub pod: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// The container (needed when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Keep printing new lines until the container ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// The previous instance of the container (before its last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Which data dir to read.
    #[command(flatten)]
    pub source: DataDirArgs,
}

/// `wasmlet push FILE.wasm REGISTRY/REPO:TAG`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The module or component to publish.
    pub file: PathBuf,
    /// Where to publish it, e.g. 127.0.0.1:5000/demo/hello:v1.
    pub image: String,
    /// Speak plain HTTP to the registry.
    #[arg(long)]
    pub insecure: bool,
    /// The artifact shape.
    #[arg(long, value_enum, default_value_t = PushFormatArg::Cncf)]
    pub format: PushFormatArg,
    /// Registry user name.
    #[arg(long, env = "WASMLET_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry password (prefer the environment variable).
    #[arg(long, env = "WASMLET_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// `--format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PushFormatArg {
    /// CNCF Wasm artifact (components use the component layer type).
    Cncf,
    /// The older wasm-to-oci shape.
    WasmToOci,
}

impl PushArgs {
    /// Publishes the file and returns a one-line summary.
    pub async fn run(&self) -> anyhow::Result<String> {
        let auth = match (&self.username, &self.password) {
            (Some(user), Some(password)) => {
                oci::RegistryAuth::Basic(user.clone(), password.clone())
            }
            (None, None) => oci::RegistryAuth::Anonymous,
            _ => bail!("--username and --password go together"),
        };
        let format = match self.format {
            PushFormatArg::Cncf => oci::push::PushFormat::Cncf,
            PushFormatArg::WasmToOci => oci::push::PushFormat::WasmToOci,
        };
        let progress = upload_bar(&self.file);
        let bar = progress.clone();
        let pushed = oci::push::push_with_progress(
            &self.file,
            &self.image,
            format,
            &auth,
            self.insecure,
            Arc::new(move |sent, total| {
                bar.set_length(total);
                bar.set_position(sent);
            }),
        )
        .await;
        progress.finish_and_clear();
        let pushed = pushed?;
        Ok(format!(
            "pushed {} ({:?}, layer {}) to {}",
            self.file.display(),
            pushed.kind,
            pushed.layer_digest,
            pushed.manifest_url
        ))
    }
}

/// Files from this size on get a progress bar while they upload.
const LARGE_FILE_BYTES: u64 = 4 << 20;

/// A progress bar for pushing `file`: drawn on stderr for a large file when stderr is a
/// terminal (indicatif draws nothing otherwise), hidden for a small one.
fn upload_bar(file: &Path) -> ProgressBar {
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    if size < LARGE_FILE_BYTES {
        return ProgressBar::hidden();
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = ProgressBar::new(size).with_message(name);
    if let Ok(style) = ProgressStyle::with_template(
        "pushing {msg} {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

impl Cli {
    /// The agent this command line runs, if it runs one: plain `wasmlet`, or `wasmlet join`
    /// unless it only writes the bootstrap kubeconfig.
    pub fn runs_agent(&self) -> bool {
        match &self.command {
            None => true,
            Some(Command::Join(join)) => !join.write_only,
            Some(_) => false,
        }
    }

    /// The agent settings that apply (logging included): `wasmlet join`'s or the top level's.
    pub fn agent(&self) -> &AgentArgs {
        match &self.command {
            Some(Command::Join(join)) => &join.agent,
            _ => &self.agent,
        }
    }
}

impl AgentArgs {
    /// The node's configuration, with defaults filled in from the host.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let host = kubelet::host::HostFacts::read();
        let hostname = host.hostname.to_lowercase();
        let node_name = self.node_name.clone().unwrap_or_else(|| hostname.clone());
        if node_name.is_empty() {
            bail!("the host name is empty; pass --node-name");
        }
        // The API server would refuse to register it, and the node would retry for ever.
        if !kubelet::names::is_dns_subdomain(&node_name) {
            bail!(
                "node name {node_name:?} is not a valid DNS subdomain (lower-case letters, \
                 digits, '-' and '.', at most 253 characters); pass --node-name"
            );
        }
        Ok(NodeConfig {
            node_name,
            node_ip: self.node_ip.unwrap_or_else(default_node_ip),
            hostname,
            port: self.port,
            data_dir: match &self.data_dir {
                Some(dir) => dir.clone(),
                None => home_dir()?.join(".wasmlet"),
            },
            max_pods: self.max_pods,
            pressure: kubelet::node::pressure::PressureThresholds::parse(&self.eviction_hard)?,
            system_reserved: kubelet::config::Reserved::parse(&self.system_reserved)?,
            sync_frequency: self.sync_frequency,
            extra_labels: kubelet::config::parse_labels(&self.node_labels)?,
            // Set by `main`, which alone can tell.
            secrets_in_memory: false,
            event_limit: ApiRateLimit {
                qps: self.event_qps,
                burst: self.event_burst,
            },
        })
    }

    /// The client-side API rate limit the flags set.
    pub fn api_rate_limit(&self) -> ApiRateLimit {
        ApiRateLimit {
            qps: self.kube_api_qps,
            burst: self.kube_api_burst,
        }
    }

    /// The kubeconfig to use: the flag, then `$KUBECONFIG`, then `~/.kube/config`.
    pub fn kubeconfig_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.kubeconfig {
            return Ok(path.clone());
        }
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        Ok(home_dir()?.join(".kube").join("config"))
    }
}

/// The client configuration in the kubeconfig at `path`. Reading and validating the file
/// happens here, before any network traffic, so a bad kubeconfig fails at start-up with its
/// path in the message.
pub async fn kube_config(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("invalid kubeconfig {}", path.display()))
}

impl AgentArgs {
    /// The CA bundle (PEM) the kubelet API verifies client certificates against:
    /// `--client-ca-file`, else the cluster CA the kubeconfig trusts for the API server (the
    /// CA that signs the API server's kubelet-client certificate in kubeadm-style clusters).
    pub fn client_ca_pem(
        &self,
        config: &kube::Config,
        kubeconfig: &Path,
    ) -> anyhow::Result<String> {
        if let Some(path) = &self.client_ca_file {
            return std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --client-ca-file {}", path.display()));
        }
        match config.root_cert.as_deref() {
            Some(ders) if !ders.is_empty() => Ok(certs::tls::pem_from_der(ders)),
            _ => bail!(
                "kubeconfig {} names no cluster CA to verify the kubelet API's clients with; pass --client-ca-file",
                kubeconfig.display()
            ),
        }
    }
}

fn home_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set; pass the path explicitly")
}

/// The source address the kernel would pick for outbound traffic. Connecting a UDP socket
/// sends nothing; it only asks the routing table. Falls back to loopback on an offline host.
fn default_node_ip() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| {
            socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            socket.local_addr()
        })
        .map(|addr| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_the_contract_parse() {
        let cli = Cli::try_parse_from([
            "wasmlet",
            "--kubeconfig",
            "/k",
            "--node-name",
            "edge-1",
            "--node-ip",
            "10.0.0.7",
            "--port",
            "11250",
            "--data-dir",
            "/d",
            "--max-pods",
            "5",
            "--node-labels",
            "site=lab",
            "--eviction-hard",
            "nodefs.available<1Gi",
            "--system-reserved",
            "cpu=250m,memory=512Mi",
        ])
        .unwrap();
        let node = cli.agent.node_config().unwrap();
        assert_eq!(
            node.system_reserved,
            kubelet::config::Reserved {
                cpu_millis: 250,
                memory_bytes: 512 << 20,
                ephemeral_storage_bytes: 0,
            }
        );
        assert_eq!(node.node_name, "edge-1");
        assert_eq!(node.node_ip.to_string(), "10.0.0.7");
        assert_eq!(node.port, 11250);
        assert_eq!(node.max_pods, 5);
        assert_eq!(node.data_dir, PathBuf::from("/d"));
        assert_eq!(node.extra_labels["site"], "lab");
        assert_eq!(
            node.pressure.nodefs_available,
            kubelet::node::pressure::Threshold::Bytes(1 << 30)
        );
        assert_eq!(cli.agent.kubeconfig_path().unwrap(), PathBuf::from("/k"));
    }

    #[test]
    fn certificate_flags_parse_with_serving_rotation_on_by_default() {
        let cli = Cli::try_parse_from(["wasmlet"]).unwrap();
        assert!(cli.agent.rotate_server_certificates);
        assert!(cli.agent.bootstrap_kubeconfig.is_none());
        let cli = Cli::try_parse_from([
            "wasmlet",
            "--bootstrap-kubeconfig",
            "/b",
            "--client-ca-file",
            "/ca.crt",
            "--rotate-server-certificates=false",
        ])
        .unwrap();
        assert!(!cli.agent.rotate_server_certificates);
        assert_eq!(cli.agent.bootstrap_kubeconfig, Some(PathBuf::from("/b")));
        assert_eq!(cli.agent.client_ca_file, Some(PathBuf::from("/ca.crt")));
    }

    #[test]
    fn sync_frequency_takes_kubelet_durations_and_refuses_nonsense() {
        let period = |arg: &str| {
            Cli::try_parse_from(["wasmlet", "--sync-frequency", arg])
                .map(|c| c.agent.sync_frequency)
        };
        assert_eq!(period("1m30s").unwrap().as_secs(), 90);
        assert_eq!(period("2s").unwrap().as_secs(), 2);
        assert_eq!(
            Cli::try_parse_from(["wasmlet"])
                .unwrap()
                .agent
                .sync_frequency
                .as_secs(),
            60
        );
        for bad in ["0s", "-5s", "soon"] {
            assert!(period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_api_rate_limit_has_defaults_and_refuses_zero() {
        let defaults = Cli::try_parse_from(["wasmlet"])
            .unwrap()
            .agent
            .api_rate_limit();
        assert_eq!((defaults.qps.get(), defaults.burst.get()), (500, 1000));
        let set = Cli::try_parse_from(["wasmlet", "--kube-api-qps=5", "--kube-api-burst", "10"])
            .unwrap()
            .agent
            .api_rate_limit();
        assert_eq!((set.qps.get(), set.burst.get()), (5, 10));
        for zero in ["--kube-api-qps=0", "--kube-api-burst=0"] {
            assert!(Cli::try_parse_from(["wasmlet", zero]).is_err(), "{zero}");
        }
    }

    #[test]
    fn the_event_rate_limit_has_the_kubelet_s_defaults_and_refuses_zero() {
        let events = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            let limit = cli.agent.node_config().unwrap().event_limit;
            (limit.qps.get(), limit.burst.get())
        };
        assert_eq!(events(&["wasmlet", "--node-name=n"]), (50, 100));
        assert_eq!(
            events(&[
                "wasmlet",
                "--node-name=n",
                "--event-qps=5",
                "--event-burst",
                "10"
            ]),
            (5, 10)
        );
        for zero in ["--event-qps=0", "--event-burst=0"] {
            assert!(Cli::try_parse_from(["wasmlet", zero]).is_err(), "{zero}");
        }
    }

    #[test]
    fn compile_tiering_names_each_setting_and_refuses_others() {
        let tiering = |arg: &str| {
            Cli::try_parse_from(["wasmlet", "--compile-tiering", arg])
                .map(|c| c.agent.compile_tiering)
        };
        assert_eq!(
            Cli::try_parse_from(["wasmlet"])
                .unwrap()
                .agent
                .compile_tiering,
            wasi_provider::Tiering::BaselineThenOptimised
        );
        assert_eq!(
            tiering("optimised").unwrap(),
            wasi_provider::Tiering::Optimised
        );
        assert_eq!(
            tiering("baseline").unwrap(),
            wasi_provider::Tiering::Baseline
        );
        let err = tiering("fast").unwrap_err().to_string();
        assert!(
            err.contains("baseline-then-optimised, optimised, baseline"),
            "{err}"
        );
    }

    #[test]
    fn a_reservation_of_a_resource_the_kubelet_does_not_reserve_is_refused_by_name() {
        let cli = Cli::try_parse_from(["wasmlet", "--system-reserved", "gpu=1"]).unwrap();
        let err = cli.agent.node_config().unwrap_err().to_string();
        assert!(err.contains("\"gpu=1\""), "{err}");
        let cli = Cli::try_parse_from(["wasmlet"]).unwrap();
        assert_eq!(
            cli.agent.node_config().unwrap().system_reserved,
            kubelet::config::Reserved::default()
        );
    }

    #[test]
    fn zero_max_pods_is_rejected() {
        assert!(Cli::try_parse_from(["wasmlet", "--max-pods", "0"]).is_err());
    }

    #[test]
    fn the_package_config_file_names_the_data_dir_unless_a_flag_does() {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("config.yaml");
        let config = |settings: &str| {
            format!("apiVersion: wasmlet.dev/v1alpha1\nkind: WasmletConfiguration\n{settings}\n")
        };
        std::fs::write(&package, config("dataDir: /var/lib/wasmlet")).unwrap();
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, config("dataDir: /srv/node")).unwrap();
        let args = |data_dir: Option<&str>, config: Option<&Path>| DataDirArgs {
            data_dir: data_dir.map(PathBuf::from),
            config: config.map(Path::to_path_buf),
        };
        let resolved = |args: DataDirArgs, package: &Path| args.resolve_with(package).unwrap();
        assert_eq!(
            resolved(args(None, None), &package),
            Path::new("/var/lib/wasmlet")
        );
        assert_eq!(
            resolved(args(None, Some(&other)), &package),
            Path::new("/srv/node")
        );
        assert_eq!(
            resolved(args(Some("/d"), Some(&other)), &package),
            Path::new("/d")
        );
        let absent = dir.path().join("absent.yaml");
        assert_eq!(
            resolved(args(None, None), &absent),
            home_dir().unwrap().join(".wasmlet")
        );
        std::fs::write(&package, config("maxPods: 5")).unwrap();
        assert_eq!(
            resolved(args(None, None), &package),
            home_dir().unwrap().join(".wasmlet"),
            "a file without dataDir leaves the agent's default"
        );
    }
}
