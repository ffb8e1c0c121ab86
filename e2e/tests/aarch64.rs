//! The aarch64 build, run under qemu-user: a Raspberry Pi class node's binary, started as a
//! standalone node with a static pod, pulls the demo from the registry on loopback, compiles
//! it for aarch64 and runs it. The test command cross-builds the binary first.

use std::time::{Duration, Instant};

use e2e::demos::{push_demo, tick};
use e2e::{Registry, StandaloneWasmlet, emulated_aarch64_wasmlet, ps_row, wait_for};

#[tokio::test]
async fn the_aarch64_build_runs_a_static_pod_under_emulation() {
    let registry = Registry::start().unwrap();
    let image = push_demo(&registry.host(), "ticker").unwrap();
    let mut cmd = emulated_aarch64_wasmlet().unwrap();
    // Each pod slot reserves address space up front; a small node keeps the emulator's
    // reservation small, as a Pi's would be.
    cmd.arg("--max-pods=4");
    let started = Instant::now();
    let node = StandaloneWasmlet::start_as(cmd, "edge-arm", &[registry.host()]).unwrap();
    std::fs::write(
        node.manifests().join("ticker.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  containers:\n  - name: app\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"100\"}}]\n"
        ),
    )
    .unwrap();

    // Emulation runs the compiler many times slower than a real core: the deadline allows it.
    wait_for(
        "the emulated node's static pod to log its ticks",
        Duration::from_secs(120),
        || {
            let log = node.tool(&["logs", "ticker-edge-arm"]);
            async move {
                let Ok(log) = log else { return Ok(None) };
                Ok((log.lines().filter_map(tick).count() >= 3).then_some(()))
            }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", node.log_tail(40)))
    .unwrap();
    eprintln!(
        "emulated aarch64: process start to the pod's third tick in {} ms",
        started.elapsed().as_millis()
    );

    let ps = node.tool(&["ps"]).unwrap();
    let row = ps_row(&ps, "ticker-edge-arm").expect("the pod is listed");
    assert_eq!(row[4], "Running", "{ps}");
    let log = node.log_tail(400);
    assert!(
        log.contains("host_arch=\"aarch64\"") || log.contains("host_arch=aarch64"),
        "the node reports its architecture as aarch64:\n{log}"
    );
}
