//! Resource limits inside the sandbox, against the real control plane: a memory bomb is
//! OOMKilled at `resources.limits.memory`, or without one at the node's allocatable memory
//! or, on a host short of address space, at its memory's reservation; a spinner under
//! `resources.limits.cpu` is held to its share while unlimited spinners beside it cannot make
//! a latency-sensitive pod late or stop the node's Lease from renewing.

use std::time::{Duration, Instant};

use e2e::demos::{cri_ticks, push_demo, unix_ms};
use e2e::status::{container, lease, phase, renew_time, running};
use e2e::{WasmCluster, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::{Node, Pod};

const MINUTE: Duration = Duration::from_secs(60);
/// The ticker's interval in the fairness test.
const TICK_MS: u64 = 100;
/// How long the fairness test watches the node under load; the Lease, renewed every 10 s,
/// must move in it.
const WINDOW: Duration = Duration::from_secs(12);

/// A ticker pod logging every `interval_ms`.
fn ticker(name: &str, image: &str, interval_ms: u64) -> String {
    wasm_pod(
        name,
        &format!(
            "  containers:\n  - name: app\n    image: {image}\n    env:\n    - {{name: INTERVAL_MS, value: \"{interval_ms}\"}}\n    - {{name: POD_NAME, value: {name}}}\n"
        ),
    )
}

/// Starts a ticking neighbour, then a `misbehave grow` pod named `bomb` (its container spec
/// ending with `resources`, as YAML lines), and returns the bomb once it has failed with
/// exit code 137, OOMKilled, and that state's message.
async fn a_bomb_beside_a_neighbour(cluster: &WasmCluster, resources: &str) -> (Pod, String) {
    let host = cluster.registry.host();
    let ticker_image = push_demo(&host, "ticker").unwrap();
    let misbehave = push_demo(&host, "misbehave").unwrap();
    cluster
        .kubectl
        .apply(&ticker("neighbour", &ticker_image, TICK_MS))
        .unwrap();
    cluster
        .wait_pod("neighbour", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "bomb",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: app\n    image: {misbehave}\n    args: [grow]\n{resources}"
            ),
        ))
        .unwrap();
    let pod = cluster
        .wait_pod("bomb", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let state = container(&pod, "app")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .unwrap_or_else(|| panic!("not terminated: {}", e2e::status_summary(&pod)));
    assert_eq!(
        (state.exit_code, state.reason.as_deref()),
        (137, Some("OOMKilled")),
        "{}",
        e2e::status_summary(&pod)
    );
    (pod, state.message.unwrap_or_default())
}

