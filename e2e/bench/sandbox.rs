//! The sandbox benchmark: what wasmlet's way of running a guest costs a CPU-bound module,
//! against plain Wasmtime running the same module.
//!
//! The module is the `misbehave` demo's `work N` mode (a fixed computation that prints its
//! digest). Each configuration runs it `RUNS` times, interleaved run by run so that load from
//! elsewhere on the machine falls on all of them alike:
//! - `plain_wasmtime`: a default engine (no epoch interruption, on-demand allocation, no
//!   limiter), WASI preview 1 linked synchronously, `_start` called on a plain thread;
//! - `plain_wasmtime_epochs`: the same with epoch interruption compiled in but never firing,
//!   so the checks Cranelift adds at loop back-edges and function entries are all it adds;
//! - `wasmlet`: the real path, `WasiProvider::start` with no limits: epoch interruption with
//!   a yield every tick, async calls, the pooling allocator and CPU metering;
//! - `wasmlet_limits`: the same with a memory limit and a CPU limit (2000m) set high enough
//!   never to throttle, so only the limits' bookkeeping is added;
//! - `wasmlet_cpu_500m`: a CPU limit of half a core, to show throttling at work (wall time
//!   about twice the CPU time);
//! - `wasmlet_winch`: `wasmlet` with the baseline tier's code (Winch) instead of the
//!   optimised tier's (Cranelift), which every other `wasmlet` configuration runs: what a
//!   pod's first instance of a new module pays until Cranelift's code is ready.
//!
//! Prints JSON and writes `e2e/bench/results/sandbox.json`. Asserts no times; fails if a run
//! does not exit 0 or prints a different digest. Arguments: rounds (default 4000, about
//! 0.6 s of work on the reference machine), runs (default 15).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::Registry;
use kubelet::logs::{LogHub, LogLimits, LogSink, Stream};
use kubelet::usage::ContainerUsage;
use kubelet::{ContainerStart, ImageRequest, PodKey, Provider};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasi_provider::{Tiering, WasiImage, WasiProvider, WasiProviderConfig};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

/// One run: wall time from start to exit, the guest's CPU time, and what it printed.
struct Sample {
    wall: Duration,
    cpu: Duration,
    digest: String,
}

/// Limits for a run through the provider.
#[derive(Clone, Copy)]
struct Limits {
    memory_bytes: Option<u64>,
    cpu_millis: Option<u64>,
}

/// How a configuration runs the guest.
#[derive(Clone, Copy)]
enum Runner {
    /// Plain Wasmtime, with or without epoch interruption compiled in.
    Plain { epochs: bool },
    /// wasmlet's provider with Cranelift's code, with these limits.
    Provider(Limits),
    /// wasmlet's provider with Winch's code, no limits.
    BaselineProvider,
}

