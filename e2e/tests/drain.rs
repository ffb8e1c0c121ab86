//! `kubectl cordon`, `drain` and `uncordon` on a wasm node, as an operator runs them before
//! maintenance: a Deployment's pods are evicted through the eviction API (their grace period
//! honoured) and come back after uncordon; a DaemonSet's pod stays.

use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};

/// The pods with label `app=<app>`: (name, uid, phase, node).
fn pods(cluster: &WasmCluster, app: &str) -> Vec<(String, String, String, String)> {
    let selector = format!("app={app}");
    let pods: Vec<Pod> = cluster
        .kubectl
        .get_items(&["pods", "-l", &selector])
        .unwrap_or_default();
    pods.into_iter()
        .map(|p| {
            let status = p.status.unwrap_or_default();
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
                status.phase.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until exactly `count` pods of `app` are Running on the node.
async fn wait_running(cluster: &WasmCluster, app: &str, count: usize) -> Vec<(String, String)> {
    wait_for(
        &format!("{count} {app} pods Running"),
        Duration::from_secs(60),
        || {
            let now = pods(cluster, app);
            let running: Vec<_> = now
                .iter()
                .filter(|(_, _, phase, node)| phase == "Running" && *node == cluster.node.name)
                .map(|(name, uid, _, _)| (name.clone(), uid.clone()))
                .collect();
            let verdict = if running.len() == count && now.len() == count {
                Ok(Some(running))
            } else {
                Err(format!("{now:?}"))
            };
            async move { verdict }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.node.log_tail(30)))
}

fn workload(kind: &str, name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{extra}  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      automountServiceAccountToken: false\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: ticker\n        image: {image}\n      nodeSelector:\n        kubernetes.io/arch: wasm32-wasi\n      tolerations:\n      - {{key: kubernetes.io/arch, operator: Equal, value: wasm32-wasi, effect: NoSchedule}}\n      - {{key: kubernetes.io/arch, operator: Equal, value: wasm32-wasi, effect: NoExecute}}\n"
    )
}

#[tokio::test]
async fn drain_evicts_a_deployment_leaves_its_daemonset_and_uncordon_brings_it_back() {
    let cluster = WasmCluster::start("edge-drain", 110)
        .await
        .expect("cluster starts");
    let node = cluster.node.name.clone();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    cluster
        .kubectl
        .apply(&workload("Deployment", "web", &image, "  replicas: 2\n"))
        .unwrap();
    cluster
        .kubectl
        .apply(&workload("DaemonSet", "agent", &image, ""))
        .unwrap();
    let before = wait_running(&cluster, "web", 2).await;
    let daemon = wait_running(&cluster, "agent", 1).await;

    let out = cluster.kubectl.run(&["cordon", &node]).unwrap();
    assert!(out.contains("cordoned"), "{out}");
    let cordoned: Node = cluster.kubectl.get_json(&["get", "node", &node]).unwrap();
    assert_eq!(
        cordoned.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );

    let started = Instant::now();
    let out = cluster
        .kubectl
        .run(&["drain", &node, "--ignore-daemonsets", "--timeout=90s"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.node.log_tail(30)));
    let took = started.elapsed();
    eprintln!("kubectl drain took {:.2} s:\n{out}", took.as_secs_f64());
    for (name, _) in &before {
        assert!(
            out.contains(&format!("evicting pod default/{name}")),
            "{out}"
        );
        assert!(out.contains(&format!("pod/{name} evicted")), "{out}");
    }
    assert!(out.contains("drained"), "{out}");
    // kubectl waits for the evicted pods to be gone, which needs the node to stop them
    // within their 5 s grace period (the API would otherwise wait on the node forever).
    assert!(took < Duration::from_secs(30), "drain took {took:?}");

    // The Deployment's old pods are gone, its replacements wait for a node; the DaemonSet's
    // pod was left where it was.
    let after = pods(&cluster, "web");
    assert_eq!(after.len(), 2, "{after:?}");
    for (name, uid, phase, pod_node) in &after {
        assert!(
            before.iter().all(|(_, old)| old != uid),
            "{name} was not evicted"
        );
        assert_eq!(phase, "Pending", "{after:?}");
        assert!(pod_node.is_empty(), "{name} was scheduled onto {pod_node}");
    }
    assert_eq!(wait_running(&cluster, "agent", 1).await, daemon);
    // The node itself runs none of the evicted pods any more.
    let on_node = cluster.node_pods().unwrap();
    for (name, _) in &before {
        assert!(
            !on_node.contains(name),
            "{name} still on the node: {on_node:?}"
        );
    }

    let out = cluster.kubectl.run(&["uncordon", &node]).unwrap();
    assert!(out.contains("uncordoned"), "{out}");
    let back = wait_running(&cluster, "web", 2).await;
    assert!(
        back.iter()
            .all(|(_, uid)| before.iter().all(|(_, old)| old != uid))
    );
}
