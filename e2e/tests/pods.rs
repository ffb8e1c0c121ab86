//! Pods on a wasmlet node against the real control plane and registry: the seed's manifest,
//! args and env, init containers, restart policies, pull secrets, deletion, and bad input.

use std::time::{Duration, Instant};

use e2e::demos::{push_demo, push_file};
use e2e::{
    REGISTRY_PASSWORD, REGISTRY_USER, Registry, WasmCluster, WasmletNode, WasmletOptions, wasm_pod,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

fn terminated(pod: &Pod, name: &str) -> Option<(i32, String, String)> {
    let state = container(pod, name)?.state.as_ref()?.terminated.as_ref()?;
    Some((
        state.exit_code,
        state.reason.clone().unwrap_or_default(),
        state.message.clone().unwrap_or_default(),
    ))
}

fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container(pod, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn running(pod: &Pod, name: &str) -> bool {
    container(pod, name)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn seed_manifest_runs_with_args_env_events_and_status() {
    let cluster = WasmCluster::start("edge-seed", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "wasi-example").unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ])
        .unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cret",
        ])
        .unwrap();
    // Seed 002's manifest, pointed at the local registry, with restartPolicy Never so the
    // run's end is observable, and env from each source.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: ce-wasi-example
  labels:
    app: ce-wasi-example
  annotations:
    alpha.wasi.krustlet.dev/max-concurrent-requests: "42"
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
    - image: {image}
      imagePullPolicy: Always
      name: ce-wasi-example
      args: ["first", "second"]
      env:
        - name: RUST_LOG
          value: info
        - name: MODE
          valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}
        - name: TOKEN
          valueFrom: {{secretKeyRef: {{name: creds, key: token}}}}
        - name: MY_POD
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
  tolerations:
    - key: "node.kubernetes.io/network-unavailable"
      operator: "Exists"
      effect: "NoSchedule"
    - key: "kubernetes.io/arch"
      operator: "Equal"
      value: "wasm32-wasi"
      effect: "NoExecute"
    - key: "kubernetes.io/arch"
      operator: "Equal"
      value: "wasm32-wasi"
      effect: "NoSchedule"
"#
    );
    cluster.kubectl.apply(&manifest).unwrap();
    let pod = cluster
        .wait_pod("ce-wasi-example", "Succeeded", MINUTE, |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    let (code, reason, _) = terminated(&pod, "ce-wasi-example").unwrap();
    assert_eq!((code, reason.as_str()), (0, "Completed"));
    let status = pod.status.clone().unwrap();
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    assert_eq!(condition(&pod, "PodScheduled").as_deref(), Some("True"));
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    let c = container(&pod, "ce-wasi-example").unwrap();
    assert!(c.image_id.starts_with("sha256:"), "{}", c.image_id);

    let log = cluster.container_log(&pod, "ce-wasi-example", 0);
    for expected in [
        "Random number: ",
        "Random bytes: [",
        "Printed from wasi: This is from a main function",
        "The env vars are as follows.",
        "MODE: fast",
        "TOKEN: s3cret",
        "MY_POD: ce-wasi-example",
        "RUST_LOG: info",
        "The args are as follows.",
        " stdout F first",
        " stdout F second",
        "File content is This is in a file",
    ] {
        assert!(log.contains(expected), "{expected:?} not in log:\n{log}");
    }
    let reasons: Vec<String> = cluster
        .events("ce-wasi-example")
        .unwrap()
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not in {reasons:?}"
        );
    }

    // A preview 2 component runs the same way.
    let component = push_demo(&cluster.registry.host(), "hello-component").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "component",
            &format!("  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {component}\n    args: [\"x\"]\n    env: [{{name: GREETING, value: howdy}}]\n"),
        ))
        .unwrap();
    let pod = cluster
        .wait_pod("component", "Succeeded", MINUTE, |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    let log = cluster.container_log(&pod, "hello", 0);
    assert!(
        log.contains("howdy from a wasi:cli/command component"),
        "{log}"
    );
    assert!(log.contains("args: [\"x\"]"), "{log}");
}