const CONFIGURATIONS: [(&str, Runner); 6] = [
    ("plain_wasmtime", Runner::Plain { epochs: false }),
    ("plain_wasmtime_epochs", Runner::Plain { epochs: true }),
    (
        "wasmlet",
        Runner::Provider(Limits {
            memory_bytes: None,
            cpu_millis: None,
        }),
    ),
    (
        "wasmlet_limits",
        Runner::Provider(Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(2000),
        }),
    ),
    (
        "wasmlet_cpu_500m",
        Runner::Provider(Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
        }),
    ),
    ("wasmlet_winch", Runner::BaselineProvider),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: u64 = args.next().map_or(Ok(4000), |n| n.parse())?;
    let runs: usize = args.next().map_or(Ok(15), |n| n.parse())?;
    ensure!(runs > 0, "runs must be at least 1");
    let wasm = e2e::demos::demo_wasm("misbehave")?;
    let work = tempfile::tempdir()?;
    // The provider pulls as it does on a node, from a local registry.
    let (registry, image) = e2e::demos::bench_registry("misbehave").await?;
    let pod = PodKey {
        namespace: "default".into(),
        name: "bench".into(),
        uid: "bench".into(),
    };
    let (provider, pulled) =
        provider_with(Tiering::Optimised, work.path(), &registry, &image, &pod).await?;
    let (baseline, baseline_pulled) =
        provider_with(Tiering::Baseline, work.path(), &registry, &image, &pod).await?;

    let plain = Plain::new(&wasm, false)?;
    let plain_epochs = Plain::new(&wasm, true)?;
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    // Run 0 warms caches and the code of every path, and is not counted.
    for run in 0..=runs {
        for (label, runner) in CONFIGURATIONS {
            let sample = match runner {
                Runner::Plain { epochs: false } => plain.run(rounds)?,
                Runner::Plain { epochs: true } => plain_epochs.run(rounds)?,
                Runner::Provider(limits) => {
                    let dir = work.path().join(format!("{label}-{run}"));
                    run_in_provider(&provider, &pulled, &pod, &dir, rounds, limits).await?
                }
                Runner::BaselineProvider => {
                    let dir = work.path().join(format!("{label}-{run}"));
                    let limits = Limits {
                        memory_bytes: None,
                        cpu_millis: None,
                    };
                    run_in_provider(&baseline, &baseline_pulled, &pod, &dir, rounds, limits).await?
                }
            };
            eprintln!(
                "run {run} {label}: wall {:.1} ms, cpu {:.1} ms",
                ms(sample.wall),
                ms(sample.cpu)
            );
            if run > 0 {
                samples.entry(label).or_default().push(sample);
            }
        }
    }

    let digests: Vec<&str> = samples
        .values()
        .flatten()
        .map(|s| s.digest.as_str())
        .collect();
    ensure!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "the runs disagree on the digest: {digests:?}"
    );
    // Sorted milliseconds of one measure of one configuration.
    let sorted = |label: &str, of: fn(&Sample) -> Duration| -> Vec<f64> {
        let mut values: Vec<f64> = samples[label].iter().map(|s| ms(of(s))).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let wall = |label: &str| sorted(label, |s| s.wall);
    let cpu = |label: &str| sorted(label, |s| s.cpu);
    let median = |values: Vec<f64>| values[values.len() / 2];
    let best = |values: Vec<f64>| values[0];
    let overhead = |label: &str| {
        json!({
            "wall_median": percent(median(wall(label)), median(wall("plain_wasmtime"))),
            "cpu_median": percent(median(cpu(label)), median(cpu("plain_wasmtime"))),
            "cpu_best": percent(best(cpu(label)), best(cpu("plain_wasmtime"))),
        })
    };
    let mut configurations = serde_json::Map::new();
    for (label, _) in CONFIGURATIONS {
        let (walls, cpus) = (wall(label), cpu(label));
        configurations.insert(
            label.to_string(),
            json!({
                "wall_ms": {"median": median(walls.clone()), "min": walls.first(), "max": walls.last()},
                "cpu_ms": {"median": median(cpus.clone()), "min": cpus.first(), "max": cpus.last()},
            }),
        );
    }
    let report = json!({
        "benchmark": "sandbox",
        "module": format!("misbehave work {rounds}"),
        "digest": digests.first(),
        "runs": runs,
        "cpus": std::thread::available_parallelism()?.get(),
        "configurations": configurations,
        "overhead_percent_over_plain_wasmtime": {
            "plain_wasmtime_epochs": overhead("plain_wasmtime_epochs"),
            "wasmlet": overhead("wasmlet"),
            "wasmlet_limits": overhead("wasmlet_limits"),
        },
        "winch_code_cpu_over_cranelift_code": round2(
            median(cpu("wasmlet_winch")) / median(cpu("wasmlet"))
        ),
        "cpu_500m_wall_over_cpu": round2(
            median(wall("wasmlet_cpu_500m")) / median(cpu("wasmlet_cpu_500m"))
        ),
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/sandbox.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

/// A provider that runs only `tiering`'s code, with its own directories under `work`, and
/// `image` pulled with it.
async fn provider_with(
    tiering: Tiering,
    work: &Path,
    registry: &Registry,
    image: &str,
    pod: &PodKey,
) -> anyhow::Result<(WasiProvider, WasiImage)> {
    let dir = work.join(format!("{tiering:?}"));
    let provider = WasiProvider::new(&WasiProviderConfig {
        cache_dir: dir.join("cache"),
        store_dir: dir.join("store"),
        max_pods: 110,
        insecure_registries: vec![registry.host()],
        tiering,
        egress: Default::default(),
        serve_address: std::net::Ipv4Addr::LOCALHOST.into(),
        pods_memory_bytes: None,
        keep_memory_available_bytes: 0,
    })?;
    let pulled = provider
        .pull(ImageRequest {
            pod,
            image,
            pull_policy: None,
            pull_secrets: &[],
            command: &[],
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))?;
    Ok((provider, pulled))
}

/// Plain Wasmtime: the defaults a first embedding would use, optionally with epoch
/// interruption compiled in (its deadline never reached).
struct Plain {
    engine: Engine,
    module: Module,
    linker: Linker<WasiP1Ctx>,
    epochs: bool,
}

impl Plain {
    fn new(wasm: &Path, epochs: bool) -> anyhow::Result<Self> {
        let engine = Engine::new(Config::new().epoch_interruption(epochs)).map_err(wasm_error)?;
        let module = Module::from_file(&engine, wasm).map_err(wasm_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx| ctx).map_err(wasm_error)?;
        Ok(Self {
            engine,
            module,
            linker,
            epochs,
        })
    }

    /// Instantiates and runs the module on a thread of its own, outside any async runtime
    /// (WASI's synchronous bindings must not block a runtime's worker).
    fn run(&self, rounds: u64) -> anyhow::Result<Sample> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<Sample> {
                    let stdout = MemoryOutputPipe::new(4096);
                    let wasi = WasiCtxBuilder::new()
                        .args(&["misbehave", "work", &rounds.to_string()])
                        .stdout(stdout.clone())
                        .build_p1();
                    let started = Instant::now();
                    let cpu_before = thread_cpu();
                    let mut store = Store::new(&self.engine, wasi);
                    if self.epochs {
                        // Nothing advances the epoch here: every check passes.
                        store.set_epoch_deadline(u64::MAX);
                    }
                    let instance = self
                        .linker
                        .instantiate(&mut store, &self.module)
                        .map_err(wasm_error)?;
                    let main = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .map_err(wasm_error)?;
                    match main.call(&mut store, ()) {
                        Ok(()) => {}
                        Err(err) if matches!(err.downcast_ref::<I32Exit>(), Some(I32Exit(0))) => {}
                        Err(err) => bail!("the plain wasmtime run failed: {err:#}"),
                    }
                    let cpu = thread_cpu().saturating_sub(cpu_before);
                    let wall = started.elapsed();
                    let printed = String::from_utf8_lossy(&stdout.contents()).into_owned();
                    Ok(Sample {
                        wall,
                        cpu,
                        digest: digest_of(&printed, rounds)?,
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the plain wasmtime thread panicked"))?
        })
    }
}

/// One container start through the provider, as a pod worker makes it.
async fn run_in_provider(
    provider: &WasiProvider,
    image: &WasiImage,
    pod: &PodKey,
    dir: &Path,
    rounds: u64,
    limits: Limits,
) -> anyhow::Result<Sample> {
    let root_dir = dir.join("root");
    tokio::fs::create_dir_all(&root_dir).await?;
    let log: PathBuf = dir.join("0.log");
    let (sink, writer) = LogSink::open(log.clone(), LogLimits::default(), &LogHub::default())
        .await
        .context("open the log")?;
    let usage = Arc::new(ContainerUsage::default());
    let start = ContainerStart {
        pod: pod.clone(),
        container: "misbehave".into(),
        command: Vec::new(),
        args: vec!["work".into(), rounds.to_string()],
        env: Vec::new(),
        stdout: sink.stream(Stream::Stdout),
        stderr: sink.stream(Stream::Stderr),
        root_dir,
        mounts: Vec::new(),
        annotations: BTreeMap::new(),
        memory_limit_bytes: limits.memory_bytes,
        cpu_limit_millis: limits.cpu_millis,
        usage: usage.clone(),
        ports: Vec::new(),
        devices: BTreeMap::new(),
        stop: CancellationToken::new(),
    };
    // The writer ends, flushed, once the guest's streams and this sink are gone.
    drop(sink);
    let started = Instant::now();
    let task = provider
        .start(image, start)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))?;
    let exit = task.await?;
    let wall = started.elapsed();
    writer.await?;
    let printed = tokio::fs::read_to_string(&log).await?;
    if exit.exit_code != 0 {
        bail!("the guest exited {exit:?}:\n{printed}");
    }
    Ok(Sample {
        wall,
        cpu: Duration::from_nanos(usage.cpu_nanos()),
        digest: digest_of(&printed, rounds)?,
    })
}

/// The digest from `work <rounds> rounds: digest <hex> in <ms> ms`.
fn digest_of(printed: &str, rounds: u64) -> anyhow::Result<String> {
    let prefix = format!("work {rounds} rounds: digest ");
    printed
        .lines()
        .find_map(|line| line.split_once(&prefix))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("the guest did not report its work:\n{printed}"))
}

/// wasmtime's own error type converts to anyhow's only with a wasmtime feature the node
/// does not build, so the benchmark keeps the message.
fn wasm_error(err: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{err:#}")
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1e3)
}

fn percent(value: f64, baseline: f64) -> f64 {
    round2((value / baseline - 1.0) * 100.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
