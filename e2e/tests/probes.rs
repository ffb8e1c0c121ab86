//! Probes against a real control plane: readiness holds a served pod out of Ready until its
//! check passes (initial delay honoured), a liveness probe that keeps failing restarts the
//! container with the kubelet's events and back-off, a startup probe that never passes does
//! the same, and probes that cannot run for a Wasm pod are refused at admission.

use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, free_port, status_summary, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::Pod;

const MINUTE: Duration = Duration::from_secs(60);

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// A pod running `image` with a port and the probe lines given (indented for the container).
fn probed(name: &str, image: &str, port: u16, probes: &str) -> String {
    wasm_pod(
        name,
        &format!(
            "  automountServiceAccountToken: false\n  containers:\n  - name: web\n    image: {image}\n    ports:\n    - {{containerPort: {port}, name: http}}\n{probes}"
        ),
    )
}

#[tokio::test]
async fn readiness_waits_for_its_check_and_a_failing_liveness_probe_restarts_the_container() {
    let cluster = WasmCluster::start("edge-probes", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();

    // Ready only once the readiness check has passed, after its 3 s initial delay (without a
    // probe a served pod is Ready in well under a second).
    let port = free_port().unwrap();
    let readiness = "    readinessProbe:\n      httpGet: {path: /ready, port: http}\n      initialDelaySeconds: 3\n      periodSeconds: 1\n    livenessProbe:\n      tcpSocket: {port: http}\n      periodSeconds: 1\n";
    let created = Instant::now();
    cluster
        .kubectl
        .apply(&probed("gated", &image, port, readiness))
        .unwrap();
    let running = cluster
        .wait_pod("gated", "Running", MINUTE, |p| {
            container_status(p).is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
        })
        .await
        .unwrap();
    if created.elapsed() < Duration::from_secs(3) {
        assert!(
            !ready(&running),
            "Ready before its initial delay: {}",
            status_summary(&running)
        );
        assert!(!container_status(&running).unwrap().ready);
    }
    cluster
        .wait_pod("gated", "Ready", MINUTE, ready)
        .await
        .unwrap();
    let took = created.elapsed();
    assert!(took >= Duration::from_secs(3), "Ready after {took:?}");
    let status = container_status(&cluster.pod("gated").unwrap()).unwrap();
    assert_eq!((status.ready, status.started), (true, Some(true)));

    // A liveness check that always gets a 500: Unhealthy, then Killing, then a restart, and
    // the kubelet's back-off between restarts.
    let port = free_port().unwrap();
    let liveness = "    livenessProbe:\n      httpGet: {path: /trap, port: http}\n      periodSeconds: 1\n      failureThreshold: 2\n";
    cluster
        .kubectl
        .apply(&probed("dying", &image, port, liveness))
        .unwrap();
    let unhealthy = cluster
        .wait_event("dying", "Unhealthy", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        unhealthy,
        "Liveness probe failed: HTTP probe failed with statuscode: 500"
    );
    let killing = cluster
        .wait_event("dying", "Killing", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        killing,
        "Container web failed liveness probe, will be restarted"
    );
    cluster
        .wait_pod(
            "dying",
            "restarted twice, in back-off",
            Duration::from_secs(90),
            |p| container_status(p).is_some_and(|c| c.restart_count >= 2),
        )
        .await
        .unwrap();
    cluster
        .wait_event("dying", "BackOff", MINUTE)
        .await
        .unwrap();
    // Its neighbour was never disturbed.
    let gated = container_status(&cluster.pod("gated").unwrap()).unwrap();
    assert_eq!(gated.restart_count, 0);
}

#[tokio::test]
async fn a_startup_probe_that_never_passes_restarts_and_exec_probes_are_refused() {
    let cluster = WasmCluster::start("edge-startup", 110).await.unwrap();
    let ticker = push_demo(&cluster.registry.host(), "ticker").unwrap();

    // Nothing listens on the port the startup probe dials: never started, then killed.
    let port = free_port().unwrap();
    let startup = format!(
        "    startupProbe:\n      tcpSocket: {{port: {port}}}\n      periodSeconds: 1\n      failureThreshold: 2\n"
    );
    cluster
        .kubectl
        .apply(&probed("slow-start", &ticker, port, &startup))
        .unwrap();
    let waiting = cluster
        .wait_pod("slow-start", "running, not started", MINUTE, |p| {
            container_status(p).is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
        })
        .await
        .unwrap();
    assert_eq!(container_status(&waiting).unwrap().started, Some(false));
    let unhealthy = cluster
        .wait_event("slow-start", "Unhealthy", MINUTE)
        .await
        .unwrap();
    assert!(
        unhealthy.starts_with(&format!("Startup probe failed: dial tcp 127.0.0.1:{port}")),
        "{unhealthy}"
    );
    let killing = cluster
        .wait_event("slow-start", "Killing", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        killing,
        "Container web failed startup probe, will be restarted"
    );
    cluster
        .wait_pod("slow-start", "restarted", MINUTE, |p| {
            container_status(p).is_some_and(|c| c.restart_count >= 1)
        })
        .await
        .unwrap();

    // An exec probe cannot run in a Wasm pod: refused at admission, saying so.
    let exec = "    readinessProbe:\n      exec: {command: [cat, /tmp/ready]}\n";
    cluster
        .kubectl
        .apply(&probed("execs", &ticker, free_port().unwrap(), exec))
        .unwrap();
    let refused = wait_for("the exec probe refused", MINUTE, || {
        let pod = cluster.pod("execs");
        async move {
            let pod = pod.map_err(|e| e.to_string())?;
            let status = pod.status.clone().unwrap_or_default();
            Ok((status.reason.as_deref() == Some("UnsupportedProbe")).then_some(status))
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.phase.as_deref(), Some("Failed"));
    assert!(
        refused
            .message
            .unwrap_or_default()
            .contains("its readiness probe uses exec, which cannot run in a Wasm pod"),
    );
}