/// The most the bomb's log says it held, in MiB.
fn held_mib(cluster: &WasmCluster, pod: &Pod) -> u64 {
    let log = cluster.container_log(pod, "app", 0);
    let held = log
        .lines()
        .filter_map(|l| {
            l.split_once("holding ")?
                .1
                .strip_suffix(" MiB")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0u64);
    eprintln!("the bomb held {held} MiB when refused");
    held
}

/// The node and the bomb's neighbour carried on: still running, never restarted, still
/// logging.
async fn the_neighbour_carries_on(cluster: &mut WasmCluster) {
    assert!(cluster.node.is_running(), "wasmlet exited");
    let neighbour = cluster.pod("neighbour").unwrap();
    assert!(running(&neighbour, "app"));
    assert_eq!(container(&neighbour, "app").unwrap().restart_count, 0);
    let before = cri_ticks(&cluster.container_log(&neighbour, "app", 0)).len();
    wait_for(
        "the neighbour to keep logging",
        Duration::from_secs(10),
        || {
            let now = cri_ticks(&cluster.container_log(&neighbour, "app", 0)).len();
            async move { Ok((now >= before + 5).then_some(())) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_at_its_limit_and_harms_nothing_else() {
    let mut cluster = WasmCluster::start("edge-oom", 110).await.unwrap();
    let limit = "    resources:\n      requests: {memory: 32Mi}\n      limits: {memory: 32Mi}\n";
    let (pod, message) = a_bomb_beside_a_neighbour(&cluster, limit).await;
    assert!(message.contains("resources.limits.memory"), "{message}");
    assert_eq!(container(&pod, "app").map(|c| c.restart_count), Some(0));

    // It got most of the way to its limit before the refusal: the limit, not something
    // else, is what stopped it.
    let held = held_mib(&cluster, &pod);
    assert!((16..32).contains(&held), "held {held} MiB");

    the_neighbour_carries_on(&mut cluster).await;
    cluster
        .node
        .wait_ready(&cluster.kubectl, Duration::from_secs(5))
        .await
        .unwrap();
}

/// A pod with no memory limit cannot take the memory the node runs in: all pods together
/// are held to the node's allocatable memory (here made 64 MiB by `--system-reserved`), and
/// the bomb that passes it is OOMKilled while its neighbour and the node carry on.
#[tokio::test]
async fn a_memory_bomb_without_a_limit_is_held_to_the_node_s_allocatable_memory() {
    const POD_MEMORY: u64 = 64 << 20;
    // Allocatable is capacity less the reservation and the 100 MiB eviction threshold.
    let host_memory = kubelet::host::memory_total_bytes().expect("MemTotal");
    let reserved = host_memory - POD_MEMORY - (100 << 20);
    let mut options = e2e::WasmletOptions::named("edge-allocatable");
    options.system_reserved = Some(format!("memory={}Ki", reserved / 1024));
    let mut cluster = WasmCluster::start_with_options(options).await.unwrap();
    let node: Node = cluster
        .kubectl
        .get_json(&["get", "node", "edge-allocatable"])
        .unwrap();
    let allocatable = node.status.and_then(|s| s.allocatable).unwrap_or_default();
    assert_eq!(
        allocatable.get("memory").map(|q| q.0.as_str()),
        Some("64Mi"),
        "the API server's canonical form of 65536Ki"
    );

    let (_, message) = a_bomb_beside_a_neighbour(&cluster, "").await;
    assert!(
        message.contains("the node's memory for pods is used up"),
        "{message}"
    );
    let event = cluster.wait_event("bomb", "Failed", MINUTE).await.unwrap();
    assert!(event.contains("OOMKilled"), "{event}");
    the_neighbour_carries_on(&mut cluster).await;
}

#[tokio::test]
async fn a_cpu_limit_holds_a_spinner_to_its_share_and_spinners_starve_no_one() {
    let cluster = WasmCluster::start("edge-cpu", 110).await.unwrap();
    let host = cluster.registry.host();
    let ticker_image = push_demo(&host, "ticker").unwrap();
    let misbehave = push_demo(&host, "misbehave").unwrap();
    let spinner = |name: &str, resources: &str| {
        wasm_pod(
            name,
            &format!(
                "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: {misbehave}\n    args: [spin]\n{resources}"
            ),
        )
    };
    // Two unlimited spinners: as many as the machine has cores, and as many as the node's
    // runtime has worker threads.
    for name in ["spin-a", "spin-b"] {
        cluster.kubectl.apply(&spinner(name, "")).unwrap();
    }
    cluster
        .kubectl
        .apply(&spinner(
            "spin-limited",
            "    resources:\n      requests: {cpu: 100m}\n      limits: {cpu: 100m}\n",
        ))
        .unwrap();
    cluster
        .kubectl
        .apply(&ticker("ticker", &ticker_image, TICK_MS))
        .unwrap();
    for name in ["spin-a", "spin-b", "spin-limited", "ticker"] {
        cluster
            .wait_pod(name, "Running", MINUTE, |p| running(p, "app"))
            .await
            .unwrap();
    }
    // Measure only once every spinner is burning CPU.
    wait_for("every spinner to use CPU", MINUTE, || {
        let cpu = cluster.cpu_by_pod().map_err(|e| e.to_string());
        async move {
            let cpu = cpu?;
            Ok(["spin-a", "spin-b", "spin-limited"]
                .iter()
                .all(|name| cpu.get(*name).is_some_and(|(nanos, _)| *nanos > 0))
                .then_some(()))
        }
    })
    .await
    .unwrap();

    let before = cluster.cpu_by_pod().unwrap();
    let mut renewals = vec![renew_time(&lease(&cluster.kubectl, "edge-cpu").unwrap()).unwrap()];
    let window_start_ms = unix_ms();
    let started = Instant::now();
    // The window is a measurement, not a synchronisation: it ends once it has lasted WINDOW
    // and the Lease has been renewed inside it (renewals are 10 s apart). Every renewal seen
    // on the way is kept, so the gaps between consecutive ones can be checked.
    let window = wait_for(
        "a window of load with the Lease renewed in it",
        WINDOW + Duration::from_secs(20),
        || {
            let seen = lease(&cluster.kubectl, "edge-cpu").map(|l| renew_time(&l));
            if let Ok(Some(time)) = seen
                && renewals.last().is_some_and(|last| time > *last)
            {
                renewals.push(time);
            }
            let done = started.elapsed() >= WINDOW && renewals.len() >= 2;
            async move { seen.map(|_| done.then_some(())) }
        },
    )
    .await;
    let window_end_ms = unix_ms();
    let after = cluster.cpu_by_pod().unwrap();
    window.unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", cluster.node.log_tail(30)));

    // (ii) The node's heartbeat went on: the Lease was renewed inside the window on its 10 s
    // schedule, give or take a slow request, and the node is Ready.
    let renewal_gaps: Vec<f64> = renewals
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    eprintln!("lease renewals {renewal_gaps:.1?} s apart");
    assert!(
        renewal_gaps.iter().all(|gap| *gap <= 12.0),
        "the Lease went too long without renewal: gaps {renewal_gaps:.1?} s\nwasmlet log:\n{}",
        cluster.node.log_tail(30)
    );
    cluster
        .node
        .wait_ready(&cluster.kubectl, Duration::from_secs(5))
        .await
        .unwrap();

    // (i) The ticker stayed on time. It sleeps TICK_MS between lines, so a gap is that plus
    // however long its wake-up waited: for a worker thread to finish the slice it is running
    // (one 10 ms epoch tick) for each runnable guest queued ahead of it, and for the kernel
    // to run that thread on a shared 2-core machine. Measured: on a machine running only
    // this file's two tests, gaps p50 ~120 ms and max ~175 ms; with four other clusters
    // under test beside it (load average 13), p50 130 ms and max 877 ms. A node whose timers
    // wait behind the spinners is late all the time instead: with a guest's yield that does
    // not defer to tokio's timers (which a busy worker polls only every 61 task polls,
    // 0.6 s of 10 ms slices), p50 212 ms. So the median, which the node's own scheduling
    // decides, is held to within half an interval, and the worst gap, which an overloaded
    // kernel can stretch, to a second: a guest starved outright misses far more than that.
    let (median_bound, max_bound) = (TICK_MS + TICK_MS / 2, 1000);
    let ticker_pod = cluster.pod("ticker").unwrap();
    let stamps: Vec<u64> = cri_ticks(&cluster.container_log(&ticker_pod, "app", 0))
        .into_iter()
        .map(|(_, ms)| ms)
        .filter(|ms| (window_start_ms..=window_end_ms).contains(ms))
        .collect();
    let mut gaps: Vec<u64> = std::iter::once(window_start_ms)
        .chain(stamps.iter().copied())
        .chain(std::iter::once(window_end_ms))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    let worst = gaps.last().copied().unwrap_or(u64::MAX);
    eprintln!(
        "ticker: {} lines in {} ms; gaps p50 {median} ms, p99 {} ms, max {worst} ms",
        stamps.len(),
        window_end_ms - window_start_ms,
        gaps[gaps.len() * 99 / 100],
    );
    assert!(
        median <= median_bound && worst <= max_bound,
        "the ticker was late: gaps p50 {median} ms, max {worst} ms, against {TICK_MS} ms ticks \
         (bounds {median_bound} and {max_bound} ms)"
    );

    // (iii) The limited spinner used its 0.1 core at most (0.15 allows for one 10 ms tick of
    // overshoot per 100 ms period at worst; a loaded machine can only lower it). The
    // unlimited ones were not held to it: with two worker threads for three spinners they
    // used 0.55 to 0.75 cores each on a quiet machine, and 0.2 is twice the limit.
    let cores = |name: &str| -> f64 {
        let (Some((n0, t0)), Some((n1, t1))) = (before.get(name), after.get(name)) else {
            panic!("no stats for {name}: {before:?} {after:?}");
        };
        n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64() / 1e9
    };
    let limited = cores("spin-limited");
    let (a, b) = (cores("spin-a"), cores("spin-b"));
    eprintln!("cores used: spin-limited {limited:.3}, spin-a {a:.3}, spin-b {b:.3}");
    assert!(limited <= 0.15, "spin-limited used {limited:.3} cores");
    assert!(
        limited >= 0.02,
        "spin-limited hardly ran: {limited:.3} cores"
    );
    for (name, used) in [("spin-a", a), ("spin-b", b)] {
        assert!(
            used >= 0.2,
            "{name} used {used:.3} cores beside {limited:.3}"
        );
    }

    // A guest held back by its quota waits on a timer, so deleting it is still prompt.
    let deleting = Instant::now();
    cluster
        .kubectl
        .run(&[
            "delete",
            "pod",
            "spin-limited",
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    let took = deleting.elapsed();
    eprintln!("spin-limited deleted in {:.2} s", took.as_secs_f64());
    assert!(took <= Duration::from_secs(3), "deletion took {took:?}");
}

/// A host with little address space, as a 39-bit aarch64 kernel gives a process (512 GiB;
/// here `ulimit -v`), runs the default 110 pods' worth all the same: each Wasm memory
/// reserves less than wasmtime's 4 GiB, and a bomb is held to its reservation and told why.
#[tokio::test]
async fn a_node_short_of_address_space_holds_each_memory_to_its_reservation() {
    let mut options = e2e::WasmletOptions::named("edge-39-bit");
    options.address_space = Some(512 << 30);
    let mut cluster = WasmCluster::start_with_options(options).await.unwrap();
    let log = cluster.node.log_tail(usize::MAX);
    assert!(log.contains("largest_memory_mib=512"), "{log}");

    let (pod, message) = a_bomb_beside_a_neighbour(&cluster, "").await;
    assert!(
        message
            .contains("more than the 536870912 bytes this node's address space gives one memory"),
        "{message}"
    );
    let held = held_mib(&cluster, &pod);
    assert!((256..512).contains(&held), "held {held} MiB");
    the_neighbour_carries_on(&mut cluster).await;
}

/// With too little address space for --max-pods, wasmlet says so in one line, with how many
/// pods would fit, and exits non-zero.
#[test]
fn too_little_address_space_for_max_pods_is_one_line_and_an_exit() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("prlimit")
        .arg(format!("--as={}", 8u64 << 30))
        .arg("--")
        .arg(e2e::wasmlet_binary().unwrap())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--static-pods")
        .arg(dir.path())
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wasmlet: cannot start the WASI provider: this host gives wasmlet")
            && last.contains("--max-pods=110")
            && last.contains("lower --max-pods"),
        "{stderr}"
    );
}
