//! The wasmlet node against a real control plane: registration, Lease, restarts, shutdown,
//! API server outages, and scheduling with the wasm32-wasi taints.

use std::time::{Duration, Instant};

use e2e::status::{lease, renew_time};
use e2e::{ControlPlane, Kubectl, WasmletNode, WasmletOptions, wait_for};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rustix::process::Signal;

struct Cluster {
    // Drop order: the node stops before the plane it talks to.
    node: WasmletNode,
    kubectl: Kubectl,
    plane: ControlPlane,
}

async fn cluster_with_node(options: &WasmletOptions) -> Cluster {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let node = WasmletNode::start(&plane, options).expect("wasmlet starts");
    Cluster {
        node,
        kubectl,
        plane,
    }
}

fn get_node(kubectl: &Kubectl, name: &str) -> Result<Node, String> {
    kubectl
        .get_json(&["get", "node", name])
        .map_err(|e| e.to_string())
}

fn condition(node: &Node, type_: &str) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn wait_for_ready(cluster: &Cluster, status: &str, timeout: Duration) -> Node {
    let name = cluster.node.name.clone();
    let result = wait_for(&format!("node {name} Ready={status}"), timeout, || {
        let node = get_node(&cluster.kubectl, &name);
        async move {
            let node = node?;
            Ok((condition(&node, "Ready").map(|c| c.0).as_deref() == Some(status)).then_some(node))
        }
    })
    .await;
    result.unwrap_or_else(|err| panic!("{err:#}\nwasmlet log:\n{}", cluster.node.log_tail(30)))
}

#[tokio::test]
async fn node_is_ready_within_ten_seconds_with_wasm_labels_taints_capacity_and_info() {
    let started = Instant::now();
    let cluster = cluster_with_node(&WasmletOptions {
        node_labels: "site=lab,example.com/tier=edge".into(),
        ..WasmletOptions::named("edge-1")
    })
    .await;
    let plane_ready = started.elapsed();
    let node = wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    eprintln!(
        "node Ready {:.2} s after wasmlet started",
        (started.elapsed() - plane_ready).as_secs_f64()
    );

    let labels = node.metadata.labels.clone().unwrap_or_default();
    for key in [
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some("wasm32-wasi"),
            "{key}"
        );
    }
    assert!(labels.contains_key("kubernetes.io/hostname"));
    assert_eq!(labels["site"], "lab");
    assert_eq!(labels["example.com/tier"], "edge");

    let taints: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}={}:{}", t.key, t.value.unwrap_or_default(), t.effect))
        .collect();
    assert!(
        taints.contains(&"kubernetes.io/arch=wasm32-wasi:NoSchedule".into()),
        "{taints:?}"
    );
    assert!(
        taints.contains(&"kubernetes.io/arch=wasm32-wasi:NoExecute".into()),
        "{taints:?}"
    );

    let status = node.status.clone().expect("status");
    let capacity = status.capacity.clone().expect("capacity");
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    assert_eq!(capacity["cpu"].0, cpus);
    assert_eq!(capacity["pods"].0, "110");
    let memory_kib: u64 = capacity["memory"].0.trim_end_matches("Ki").parse().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let host_kib: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        memory_kib, host_kib,
        "memory capacity is the host's MemTotal"
    );
    assert!(capacity["ephemeral-storage"].0.ends_with("Ki"));
    // Allocatable is capacity less the eviction thresholds (nothing is reserved): the
    // default 100Mi of memory.available, the tests' 64Mi of nodefs.available.
    let mut allocatable = status.allocatable.clone().expect("allocatable");
    let mut rest = capacity.clone();
    for (resource, threshold_kib) in [("memory", 100 * 1024), ("ephemeral-storage", 64 * 1024)] {
        let of = |resources: &mut std::collections::BTreeMap<String, Quantity>| {
            kib(&resources.remove(resource).expect(resource).0)
        };
        assert_eq!(
            of(&mut allocatable),
            of(&mut rest) - threshold_kib,
            "allocatable {resource}"
        );
    }
    assert_eq!(allocatable, rest);

    let addresses: Vec<(String, String)> = status
        .addresses
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert!(
        addresses.contains(&("InternalIP".into(), "127.0.0.1".into())),
        "{addresses:?}"
    );
    assert!(
        addresses.iter().any(|(t, _)| t == "Hostname"),
        "{addresses:?}"
    );
    let port = status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port);
    assert_eq!(port, Some(i32::from(cluster.node.port)));

    let info = status.node_info.clone().expect("nodeInfo");
    assert_eq!(info.architecture, "wasm32-wasi");
    assert_eq!(info.operating_system, "linux");
    assert!(
        info.container_runtime_version.starts_with("wasmtime://48."),
        "{}",
        info.container_runtime_version
    );
    assert!(
        info.kubelet_version.contains("wasmlet"),
        "{}",
        info.kubelet_version
    );
    assert!(!info.os_image.is_empty() && !info.kernel_version.is_empty());

    let ready = condition(&node, "Ready").unwrap();
    assert_eq!(ready.1, "KubeletReady");
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            condition(&node, pressure).map(|c| c.0).as_deref(),
            Some("False"),
            "{pressure}"
        );
    }

    // kubectl shows it the way an operator reads it.
    let wide = cluster
        .kubectl
        .run(&["get", "nodes", "-o", "wide"])
        .unwrap();
    assert!(
        wide.contains("edge-1") && wide.contains("Ready") && wide.contains("wasmtime://"),
        "{wide}"
    );
}

