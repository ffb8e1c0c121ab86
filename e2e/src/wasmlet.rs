use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::Signal;

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::Supervised;

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
}

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
        }
    }
}

/// A running `wasmlet` process joined to a [`ControlPlane`] with a node identity
/// (`system:node:<name>`). Dropping it stops it.
pub struct WasmletNode {
    process: Supervised,
    /// The kubelet API port.
    pub port: u16,
    /// The node's name.
    pub name: String,
    data_dir: PathBuf,
}

impl WasmletNode {
    /// Starts wasmlet for `options` against `plane`. It does not wait for the node to
    /// register; tests wait for what they want to see.
    pub fn start(plane: &ControlPlane, options: &WasmletOptions) -> anyhow::Result<Self> {
        let name = &options.node_name;
        let data_dir = plane.dir().join("nodes").join(name);
        let kubeconfig = plane.node_kubeconfig(name)?;
        let port = free_port()?;
        let mut cmd = Command::new(wasmlet_binary()?);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
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
            .env("RUST_LOG", "info,kubelet=debug");
        let log = plane.dir().join(format!("wasmlet-{name}-{port}.log"));
        let process = Supervised::spawn("wasmlet", cmd, &log)?;
        Ok(Self {
            process,
            port,
            name: name.clone(),
            data_dir,
        })
    }

    /// Sends SIGTERM and returns the exit status, failing if wasmlet has not exited in 10 s.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        match self
            .process
            .signal_and_wait(Signal::TERM, Duration::from_secs(10))
        {
            Some(status) => Ok(status),
            None => bail!(
                "wasmlet did not exit within 10 s of SIGTERM:\n{}",
                self.log_tail(20)
            ),
        }
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
