//! Static pods on a standalone node: no API server at all, only a manifest directory, as an
//! edge device that has never been joined to a cluster runs its workloads.

use std::time::Duration;

use e2e::demos::{push_demo, tick};
use e2e::status::running;
use e2e::{Registry, StandaloneWasmlet, WasmCluster, WasmletOptions, ps_row, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_standalone_node_runs_its_static_pods_and_follows_its_manifest_directory() {
    let registry = Registry::start().unwrap();
    let image = push_demo(&registry.host(), "ticker").unwrap();
    let node = StandaloneWasmlet::start("edge-alone", &[registry.host()]).unwrap();
    let manifest = node.manifests().join("ticker.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  containers:\n  - name: app\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"100\"}}]\n"
        ),
    )
    .unwrap();
    // A bad manifest beside it is reported and harms nothing.
    std::fs::write(node.manifests().join("broken.yaml"), "kind: Pod\nspec: [\n").unwrap();
    // Nor does a pod whose limit no API server has checked: it is refused, saying why.
    std::fs::write(
        node.manifests().join("limited.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: limited\nspec:\n  containers:\n  - name: app\n    image: {image}\n    resources: {{limits: {{memory: lots}}}}\n"
        ),
    )
    .unwrap();

    wait_for(
        "the static pod to run, named after the node",
        Duration::from_secs(30),
        || {
            let ps = node.tool(&["ps"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                Ok(ps_row(&ps, "ticker-edge-alone")
                    .filter(|cols| cols[4] == "Running" && cols[7] == "file")
                    .map(|_| ()))
            }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", node.log_tail(30)))
    .unwrap();
    wait_for("the static pod to log", Duration::from_secs(10), || {
        let log = node.tool(&["logs", "ticker-edge-alone"]);
        async move {
            let log = log.map_err(|e| format!("{e:#}"))?;
            Ok((log.lines().filter_map(tick).count() >= 3).then_some(()))
        }
    })
    .await
    .unwrap();
    assert!(
        node.log_tail(200).contains("broken.yaml"),
        "the bad manifest is named in the log"
    );
    wait_for(
        "the pod with a malformed limit to be refused, saying why",
        Duration::from_secs(10),
        || {
            let ps = node.tool(&["ps", "--all"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                Ok(ps_row(&ps, "limited-edge-alone")
                    .filter(|cols| cols[2] == "InvalidResourceQuantity")
                    .map(|_| ()))
            }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", node.log_tail(30)))
    .unwrap();
    assert!(
        ps_row(&node.tool(&["ps"]).unwrap(), "limited-edge-alone").is_none(),
        "a refused pod is listed with --all only"
    );

    std::fs::remove_file(&manifest).unwrap();
    wait_for(
        "the static pod to go with its manifest",
        Duration::from_secs(10),
        || {
            let ps = node.tool(&["ps", "--all"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                Ok(ps_row(&ps, "ticker-edge-alone").is_none().then_some(()))
            }
        },
    )
    .await
    .unwrap();
}

/// Editing a manifest replaces its pod, as the kubelet does: the new version starts once
/// the old one has stopped, though both declare the same port (two pods on the node may
/// not).
#[tokio::test]
async fn an_edited_manifest_replaces_its_pod_though_both_declare_the_same_port() {
    let registry = Registry::start().unwrap();
    let image = push_demo(&registry.host(), "ticker").unwrap();
    let node = StandaloneWasmlet::start("edge-edit", &[registry.host()]).unwrap();
    let port = e2e::free_port().unwrap();
    let manifest = node.manifests().join("ticker.yaml");
    let version = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  containers:\n  - name: app\n    image: {image}\n    ports: [{{containerPort: {port}}}]\n    env: [{{name: INTERVAL_MS, value: \"100\"}}, {{name: POD_NAME, value: {name}}}]\n"
        )
    };
    let ticks_from = |name: &'static str| {
        let node = &node;
        async move {
            wait_for(
                &format!("the pod to tick as {name}"),
                Duration::from_secs(30),
                || {
                    let log = node.tool(&["logs", "ticker-edge-edit"]);
                    async move {
                        let log = log.map_err(|e| format!("{e:#}"))?;
                        let from = format!(" from {name} ");
                        Ok(log.lines().any(|l| l.contains(&from)).then_some(()))
                    }
                },
            )
            .await
            .map_err(|e| format!("{e}\n{}", node.log_tail(30)))
            .unwrap();
        }
    };

    std::fs::write(&manifest, version("first")).unwrap();
    ticks_from("first").await;
    std::fs::write(&manifest, version("second")).unwrap();
    ticks_from("second").await;
    wait_for(
        "only the new version to be left",
        Duration::from_secs(30),
        || {
            let ps = node.tool(&["ps", "--all"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                let rows: Vec<&str> = ps
                    .lines()
                    .filter(|l| l.contains("ticker-edge-edit"))
                    .collect();
                let running = rows.len() == 1
                    && ps_row(&ps, "ticker-edge-edit").is_some_and(|c| c[4] == "Running");
                Ok(running.then_some(()))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_standalone_node_joined_later_shows_its_static_pods_as_mirror_pods() {
    let first_registry = Registry::start().unwrap();
    let image = push_demo(&first_registry.host(), "ticker").unwrap();
    let mut alone = StandaloneWasmlet::start("edge-static", &[first_registry.host()]).unwrap();
    let manifest = alone.manifests().join("ticker.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\n  labels: {{app: ticker}}\nspec:\n  containers:\n  - name: app\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"100\"}}]\n"
        ),
    )
    .unwrap();
    wait_for("the static pod to run standalone", MINUTE, || {
        let ps = alone.tool(&["ps"]);
        async move {
            let ps = ps.map_err(|e| format!("{e:#}"))?;
            Ok(ps_row(&ps, "ticker-edge-static")
                .filter(|cols| cols[4] == "Running")
                .map(|_| ()))
        }
    })
    .await
    .unwrap();
    alone.stop().unwrap();

    // The same device joins a cluster with a node identity, under NodeRestriction.
    let cluster = WasmCluster::start_with_options(WasmletOptions {
        data_dir: Some(alone.data_dir()),
        static_pods: Some(alone.manifests()),
        insecure_registries: vec![first_registry.host()],
        ..WasmletOptions::named("edge-static")
    })
    .await
    .unwrap();
    let mirror = cluster
        .wait_pod("ticker-edge-static", "a running mirror pod", MINUTE, |p| {
            running(p, "app")
        })
        .await
        .unwrap();
    let annotations = mirror.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kubernetes.io/config.mirror"),
        annotations.get("kubernetes.io/config.hash"),
        "{annotations:?}"
    );
    assert_eq!(
        annotations
            .get("kubernetes.io/config.source")
            .map(String::as_str),
        Some("file")
    );
    let owners = mirror.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        matches!(&owners[..], [o] if o.kind == "Node" && o.name == "edge-static" && o.controller == Some(true)),
        "{owners:?}"
    );
    assert_eq!(
        cluster
            .node
            .tool(&["ps"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("ticker-edge-static"))
            .count(),
        1,
        "the mirror pod is not run as a second pod"
    );

    // A deleted mirror pod comes back, with the static pod's status; the pod never stopped.
    let first_uid = mirror.metadata.uid.clone().unwrap_or_default();
    cluster
        .kubectl
        .run(&["delete", "pod", "ticker-edge-static", "--wait=false"])
        .unwrap();
    cluster
        .wait_pod(
            "ticker-edge-static",
            "a new mirror pod, running",
            MINUTE,
            |p| p.metadata.uid.as_deref() != Some(first_uid.as_str()) && running(p, "app"),
        )
        .await
        .unwrap();
    // The store is written by its own thread just after the API is told: wait for it.
    wait_for(
        "one restart in wasmlet ps: the node's restart to join; none for the mirror",
        Duration::from_secs(10),
        || {
            let ps = cluster.node.tool(&["ps"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                let restarts = ps_row(&ps, "ticker-edge-static").map(|c| c[5].clone());
                match restarts.as_deref() {
                    Some("1") => Ok(Some(())),
                    other => Err(format!("restarts {other:?}:\n{ps}")),
                }
            }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", cluster.node.log_tail(60)))
    .unwrap();

    // Removing the manifest removes the pod and its mirror.
    std::fs::remove_file(&manifest).unwrap();
    wait_for("the mirror pod to go with its manifest", MINUTE, || {
        let pods = cluster.kubectl.run(&["get", "pods", "-o", "name"]);
        async move {
            let pods = pods.map_err(|e| format!("{e:#}"))?;
            Ok((!pods.lines().any(|l| l == "pod/ticker-edge-static")).then_some(()))
        }
    })
    .await
    .unwrap();
    let ps = cluster.node.tool(&["ps", "--all"]).unwrap();
    assert!(ps_row(&ps, "ticker-edge-static").is_none(), "{ps}");
}
