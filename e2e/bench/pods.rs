//! The pod benchmark against the real control plane and registry, with a wasmlet release
//! build: footprint, start latency (a fresh 2 MB module, then cached: one at a time and a
//! burst, for a default pod with its projected token volume, a token-less pod, and a pod
//! with a ConfigMap volume and a Secret env var, under the node's NodeRestriction identity;
//! the default and token-less series also through [`NullAgent`], the API server's floor;
//! per series, the API requests and CPU each pod cost and the status patch's time on the API
//! server and in the agent, read when the last pod runs and again when the node has written
//! the last of the series' events, which it paces, before the next series starts),
//! deleting 100 pods, density up to N pods with RSS/CPU at each step, node health under
//! load, where a start spends its time (from the node's start trace), follow-log latency,
//! and deletion of everything.
//!
//! Pods are created already bound (`spec.nodeName`), so create → Running, observed on a
//! watch, is bound → Running. Prints JSON and writes `e2e/bench/results/pods.json`. Asserts
//! no times; fails loudly if a pod never runs or the node falls over. `N` is the first
//! argument (default 1000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::demos::{demo_wasm, push_demo, push_file};
use e2e::oci_layout::{component_with_code_of_size, sleeper_module_of_size};
use e2e::{NullAgent, WasmCluster, WasmletOptions, rss_kib, wait_for, wasm_pod};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

const NODE: &str = "bench";
/// The node of the API floor series: a Node object answered for by [`NullAgent`].
const FLOOR_NODE: &str = "floor";
/// Pods started one at a time, for single-pod latency without queueing: enough that the
/// p99 is not simply the slowest pod.
const SEQUENTIAL: usize = 100;
/// The burst the targets name.
const BURST: usize = 20;
/// Bursts per series: one burst's time is a single sample.
const BURSTS: usize = 3;
/// Pods a series starts.
const SERIES_PODS: usize = SEQUENTIAL + BURSTS * BURST;
/// Lines read through a followed log.
const LOG_LINES: usize = 200;
/// Pods created, then deleted together, for the deletion target.
const DELETE_BATCH: usize = 100;
/// Directories made to time `mkdir` before each series.
const MKDIR_PROBES: usize = 50;
/// ConfigMap patches timed until they show in a pod's volume.
const CONFIG_CHANGES: usize = 20;
/// The fresh module: about 2 MB, nearly all of it code to compile.
const FRESH_MODULE_BYTES: usize = 2_000_000;
/// The new component: about 10 MB, nearly all of it code to compile.
const BIG_COMPONENT_BYTES: usize = 10_000_000;