#[tokio::test]
async fn lease_is_held_for_forty_seconds_and_renewed() {
    let cluster = cluster_with_node(&WasmletOptions::named("edge-lease")).await;
    let node = wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    let first = wait_for("the node's lease", Duration::from_secs(10), || {
        let lease = lease(&cluster.kubectl, "edge-lease");
        async move { lease.map(Some) }
    })
    .await
    .unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("edge-lease"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &first.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Node", node.metadata.uid.as_ref())
    );

    let t0 = renew_time(&first).expect("renewTime");
    let renewed = wait_for(
        "the lease's renewTime to advance",
        Duration::from_secs(15),
        || {
            let lease = lease(&cluster.kubectl, "edge-lease");
            async move { Ok(renew_time(&lease?).filter(|t| *t > t0)) }
        },
    )
    .await
    .unwrap();
    let gap = renewed.duration_since(t0).as_secs_f64();
    eprintln!("lease renewed after {gap:.1} s");
    assert!(
        (8.0..=12.0).contains(&gap),
        "renewed every ~10 s, saw {gap} s"
    );
}

#[tokio::test]
async fn restart_updates_the_same_node_with_new_labels_and_thresholds_and_sigterm_exits_zero() {
    let mut cluster = cluster_with_node(&WasmletOptions {
        node_labels: "site=a".into(),
        ..WasmletOptions::named("edge-restart")
    })
    .await;
    let before = wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    let status = cluster.node.terminate().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    cluster.node = WasmletNode::start(
        &cluster.plane,
        &WasmletOptions {
            node_labels: "site=b,zone=z1".into(),
            // No filesystem has more than 100% free, so this is DiskPressure for certain.
            eviction_hard: "nodefs.available<100%".into(),
            ..WasmletOptions::named("edge-restart")
        },
    )
    .unwrap();
    let after = wait_for(
        "the restarted node's new labels",
        Duration::from_secs(15),
        || {
            let node = get_node(&cluster.kubectl, "edge-restart");
            async move {
                let node = node?;
                let labels = node.metadata.labels.clone().unwrap_or_default();
                let updated = labels.get("site").map(String::as_str) == Some("b")
                    && labels.get("zone").map(String::as_str) == Some("z1");
                Ok(updated.then_some(node))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.node.log_tail(30)));
    assert_eq!(
        before.metadata.uid, after.metadata.uid,
        "the same Node object was updated"
    );
    let node = wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    assert_eq!(
        condition(&node, "DiskPressure"),
        Some(("True".into(), "KubeletHasDiskPressure".into())),
        "the new --eviction-hard applies"
    );
    // The node lifecycle controller turns the condition into the taint that keeps new
    // pods off the node, as it does for any kubelet.
    wait_for("the disk-pressure taint", Duration::from_secs(20), || {
        let node = get_node(&cluster.kubectl, "edge-restart");
        async move {
            let tainted = node?.spec.and_then(|s| s.taints).is_some_and(|taints| {
                taints.iter().any(|t| {
                    t.key == "node.kubernetes.io/disk-pressure" && t.effect == "NoSchedule"
                })
            });
            Ok(tainted.then_some(()))
        }
    })
    .await
    .unwrap();
    // `kubectl describe node` lists the kubelet's node events: each start, each condition as
    // first reported, and the change the new threshold made.
    let events = [
        "Starting wasmlet.",
        "NodeHasSufficientMemory",
        "NodeReady",
        "Node edge-restart status is now: NodeHasDiskPressure",
    ];
    wait_for(
        "the node's events in kubectl describe node",
        Duration::from_secs(20),
        || {
            let described = cluster.kubectl.run(&["describe", "node", "edge-restart"]);
            async move {
                let described = described.map_err(|e| e.to_string())?;
                match events.iter().find(|e| !described.contains(*e)) {
                    None => Ok(Some(())),
                    Some(missing) => Err(format!("no {missing:?} in:\n{described}")),
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(cluster.node.is_running());
}

#[tokio::test]
async fn a_node_stopped_with_ctrl_c_exits_zero_and_is_marked_not_ready_by_the_lifecycle_controller()
{
    let mut cluster = cluster_with_node(&WasmletOptions::named("edge-stop")).await;
    wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    // Ctrl-C at a terminal: the same orderly stop as SIGTERM (the restart test sends that).
    let status = cluster.node.stop_with(Signal::INT).unwrap();
    assert!(status.success(), "SIGINT exits 0, got {status}");
    let stopped = Instant::now();
    let node = wait_for_ready(&cluster, "Unknown", Duration::from_secs(60)).await;
    eprintln!(
        "node NotReady {:.1} s after wasmlet stopped",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(condition(&node, "Ready").unwrap().1, "NodeStatusUnknown");
    let table = cluster.kubectl.run(&["get", "node", "edge-stop"]).unwrap();
    assert!(table.contains("NotReady"), "{table}");
}

#[tokio::test]
async fn node_keeps_running_through_an_api_server_outage_without_spinning() {
    let mut cluster = cluster_with_node(&WasmletOptions::named("edge-outage")).await;
    wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    let before = lease(&cluster.kubectl, "edge-outage")
        .ok()
        .and_then(|l| renew_time(&l))
        .unwrap();

    cluster.plane.stop_apiserver();
    let outage = Instant::now();
    let failures = |node: &WasmletNode| {
        node.log_tail(10_000)
            .matches("lease renewal failed")
            .count()
    };
    wait_for(
        "wasmlet to notice the outage",
        Duration::from_secs(20),
        || {
            let seen = failures(&cluster.node);
            async move { Ok((seen >= 3).then_some(())) }
        },
    )
    .await
    .unwrap();
    assert!(
        cluster.node.is_running(),
        "wasmlet never exits on an outage"
    );

    cluster.plane.start_apiserver().await.unwrap();
    let down_for = outage.elapsed();
    let attempts = failures(&cluster.node);
    // Backoff from 200 ms doubling to 10 s: a spinning loop would log thousands.
    let bound = 5 + down_for.as_secs() as usize;
    assert!(
        attempts <= bound,
        "{attempts} lease attempts in {down_for:?}: retries must back off"
    );

    wait_for(
        "the lease to be renewed after the outage",
        Duration::from_secs(20),
        || {
            let lease = lease(&cluster.kubectl, "edge-outage");
            async move { Ok(renew_time(&lease?).filter(|t| *t > before)) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.node.log_tail(30)));
    wait_for_ready(&cluster, "True", Duration::from_secs(20)).await;
    assert!(cluster.node.is_running());
}

#[tokio::test]
async fn a_node_cut_off_past_its_grace_period_is_ready_again_as_soon_as_its_link_returns() {
    let mut cluster = cluster_with_node(&WasmletOptions {
        behind_link: true,
        ..WasmletOptions::named("edge-cut")
    })
    .await;
    wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;

    // The control plane keeps running; only the node's uplink drops, so the node lifecycle
    // controller gives up on the node after its grace period (16 s here).
    cluster.node.uplink().unwrap().cut();
    let cut = Instant::now();
    let node = wait_for_ready(&cluster, "Unknown", Duration::from_secs(60)).await;
    assert_eq!(condition(&node, "Ready").unwrap().1, "NodeStatusUnknown");
    eprintln!(
        "node Unknown {:.1} s after its link was cut",
        cut.elapsed().as_secs_f64()
    );
    assert!(
        cluster.node.is_running(),
        "wasmlet never exits on an outage"
    );

    // Back online: the next lease renewal (retries back off to 10 s) must bring a fresh
    // status with it, not wait for the 5-minute report.
    cluster.node.uplink().unwrap().restore();
    let restored = Instant::now();
    let node = wait_for_ready(&cluster, "True", Duration::from_secs(20)).await;
    assert_eq!(condition(&node, "Ready").unwrap().1, "KubeletReady");
    eprintln!(
        "node Ready again {:.1} s after its link returned",
        restored.elapsed().as_secs_f64()
    );
}

const WASM_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: wasm-pod
spec:
  containers:
  - name: app
    image: 127.0.0.1:5000/demo:v1
  nodeSelector:
    kubernetes.io/arch: wasm32-wasi
  tolerations:
  - key: kubernetes.io/arch
    operator: Equal
    value: wasm32-wasi
    effect: NoSchedule
  - key: kubernetes.io/arch
    operator: Equal
    value: wasm32-wasi
    effect: NoExecute
"#;

const PLAIN_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: plain-pod
spec:
  containers:
  - name: app
    image: nginx
"#;

#[tokio::test]
async fn tolerating_pod_is_scheduled_to_the_node_and_plain_pod_stays_pending_on_the_taint() {
    let cluster = cluster_with_node(&WasmletOptions::named("edge-sched")).await;
    wait_for_ready(&cluster, "True", Duration::from_secs(10)).await;
    let kubectl = &cluster.kubectl;
    kubectl.apply(WASM_POD).unwrap();
    kubectl.apply(PLAIN_POD).unwrap();

    wait_for(
        "wasm-pod to be bound to edge-sched",
        Duration::from_secs(20),
        || {
            let pod: Result<Pod, _> = kubectl.get_json(&["get", "pod", "wasm-pod"]);
            async move {
                let node = pod
                    .map_err(|e| e.to_string())?
                    .spec
                    .and_then(|s| s.node_name);
                Ok((node.as_deref() == Some("edge-sched")).then_some(()))
            }
        },
    )
    .await
    .unwrap();

    let message = wait_for(
        "a FailedScheduling event for plain-pod",
        Duration::from_secs(20),
        || {
            let events: Result<Vec<Event>, _> = kubectl.get_items(&[
                "events",
                "--field-selector",
                "involvedObject.name=plain-pod,reason=FailedScheduling",
            ]);
            async move {
                let events = events.map_err(|e| e.to_string())?;
                Ok(events.into_iter().find_map(|e| e.message))
            }
        },
    )
    .await
    .unwrap();
    assert!(
        message.contains("taint") && message.contains("kubernetes.io/arch"),
        "{message}"
    );
    let pod: Pod = kubectl.get_json(&["get", "pod", "plain-pod"]).unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert_eq!(pod.spec.and_then(|s| s.node_name), None);
}

/// A byte quantity in KiB, in whichever binary unit the API server's canonical form picks.
fn kib(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(quantity.len().saturating_sub(2));
    let scale = match unit {
        "Ki" => 1,
        "Mi" => 1024,
        "Gi" => 1024 * 1024,
        "Ti" => 1024 * 1024 * 1024,
        _ => panic!("not a binary byte quantity: {quantity:?}"),
    };
    number.parse::<u64>().unwrap() * scale
}
