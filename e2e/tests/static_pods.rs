//! Static pods on a standalone node: no API server at all, only a manifest directory, as an
//! edge device that has never been joined to a cluster runs its workloads.

use std::time::Duration;

use e2e::demos::{push_demo, tick};
use e2e::{Registry, StandaloneWasmlet, wait_for};

/// The `wasmlet ps` columns of `pod`'s row, if it is listed.
fn ps_row(ps: &str, pod: &str) -> Option<Vec<String>> {
    ps.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.get(1).map(String::as_str) == Some(pod))
}

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
