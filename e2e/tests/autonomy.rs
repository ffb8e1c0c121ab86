//! Edge autonomy against the real control plane: a node whose link to the API server drops
//! keeps its pods running and logging, and when the link returns it reports the truth again,
//! undoing what the node lifecycle controller wrote while it was away.

use std::time::{Duration, Instant};

use e2e::demos::{cri_ticks, push_demo, tick};
use e2e::status::{condition, container, phase, running};
use e2e::{ControlPlane, Kubectl, WasmCluster, WasmletOptions, ps_row, wait_for, wasm_pod};

const MINUTE: Duration = Duration::from_secs(60);

/// A pod that ran to completion (a Job's, say) stays completed through restarts of the node:
/// each restart takes it on as finished, it never runs again, and its status is the one it
/// finished with, in the API and in the node's store.
#[tokio::test]
async fn a_finished_pod_stays_finished_through_restarts_of_the_node() {
    let mut cluster = WasmCluster::start("edge-done", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "wasi-example").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "once",
            &format!(
                "  restartPolicy: Never\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {image}\n"
            ),
        ))
        .unwrap();
    cluster
        .wait_pod("once", "Succeeded", MINUTE, |p| phase(p) == "Succeeded")
        .await
        .unwrap();
    let finished = cluster.pod("once").unwrap().status.unwrap();

    for restart in 1..=2 {
        cluster
            .node
            .restart_with(rustix::process::Signal::TERM)
            .unwrap();
        let taken_on = wait_for(
            "the restarted node to take the pod on again",
            MINUTE,
            || {
                let log = cluster.node.log_tail(400);
                async move {
                    Ok::<_, String>(
                        log.lines()
                            .find(|line| {
                                line.contains("taking on pod") && line.contains("\"once\"")
                            })
                            .map(str::to_owned),
                    )
                }
            },
        )
        .await
        .unwrap();
        assert!(
            taken_on.contains("stage=Finished"),
            "restart {restart} took the finished pod on to run it again: {taken_on}"
        );
        wait_for("wasmlet ps --all to show the pod Succeeded", MINUTE, || {
            let ps = cluster.node.tool(&["ps", "--all"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                Ok(ps_row(&ps, "once")
                    .filter(|cols| cols[2] == "Succeeded")
                    .map(|_| ()))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("restart {restart}: {e}\n{}", cluster.node.log_tail(30)));
    }
    let after = cluster.pod("once").unwrap().status.unwrap();
    assert_eq!(after.phase.as_deref(), Some("Succeeded"));
    assert_eq!(after.container_statuses, finished.container_statuses);
}

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

/// What keeps a node's status for a pod off another pod of the same name (one deleted and
/// made again elsewhere while the node was cut off, as an operator does for a StatefulSet's
/// pod on an unreachable node): the node's status patches carry the pod's UID (a unit test
/// of `status_patch` shows it), and the API server refuses a status patch whose UID is not
/// the pod's, taking the same patch with the pod's own.
#[tokio::test]
async fn the_api_server_refuses_a_status_patch_naming_another_pod_s_uid() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    kubectl
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\nspec:\n  nodeName: elsewhere\n  containers:\n  - {name: app, image: example/app:1}\n",
        )
        .unwrap();
    let uid = kubectl
        .run(&["get", "pod", "web-0", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    let patch = |uid: &str| {
        let body = format!(
            r#"{{"metadata":{{"uid":"{uid}"}},"status":{{"phase":"Running","hostIP":"10.9.9.9"}}}}"#
        );
        kubectl.run(&[
            "patch",
            "pod",
            "web-0",
            "--subresource=status",
            "--type=strategic",
            "-p",
            &body,
        ])
    };
    let status = || {
        kubectl
            .run(&[
                "get",
                "pod",
                "web-0",
                "-o",
                "jsonpath={.status.phase}/{.status.hostIP}",
            ])
            .unwrap()
    };

    let refused = patch("6f1e0c1a-0000-4000-8000-000000000000").unwrap_err();

    // The API server's own words (the arguments, echoed in the error, hold "uid" too).
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("Precondition failed") || refused.contains("field is immutable"),
        "{refused}"
    );
    assert_eq!(status(), "Pending/", "the pod's status is untouched");
    patch(&uid).unwrap();
    assert_eq!(status(), "Running/10.9.9.9", "its own UID is taken");
}

/// Ticks numbered as the ticker demo writes them, from `wasmlet logs` or `kubectl logs`.
fn ticks(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| tick(l).map(|(n, _)| n))
        .collect()
}

