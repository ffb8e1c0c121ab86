//! `wasmlet`: a kubelet that runs WebAssembly pods.
//!
//! This is the binary edge: it parses the command line, checks everything an operator can get
//! wrong before touching the cluster (kubeconfig, data dir, port), then hands over to the
//! node agent until SIGTERM or SIGINT.

mod cli;
mod config_file;
mod join;
mod local;
mod logging;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kubelet::node::allocatable;
use peripherals_provider::{DeviceSpec, Peripherals};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{AgentArgs, Cli};

fn main() -> ExitCode {
    let parsed = match config_file::parse_cli(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("wasmlet: {}", one_line(&err));
            return ExitCode::FAILURE;
        }
    };
    let cli = parsed.cli;
    // kube and oci-client both build rustls configs from the process default; pinning it here
    // means a dependency that enables a second backend cannot make that choice ambiguous.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    logging::init(cli.agent());
    for note in parsed.overridden {
        tracing::warn!("{note}");
    }
    let secrets_in_memory = cli.runs_agent() && private_mount_namespace();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wasmlet: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, secrets_in_memory)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wasmlet: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Moves the agent into a mount namespace of its own, so that Secret and token volumes can
/// each live on a tmpfs that nothing outside the agent sees and that goes when it does.
/// Without root that cannot be done, and those volumes are written to the data dir instead.
fn private_mount_namespace() -> bool {
    // SAFETY: called from `main` before the runtime, or anything else, starts a thread.
    match unsafe { kubelet::volumes::enter_private_mount_namespace() } {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                %err,
                "cannot enter a mount namespace of its own (that needs root): Secret and token volumes are written to the data dir (mode 0700), not to a tmpfs"
            );
            false
        }
    }
}

/// The cause chain on one line, so a supervisor's log says what to fix. Some causes (YAML
/// parse errors) render a multi-line snippet; their first line is the message.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Writes a tool's output to stdout with `write`, then flushes it.
pub(crate) fn print_out(
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    stdout_written(write(&mut out).and_then(|()| out.flush()))
}

