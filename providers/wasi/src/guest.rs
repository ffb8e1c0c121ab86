//! Running one container instance: a WASI context built from the container's spec, a store
//! with memory limits and epoch yields, and the exit mapped to the container's state.

use kubelet::{ContainerExit, ContainerStart};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use std::sync::Arc;

use crate::code::{Code, Compiled};
use crate::extension::{Grant, HostExtension, InstanceExtensions};
use crate::http::OutboundHttp;
use crate::metering::{ContainerMemory, CpuQuota, GROW_REFUSED, MeteredLimits, cpu_metered};
use crate::node_memory::{self, NODE_MEMORY_USED_UP};
use crate::sockets::Listen;
use wasi_policy::HttpPolicy;

/// Bytes a guest may write before its output stream applies back-pressure.
pub(crate) const OUTPUT_BUDGET: usize = 64 * 1024;

/// Store data for a preview 1 module.
pub struct P1Host {
    pub(crate) wasi: WasiP1Ctx,
    limits: MeteredLimits,
}

/// Store data for a component.
pub struct P2Host {
    ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    http: WasiHttpCtx,
    /// The pod's outbound HTTP policy, applied to every `wasi:http` request.
    outbound: OutboundHttp,
    pub(crate) limits: MeteredLimits,
    /// The host extensions' states for this instance (see `extension`).
    pub(crate) extensions: Vec<Box<dyn std::any::Any + Send>>,
}

impl P2Host {
    /// Store data for one instance: its WASI context, a bounded resource table, outbound
    /// HTTP under the pod's policy, its limits and its extensions' states.
    pub(crate) fn new(
        ctx: WasiCtx,
        outbound: OutboundHttp,
        limits: MeteredLimits,
        extensions: &InstanceExtensions,
    ) -> Self {
        Self {
            ctx,
            table: resource_table(),
            http: WasiHttpCtx::new(),
            outbound,
            limits,
            extensions: extensions.states(),
        }
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// argv, environment, where it may listen, and outbound HTTP policy for one instance.
pub(crate) struct Plan {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    listen: Listen,
    outbound: HttpPolicy,
    /// Host interfaces beyond WASI, with what the container was granted.
    pub(crate) extensions: InstanceExtensions,
}

impl Plan {
    /// The container's `command`, else the image's entrypoint, else the container's name,
    /// as argv[0]; then the container's `args`, else the image's. The image's environment
    /// comes first so the container's wins.
    pub(crate) fn new(
        artifact: &oci::WasmArtifact,
        start: &ContainerStart,
        outbound: HttpPolicy,
        node_ip: std::net::IpAddr,
        extensions: Arc<[Arc<dyn HostExtension>]>,
    ) -> Self {
        let args = if start.args.is_empty() && start.command.is_empty() {
            artifact.args.clone()
        } else {
            start.args.clone()
        };
        let mut argv = if !start.command.is_empty() {
            start.command.clone()
        } else if !artifact.entrypoint.is_empty() {
            artifact.entrypoint.clone()
        } else {
            vec![start.container.clone()]
        };
        argv.extend(args);
        let mut env: Vec<(String, String)> = artifact
            .env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (k, v) in &start.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        Self {
            argv,
            env,
            listen: Listen {
                ports: start.ports.clone(),
                node_ip,
            },
            outbound,
            extensions: InstanceExtensions::new(
                extensions,
                Grant {
                    pod: start.pod.clone(),
                    container: start.container.clone(),
                    devices: start.devices.clone(),
                },
            ),
        }
    }

    /// The pod's outbound HTTP policy.
    pub(crate) fn outbound(&self) -> &HttpPolicy {
        &self.outbound
    }

    /// Gives `builder` the instance's argv, environment, filesystem (its writable root at
    /// `/` and its volume mounts) and the sockets it may listen on.
    pub(crate) async fn configure(
        &self,
        builder: &mut WasiCtxBuilder,
        root_dir: &std::path::Path,
        mounts: &[kubelet::Mount],
    ) -> Result<(), String> {
        preopen(builder, root_dir, mounts).await?;
        builder.args(&self.argv).envs(&self.env);
        self.listen.apply(builder);
        Ok(())
    }
}

/// The memory limits of one instance of the container whose memory is `container`.
pub(crate) fn limits_for(container: &Arc<ContainerMemory>) -> MeteredLimits {
    let limit = container.limit();
    let limits = StoreLimitsBuilder::new()
        .memory_size(limit.map_or(usize::MAX, |b| b.try_into().unwrap_or(usize::MAX)))
        .trap_on_grow_failure(true)
        .build();
    MeteredLimits::new(limits, container.clone())
}

/// Runs the instance until it exits or `start.stop` fires.
pub(crate) async fn run(
    compiled: Compiled,
    plan: Plan,
    start: ContainerStart,
    memory: Arc<ContainerMemory>,
) -> ContainerExit {
    let stop = start.stop.clone();
    let mut builder = WasiCtxBuilder::new();
    if let Err(message) = plan
        .configure(&mut builder, &start.root_dir, &start.mounts)
        .await
    {
        return ContainerExit {
            exit_code: 128,
            reason: "ContainerCannotRun".into(),
            message: Some(message),
        };
    }
    builder
        .stdout(AsyncStdoutStream::new(OUTPUT_BUDGET, start.stdout))
        .stderr(AsyncStdoutStream::new(OUTPUT_BUDGET, start.stderr));
    let limits = limits_for(&memory);
    let running = async {
        let engine = compiled.engine;
        match compiled.code {
            Code::Module(pre) => {
                let mut store = Store::new(
                    &engine,
                    P1Host {
                        wasi: builder.build_p1(),
                        limits,
                    },
                );
                store.limiter(|host| &mut host.limits);
                yield_every_tick(&mut store);
                let instance = pre.instantiate_async(&mut store).await?;
                let main = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                main.call_async(&mut store, ()).await.map(|()| true)
            }
            Code::Component(pre) => {
                let outbound = OutboundHttp::new(plan.outbound, &start.pod, &start.container);
                let host = P2Host::new(builder.build(), outbound, limits, &plan.extensions);
                let mut store = Store::new(&engine, host);
                store.limiter(|host| &mut host.limits);
                yield_every_tick(&mut store);
                let command = pre.instantiate_async(&mut store).await?;
                command
                    .wasi_cli_run()
                    .call_run(&mut store)
                    .await
                    .map(|r| r.is_ok())
            }
            // The provider serves these (`serve`) rather than running them.
            Code::Proxy(_) => Err(wasmtime::Error::msg(
                "a wasi:http/proxy component has no run function; it is served on its containerPorts",
            )),
        }
    };
    let quota = start
        .cpu_limit_millis
        .and_then(|millicores| CpuQuota::shared(millicores, tokio::time::Instant::now()));
    // A guest held back by its quota is pending on a timer, so a stop still ends it at once.
    tokio::select! {
        outcome = cpu_metered(running, &start.usage, quota) => exit_of(outcome),
        _ = stop.cancelled() => ContainerExit {
            exit_code: 137,
            reason: "Error".into(),
            message: Some("stopped by wasmlet".into()),
        },
    }
}

/// Host-side handles a component may hold at once (files, streams, pollables, HTTP requests
/// and bodies): wasmtime's default is a million per store, host memory that no
/// `resources.limits.memory` counts.
const MAX_RESOURCES: usize = 16_384;

/// A component's resource table, bounded to [`MAX_RESOURCES`].
fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// Gives the guest its writable root at `/` and each volume mount at its path. The guest's
/// libc resolves a path through the preopen with the longest matching prefix, so a mount
/// shadows the root below it; Wasmtime keeps every access inside its preopen, symlinks
/// included, so nothing outside the mounts is reachable.
async fn preopen(
    builder: &mut WasiCtxBuilder,
    root_dir: &std::path::Path,
    mounts: &[kubelet::Mount],
) -> Result<(), String> {
    builder
        .preopened_dir(root_dir, "/", FsPerms::ReadWrite)
        .map_err(|e| format!("cannot open the container's root directory: {e:#}"))?;
    for mount in mounts {
        // An empty directory where the mount is, so that listing `/` shows it. The kubelet
        // hands over normalised absolute paths, and the root is fresh, so this stays inside.
        let point = root_dir.join(mount.guest_path.trim_start_matches('/'));
        let _ = tokio::fs::create_dir_all(&point).await;
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host_path, &mount.guest_path, perms)
            .map_err(|e| {
                format!(
                    "cannot mount {} at {}: {e:#}",
                    mount.host_path.display(),
                    mount.guest_path
                )
            })?;
    }
    Ok(())
}

/// Every epoch tick the guest yields to the executor instead of trapping, so a busy loop
/// shares the worker threads and can be dropped (stopped) at the next tick.
///
/// The yield is tokio's own, as wasmtime recommends: tokio defers its wake-up until the
/// worker has polled its timers and sockets. A plain self-wake would put the guest straight
/// back in the run queue, and tokio polls timers and sockets only every 61 task polls on a
/// busy worker: with a spinning guest on every worker, that is 61 ticks (0.6 s) during which
/// no timer fires, no neighbour's sleep ends, and no API response is read.
pub(crate) fn yield_every_tick<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}