#[tokio::test]
async fn a_node_restarted_while_cut_off_runs_its_pods_from_its_store_and_reconciles_on_reconnect() {
    let mut cluster = WasmCluster::start_with_options(WasmletOptions {
        behind_link: true,
        ..WasmletOptions::named("edge-offline")
    })
    .await
    .unwrap();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    // The interval comes from a ConfigMap, and the pod mounts its service account token: both
    // must come from the node's store when it restarts with no API server to ask.
    cluster
        .kubectl
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ticker-settings\ndata:\n  interval: \"200\"\n")
        .unwrap();
    let ticker_spec = format!(
        "  containers:\n  - name: app\n    image: {image}\n    env:\n    - name: INTERVAL_MS\n      valueFrom: {{configMapKeyRef: {{name: ticker-settings, key: interval}}}}\n"
    );
    for name in ["ticker", "doomed"] {
        cluster
            .kubectl
            .apply(&wasm_pod(name, &ticker_spec))
            .unwrap();
    }
    for name in ["ticker", "doomed"] {
        cluster
            .wait_pod(name, "Running and Ready", MINUTE, |p| {
                running(p, "app") && condition(p, "Ready").as_deref() == Some("True")
            })
            .await
            .unwrap();
    }
    let before = ticks(&cluster.node.tool(&["logs", "ticker"]).unwrap());
    assert!(!before.is_empty(), "wasmlet logs reads the pod's log");

    // Cut off, then restarted: nothing from the API server now.
    cluster.node.uplink().unwrap().cut();
    let restarted_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    cluster
        .node
        .restart_with(rustix::process::Signal::TERM)
        .unwrap();
    let restarted = Instant::now();
    wait_for(
        "wasmlet ps to show both pods running again from the store",
        Duration::from_secs(20),
        || {
            let ps = cluster.node.tool(&["ps"]);
            async move {
                let ps = ps.map_err(|e| format!("{e:#}"))?;
                let up = ["ticker", "doomed"].iter().all(|pod| {
                    ps_row(&ps, pod).is_some_and(|cols| cols[4] == "Running" && cols[5] == "1")
                });
                Ok(up.then_some(()))
            }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "pods running again {:.2} s after the restart, with the link cut",
        restarted.elapsed().as_secs_f64()
    );
    // The new instance logs with the interval from the stored ConfigMap, and the previous
    // instance's lines are still on the node.
    wait_for(
        "the restarted ticker to log",
        Duration::from_secs(10),
        || {
            let log = cluster.node.tool(&["logs", "ticker"]);
            async move { Ok((ticks(&log.map_err(|e| format!("{e:#}"))?).len() >= 5).then_some(())) }
        },
    )
    .await
    .unwrap();
    let previous = ticks(
        &cluster
            .node
            .tool(&["logs", "ticker", "--previous"])
            .unwrap(),
    );
    assert!(
        previous.len() >= before.len() && previous.starts_with(&before),
        "the instance from before the restart kept its log: {previous:?}"
    );

    // While the node is away: one pod is deleted, another created for it.
    cluster
        .kubectl
        .run(&["delete", "pod", "doomed", "--wait=false"])
        .unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "newcomer",
            &format!("  nodeName: edge-offline\n{ticker_spec}"),
        ))
        .unwrap();

    let restored_at = jiff::Timestamp::now();
    cluster.node.uplink().unwrap().restore();
    let restored = Instant::now();
    let ticker = cluster
        .wait_pod(
            "ticker",
            "Running and Ready, with the restart counted",
            Duration::from_secs(30),
            |p| {
                running(p, "app")
                    && condition(p, "Ready").as_deref() == Some("True")
                    && container(p, "app").map(|c| c.restart_count) == Some(1)
            },
        )
        .await
        .unwrap();
    eprintln!(
        "ticker truthful in the API {:.2} s after the link returned",
        restored.elapsed().as_secs_f64()
    );
    assert!(
        container(&ticker, "app")
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "the instance the restart ended is the last state"
    );
    cluster
        .wait_pod("newcomer", "started once the link returned", MINUTE, |p| {
            running(p, "app")
        })
        .await
        .unwrap();
    wait_for(
        "the pod deleted while the node was away to be stopped and removed",
        Duration::from_secs(30),
        || {
            let in_api = cluster.kubectl.run(&["get", "pods", "-o", "name"]);
            let on_node = cluster.node_pods();
            async move {
                let gone = !in_api
                    .map_err(|e| format!("{e:#}"))?
                    .lines()
                    .any(|l| l == "pod/doomed")
                    && !on_node
                        .map_err(|e| format!("{e:#}"))?
                        .iter()
                        .any(|p| p == "doomed");
                Ok(gone.then_some(()))
            }
        },
    )
    .await
    .unwrap();
    let ps = cluster.node.tool(&["ps"]).unwrap();
    assert!(
        ps_row(&ps, "doomed").is_none(),
        "gone from the node too:\n{ps}"
    );
    // The Started event of the instance that began while the node was cut off waited for
    // the link, and carries the time it happened, not the time it was sent.
    let cut_off_start = cluster
        .wait_events(
            "ticker",
            "a Started event recorded while cut off",
            Duration::from_secs(30),
            |events| {
                let started: Vec<jiff::Timestamp> = events
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("Started"))
                    .filter_map(|e| e.first_timestamp.as_ref().map(|t| t.0))
                    .collect();
                started
                    .iter()
                    .copied()
                    .find(|t| *t >= restarted_at && *t < restored_at)
            },
        )
        .await
        .unwrap();
    eprintln!("Started event of {cut_off_start}, recorded while cut off, written after");
    // kubectl reads the same truth: every tick of the current instance, from 0, including
    // those written while the node was cut off, and the previous instance's.
    let current = ticks(&cluster.kubectl.run(&["logs", "ticker"]).unwrap());
    assert!(
        current.iter().copied().eq(0..current.len() as u64) && current.len() >= 5,
        "{current:?}"
    );
    let previous_via_api = ticks(
        &cluster
            .kubectl
            .run(&["logs", "ticker", "--previous"])
            .unwrap(),
    );
    assert!(
        previous_via_api.starts_with(&before),
        "{previous_via_api:?}"
    );
}