/// The outcome of writing a tool's output. A reader that stopped reading (`wasmlet devices
/// | head -1`) has all it wants: Rust ignores SIGPIPE, so that arrives as `BrokenPipe`, and
/// it ends the command as a success, as SIGPIPE would have ended it quietly. Any other
/// failure (a full disk behind a redirect) is an error.
pub(crate) fn stdout_written(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

async fn run(cli: Cli, secrets_in_memory: bool) -> anyhow::Result<()> {
    match &cli.command {
        Some(cli::Command::Push(push)) => {
            let summary = push.run().await?;
            return print_out(|out| writeln!(out, "{summary}"));
        }
        Some(cli::Command::Ps(ps)) => return local::ps(&ps.source.resolve()?, ps),
        Some(cli::Command::Logs(logs)) => {
            return local::logs(&logs.source.resolve()?, logs).await;
        }
        Some(cli::Command::Devices(args)) => {
            let (sysfs, dev) = (args.sysfs_root.clone(), args.dev_root.clone());
            let found = tokio::task::spawn_blocking(move || {
                peripherals_provider::discover::discover(&sysfs, &dev)
            })
            .await?;
            return print_out(|out| {
                for device in &found {
                    match &device.spec {
                        Some(spec) => writeln!(out, "--device {spec:<56} # {}", device.what)?,
                        None => writeln!(out, "{:<65} # {}", "", device.what)?,
                    }
                }
                Ok(())
            });
        }
        Some(cli::Command::Config(cli::ConfigCommand::Defaults)) => {
            return print_out(|out| write!(out, "{}", config_file::defaults()));
        }
        Some(cli::Command::Join(_)) | None => {}
    }
    let agent = match cli.command {
        Some(cli::Command::Join(join)) => match join::prepare(*join).await.context("join")? {
            Some(agent) => agent,
            None => return Ok(()),
        },
        _ => cli.agent,
    };
    run_agent(agent, secrets_in_memory).await
}

/// The node agent, until SIGTERM or SIGINT.
async fn run_agent(cli: AgentArgs, secrets_in_memory: bool) -> anyhow::Result<()> {
    let mut node = cli.node_config()?;
    node.secrets_in_memory = secrets_in_memory;
    let devices = open_devices(&cli)?;
    let kubeconfig_path = cli.kubeconfig_path()?;
    if let Some(manifests) = &cli.static_pods
        && cli.kubeconfig.is_none()
        && cli.bootstrap_kubeconfig.is_none()
        && !kubeconfig_path.exists()
    {
        return run_standalone(&cli, node, manifests, &devices).await;
    }
    let bootstrap = match &cli.bootstrap_kubeconfig {
        Some(path) => Some(certs::bootstrap::Bootstrap::read(path).context("bootstrap")?),
        None => None,
    };
    // Without a bootstrap kubeconfig, the kubeconfig must be usable now: check it before
    // anything else. With one, it may not exist yet.
    let mut kube_config = match bootstrap {
        None => Some(cli::kube_config(&kubeconfig_path).await?),
        Some(_) => None,
    };
    let data_dir = kubelet::data_dir::DataDir::open(&node.data_dir)?;
    let store = kubelet::store::LocalStore::open(data_dir.path())?;
    let pki_dir = data_dir.pki_dir();
    let listener = kubelet::server::bind((cli.address, node.port).into()).await?;

    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    if let Some(bootstrap) = &bootstrap {
        if let Some(reason) = certs::bootstrap::kubeconfig_unusable(&kubeconfig_path) {
            info!(kubeconfig = %kubeconfig_path.display(), %reason, "starting TLS bootstrap");
            if !bootstrap
                .run(&kubeconfig_path, &pki_dir, &node.node_name, &cancel)
                .await
                .context("TLS bootstrap")?
            {
                return Ok(());
            }
        }
        kube_config = Some(cli::kube_config(&kubeconfig_path).await?);
    }
    let kube_config = kube_config.context("no kubeconfig")?;
    let client_ca = cli.client_ca_pem(&kube_config, &kubeconfig_path)?;
    let (client, client_certificate) =
        certs::client::node_client(kube_config, &pki_dir, &node.node_name, cli.api_rate_limit())
            .with_context(|| {
                format!(
                    "cannot build a client from kubeconfig {}",
                    kubeconfig_path.display()
                )
            })?;
    // A client certificate that expires while the node is cut off is requested again with
    // the bootstrap credentials.
    let client_certificate = match (client_certificate, &bootstrap) {
        (Some(manager), Some(bootstrap)) => match bootstrap.client(cli.api_rate_limit()).await {
            Ok(client) => Some(manager.with_bootstrap(client)),
            Err(err) => {
                tracing::warn!(%err, "the bootstrap kubeconfig cannot make a client; a client certificate that ends while the node is cut off cannot be renewed");
                Some(manager)
            }
        },
        (manager, _) => manager,
    };
    let serving = certs::serving::serving_certificate(
        client.clone(),
        &pki_dir,
        &node.node_name,
        &node.hostname,
        &[node.node_ip],
        cli.rotate_server_certificates,
    )
    .map_err(kubelet::Error::ServingCert)?;
    // The kubelet API presents whatever `serving.certificates` holds at each handshake: the
    // self-signed certificate until the cluster signs one, then each renewal.
    let tls = certs::tls::kubelet_server_config(serving.certificates.clone(), &client_ca)
        .context("the client CA of the kubelet API")?;
    let provider = providers(&data_dir, &node, &cli, &devices, &cancel)?;

    info!(node = %node.node_name, host_arch = std::env::consts::ARCH, ip = %node.node_ip, port = node.port, data_dir = %node.data_dir.display(), "starting wasmlet");
    let managers: Vec<_> = [serving.manager, client_certificate]
        .into_iter()
        .flatten()
        .map(|manager| tokio::spawn(manager.run(cancel.clone())))
        .collect();
    let mut agent = kubelet::Kubelet::new(Some(client), node.clone(), provider, data_dir, store);
    if let Some(dir) = &cli.static_pods {
        agent = agent.with_static_pods(
            kubelet::static_pods::watch(dir.clone(), node.node_name.clone(), cancel.clone())
                .await?,
        );
    }
    agent
        .run(Some(kubelet::ApiServing { listener, tls }), cancel)
        .await;
    for manager in managers {
        if let Err(err) = manager.await {
            tracing::warn!(%err, "certificate manager task failed");
        }
    }
    Ok(())
}

/// A node with no API server: it runs the static pods in `manifests`, keeps them in its
/// store, and serves no kubelet API (`wasmlet ps` and `wasmlet logs` read its data dir).
async fn run_standalone(
    cli: &AgentArgs,
    node: kubelet::NodeConfig,
    manifests: &std::path::Path,
    devices: &Devices,
) -> anyhow::Result<()> {
    let data_dir = kubelet::data_dir::DataDir::open(&node.data_dir)?;
    let store = kubelet::store::LocalStore::open(data_dir.path())?;
    let cancel = CancellationToken::new();
    let provider = providers(&data_dir, &node, cli, devices, &cancel)?;
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let static_pods = kubelet::static_pods::watch(
        manifests.to_path_buf(),
        node.node_name.clone(),
        cancel.clone(),
    )
    .await?;
    info!(node = %node.node_name, host_arch = std::env::consts::ARCH, manifests = %manifests.display(), data_dir = %node.data_dir.display(), "starting wasmlet standalone (no API server)");
    kubelet::Kubelet::new(None, node, provider, data_dir, store)
        .with_static_pods(static_pods)
        .run(None, cancel)
        .await;
    Ok(())
}

/// The `--device` flags and the devices they name.
struct Devices {
    specs: Vec<DeviceSpec>,
    peripherals: Arc<Peripherals>,
}

/// The `--device` flags, parsed and their devices opened (real GPIO lines requested) before
/// anything else starts: a bad flag, or a chip or bus that cannot be opened, stops the node
/// with one line before it touches the cluster.
fn open_devices(cli: &AgentArgs) -> anyhow::Result<Devices> {
    let specs = cli
        .devices
        .iter()
        .map(|spec| DeviceSpec::parse(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = peripherals_provider::Roots {
        sysfs: cli.sysfs_root.clone(),
        dev: cli.dev_root.clone(),
    };
    let peripherals = Arc::new(Peripherals::with_roots(&specs, &roots)?);
    Ok(Devices { specs, peripherals })
}

/// The memory all pods may hold together: the node's allocatable memory. A host whose
/// memory cannot be read reports none, and its pods would all be refused their first page,
/// so they are not bounded by it (the host's available memory still is).
fn pods_memory_bytes(node: &kubelet::NodeConfig) -> Option<u64> {
    let host = kubelet::host::HostFacts::read();
    if host.memory_bytes == 0 {
        warn!(
            "the host's memory could not be read; pods' memory together is not held to allocatable"
        );
        return None;
    }
    Some(allocatable::Allocatable::of(&host, node.system_reserved, &node.pressure).memory_bytes)
}

/// The WASI runtime with the `--device` peripherals beside it, their interfaces linked into
/// its components; the simulated devices' files, sensors and real input lines followed until
/// `cancel`.
fn providers(
    data_dir: &kubelet::data_dir::DataDir,
    node: &kubelet::NodeConfig,
    cli: &AgentArgs,
    devices: &Devices,
    cancel: &CancellationToken,
) -> anyhow::Result<kubelet::WithDevices<wasi_provider::WasiProvider, Peripherals>> {
    let Devices { specs, peripherals } = devices;
    let wasi = wasi_provider::WasiProvider::with_extensions(
        &wasi_provider::WasiProviderConfig {
            cache_dir: data_dir.path().join("cache"),
            store_dir: data_dir.path().join("oci"),
            max_pods: node.max_pods,
            insecure_registries: cli.insecure_registries.clone(),
            tiering: cli.compile_tiering,
            egress: cli.outbound_http_allow_networks.clone(),
            serve_address: node.node_ip,
            pods_memory_bytes: pods_memory_bytes(node),
            keep_memory_available_bytes: allocatable::memory_threshold_bytes(&node.pressure),
        },
        vec![peripherals.clone()],
    )
    .context("cannot start the WASI provider")?;
    if !specs.is_empty() {
        info!(devices = %specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "), "granting devices");
        tokio::spawn(peripherals_provider::sim::mirror::run(
            peripherals.clone(),
            data_dir.path().join("devices"),
            cancel.clone(),
        ));
        let sensors = specs
            .iter()
            .any(|spec| matches!(spec.kind, peripherals_provider::DeviceKind::Sensor { .. }));
        if sensors {
            tokio::spawn(peripherals_provider::sysfs::run(
                peripherals.clone(),
                cancel.clone(),
            ));
        }
        tokio::spawn(peripherals_provider::gpio::chardev::follow_inputs(
            peripherals.clone(),
            cancel.clone(),
        ));
    }
    Ok(kubelet::WithDevices::new(wasi, peripherals.clone()))
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop wasmlet with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down");
    cancel.cancel();
}