/// Maps how the guest ended to a container exit.
fn exit_of(outcome: wasmtime::Result<bool>) -> ContainerExit {
    let completed = |code: i32| ContainerExit {
        exit_code: code,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message: None,
    };
    match outcome {
        Ok(true) => completed(0),
        Ok(false) => ContainerExit {
            exit_code: 1,
            reason: "Error".into(),
            message: Some("the component's run function returned an error".into()),
        },
        Err(err) => {
            if let Some(I32Exit(code)) = err.downcast_ref::<I32Exit>() {
                return completed(*code);
            }
            let text = format!("{err:#}");
            if text.contains(GROW_REFUSED) {
                let why = if text.contains(NODE_MEMORY_USED_UP) {
                    "the node's memory for pods is used up: the guest tried to grow its memory past the node's allocatable memory, which all pods share, or into the memory the host keeps available".into()
                } else if let Some(reason) = node_memory::past_reservation(&text) {
                    format!("memory limit reached: {reason}")
                } else {
                    "memory limit reached: the guest tried to grow its memory past resources.limits.memory".into()
                };
                return ContainerExit {
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    message: Some(why),
                };
            }
            // A trap already says `wasm trap: …`.
            let trap = err
                .downcast_ref::<wasmtime::Trap>()
                .map(ToString::to_string);
            ContainerExit {
                exit_code: 1,
                reason: "Error".into(),
                message: Some(trap.unwrap_or(text)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_holds_at_most_max_resources_handles() {
        let mut table = resource_table();
        for n in 0..MAX_RESOURCES {
            assert!(table.push(n).is_ok(), "refused at {n}");
        }
        assert!(table.push(MAX_RESOURCES).is_err(), "one past the bound");
    }
}