type PodWatch =
    std::pin::Pin<Box<dyn futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Send>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    // Room for every series' pods (each series keeps its own), the delete batch and a few
    // more beside the density steps' `count`, so a small `count` runs too.
    let max_pods = count + 3 * SERIES_PODS + DELETE_BATCH + 20;
    let mut cluster = WasmCluster::start_with_options(WasmletOptions {
        max_pods: max_pods as u32,
        // The default level, as a node runs, and the WASI provider's `image ready` lines,
        // which split the start trace's pull; the agent's debug lines (three per start for
        // its events alone) cost a twentieth of its CPU.
        log_filter: "info,wasi_provider=debug".into(),
        ..WasmletOptions::named(NODE)
    })
    .await?;
    let client = cluster.plane.client().await?;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(client.clone());
    let pid = cluster.node.pid();

    let footprint = footprint(&cluster, &client, pid).await?;
    eprintln!("footprint: {footprint}");

    let ticker = push_demo(&cluster.registry.host(), "ticker")?;
    let manifest = |name: &str, interval_ms: u64| {
        shaped(PodShape::TokenLess, NODE, name, &ticker, interval_ms)
    };
    let idle = |name: &str| manifest(name, 3_600_000);
    let mut watch: PodWatch = pods
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();

    // The first pod pulls a module the node has never seen and compiles it.
    let sleeper = sleeper_module_of_size(FRESH_MODULE_BYTES)?;
    let sleeper_image = format!("{}/bench/sleeper:v1", cluster.registry.host());
    push_wasm(&sleeper, &sleeper_image)?;
    let fresh_pod: Pod = serde_yaml::from_str(&wasm_pod(
        "fresh",
        &format!(
            "  nodeName: {NODE}\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {sleeper_image}\n"
        ),
    ))?;
    let fresh = time_to_running(&pods, &mut watch, vec![fresh_pod])
        .await
        .map_err(|err| {
            let pod = cluster.pod("fresh").map(|p| e2e::status_summary(&p));
            anyhow::anyhow!("{err:#}; fresh pod: {pod:?}\n{}", cluster.node.log_tail(30))
        })?[0];
    // Cranelift's pass over it runs in the background; let it finish so that it does not
    // share the cores with what is timed next.
    let sleeper_compiles = optimised_code(&cluster, sleeper.len()).await?;

    // A new 10 MB component: its first start, then its start after a process restart, with
    // its code on disk.
    let component = component_with_code_of_size(
        &std::fs::read(demo_wasm("config-reader")?)?,
        BIG_COMPONENT_BYTES,
    )?;
    let component_image = format!("{}/bench/big-component:v1", cluster.registry.host());
    push_wasm(&component, &component_image)?;
    let component_pod = |name: &str| -> anyhow::Result<Pod> {
        Ok(serde_yaml::from_str(&wasm_pod(
            name,
            &format!(
                "  nodeName: {NODE}\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {component_image}\n    args: [\"--every\", \"3600\", \"/\"]\n"
            ),
        ))?)
    };
    let fresh_component =
        time_to_running(&pods, &mut watch, vec![component_pod("fresh-component")?]).await?[0];
    let component_compiles = optimised_code(&cluster, component.len()).await?;
    delete_and_wait(&pods, "fresh-component").await?;
    let log_before_restart = cluster.node.log_tail(usize::MAX);
    cluster.node.restart_with(rustix::process::Signal::TERM)?;
    wait_for(
        "the restarted node to report",
        Duration::from_secs(60),
        || {
            let log = cluster.node.log_tail(usize::MAX);
            async move { Ok(log.contains("node status sent").then_some(())) }
        },
    )
    .await?;
    let cached_component =
        time_to_running(&pods, &mut watch, vec![component_pod("cached-component")?]).await?[0];
    // The density figures below are the restarted process's.
    let pid = cluster.node.pid();
    eprintln!(
        "fresh {} B module: {:.0} ms, compiles {sleeper_compiles}; fresh {} B component: {:.0} ms, compiles {component_compiles}; after restart: {:.1} ms",
        sleeper.len(),
        ms(fresh),
        component.len(),
        ms(fresh_component),
        ms(cached_component)
    );

    // The ticker's own first pull and compile, so the cached figures below are cached: its
    // image, and its Cranelift code, which the node makes in the background after the first
    // start (about 0.2 s of a core here), before the first pods of a series are timed.
    let handed_over = || {
        let log = cluster.node.log_tail(usize::MAX);
        log.matches("new instances get the optimised code").count()
    };
    let before = handed_over();
    time_to_running(&pods, &mut watch, vec![idle("warm-up")?]).await?;
    wait_for(
        "the ticker's Cranelift code in use",
        Duration::from_secs(60),
        || {
            let done = handed_over() > before;
            async move { Ok(done.then_some(())) }
        },
    )
    .await?;

    // What the config series reads: one ConfigMap volume and one Secret env var per pod.
    let configs: kube::Api<ConfigMap> = kube::Api::default_namespaced(client.clone());
    configs
        .create(
            &PostParams::default(),
            &serde_yaml::from_str(
                "metadata: {name: bench-config}\ndata: {app.conf: \"level=info\"}\n",
            )?,
        )
        .await?;
    let secrets: kube::Api<Secret> = kube::Api::default_namespaced(client.clone());
    secrets
        .create(
            &PostParams::default(),
            &serde_yaml::from_str(
                "metadata: {name: bench-secret}\nstringData: {password: hunter2}\n",
            )?,
        )
        .await?;
    let floor_agent =
        NullAgent::start(client.clone(), FLOOR_NODE, client.default_namespace()).await?;
    let events: kube::Api<Event> = kube::Api::default_namespaced(client.clone());
    let mut series = serde_json::Map::new();
    let processes = series_processes(&cluster);
    for shape in [
        PodShape::Default,
        PodShape::TokenLess,
        PodShape::ConfigAndSecret,
    ] {
        // Idle pods of this shape on `node`, named `<prefix>-<name>`.
        let on = |node: &'static str, prefix: String| {
            let ticker = &ticker;
            move |name: &str| shaped(shape, node, &format!("{prefix}-{name}"), ticker, 3_600_000)
        };
        let mkdir = mkdir_cost(
            cluster
                .node
                .data_dir()
                .join(format!("mkdir-{}", shape.prefix())),
        )
        .await?;
        let mut written = count_events(events.clone(), format!("{}-", shape.prefix())).await?;
        let before = Reading::take(&client, &processes, Some(NODE)).await?;
        let (sequential, burst) =
            start_series(&pods, &mut watch, on(NODE, shape.prefix().into())).await?;
        let running = Instant::now();
        let mut result = Reading::take(&client, &processes, Some(NODE))
            .await?
            .since(&before);
        // The node writes events at its own pace (`--event-qps`): the next series starts
        // once the last of this one's events is written, and the cost is read again then.
        series_events_written(&mut written).await?;
        result["events_written_after_last_running_ms"] = json!(ms(running.elapsed()));
        result["per_pod_until_events_written"] = Reading::take(&client, &processes, Some(NODE))
            .await?
            .since(&before)["per_pod"]
            .take();
        result["mkdir_on_the_node_s_disk_us"] = mkdir;
        result["single_pod_cached_create_to_running_ms"] = sequential;
        result["burst"] = burst;
        if shape.has_floor() {
            let floor = on(FLOOR_NODE, format!("floor-{}", shape.prefix()));
            let before = Reading::take(&client, &processes, None).await?;
            let agent_before = floor_agent.status_patches();
            let (sequential, burst) = start_series(&pods, &mut watch, floor).await?;
            let mut floor = Reading::take(&client, &processes, None)
                .await?
                .since(&before);
            let (count, took) = floor_agent.status_patches();
            let sent = count.saturating_sub(agent_before.0);
            if sent > 0 {
                let mean = (took - agent_before.1).as_secs_f64() / sent as f64;
                floor["status_patches"]["mean_in_agent_ms"] = json!((mean * 1e4).round() / 10.0);
            }
            floor["single_pod_create_to_running_ms"] = sequential;
            floor["burst"] = burst;
            result["api_floor"] = floor;
        }
        eprintln!("{}: {result}", shape.prefix());
        series.insert(shape.name().to_string(), result);
    }
    floor_agent.stop().await?;

    let config_change = config_change_latency(&cluster, &pods, &configs).await?;
    eprintln!("ConfigMap change → pod volume: {config_change}");

    let logs = follow_latency(&pods, &mut watch, manifest("logger", 20)?).await?;
    eprintln!("log latency: {logs}");

    let delete_batch = delete_together(&pods, &mut watch, &idle).await?;
    eprintln!("delete {DELETE_BATCH}: {delete_batch}");

    // Density: ramp the idle pods up in steps, reading the agent's cost at each.
    // fresh, cached-component, warm-up, the three series and the logger.
    let already = 3 + 3 * SERIES_PODS + 1;
    let mut steps = Vec::new();
    let mut created = 0;
    let ramp_started = Instant::now();
    for target in [10, 100, 500, 1000, count]
        .into_iter()
        .filter(|t| *t <= count)
    {
        if target <= created {
            continue;
        }
        let batch: Vec<Pod> = (created..target)
            .map(|i| idle(&format!("idle-{i}")))
            .collect::<anyhow::Result<_>>()?;
        let step_started = Instant::now();
        let mut latencies = time_to_running(&pods, &mut watch, batch).await?;
        let step_took = step_started.elapsed();
        created = target;
        settle().await;
        latencies.sort();
        let step = json!({
            "pods": target + already,
            "added": latencies.len(),
            "all_added_running_after_ms": ms(step_took),
            "create_to_running_ms": percentiles(&latencies),
            "wasmlet_rss_kib": rss_kib(pid)?,
            "wasmlet_cpu_seconds_total": cpu_seconds(pid)?,
            "node_ready": node_ready(&client).await?,
        });
        eprintln!("density step: {step}");
        steps.push(step);
    }
    let ramp = ramp_started.elapsed();
    // Under full load the renewals must keep coming, every 10 s: wait for two more.
    let mut renewals = vec![lease_renewed(&client).await?];
    for _ in 0..2 {
        let last = renewals[renewals.len() - 1];
        let next = wait_for(
            "the Lease to be renewed under load",
            Duration::from_secs(15),
            || {
                let client = client.clone();
                async move {
                    let renewed = lease_renewed(&client).await.map_err(|e| e.to_string())?;
                    Ok((renewed > last).then_some(renewed))
                }
            },
        )
        .await?;
        renewals.push(next);
    }
    let renewal_gaps_s: Vec<f64> = renewals
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    let stages = start_stages(&format!(
        "{log_before_restart}{}",
        cluster.node.log_tail(usize::MAX)
    ));
    eprintln!("start stages: {stages}");

    let deleting = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for("every pod to be gone", Duration::from_secs(300), || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(left.items.is_empty().then_some(()))
        }
    })
    .await?;
    let deleted = deleting.elapsed();
    let total = created + already;

    let report = json!({
        "benchmark": "pods",
        "wasmlet_binary": e2e::wasmlet_binary()?.display().to_string(),
        "cpus": std::thread::available_parallelism()?.get(),
        "observed_by": "pod watch; pods created already bound",
        "footprint": footprint,
        "fresh_module": {"bytes": sleeper.len(), "create_to_running_ms": ms(fresh), "compiles": sleeper_compiles},
        "big_component": {
            "bytes": component.len(),
            "fresh_create_to_running_ms": ms(fresh_component),
            "compiles": component_compiles,
            "after_process_restart_create_to_running_ms": ms(cached_component),
        },
        "cached_start_series": series,
        "configmap_change_to_pod_volume_ms": config_change,
        "log_follow_latency_ms": logs,
        "density": {
            "pods": total,
            "ramp_to_all_running_ms": ms(ramp),
            "steps": steps,
            "lease_renewal_gaps_under_load_s": renewal_gaps_s,
            "node_ready_under_load": node_ready(&client).await?,
        },
        "delete_batch": delete_batch,
        "start_stages_ms": stages,
        "delete_all": {"pods": total, "gone_from_api_after_ms": ms(deleted)},
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/pods.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

/// The pods whose cached start is timed, each a series of its own.
#[derive(Clone, Copy)]
enum PodShape {
    /// A default pod as the ServiceAccount admission plugin makes it from Kubernetes 1.21
    /// on: a projected `kube-api-access` volume with a token bound to the pod (a
    /// TokenRequest per pod), the cluster's CA and the namespace. This 1.20 control plane
    /// would mount the service account's token Secret instead, so the bench writes the
    /// volume itself, as the admission plugin of any current cluster does.
    Default,
    /// `automountServiceAccountToken: false`: no volume at all.
    TokenLess,
    /// A default pod that also mounts a ConfigMap and reads a Secret into its env.
    ConfigAndSecret,
}

impl PodShape {
    fn name(self) -> &'static str {
        match self {
            PodShape::Default => "default_pod",
            PodShape::TokenLess => "token_less_pod",
            PodShape::ConfigAndSecret => "configmap_volume_and_secret_env_pod",
        }
    }

    /// Whether the series is also run through [`NullAgent`]: what the API server does for
    /// a config pod is the default pod's (wasmlet reads the ConfigMap and Secret from its
    /// watches).
    fn has_floor(self) -> bool {
        !matches!(self, PodShape::ConfigAndSecret)
    }

    fn prefix(self) -> &'static str {
        match self {
            PodShape::Default => "default",
            PodShape::TokenLess => "tokenless",
            PodShape::ConfigAndSecret => "config",
        }
    }
}