#[tokio::test]
async fn restart_policies_exit_codes_and_init_containers_behave_as_the_kubelets() {
    let cluster = WasmCluster::start("edge-restart", 110).await.unwrap();
    let host = cluster.registry.host();
    let fail = push_demo(&host, "exit-error").unwrap();
    let ok = push_demo(&host, "wasi-example").unwrap();
    let ticker = push_demo(&host, "ticker").unwrap();
    let pods = [
        (
            "never-fails",
            format!("  restartPolicy: Never\n  containers:\n  - {{name: app, image: {fail}}}\n"),
        ),
        (
            "onfailure-fails",
            format!(
                "  restartPolicy: OnFailure\n  containers:\n  - {{name: app, image: {fail}}}\n"
            ),
        ),
        (
            "onfailure-succeeds",
            format!("  restartPolicy: OnFailure\n  containers:\n  - {{name: app, image: {ok}}}\n"),
        ),
        (
            "always-completes",
            format!("  restartPolicy: Always\n  containers:\n  - {{name: app, image: {ok}}}\n"),
        ),
        (
            "init-passes",
            format!(
                "  initContainers:\n  - {{name: first, image: {fail}, env: [{{name: EXIT_CODE, value: \"0\"}}]}}\n  - {{name: second, image: {ok}}}\n  containers:\n  - {{name: app, image: {ticker}, env: [{{name: INTERVAL_MS, value: \"200\"}}]}}\n"
            ),
        ),
        (
            "init-fails",
            format!(
                "  restartPolicy: Never\n  initContainers:\n  - {{name: setup, image: {fail}}}\n  containers:\n  - {{name: app, image: {ticker}}}\n"
            ),
        ),
    ];
    for (name, spec) in &pods {
        cluster.kubectl.apply(&wasm_pod(name, spec)).unwrap();
    }

    let pod = cluster
        .wait_pod("never-fails", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let (code, reason, _) = terminated(&pod, "app").unwrap();
    assert_eq!((code, reason.as_str()), (3, "Error"));
    assert_eq!(container(&pod, "app").unwrap().restart_count, 0);
    let log = cluster.container_log(&pod, "app", 0);
    assert!(
        log.contains("stderr F fatal: configuration missing; exiting with 3"),
        "{log}"
    );

    // OnFailure restarts at once, then backs off: CrashLoopBackOff with a BackOff event.
    let pod = cluster
        .wait_pod(
            "onfailure-fails",
            "CrashLoopBackOff after a restart",
            MINUTE,
            |p| {
                container(p, "app").is_some_and(|c| c.restart_count >= 1)
                    && waiting_reason(p, "app").as_deref() == Some("CrashLoopBackOff")
            },
        )
        .await
        .unwrap();
    let last = container(&pod, "app")
        .unwrap()
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 3);
    assert_eq!(phase(&pod), "Running");
    let backoff = cluster
        .wait_event("onfailure-fails", "BackOff", MINUTE)
        .await
        .unwrap();
    assert!(
        backoff.contains("Back-off restarting failed container"),
        "{backoff}"
    );

    cluster
        .wait_pod("onfailure-succeeds", "Succeeded", MINUTE, |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    cluster
        .wait_pod(
            "always-completes",
            "restarted after completing",
            MINUTE,
            |p| container(p, "app").is_some_and(|c| c.restart_count >= 1) && phase(p) == "Running",
        )
        .await
        .unwrap();

    let pod = cluster
        .wait_pod("init-passes", "Running and Ready", MINUTE, |p| {
            running(p, "app") && condition(p, "Ready").as_deref() == Some("True")
        })
        .await
        .unwrap();
    assert_eq!(terminated(&pod, "first").map(|t| t.0), Some(0));
    assert_eq!(terminated(&pod, "second").map(|t| t.0), Some(0));
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));

    let pod = cluster
        .wait_pod("init-fails", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    assert_eq!(terminated(&pod, "setup").map(|t| t.0), Some(3));
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        waiting_reason(&pod, "app").as_deref(),
        Some("PodInitializing"),
        "the app never started"
    );
}

