//! One container instance: its environment, mounts, fresh writable root and log, handed to
//! the provider; and what its exit means (restart count, back-off, events).

use super::*;

impl<P: Provider> Worker<P> {
    /// Starts container `index` of `kind` and returns a future of its exit.
    pub(super) async fn launch(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
    ) -> Result<ExitFuture, NotStarted> {
        let launching = Instant::now();
        let Created {
            container,
            start,
            sink,
            kept,
        } = self
            .create(pod, kind, index)
            .await
            .map_err(NotStarted::NotCreated)?;
        let image = self
            .images
            .get(&container.name)
            .ok_or_else(|| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("image of container {} was not pulled", container.name),
                fatal: false,
            })
            .map_err(NotStarted::NotCreated)?;
        let task = self.ctx.provider.start(image, start).await;
        let task = match task {
            Ok(task) => {
                self.ctx
                    .metrics
                    .observe_container_start(launching.elapsed());
                task
            }
            Err(err) => {
                sink.note(Stream::Stderr, &format!("wasmlet: {}", err.message))
                    .await;
                return Err(NotStarted::Refused(err));
            }
        };
        drop(sink);
        Ok(self.started_instance(pod, kind, index, &container, task, kept))
    }

    /// What the runtime needs to start container `index` of `kind`: its environment,
    /// mounts, fresh writable root and log. Nothing is running yet if this fails.
    async fn create(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
    ) -> Result<Created, ContainerError> {
        let container =
            containers(pod, kind)
                .get(index)
                .cloned()
                .ok_or_else(|| ContainerError {
                    reason: "CreateContainerError".into(),
                    message: format!("container {index} is not in the pod spec"),
                    fatal: true,
                })?;
        let env = env::resolve(
            self.ctx.reads(),
            pod,
            &container,
            &self.ctx.host_ip,
            self.ctx.allocatable,
        )
        .await
        .map_err(|e| ContainerError {
            reason: "CreateContainerConfigError".into(),
            message: e.0,
            fatal: false,
        })?;
        let restart = self.record(kind, index).restart_count;
        let dirs = self.instance_dirs(&container.name, restart);
        let laid_out = self.laid_out.remove(&(kind, index, restart));
        let previous = (restart > 0).then(|| self.instance_dirs(&container.name, restart - 1));
        let dirs = if previous.is_some() || !laid_out {
            let ready = tokio::task::spawn_blocking(move || {
                layout::ready_instance(&dirs, previous.as_ref(), restart, laid_out).map(|()| dirs)
            })
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)));
            ready.map_err(|e| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("cannot create the container's root directory: {e}"),
                fatal: false,
            })?
        } else {
            dirs
        };
        let mounts = self
            .volumes
            .mounts_for(&container, &env, &dirs.staging)
            .await
            .map_err(|message| ContainerError {
                reason: "CreateContainerConfigError".into(),
                message,
                fatal: false,
            })?;
        let (sink, writer) = LogSink::open(dirs.log, self.ctx.log_limits, &self.ctx.logs)
            .await
            .map_err(|e| ContainerError {
                reason: "CreateContainerError".into(),
                message: format!("cannot open the container log: {e}"),
                fatal: false,
            })?;
        let limits = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let stop = CancellationToken::new();
        let usage = Arc::new(ContainerUsage::default());
        let start = ContainerStart {
            pod: self.key.clone(),
            container: container.name.clone(),
            command: container.command.clone().unwrap_or_default(),
            args: container.args.clone().unwrap_or_default(),
            env,
            stdout: sink.stream(Stream::Stdout),
            stderr: sink.stream(Stream::Stderr),
            root_dir: dirs.root,
            mounts,
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            // Admission read every request and limit; a limit too large to count is no limit.
            memory_limit_bytes: limits.get("memory").and_then(|q| quantity::bytes(q).ok()),
            cpu_limit_millis: limits.get("cpu").and_then(|q| quantity::cpu_millis(q).ok()),
            usage: usage.clone(),
            ports: admission::tcp_ports(&container),
            devices: admission::Requests::devices_of(&container),
            stop: stop.clone(),
        };
        Ok(Created {
            container,
            start,
            sink,
            kept: Kept {
                stop,
                usage,
                writer,
            },
        })
    }

    /// Records the instance the runtime started as `task` and returns a future of its exit.
    fn started_instance(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        container: &Container,
        task: tokio::task::JoinHandle<ContainerExit>,
        Kept {
            stop,
            usage,
            writer,
        }: Kept,
    ) -> ExitFuture {
        self.event(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Created",
            &format!("Created container {}", container.name),
        );
        self.event(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Started",
            &format!("Started container {}", container.name),
        );
        let live = Live {
            stop,
            abort: task.abort_handle(),
            started: Instant::now(),
        };
        match kind {
            Kind::Init => self.live_init = Some(live),
            Kind::App => self.live_app[index] = Some(live),
        }
        self.record(kind, index).state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        if kind == Kind::App {
            self.start_probing(index);
        }
        self.ctx
            .table
            .container_started(&self.key.uid, &container.name, usage);
        let name = container.name.clone();
        Box::pin(async move {
            let exit = match task.await {
                Ok(exit) => exit,
                Err(err) if err.is_cancelled() => ContainerExit {
                    exit_code: KILLED_EXIT_CODE,
                    reason: "Error".into(),
                    message: Some("killed after the termination grace period".into()),
                },
                Err(err) => ContainerExit {
                    exit_code: 128,
                    reason: "Error".into(),
                    message: Some(format!("the runtime failed while running {name}: {err}")),
                },
            };
            // The guest's streams are gone with its task; wait for the last line to land.
            let _ = tokio::time::timeout(LOG_FLUSH_TIMEOUT, writer).await;
            (kind, index, exit)
        })
    }

    /// Records that container `index` of `kind` ended.
    pub(super) fn record_exit(
        &mut self,
        kind: Kind,
        index: usize,
        exit: &ContainerExit,
    ) -> Duration {
        let live = match kind {
            Kind::Init => self.live_init.take(),
            Kind::App => self.live_app[index].take(),
        };
        let started_instant = live.as_ref().map_or_else(Instant::now, |l| l.started);
        let name = self.record(kind, index).name.clone();
        self.ctx.table.container_stopped(&self.key.uid, &name);
        let record = self.record(kind, index);
        let started_at = match record.state {
            ContainerState::Running { started_at } => Some(started_at),
            _ => None,
        };
        record.state = ContainerState::Terminated {
            exit_code: exit.exit_code,
            reason: exit.reason.clone(),
            message: exit.message.clone(),
            started_at,
            finished_at: Timestamp::now(),
        };
        let crash = match kind {
            Kind::Init => &mut self.crash_init,
            Kind::App => &mut self.crash_app[index],
        };
        crash.delay_after_exit(started_instant, Instant::now())
    }

    /// A Warning event for a container that ran and failed (a trap, a non-zero exit, an
    /// OOM kill), so `kubectl describe` and `kubectl get events` show why without the status.
    /// One that never started already had its `Failed` event.
    pub(super) fn report_failure(&mut self, pod: &Pod, kind: Kind, index: usize) {
        let record = self.record(kind, index);
        let ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at: Some(_),
            ..
        } = &record.state
        else {
            return;
        };
        if *exit_code == 0 {
            return;
        }
        let name = record.name.clone();
        let text = format!(
            "Container {name} failed: exit code {exit_code} ({reason}){}",
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        self.event(pod, Some(&name), EventType::Warning, "Failed", &text);
    }

    /// Moves a terminated container to waiting for its next instance.
    pub(super) fn prepare_restart(
        &mut self,
        kind: Kind,
        index: usize,
        delay: Duration,
        pod_name: &str,
    ) {
        let record = self.record(kind, index);
        record.last_terminated = Some(record.state.clone());
        record.restart_count = record.restart_count.saturating_add(1);
        record.state = if delay.is_zero() {
            ContainerState::waiting("ContainerCreating", None)
        } else {
            ContainerState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={pod_name}",
                    delay.as_secs(),
                    record.name
                )),
            )
        };
    }

    /// A container instance could not be created: it waits saying why, with a Warning
    /// event, and is not a run (no restart counted, no restart policy consulted).
    pub(super) async fn not_created(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: ContainerError,
    ) {
        let name = self.record(kind, index).name.clone();
        warn!(pod = %self.key.name, container = %name, reason = %err.reason, message = %err.message, "cannot create the container; trying again");
        self.show_start_error(pod, kind, index, &err).await;
    }

    /// The runtime refused to start a container: its state says why, and it counts as a
    /// failed run.
    pub(super) async fn start_failed(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: ContainerError,
    ) -> ContainerExit {
        self.show_start_error(pod, kind, index, &err).await;
        ContainerExit {
            exit_code: 128,
            reason: err.reason,
            message: Some(err.message),
        }
    }

    /// The kubelet's `Failed` Warning event and waiting state for a container that did not
    /// start, published.
    async fn show_start_error(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: &ContainerError,
    ) {
        let name = self.record(kind, index).name.clone();
        self.event(
            pod,
            Some(&name),
            EventType::Warning,
            "Failed",
            &format!("Error: {}", err.message),
        );
        self.record(kind, index).state =
            ContainerState::waiting(&err.reason, Some(err.message.clone()));
        self.publish().await;
    }

    /// A start failure that no retry can mend (a malformed annotation, say) fails the pod
    /// at once, as a fatal pull error does, instead of crash-looping on it.
    pub(super) async fn fail_to_start(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        err: ContainerError,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) -> Next {
        let (reason, message) = (err.reason.clone(), err.message.clone());
        self.start_failed(pod, kind, index, err).await;
        self.stop_containers(pod, exits).await;
        self.state
            .finish(Phase::Failed, Some(&reason), Some(message));
        Next::Stage(Stage::Finished)
    }
}

/// Why a container instance did not start.
pub(super) enum NotStarted {
    /// Its environment, mounts, root or log could not be made: nothing was created. It
    /// waits with the reason and is tried again without counting as a run, as the kubelet's
    /// CreateContainerConfigError and CreateContainerError do.
    NotCreated(ContainerError),
    /// The runtime refused to start it: a run that failed at once (exit 128), which counts
    /// as the kubelet counts a StartError.
    Refused(ContainerError),
}

impl NotStarted {
    pub(super) fn error(&self) -> &ContainerError {
        match self {
            Self::NotCreated(err) | Self::Refused(err) => err,
        }
    }

    pub(super) fn into_error(self) -> ContainerError {
        match self {
            Self::NotCreated(err) | Self::Refused(err) => err,
        }
    }
}

/// A container instance made ready to start: what the runtime is handed, its log, and what
/// the worker keeps of it once it runs.
struct Created {
    container: Container,
    start: ContainerStart,
    sink: LogSink,
    kept: Kept,
}

/// What the worker keeps of a running instance.
struct Kept {
    stop: CancellationToken,
    usage: Arc<ContainerUsage>,
    writer: tokio::task::JoinHandle<()>,
}