/// The projected volume the ServiceAccount admission plugin adds to a default pod (from
/// Kubernetes 1.21 on), with its expiry of 3607 s.
const KUBE_API_ACCESS_VOLUME: &str = "{name: kube-api-access, projected: {sources: [\
    {serviceAccountToken: {expirationSeconds: 3607, path: token}}, \
    {configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}}, \
    {downwardAPI: {items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]}}]}}";

/// A ticker pod of `shape`, bound to `node`, writing a line every `interval_ms`.
fn shaped(
    shape: PodShape,
    node: &str,
    name: &str,
    image: &str,
    interval_ms: u64,
) -> anyhow::Result<Pod> {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if !matches!(shape, PodShape::TokenLess) {
        volumes.push(KUBE_API_ACCESS_VOLUME);
        mounts.push(
            "{name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}",
        );
    }
    let mut env = String::new();
    if matches!(shape, PodShape::ConfigAndSecret) {
        volumes.push("{name: config, configMap: {name: bench-config}}");
        mounts.push("{name: config, mountPath: /config}");
        env.push_str(
            "\n    - name: PASSWORD\n      valueFrom: {secretKeyRef: {name: bench-secret, key: password}}",
        );
    }
    let (volumes, mounts) = (volumes.join(", "), mounts.join(", "));
    let yaml = wasm_pod(
        name,
        &format!(
            "  nodeName: {node}\n  automountServiceAccountToken: false\n  volumes: [{volumes}]\n  containers:\n  - name: app\n    image: {image}\n    volumeMounts: [{mounts}]\n    env:\n    - {{name: INTERVAL_MS, value: \"{interval_ms}\"}}{env}\n"
        ),
    );
    Ok(serde_yaml::from_str(&yaml)?)
}