#[tokio::test]
async fn private_registry_pod_pulls_with_its_image_pull_secret() {
    let private = Registry::start_with_auth().unwrap();
    let cluster = WasmCluster::start_with_registries("edge-private", 110, &[private.host()])
        .await
        .unwrap();
    let image = format!("{}/private/ticker:v1", private.host());
    push_file(
        &e2e::demos::demo_wasm("ticker").unwrap(),
        &image,
        &[
            ("WASMLET_REGISTRY_USERNAME", REGISTRY_USER),
            ("WASMLET_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
        ],
    )
    .unwrap();
    let kubectl = &cluster.kubectl;
    kubectl
        .run(&[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            &format!("--docker-server={}", private.host()),
            &format!("--docker-username={REGISTRY_USER}"),
            &format!("--docker-password={REGISTRY_PASSWORD}"),
        ])
        .unwrap();
    kubectl
        .apply(&wasm_pod(
            "without-secret",
            &format!("  containers:\n  - {{name: app, image: {image}}}\n"),
        ))
        .unwrap();
    kubectl
        .apply(&wasm_pod(
            "with-secret",
            &format!("  imagePullSecrets: [{{name: regcred}}]\n  containers:\n  - {{name: app, image: {image}}}\n"),
        ))
        .unwrap();
    cluster
        .wait_pod("with-secret", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    let pod = cluster
        .wait_pod("without-secret", "refused by the registry", MINUTE, |p| {
            matches!(
                waiting_reason(p, "app").as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await
        .unwrap();
    let message = container(&pod, "app")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap_or_default();
    assert!(message.contains("not authorized"), "{message}");
    let failed = cluster
        .wait_event("without-secret", "Failed", MINUTE)
        .await
        .unwrap();
    assert!(failed.contains("not authorized"), "{failed}");
}

#[tokio::test]
async fn deleted_pods_stop_within_their_grace_period_and_disappear() {
    let cluster = WasmCluster::start("edge-delete", 110).await.unwrap();
    let host = cluster.registry.host();
    let ticker = push_demo(&host, "ticker").unwrap();
    let misbehave = push_demo(&host, "misbehave").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod("ticker", &format!("  containers:\n  - {{name: app, image: {ticker}, env: [{{name: INTERVAL_MS, value: \"100\"}}]}}\n")))
        .unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "spinner",
            &format!("  terminationGracePeriodSeconds: 2\n  containers:\n  - {{name: app, image: {misbehave}, args: [spin]}}\n"),
        ))
        .unwrap();
    for name in ["ticker", "spinner"] {
        cluster
            .wait_pod(name, "Running", MINUTE, |p| running(p, "app"))
            .await
            .unwrap();
    }
    let pod = cluster.pod("ticker").unwrap();
    e2e::wait_for("the ticker to log", Duration::from_secs(10), || {
        let log = cluster.container_log(&pod, "app", 0);
        async move { Ok(log.contains("tick 3").then_some(())) }
    })
    .await
    .unwrap();

    for (name, bound) in [
        ("ticker", Duration::from_secs(30)),
        ("spinner", Duration::from_secs(3)),
    ] {
        let started = Instant::now();
        cluster
            .kubectl
            .run(&["delete", "pod", name, "--wait=true", "--timeout=60s"])
            .unwrap();
        let took = started.elapsed();
        eprintln!("{name} deleted in {:.2} s", took.as_secs_f64());
        assert!(took <= bound, "{name} took {took:?}, grace bound {bound:?}");
        let gone = cluster.kubectl.run(&["get", "pods", "-o", "name"]).unwrap();
        assert!(!gone.contains(&format!("pod/{name}")), "{gone}");
    }
    let killing = cluster
        .events("spinner")
        .unwrap()
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("Killing"));
    assert!(killing, "a Killing event is recorded");
}

#[tokio::test]
async fn bad_pods_fail_clearly_while_their_neighbour_keeps_running() {
    let cluster = WasmCluster::start("edge-bad", 8).await.unwrap();
    let host = cluster.registry.host();
    let ticker = push_demo(&host, "ticker").unwrap();
    let misbehave = push_demo(&host, "misbehave").unwrap();
    // A valid header with a body no compiler accepts.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0fgarbage").unwrap();
    let invalid = format!("{host}/bad/invalid:v1");
    push_file(&bogus, &invalid, &[]).unwrap();
    let linux = format!("{host}/library/busybox:1");
    e2e::oci_layout::publish_image(
        &dir.path().join("linux"),
        e2e::oci_layout::image_config(&["/bin/sh"], &[]).unwrap(),
        vec![e2e::oci_layout::Blob::new(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            e2e::oci_layout::tar_gz(&[("bin/sh", b"\x7fELF\x02\x01\x01\0\0\0\0\0")], &[]).unwrap(),
        )],
        &linux,
    )
    .unwrap();

    cluster
        .kubectl
        .apply(&wasm_pod("neighbour", &format!("  containers:\n  - {{name: app, image: {ticker}, env: [{{name: INTERVAL_MS, value: \"100\"}}]}}\n")))
        .unwrap();
    cluster
        .wait_pod("neighbour", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    let bad = [
        (
            "invalid-wasm",
            format!("  containers:\n  - {{name: app, image: {invalid}}}\n"),
        ),
        (
            "linux-image",
            format!("  containers:\n  - {{name: app, image: {linux}}}\n"),
        ),
        (
            "trap",
            format!(
                "  restartPolicy: Never\n  containers:\n  - {{name: app, image: {misbehave}, args: [trap]}}\n"
            ),
        ),
        (
            "flood",
            format!("  containers:\n  - {{name: app, image: {misbehave}, args: [flood]}}\n"),
        ),
    ];
    for (name, spec) in &bad {
        cluster.kubectl.apply(&wasm_pod(name, spec)).unwrap();
    }

    for name in ["invalid-wasm", "linux-image"] {
        let pod = cluster
            .wait_pod(name, "Failed", MINUTE, |p| phase(p) == "Failed")
            .await
            .unwrap();
        let status = pod.status.clone().unwrap();
        assert_eq!(
            status.reason.as_deref(),
            Some(if name == "linux-image" {
                "NotWasm"
            } else {
                "InvalidWasm"
            }),
            "{name}"
        );
        let message = status.message.unwrap_or_default();
        assert!(!message.is_empty(), "{name} has a message");
        let failed = cluster.wait_event(name, "Failed", MINUTE).await.unwrap();
        assert!(!failed.is_empty());
        if name == "linux-image" {
            assert!(message.contains("not a Wasm image"), "{message}");
        }
    }

    let pod = cluster
        .wait_pod("trap", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let (code, reason, message) = terminated(&pod, "app").unwrap();
    assert_eq!((code, reason.as_str()), (1, "Error"));
    assert!(message.contains("wasm trap"), "{message}");

    // The flood is bounded by rotation (10 MiB × 5 files) however long it runs.
    let flood = cluster
        .wait_pod("flood", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    let uid = flood.metadata.uid.clone().unwrap();
    let logs = cluster.node.pod_logs_dir(&uid);
    let size = || -> u64 {
        walk(&logs)
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    e2e::wait_for("the flood to fill more than one log file", MINUTE, || {
        let files = walk(&logs).len();
        async move { Ok((files >= 3).then_some(())) }
    })
    .await
    .unwrap();
    let bytes = size();
    eprintln!("flood logs: {} files, {bytes} bytes", walk(&logs).len());
    assert!(
        bytes <= 5 * 10 * 1024 * 1024 + 1024 * 1024,
        "log flood kept {bytes} bytes"
    );

    // More pods than --max-pods 8, bound straight to the node (as a DaemonSet's or a
    // hand-placed pod is, past the scheduler): the ones beyond capacity are refused.
    for i in 0..8 {
        cluster
            .kubectl
            .apply(&wasm_pod(
                &format!("filler-{i}"),
                &format!(
                    "  nodeName: edge-bad\n  containers:\n  - {{name: app, image: {ticker}}}\n"
                ),
            ))
            .unwrap();
    }
    let refused = e2e::wait_for("a pod refused as OutOfpods", MINUTE, || {
        let pods: Result<Vec<Pod>, _> = cluster.kubectl.get_items(&["pods"]);
        async move {
            let pods = pods.map_err(|e| e.to_string())?;
            Ok(pods.into_iter().find(|p| {
                p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("OutOfpods")
                    && phase(p) == "Failed"
            }))
        }
    })
    .await
    .unwrap();
    let message = refused.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("capacity: 8"), "{message}");

    // Through all of it the neighbour kept running and logging.
    let neighbour = cluster.pod("neighbour").unwrap();
    assert!(running(&neighbour, "app"));
    assert_eq!(container(&neighbour, "app").unwrap().restart_count, 0);
    let before = cluster.container_log(&neighbour, "app", 0).lines().count();
    e2e::wait_for(
        "the neighbour to keep logging",
        Duration::from_secs(5),
        || {
            let now = cluster.container_log(&neighbour, "app", 0).lines().count();
            async move { Ok((now >= before + 5).then_some(())) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restarted_agent_takes_its_pods_back_counting_the_lost_instance_as_a_restart() {
    let options = WasmletOptions::named("edge-takeover");
    let mut cluster = WasmCluster::start_with_options(options.clone())
        .await
        .unwrap();
    let ticker = push_demo(&cluster.registry.host(), "ticker").unwrap();
    let spec = format!(
        "  automountServiceAccountToken: false\n  containers:\n  - {{name: app, image: {ticker}, env: [{{name: INTERVAL_MS, value: \"100\"}}]}}\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n"
    );
    cluster.kubectl.apply(&wasm_pod("survivor", &spec)).unwrap();
    cluster
        .wait_pod("survivor", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    e2e::wait_for("a few ticks", MINUTE, || {
        let log = cluster.kubectl.run(&["logs", "survivor"]);
        async move {
            Ok(log
                .map_err(|e| e.to_string())?
                .contains("tick 3 ")
                .then_some(()))
        }
    })
    .await
    .unwrap();

    let status = cluster.node.terminate().unwrap();
    assert!(status.success(), "{status}");
    let mut restarted = options.clone();
    restarted.insecure_registries = vec![cluster.registry.host()];
    cluster.node = WasmletNode::start(&cluster.plane, &restarted).unwrap();

    let pod = cluster
        .wait_pod("survivor", "running again, one restart on", MINUTE, |p| {
            running(p, "app") && container(p, "app").is_some_and(|c| c.restart_count == 1)
        })
        .await
        .unwrap();
    let last = container(&pod, "app")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("the lost instance is the last terminated state");
    assert_eq!(last.exit_code, 137);
    assert_eq!(
        last.message.as_deref(),
        Some("wasmlet restarted while the container ran")
    );
    // The lost instance's log is still there for `kubectl logs --previous`, and the new one
    // starts afresh.
    let previous = cluster
        .kubectl
        .run(&["logs", "survivor", "--previous"])
        .unwrap();
    assert!(previous.contains("tick 3 from ticker"), "{previous}");
    e2e::wait_for("the new instance to log", MINUTE, || {
        let log = cluster.kubectl.run(&["logs", "survivor"]);
        async move {
            Ok(log
                .map_err(|e| e.to_string())?
                .starts_with("tick 0 ")
                .then_some(()))
        }
    })
    .await
    .unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