#[tokio::test]
async fn a_node_killed_during_a_burst_of_pods_comes_back_with_each_pod_once() {
    let mut cluster = WasmCluster::start("edge-burst", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i:02}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|name| {
            wasm_pod(
                name,
                &format!("  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {image}\n"),
            )
        })
        .collect();
    cluster.kubectl.apply(&manifests.join("---\n")).unwrap();
    // Killed while the burst is still being taken on: some pods run, some are on their way.
    wait_for("a few pods of the burst to run", MINUTE, || {
        let ps = cluster.node.tool(&["ps"]);
        async move {
            let ps = ps.map_err(|e| format!("{e:#}"))?;
            Ok((ps.lines().filter(|l| l.contains(" Running ")).count() >= 3).then_some(()))
        }
    })
    .await
    .unwrap();
    cluster
        .node
        .restart_with(rustix::process::Signal::KILL)
        .unwrap();

    wait_for("every pod of the burst to run, once", MINUTE, || {
        let ps = cluster.node.tool(&["ps"]);
        let names = names.clone();
        async move {
            let ps = ps.map_err(|e| format!("{e:#}"))?;
            let rows: Vec<&str> = ps.lines().filter(|l| l.contains("burst-")).collect();
            let all = names.iter().all(|name| {
                rows.iter()
                    .filter(|row| row.split_whitespace().nth(1) == Some(name.as_str()))
                    .count()
                    == 1
            });
            let running = rows.iter().all(|row| row.contains(" Running "));
            if rows.len() > names.len() {
                return Err(format!("a pod is listed twice:\n{ps}"));
            }
            Ok((all && running && rows.len() == names.len()).then_some(()))
        }
    })
    .await
    .unwrap();
    for name in &names {
        cluster
            .wait_pod(name, "Running in the API", MINUTE, |p| running(p, "app"))
            .await
            .unwrap();
    }
    let on_node = cluster.node_pods().unwrap();
    for name in &names {
        assert_eq!(
            on_node.iter().filter(|p| *p == name).count(),
            1,
            "{name} on the node: {on_node:?}"
        );
    }
    let moved_aside = std::fs::read_dir(cluster.node.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(!moved_aside, "the store opened cleanly after kill -9");
}