/// ConfigMap changes to visible in a running pod's volume on the node: `CONFIG_CHANGES`
/// patches of `bench-config`, each timed from the patch returning to the new content in the
/// volume file of a pod of the config series (polled every millisecond).
async fn config_change_latency(
    cluster: &WasmCluster,
    pods: &kube::Api<Pod>,
    configs: &kube::Api<ConfigMap>,
) -> anyhow::Result<Value> {
    let reader = pods.get("config-one-0").await?;
    let uid = reader.metadata.uid.unwrap_or_default();
    let file = cluster
        .node
        .data_dir()
        .join("pods")
        .join(uid)
        .join("volumes/config/app.conf");
    let mut latencies = Vec::new();
    for i in 0..CONFIG_CHANGES {
        let value = format!("level=debug-{i}");
        let patch = json!({"data": {"app.conf": value}});
        configs
            .patch(
                "bench-config",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        let patched = Instant::now();
        let deadline = patched + Duration::from_secs(30);
        while std::fs::read_to_string(&file).unwrap_or_default() != value {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the change never reached {}",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(patched.elapsed());
    }
    latencies.sort();
    Ok(percentiles(&latencies))
}

/// What a series is judged by beside its latencies, read before and after it: the API
/// server's requests by verb and resource (from `apiserver_request_total`, watches left
/// out), each process's CPU time, the status patches the server served and how long it took
/// over them, and, for a wasmlet node, its own patch times and its TokenRequests sent again.
/// Per pod, the difference says which requests an agent makes for a start and where the
/// machine's two cores went.
struct Reading {
    requests: HashMap<String, f64>,
    cpu_seconds: Vec<(&'static str, f64)>,
    /// Status patches as the API server timed them (from the request arriving to the answer
    /// leaving), as (count, seconds).
    patches_on_server: (f64, f64),
    node: Option<NodeReading>,
}

/// Events a cached start of one container writes: Pulled, Created, Started.
const EVENTS_PER_START: usize = 3;

/// Counts, as the API server takes them, the events about pods whose names start with
/// `prefix`, on a watch of the namespace's events (a list and a poll would cost the API
/// server more than the events being waited for).
async fn count_events(
    events: kube::Api<Event>,
    prefix: String,
) -> anyhow::Result<tokio::sync::watch::Receiver<usize>> {
    let mut stream = events
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();
    let (count, counted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.try_next().await {
            if let WatchEvent::Added(event) = event
                && event
                    .involved_object
                    .name
                    .is_some_and(|name| name.starts_with(&prefix))
            {
                count.send_modify(|n| *n += 1);
            }
        }
    });
    Ok(counted)
}

/// Waits (a minute at most) until `written` has counted every event of a series; woken by
/// each count, so the time read after it is when the last event was taken.
async fn series_events_written(
    written: &mut tokio::sync::watch::Receiver<usize>,
) -> anyhow::Result<()> {
    let want = EVENTS_PER_START * SERIES_PODS;
    let limit = Duration::from_secs(60);
    let outcome = tokio::time::timeout(limit, written.wait_for(|seen| *seen >= want))
        .await
        .map(|counted| counted.is_ok());
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the event watch ended before {want} events were written"),
        Err(_) => anyhow::bail!(
            "after {limit:?}, {} of {want} events written",
            *written.borrow()
        ),
    }
}

/// A wasmlet node's own counters, from its metrics.
struct NodeReading {
    /// Status patches as wasmlet timed them (from sending to the answer decoded), as
    /// (count, seconds).
    patches: (f64, f64),
    /// `wasmlet_token_request_retries_total`.
    token_retries: f64,
}

impl Reading {
    /// Reads the API server's metrics and, when `node` is a wasmlet node, the node's
    /// (through the API server's node proxy), once each.
    async fn take(
        client: &kube::Client,
        processes: &[(&'static str, u32)],
        node: Option<&str>,
    ) -> anyhow::Result<Self> {
        let text = client
            .request_text(http::Request::get("/metrics").body(Vec::new())?)
            .await?;
        let mut requests = HashMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            let verb = label(line, "verb");
            if verb == "WATCH" {
                continue;
            }
            let kind = match label(line, "subresource") {
                "" => format!("{verb} {}", label(line, "resource")),
                sub => format!("{verb} {}/{sub}", label(line, "resource")),
            };
            *requests.entry(kind).or_insert(0.0) += sample(line);
        }
        let status_patches = |suffix: &str| -> f64 {
            let prefix = format!("apiserver_request_duration_seconds_{suffix}{{");
            text.lines()
                .filter(|l| l.starts_with(&prefix))
                .filter(|l| {
                    label(l, "verb") == "PATCH"
                        && label(l, "resource") == "pods"
                        && label(l, "subresource") == "status"
                })
                .map(sample)
                .sum()
        };
        let patches_on_server = (status_patches("count"), status_patches("sum"));
        let node = match node {
            Some(node) => {
                let text = client
                    .request_text(
                        http::Request::get(format!("/api/v1/nodes/{node}/proxy/metrics"))
                            .body(Vec::new())?,
                    )
                    .await?;
                let metric = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0.0)
                };
                Some(NodeReading {
                    patches: (
                        metric("wasmlet_pod_status_patch_duration_seconds_count"),
                        metric("wasmlet_pod_status_patch_duration_seconds_sum"),
                    ),
                    token_retries: metric("wasmlet_token_request_retries_total"),
                })
            }
            None => None,
        };
        let cpu_seconds = processes
            .iter()
            .map(|(name, pid)| Ok((*name, cpu_seconds(*pid)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            requests,
            cpu_seconds,
            patches_on_server,
            node,
        })
    }

    /// A series' figures since `before`, over its [`SERIES_PODS`] pods: per pod, requests of
    /// each kind (those made at least once per ten pods) and CPU milliseconds of each
    /// process; the status patches with their mean times; the TokenRequests sent again per
    /// 100 pods.
    fn since(&self, before: &Self) -> Value {
        let pods = SERIES_PODS as f64;
        let round = |v: f64| (v * 100.0).round() / 100.0;
        let requests: serde_json::Map<String, Value> = self
            .requests
            .iter()
            .map(|(kind, n)| (kind, n - before.requests.get(kind).copied().unwrap_or(0.0)))
            .filter(|(_, n)| *n >= pods / 10.0)
            .map(|(kind, n)| (kind.clone(), json!(round(n / pods))))
            .collect();
        let cpu: serde_json::Map<String, Value> = self
            .cpu_seconds
            .iter()
            .zip(&before.cpu_seconds)
            .map(|((name, after), (_, earlier))| {
                (
                    name.to_string(),
                    json!(round((after - earlier) * 1e3 / pods)),
                )
            })
            .collect();
        let mean_ms = |(count, sum): (f64, f64), (count0, sum0): (f64, f64)| {
            let n = count - count0;
            (n > 0.0).then(|| ((sum - sum0) / n * 1e4).round() / 10.0)
        };
        let mut result = json!({
            "per_pod": {"api_requests": requests, "cpu_ms": cpu},
            "status_patches": {
                "patches_served": self.patches_on_server.0 - before.patches_on_server.0,
                "mean_on_api_server_ms": mean_ms(self.patches_on_server, before.patches_on_server),
            },
        });
        if let (Some(node), Some(node_before)) = (&self.node, &before.node) {
            result["status_patches"]["mean_in_wasmlet_ms"] =
                json!(mean_ms(node.patches, node_before.patches));
            let retries = node.token_retries - node_before.token_retries;
            result["token_request_retries_per_100_pods"] =
                json!((retries * 100.0 / pods * 10.0).round() / 10.0);
        }
        result
    }
}

/// Microseconds per `mkdir` in `dir` (made for the purpose, on the node's disk), over
/// [`MKDIR_PROBES`] directories: a default pod makes twelve directories to start, and on a
/// journal-less ext4 such as this VM's, each costs a scan past every inode deleted in the
/// last minute or so (`recently_deleted`), so a run just after a mass deletion (another
/// run's teardown, a build) starts pods more slowly. The directories are kept: removing them
/// would slow what follows.
async fn mkdir_cost(dir: std::path::PathBuf) -> anyhow::Result<Value> {
    let mut took = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Duration>> {
        std::fs::create_dir(&dir)?;
        (0..MKDIR_PROBES)
            .map(|i| {
                let started = Instant::now();
                std::fs::create_dir(dir.join(i.to_string()))?;
                Ok(started.elapsed())
            })
            .collect()
    })
    .await??;
    took.sort();
    let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
    Ok(json!({"p50": us(took[took.len() / 2]), "max": took.last().map(|d| us(*d))}))
}

