//! Helpers for testing a provider without a cluster, as the agent would drive it: a
//! [`ContainerStart`] for a pod, and a runtime that records what it was asked to start.
//! `providers/example-leds` tests its device provider with them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::logs::{LogHub, LogLimits, LogSink, Stream};
use crate::provider::{
    ContainerError, ContainerExit, ContainerStart, ImageRequest, NodeContribution, PodKey,
    Provider, PulledImage,
};

/// The start of container `app` of pod `uid` (in `default`), with `env`, asking for
/// `devices`; its log and writable root are under `dir`.
pub async fn container_start(
    dir: &Path,
    uid: &str,
    env: Vec<(String, String)>,
    devices: BTreeMap<String, u64>,
) -> std::io::Result<ContainerStart> {
    let log = dir.join(format!("{uid}.log"));
    let (sink, _writer) = LogSink::open(log, LogLimits::default(), &LogHub::default()).await?;
    Ok(ContainerStart {
        pod: PodKey {
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
        },
        container: "app".into(),
        command: Vec::new(),
        args: Vec::new(),
        env,
        stdout: sink.stream(Stream::Stdout),
        stderr: sink.stream(Stream::Stderr),
        root_dir: dir.to_path_buf(),
        mounts: Vec::new(),
        annotations: BTreeMap::new(),
        memory_limit_bytes: None,
        cpu_limit_millis: None,
        usage: Arc::default(),
        ports: Vec::new(),
        devices,
        stop: Default::default(),
    })
}

/// What a [`RecordingRuntime`] was asked to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The pod's UID.
    pub uid: String,
    /// The container's environment as the runtime got it.
    pub env: Vec<(String, String)>,
}

/// A runtime whose containers exit at once, successfully; clones share one record of what
/// was started, so a test keeps one clone and gives the other away.
#[derive(Clone, Default)]
pub struct RecordingRuntime {
    started: Arc<Mutex<Vec<Started>>>,
}

impl RecordingRuntime {
    /// Every container started so far, in order.
    pub fn started(&self) -> Vec<Started> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The image a [`RecordingRuntime`] pulls: nothing.
pub struct NoImage;

impl PulledImage for NoImage {
    fn image_id(&self) -> String {
        "sha256:none".into()
    }

    fn size_bytes(&self) -> u64 {
        0
    }
}

impl Provider for RecordingRuntime {
    type Image = NoImage;

    fn node_contribution(&self) -> NodeContribution {
        NodeContribution {
            runtime_version: "recording://1".into(),
            ..Default::default()
        }
    }

    async fn pull(&self, _: ImageRequest<'_>) -> Result<NoImage, ContainerError> {
        Ok(NoImage)
    }

    async fn start(
        &self,
        _: &NoImage,
        start: ContainerStart,
    ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Started {
                uid: start.pod.uid,
                env: start.env,
            });
        Ok(tokio::spawn(async {
            ContainerExit {
                exit_code: 0,
                reason: "Completed".into(),
                message: None,
            }
        }))
    }
}
