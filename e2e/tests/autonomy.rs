//! Edge autonomy against the real control plane: a node whose link to the API server drops
//! keeps its pods running and logging, and when the link returns it reports the truth again,
//! undoing what the node lifecycle controller wrote while it was away.

use std::time::{Duration, Instant};

use e2e::demos::{cri_ticks, push_demo, tick};
use e2e::status::{condition, container, running};
use e2e::{WasmCluster, WasmletOptions, wait_for, wasm_pod};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn pods_run_on_through_a_cut_link_and_are_ready_again_when_it_returns() {
    let mut cluster = WasmCluster::start_with_options(WasmletOptions {
        behind_link: true,
        // Pod statuses are compared with the API's at every sync: make it quick.
        sync_frequency: Some("1s".into()),
        ..WasmletOptions::named("edge-autonomy")
    })
    .await
    .unwrap();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "ticker",
            &format!(
                "  containers:\n  - name: app\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"200\"}}]\n"
            ),
        ))
        .unwrap();
    let pod = cluster
        .wait_pod("ticker", "Running and Ready", MINUTE, |p| {
            running(p, "app") && condition(p, "Ready").as_deref() == Some("True")
        })
        .await
        .unwrap();

    cluster.node.uplink().unwrap().cut();
    let cut = Instant::now();
    // The control plane runs on: its node lifecycle controller gives up on the node after
    // the grace period and marks its pods not Ready.
    cluster
        .wait_pod(
            "ticker",
            "marked not Ready while the node is away",
            MINUTE,
            |p| condition(p, "Ready").as_deref() == Some("False"),
        )
        .await
        .unwrap();
    eprintln!(
        "pod marked not Ready {:.1} s after the link was cut",
        cut.elapsed().as_secs_f64()
    );
    // Meanwhile the pod runs on, and its log on the node grows.
    let logged_before = cri_ticks(&cluster.container_log(&pod, "app", 0)).len();
    wait_for(
        "the pod to log on while its node is cut off",
        Duration::from_secs(10),
        || {
            let logged = cri_ticks(&cluster.container_log(&pod, "app", 0)).len();
            async move { Ok((logged >= logged_before + 10).then_some(())) }
        },
    )
    .await
    .unwrap();
    assert!(
        cluster.node.is_running(),
        "wasmlet never exits on an outage"
    );

    cluster.node.uplink().unwrap().restore();
    let restored = Instant::now();
    let pod = cluster
        .wait_pod(
            "ticker",
            "Ready again, as the node reports it",
            Duration::from_secs(30),
            |p| running(p, "app") && condition(p, "Ready").as_deref() == Some("True"),
        )
        .await
        .unwrap();
    eprintln!(
        "pod Ready again {:.1} s after the link returned",
        restored.elapsed().as_secs_f64()
    );
    assert_eq!(
        container(&pod, "app").map(|c| c.restart_count),
        Some(0),
        "the container ran through the outage, never restarted"
    );
    // Nothing was lost: the log, read through the API server as a person would, has every
    // line, those written while the node was cut off included.
    let log = cluster.kubectl.run(&["logs", "ticker"]).unwrap();
    let numbers: Vec<u64> = log
        .lines()
        .filter_map(|l| tick(l).map(|(n, _)| n))
        .collect();
    assert!(numbers.len() > logged_before + 10, "{log}");
    assert!(
        numbers.iter().copied().eq(0..numbers.len() as u64),
        "ticks run 0, 1, 2, … without a gap or a restart: {numbers:?}"
    );
}