/// The value of label `name` in a Prometheus sample line, or "" when it has none.
fn label<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_once(&format!(",{name}=\""))
        .or_else(|| line.split_once(&format!("{{{name}=\"")))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(value, _)| value)
}

/// The value of a Prometheus sample line (0 when it cannot be read).
fn sample(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Binary size, idle RSS after 60 s with no pods, and the node's API requests per minute
/// while idle.
async fn footprint(
    cluster: &WasmCluster,
    client: &kube::Client,
    pid: u32,
) -> anyhow::Result<Value> {
    let binary = e2e::wasmlet_binary()?;
    let size = std::fs::metadata(&binary)?.len();
    let before = node_requests(client).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = node_requests(client).await?;
    let minutes = idle_started.elapsed().as_secs_f64() / 60.0;
    anyhow::ensure!(cluster.node.pid() == pid, "wasmlet restarted");
    Ok(json!({
        "binary_bytes": size,
        "binary_mib": (size as f64 / 1048576.0 * 100.0).round() / 100.0,
        "idle_rss_kib_after_60s": rss_kib(pid)?,
        "idle_api_requests_per_minute": ((after - before) / minutes * 10.0).round() / 10.0,
        "api_requests_counted": "apiserver_request_total for leases and nodes, minus watches (only the node GETs, PUTs or PATCHes them)",
    }))
}

/// Requests the API server has served for leases and nodes, other than watches: in this
/// cluster only the node makes them (the controllers watch nodes and, with leader election
/// off, hold no leases).
async fn node_requests(client: &kube::Client) -> anyhow::Result<f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(r#"resource="leases""#) || l.contains(r#"resource="nodes""#))
        .filter(|l| !l.contains(r#"verb="WATCH""#) && !l.contains(r#"verb="LIST""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The processes whose CPU a series spends: the node, the control plane, and this
/// benchmark (which also hosts the null agent).
fn series_processes(cluster: &WasmCluster) -> Vec<(&'static str, u32)> {
    let mut processes = cluster.plane.pids();
    processes.push(("wasmlet", cluster.node.pid()));
    processes.push(("bench-pods", std::process::id()));
    processes
}

/// Create → Running for [`SEQUENTIAL`] pods made by `pod`, one at a time, then for
/// [`BURSTS`] bursts of [`BURST`] pods created back to back: the percentiles of each, and
/// when each whole burst ran.
async fn start_series(
    pods: &kube::Api<Pod>,
    watch: &mut PodWatch,
    pod: impl Fn(&str) -> anyhow::Result<Pod>,
) -> anyhow::Result<(Value, Value)> {
    let mut sequential = Vec::new();
    for i in 0..SEQUENTIAL {
        sequential.extend(time_to_running(pods, watch, vec![pod(&format!("one-{i}"))?]).await?);
    }
    let mut burst_latencies = Vec::new();
    let mut burst_times = Vec::new();
    for b in 0..BURSTS {
        let burst: Vec<Pod> = (0..BURST)
            .map(|i| pod(&format!("burst-{b}-{i}")))
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        burst_latencies.extend(time_to_running(pods, watch, burst).await?);
        burst_times.push(ms(started.elapsed()));
    }
    sequential.sort();
    burst_latencies.sort();
    Ok((
        percentiles(&sequential),
        json!({
            "pods": BURST,
            "all_running_after_ms": burst_times,
            "create_to_running_ms": percentiles(&burst_latencies),
        }),
    ))
}

/// Per-pod latency from the create call returning to the first watch event showing the pod
/// Running, for every pod of `batch`.
async fn time_to_running(
    pods: &kube::Api<Pod>,
    watch: &mut PodWatch,
    batch: Vec<Pod>,
) -> anyhow::Result<Vec<Duration>> {
    let mut created: HashMap<String, Instant> = HashMap::new();
    for pod in &batch {
        pods.create(&PostParams::default(), pod).await?;
        created.insert(
            pod.metadata.name.clone().unwrap_or_default(),
            Instant::now(),
        );
    }
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while latencies.len() < batch.len() {
        let event = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(event)) => event?,
            // The API server ends a watch after its timeout (kube caps it below 295 s), and
            // the whole run is longer: watch again from "0", which replays every pod as it is
            // now, so a pod that went Running meanwhile is seen at once (a little late).
            Ok(None) => {
                *watch = pods
                    .watch(&WatchParams::default().timeout(290), "0")
                    .await?
                    .boxed();
                continue;
            }
            Err(_) => anyhow::bail!(
                "only {} of {} pods reached Running",
                latencies.len(),
                batch.len()
            ),
        };
        let seen = Instant::now();
        let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
            continue;
        };
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        // Only a Running sighting ends a pod's clock; earlier events leave it ticking.
        if running && let Some(at) = pod.metadata.name.as_ref().and_then(|n| created.remove(n)) {
            latencies.push(seen.saturating_duration_since(at));
        }
    }
    Ok(latencies)
}

/// Runs `logger` (a ticker stamping each line with the wall clock) and reads its log through
/// the API server with `follow=true`, as `kubectl logs -f` does; per line, the time from the
/// guest's stamp to the line arriving here.
async fn follow_latency(
    pods: &kube::Api<Pod>,
    watch: &mut PodWatch,
    logger: Pod,
) -> anyhow::Result<Value> {
    let name = logger.metadata.name.clone().unwrap_or_default();
    time_to_running(pods, watch, vec![logger]).await?;
    let params = LogParams {
        follow: true,
        tail_lines: Some(0),
        ..Default::default()
    };
    let mut lines = pods.log_stream(&name, &params).await?.lines();
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while latencies.len() < LOG_LINES {
        let line = match tokio::time::timeout_at(deadline, lines.try_next()).await {
            Ok(line) => line?.ok_or_else(|| anyhow::anyhow!("the followed log ended"))?,
            Err(_) => anyhow::bail!("only {} followed lines in 60 s", latencies.len()),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros();
        let written: u128 = line
            .rsplit(' ')
            .next()
            .and_then(|ms| ms.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not a tick line: {line}"))?;
        latencies.push(Duration::from_micros(
            now.saturating_sub(written * 1000) as u64
        ));
    }
    latencies.sort();
    // The guest stamps in whole milliseconds, so each figure carries up to 1 ms of rounding.
    Ok(json!({"lines": latencies.len(), "guest_write_to_client_ms": percentiles(&latencies)}))
}

/// Waits for the node's log to show Cranelift's code for the `wasm_bytes`-byte artifact, then
/// returns each of its "compiled" lines: compiler, milliseconds and Wasm MB/s.
async fn optimised_code(cluster: &WasmCluster, wasm_bytes: usize) -> anyhow::Result<Value> {
    let bytes = wasm_bytes.to_string();
    let compiles = wait_for(
        "Cranelift's code in the background",
        Duration::from_secs(300),
        || {
            let log = cluster.node.log_tail(usize::MAX);
            let bytes = bytes.clone();
            async move {
                let lines: Vec<String> = log
                    .lines()
                    .filter(|l| {
                        l.contains(" compiled ")
                            && log_field(l, "wasm_bytes").as_deref() == Some(bytes.as_str())
                    })
                    .map(String::from)
                    .collect();
                let optimised = lines
                    .iter()
                    .any(|l| log_field(l, "compiler").as_deref() == Some("cranelift"));
                Ok(optimised.then_some(lines))
            }
        },
    )
    .await?;
    Ok(compiles
        .iter()
        .filter_map(|line| {
            let elapsed_ms: f64 = log_field(line, "elapsed_ms")?.parse().ok()?;
            Some(json!({
                "compiler": log_field(line, "compiler")?,
                "elapsed_ms": elapsed_ms,
                "wasm_mb_per_s": (wasm_bytes as f64 / 1e6 / (elapsed_ms / 1e3) * 10.0).round() / 10.0,
            }))
        })
        .collect())
}

/// Publishes the Wasm binary `wasm` as `image`.
fn push_wasm(wasm: &[u8], image: &str) -> anyhow::Result<()> {
    let file = tempfile::Builder::new().suffix(".wasm").tempfile()?;
    std::fs::write(file.path(), wasm)?;
    push_file(file.path(), image, &[])
}

/// Deletes pod `name` and waits until the API has no such pod.
async fn delete_and_wait(pods: &kube::Api<Pod>, name: &str) -> anyhow::Result<()> {
    pods.delete(name, &DeleteParams::default()).await?;
    wait_for(
        &format!("pod {name} to be gone"),
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let left = pods.get_opt(name).await.map_err(|e| e.to_string())?;
                Ok(left.is_none().then_some(()))
            }
        },
    )
    .await
}

/// The value of `key=` in a log line, quotes trimmed.
fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Where starts spent their time, from the node's log: each pod's `pod started` trace
/// (watch event → admitted worker → volumes → pulls → container starts → the Running
/// status accepted) and, within the pull, the provider's `image ready` split between the
/// artifact lookup and loading its compiled code. The fresh pod on its own, and p50/p99 per
/// stage over the pods started one at a time, image and code cached.
fn start_stages(log: &str) -> Value {
    let mut per_pod: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    for line in log.lines() {
        let Some(pod) = log_field(line, "pod") else {
            continue;
        };
        let mut stages = Vec::new();
        if line.contains("pod started") {
            let Some(at) = line.find(" stages=") else {
                continue;
            };
            for stage in line[at + 8..].split_whitespace() {
                if let Some((name, took)) = stage.split_once('=')
                    && let Ok(ms) = took.trim_end_matches("ms").parse::<f64>()
                {
                    stages.push((name.to_string(), ms));
                }
            }
            stages.extend(
                log_field(line, "total_ms")
                    .and_then(|t| t.parse().ok())
                    .map(|t| ("total".to_string(), t)),
            );
        } else if line.contains("image ready") {
            for key in ["artifact_ms", "code_ms"] {
                if let Some(ms) = log_field(line, key).and_then(|v| v.parse::<f64>().ok()) {
                    stages.push((format!("pull.{}", key.trim_end_matches("_ms")), ms));
                }
            }
        }
        per_pod.entry(pod).or_default().extend(stages);
    }
    let fresh: serde_json::Map<String, Value> = per_pod
        .get("fresh")
        .into_iter()
        .flatten()
        .map(|(name, ms)| (name.clone(), json!(ms)))
        .collect();
    // Per series (the pod name's prefix), per stage.
    let mut cached: HashMap<&str, HashMap<&str, Vec<Duration>>> = HashMap::new();
    for (pod, stages) in &per_pod {
        if let Some((series, _)) = pod.split_once("-one-") {
            for (name, ms) in stages {
                cached
                    .entry(series)
                    .or_default()
                    .entry(name)
                    .or_default()
                    .push(Duration::from_secs_f64(ms / 1e3));
            }
        }
    }
    let cached: serde_json::Map<String, Value> = cached
        .into_iter()
        .map(|(series, stages)| {
            let stages: serde_json::Map<String, Value> = stages
                .into_iter()
                .map(|(name, mut samples)| {
                    samples.sort();
                    (name.to_string(), percentiles(&samples))
                })
                .collect();
            (series.to_string(), Value::Object(stages))
        })
        .collect();
    json!({"fresh_pod": fresh, "cached_one_at_a_time": cached})
}

/// Creates [`DELETE_BATCH`] idle pods, waits for them to run, deletes them with one call,
/// and times until the API has none of them left.
async fn delete_together(
    pods: &kube::Api<Pod>,
    watch: &mut PodWatch,
    idle: &impl Fn(&str) -> anyhow::Result<Pod>,
) -> anyhow::Result<Value> {
    let batch: Vec<Pod> = (0..DELETE_BATCH)
        .map(|i| {
            let mut pod = idle(&format!("doomed-{i}"))?;
            pod.metadata
                .labels
                .get_or_insert_default()
                .insert("bench".into(), "doomed".into());
            Ok(pod)
        })
        .collect::<anyhow::Result<_>>()?;
    time_to_running(pods, watch, batch).await?;
    let selector = ListParams::default().labels("bench=doomed");
    let deleting = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &selector)
        .await?;
    wait_for(
        "the doomed pods to be gone",
        Duration::from_secs(120),
        || {
            let selector = selector.clone();
            async move {
                let left = pods.list(&selector).await.map_err(|e| e.to_string())?;
                Ok(left.items.is_empty().then_some(()))
            }
        },
    )
    .await?;
    Ok(json!({"pods": DELETE_BATCH, "gone_from_api_after_ms": ms(deleting.elapsed())}))
}

async fn lease_renewed(client: &kube::Client) -> anyhow::Result<i64> {
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get(NODE).await?;
    Ok(lease
        .spec
        .and_then(|s| s.renew_time)
        .map_or(0, |t| t.0.as_millisecond()))
}

async fn node_ready(client: &kube::Client) -> anyhow::Result<bool> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let node = nodes.get(NODE).await?;
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Lets allocator arenas settle before reading RSS.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 1e2
}

fn percentiles(sorted: &[Duration]) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let at = |q: f64| ms(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)})
}

/// The agent's user + system CPU time so far, from `/proc/<pid>/stat` (in USER_HZ = 100).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    Ok((ticks(11) + ticks(12)) / 100.0)
}
