//! Pods on a wasmlet node against the real control plane and registry: the seed's manifest,
//! command, args and env, init containers, restart policies, pull secrets, deletion, pods
//! bound to other nodes left alone, and bad input.

use std::time::{Duration, Instant};

use e2e::demos::{push_demo, push_file, push_file_over_https};
use e2e::status::{condition, container, phase, running, terminated, waiting};
use e2e::{
    REGISTRY_PASSWORD, REGISTRY_USER, Registry, TokenService, WasmCluster, WasmletNode,
    WasmletOptions, wasm_pod,
};
use k8s_openapi::api::core::v1::Pod;

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

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
    run_times(&pod, "ce-wasi-example");
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
    // Events are written in the background, after the status that reports the same.
    cluster
        .wait_events("ce-wasi-example", "the start's events", MINUTE, |events| {
            ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
                .iter()
                .all(|reason| events.iter().any(|e| e.reason.as_deref() == Some(reason)))
                .then_some(())
        })
        .await
        .unwrap();
    // `kubectl describe pod` reads as for any kubelet: the pull in the kubelet's words.
    let described = cluster
        .kubectl
        .run(&["describe", "pod", "ce-wasi-example"])
        .unwrap();
    let pulled = format!("Successfully pulled image \"{image}\" in ");
    assert!(
        described.contains(&pulled) && described.contains(". Image size: "),
        "no {pulled:?}… Image size in:\n{described}"
    );

    // The image is on the node now: a pod that may use it as it is gets it without a pull,
    // and says so in the kubelet's words, with no Pulling event.
    cluster
        .kubectl
        .apply(&wasm_pod(
            "cached",
            &format!("  automountServiceAccountToken: false\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: {image}\n    imagePullPolicy: IfNotPresent\n"),
        ))
        .unwrap();
    let events = cluster
        .wait_events("cached", "Pulled and Started events", MINUTE, |events| {
            let has = |reason: &str| events.iter().any(|e| e.reason.as_deref() == Some(reason));
            (has("Pulled") && has("Started")).then(|| events.to_vec())
        })
        .await
        .unwrap();
    let pulled: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Pulled"))
        .filter_map(|e| e.message.as_deref())
        .collect();
    assert_eq!(
        pulled,
        [format!(
            "Container image \"{image}\" already present on machine"
        )],
    );
    assert!(
        events
            .iter()
            .all(|e| e.reason.as_deref() != Some("Pulling")),
        "a cached image was announced as pulled: {events:?}"
    );

    // A preview 2 component runs the same way, beside a module whose `command` replaces
    // the image's argv[0] and is followed by its `args`, each word kept whole.
    let component = push_demo(&cluster.registry.host(), "hello-component").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "component",
            &format!("  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {component}\n    args: [\"x\"]\n    env: [{{name: GREETING, value: howdy}}]\n  - name: argv\n    image: {image}\n    command: [\"/opt/example.wasm\", \"--mode=strict\"]\n    args: [\"one\", \"two words\"]\n"),
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
    let log = cluster.container_log(&pod, "argv", 0);
    assert_eq!(
        printed_argv(&log),
        ["/opt/example.wasm", "--mode=strict", "one", "two words"],
        "argv is command then args:\n{log}"
    );
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
        // Containers whose env names a ConfigMap that does not exist yet: they wait, and are
        // not runs, whatever the restart policy.
        (
            "config-later",
            format!(
                "  restartPolicy: Never\n  containers:\n  - {{name: app, image: {fail}, env: [{{name: EXIT_CODE, valueFrom: {{configMapKeyRef: {{name: codes, key: app}}}}}}]}}\n"
            ),
        ),
        (
            "init-config-later",
            format!(
                "  restartPolicy: Never\n  initContainers:\n  - {{name: setup, image: {fail}, env: [{{name: EXIT_CODE, valueFrom: {{configMapKeyRef: {{name: codes, key: init}}}}}}]}}\n  containers:\n  - {{name: app, image: {ticker}}}\n"
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
    run_times(&pod, "app");
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
                    && waiting(p, "app").is_some_and(|(reason, _)| reason == "CrashLoopBackOff")
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
    // The instance that crashed keeps its own run times in lastState.
    let (started, finished) = (
        last.started_at.clone().expect("lastState has startedAt").0,
        last.finished_at
            .clone()
            .expect("lastState has finishedAt")
            .0,
    );
    assert!(started <= finished, "{started} > {finished}");
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
        waiting(&pod, "app").map(|w| w.0).as_deref(),
        Some("PodInitializing"),
        "the app never started"
    );

    // As the kubelet: CreateContainerConfigError, Pending, no restart counted, a Failed
    // event; and a run once the ConfigMap exists (at once: the node watches what pods read).
    for (name, container_name) in [("config-later", "app"), ("init-config-later", "setup")] {
        let pod = cluster
            .wait_pod(name, "waiting for its ConfigMap", MINUTE, |p| {
                waiting(p, container_name)
                    .is_some_and(|(reason, _)| reason == "CreateContainerConfigError")
            })
            .await
            .unwrap();
        let (_, message) = waiting(&pod, container_name).unwrap();
        assert_eq!(message, "configmap \"codes\" not found", "{name}");
        assert_eq!(phase(&pod), "Pending", "{name}");
        assert_eq!(container(&pod, container_name).unwrap().restart_count, 0);
        let failed = wait_warning(&cluster, name, "Failed", "not found").await;
        assert_eq!(failed, "Error: configmap \"codes\" not found");
    }
    cluster
        .kubectl
        .run(&[
            "create",
            "configmap",
            "codes",
            "--from-literal=app=0",
            "--from-literal=init=0",
        ])
        .unwrap();
    let pod = cluster
        .wait_pod("config-later", "Succeeded", MINUTE, |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    assert_eq!(terminated(&pod, "app").map(|t| t.0), Some(0));
    assert_eq!(container(&pod, "app").unwrap().restart_count, 0);
    cluster
        .wait_pod("init-config-later", "Running", MINUTE, |p| {
            running(p, "app")
        })
        .await
        .unwrap();
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
    only_the_pod_with_the_secret_pulls(&cluster, &private.host(), &image).await;
}

/// The token flow most registries use (Docker Hub, GHCR, Harbor), against a real
/// `docker-registry` that checks every token: the registry speaks only HTTPS with a
/// certificate from a private CA (which the node trusts through `SSL_CERT_FILE`), answers
/// 401 with a Bearer challenge, and takes only tokens its token service signed.
#[tokio::test]
async fn private_registry_over_https_takes_bearer_tokens_issued_for_the_pull_secret() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenService::start(dir.path()).unwrap();
    let private = Registry::start_with_token_service(&tokens).unwrap();
    let ca = tokens.ca_path().to_str().unwrap();
    let image = format!("{}/private/ticker:v1", private.host());
    push_file_over_https(
        &e2e::demos::demo_wasm("ticker").unwrap(),
        &image,
        &[
            ("SSL_CERT_FILE", ca),
            ("WASMLET_REGISTRY_USERNAME", REGISTRY_USER),
            ("WASMLET_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
        ],
    )
    .unwrap();
    let granted_to = |user: Option<&str>, grant: &str| {
        tokens
            .issued()
            .iter()
            .filter(|t| t.user.as_deref() == user && t.granted.iter().any(|g| g == grant))
            .count()
    };
    assert!(
        granted_to(Some(REGISTRY_USER), "repository:private/ticker:pull,push") > 0,
        "the push asked for a token to push: {:?}",
        tokens.issued()
    );
    let pulls_before = granted_to(Some(REGISTRY_USER), "repository:private/ticker:pull");

    // The node does not list the registry as insecure: it pulls over HTTPS.
    let cluster = WasmCluster::start_with_options(WasmletOptions {
        ca_certificates: Some(tokens.ca_path().to_path_buf()),
        ..WasmletOptions::named("edge-tokens")
    })
    .await
    .unwrap();
    only_the_pod_with_the_secret_pulls(&cluster, &private.host(), &image).await;
    assert!(
        granted_to(Some(REGISTRY_USER), "repository:private/ticker:pull") > pulls_before,
        "the node pulled with a token issued for the pull secret's user: {:?}",
        tokens.issued()
    );
    assert!(
        granted_to(None, "repository:private/ticker:") > 0,
        "the pod without the secret got an anonymous token that grants nothing: {:?}",
        tokens.issued()
    );
}

/// Of pods of the private `image`, the one with a pull secret for `registry` runs, and the
/// one without is refused, with a message and an Event that say so; one whose secret is
/// created only after it was refused runs at its next attempt.
async fn only_the_pod_with_the_secret_pulls(cluster: &WasmCluster, registry: &str, image: &str) {
    let kubectl = &cluster.kubectl;
    let create_secret = |name: &str| {
        kubectl
            .run(&[
                "create",
                "secret",
                "docker-registry",
                name,
                &format!("--docker-server={registry}"),
                &format!("--docker-username={REGISTRY_USER}"),
                &format!("--docker-password={REGISTRY_PASSWORD}"),
            ])
            .unwrap();
    };
    create_secret("regcred");
    kubectl
        .apply(&wasm_pod(
            "secret-later",
            &format!("  imagePullSecrets: [{{name: latecred}}]\n  containers:\n  - {{name: app, image: {image}}}\n"),
        ))
        .unwrap();
    cluster
        .wait_pod(
            "secret-later",
            "refused before its secret exists",
            MINUTE,
            |p| {
                matches!(
                    waiting(p, "app").map(|w| w.0).as_deref(),
                    Some("ErrImagePull" | "ImagePullBackOff")
                )
            },
        )
        .await
        .unwrap();
    // As the kubelet says it: the pull went on without the secret it could not read.
    assert_eq!(
        cluster
            .wait_event("secret-later", "FailedToRetrieveImagePullSecret", MINUTE)
            .await
            .unwrap(),
        "Unable to retrieve some image pull secrets (latecred); attempting to pull the image may not succeed."
    );
    create_secret("latecred");
    cluster
        .wait_pod(
            "secret-later",
            "Running with the secret made later",
            MINUTE,
            |p| running(p, "app"),
        )
        .await
        .unwrap();
    // `Always`: with `IfNotPresent`, a node that already pulled the image for the pod with
    // the secret would run it for this one too (as the kubelet does), and which pod pulls
    // first is a race. `Always` asks the registry each time, with this pod's credentials.
    kubectl
        .apply(&wasm_pod(
            "without-secret",
            &format!("  containers:\n  - {{name: app, image: {image}, imagePullPolicy: Always}}\n"),
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
                waiting(p, "app").map(|w| w.0).as_deref(),
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
    // Bound to a node that does not exist, and created before our own pods: a node that
    // watched more than its own pods would take it up first.
    cluster
        .kubectl
        .apply(&wasm_pod(
            "elsewhere",
            &format!("  nodeName: ghost-node\n  containers:\n  - {{name: app, image: {ticker}}}\n"),
        ))
        .unwrap();
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

    // Our ticker has been pulled, started and reported (its events are written in the
    // background, so wait for the last); the other node's pod, older than it, was never
    // touched: no status beyond the API server's default Pending, no event from wasmlet,
    // and not in the node's own pod list.
    cluster
        .wait_event("ticker", "Started", MINUTE)
        .await
        .unwrap();
    let elsewhere = cluster.pod("elsewhere").unwrap();
    let status = elsewhere.status.clone().unwrap_or_default();
    assert_eq!(phase(&elsewhere), "Pending", "{status:?}");
    assert!(status.container_statuses.is_none(), "{status:?}");
    assert!(
        status.host_ip.is_none() && status.start_time.is_none(),
        "{status:?}"
    );
    for type_ in ["Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&elsewhere, type_), None, "{status:?}");
    }
    let ours: Vec<String> = cluster
        .events("elsewhere")
        .unwrap()
        .into_iter()
        .filter(|e| e.reporting_component.as_deref() == Some("wasmlet"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect();
    assert!(
        ours.is_empty(),
        "wasmlet reported on another node's pod: {ours:?}"
    );
    let names = cluster.node_pods().unwrap();
    assert!(
        names.iter().any(|n| n == "ticker") && !names.iter().any(|n| n == "elsewhere"),
        "{names:?}"
    );

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
    cluster
        .wait_event("spinner", "Killing", MINUTE)
        .await
        .unwrap();
}

/// `activeDeadlineSeconds` as the kubelet enforces it: counted from the pod's start time,
/// on a running pod, on one still waiting for its image, and when set on a running pod
/// later; each fails with the kubelet's reason, message and event, and a pod without one
/// keeps running.
#[tokio::test]
async fn pods_past_their_active_deadline_fail_as_the_kubelets_do() {
    let cluster = WasmCluster::start("deadline", 10).await.unwrap();
    let host = cluster.registry.host();
    let ticker = push_demo(&host, "ticker").unwrap();
    let ticking = |name: &str, image: &str, extra: &str| {
        wasm_pod(
            name,
            &format!(
                "  automountServiceAccountToken: false\n{extra}  containers:\n  - {{name: app, image: {image}}}\n"
            ),
        )
    };
    // First the pod without a deadline, so the ticker's image and code are on the node and
    // the next one runs well within its three seconds.
    cluster
        .kubectl
        .apply(&ticking("given-one-later", &ticker, ""))
        .unwrap();
    cluster
        .wait_pod("given-one-later", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    let deadline = "  activeDeadlineSeconds: 3\n";
    let missing = format!("{host}/no/such:v1");
    for (name, image) in [("overdue", ticker.as_str()), ("never-pulled", &missing)] {
        cluster
            .kubectl
            .apply(&ticking(name, image, deadline))
            .unwrap();
    }

    let past_deadline = |p: &Pod| {
        phase(p) == "Failed"
            && p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded")
    };
    for name in ["overdue", "never-pulled"] {
        let pod = cluster
            .wait_pod(name, "Failed past its deadline", MINUTE, past_deadline)
            .await
            .unwrap();
        let status = pod.status.as_ref().unwrap();
        assert_eq!(
            status.message.as_deref(),
            Some("Pod was active on the node longer than the specified deadline")
        );
        assert!(!running(&pod, "app"), "{name}: its container was stopped");
        let event = cluster
            .wait_event(name, "DeadlineExceeded", MINUTE)
            .await
            .unwrap();
        assert_eq!(
            event,
            "Pod was active on the node longer than the specified deadline"
        );
    }
    // It ran, and not past the deadline: its three seconds from the pod's start (times in
    // the API are whole seconds).
    let overdue = cluster.pod("overdue").unwrap();
    let (_, finished) = run_times(&overdue, "app");
    let start = overdue
        .status
        .as_ref()
        .unwrap()
        .start_time
        .as_ref()
        .unwrap()
        .0;
    let ran = finished.duration_since(start);
    assert!(
        ran >= jiff::SignedDuration::from_secs(2) && ran < jiff::SignedDuration::from_secs(20),
        "stopped {ran} after the pod's start"
    );

    // The API server lets a running pod be given a deadline (or a shorter one); the node
    // acts on the change, and this pod has been active longer than one second already.
    assert!(running(&cluster.pod("given-one-later").unwrap(), "app"));
    cluster
        .kubectl
        .run(&[
            "patch",
            "pod",
            "given-one-later",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":1}}"#,
        ])
        .unwrap();
    let patched = Instant::now();
    cluster
        .wait_pod(
            "given-one-later",
            "Failed once given a deadline",
            MINUTE,
            past_deadline,
        )
        .await
        .unwrap();
    assert!(
        patched.elapsed() < 10 * SECOND,
        "failed {:?} after the patch",
        patched.elapsed()
    );
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

    // Each bad image fails the pod at once, with a status and a Warning event that say what
    // is wrong with it: the invalid module's bytes do not compile (compile.rs `invalid`),
    // the Linux image holds no Wasm (oci's NotWasm).
    for (name, reason, image, cause) in [
        (
            "invalid-wasm",
            "InvalidWasm",
            &invalid,
            "cannot be compiled",
        ),
        ("linux-image", "NotWasm", &linux, "is not a Wasm image"),
    ] {
        let pod = cluster
            .wait_pod(name, "Failed", MINUTE, |p| phase(p) == "Failed")
            .await
            .unwrap();
        let status = pod.status.clone().unwrap();
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}");
        let message = status.message.unwrap_or_default();
        assert!(
            message.contains(&format!("{image} {cause}")),
            "{name}: {message}"
        );
        let failed = wait_warning(&cluster, name, "Failed", cause).await;
        assert!(
            failed.starts_with(&format!("Failed to pull image \"{image}\": ")),
            "{name}: {failed}"
        );
    }

    // An image the registry does not have, and a registry nobody answers at: the pull
    // fails and is retried with back-off, the container waits saying why, a Warning event
    // says it too, and the pod can still be deleted while it waits.
    let dead = e2e::free_port().unwrap();
    let unpullable = [
        ("missing-image", format!("{host}/no/such:v1"), "not found"),
        (
            "dead-registry",
            format!("127.0.0.1:{dead}/no/such:v1"),
            "unreachable",
        ),
    ];
    for (name, image, _) in &unpullable {
        cluster
            .kubectl
            .apply(&wasm_pod(
                name,
                &format!("  containers:\n  - {{name: app, image: {image}}}\n"),
            ))
            .unwrap();
    }
    for (name, image, cause) in &unpullable {
        let pod = cluster
            .wait_pod(name, "waiting on its pull", MINUTE, |p| {
                matches!(
                    waiting(p, "app").map(|w| w.0).as_deref(),
                    Some("ErrImagePull" | "ImagePullBackOff")
                )
            })
            .await
            .unwrap();
        let (_, message) = waiting(&pod, "app").unwrap();
        assert!(message.contains(cause), "{name}: {message}");
        let failed = wait_warning(&cluster, name, "Failed", cause).await;
        assert!(
            failed.starts_with(&format!("Failed to pull image \"{image}\": ")),
            "{name}: {failed}"
        );
        if *name == "missing-image" {
            // A new image set on a pod waiting for its old one is pulled at once: its
            // back-off (10 s after the first failure, then longer) is the old image's.
            let set = Instant::now();
            cluster
                .kubectl
                .run(&[
                    "set",
                    "image",
                    &format!("pod/{name}"),
                    &format!("app={ticker}"),
                ])
                .unwrap();
            let pod = cluster
                .wait_pod(name, "Running its new image", 5 * SECOND, |p| {
                    running(p, "app")
                })
                .await
                .unwrap();
            eprintln!(
                "{name} ran its new image {:?} after it was set",
                set.elapsed()
            );
            assert_eq!(container(&pod, "app").unwrap().image, ticker);
        }
        let deleting = Instant::now();
        cluster
            .kubectl
            .run(&["delete", "pod", name, "--timeout=60s"])
            .unwrap();
        assert!(
            deleting.elapsed() < Duration::from_secs(30),
            "{name} took {:?} to delete",
            deleting.elapsed()
        );
    }

    let pod = cluster
        .wait_pod("trap", "Failed", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let (code, reason, message) = terminated(&pod, "app").unwrap();
    assert_eq!((code, reason.as_str()), (1, "Error"));
    assert!(message.contains("wasm trap"), "{message}");
    run_times(&pod, "app");
    // The trap is reported as an event too, naming the trap, not only in the status.
    wait_warning(&cluster, "trap", "Failed", "wasm trap").await;

    // The flood is bounded by rotation however long it runs: the sink rotates a container's
    // log when the current file reaches 10 MiB and keeps 5 files, the current one included
    // (LogLimits::default in kubelet/src/logs/sink.rs). A file may pass 10 MiB by the one
    // record that triggered its rotation, and a record holds at most a 16 KiB line part.
    const MAX_FILE: u64 = 10 * 1024 * 1024;
    const MAX_FILES: usize = 5;
    const MAX_RECORD: u64 = 16 * 1024 + 64;
    // Each guest line is `<n> <200 x>`; stored as a record it takes at least 240 bytes
    // (a 30-byte timestamp, " stdout F ", the text and a newline), so line `n` in the log
    // proves the guest had by then written at least (n + 1) × 240 bytes.
    const MIN_RECORD: u64 = 240;
    let flood = cluster
        .wait_pod("flood", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();
    let uid = flood.metadata.uid.clone().unwrap();
    let logs = cluster.node.pod_logs_dir(&uid);
    let current = cluster.node.container_log_path(&uid, "app", 0);
    let cap = MAX_FILES as u64 * (MAX_FILE + MAX_RECORD);
    let lines_needed = 2 * cap / MIN_RECORD;
    let last_line = e2e::wait_for(
        "the flood to write twice what its log may keep",
        3 * MINUTE,
        || {
            let last = last_flood_line(&current);
            async move {
                match last {
                    Some(n) if n >= lines_needed => Ok(Some(n)),
                    Some(n) => Err(format!("at line {n} of {lines_needed}")),
                    None => Err("no complete line in the current file".into()),
                }
            }
        },
    )
    .await
    .unwrap();
    let files = e2e::wait_for(
        "a listing of the flood's logs between two rotations",
        MINUTE,
        || {
            let listing = settled_listing(&logs);
            async move { Ok(listing) }
        },
    )
    .await
    .unwrap();
    let bytes: u64 = files.iter().map(|(_, len)| len).sum();
    eprintln!(
        "flood: at least {} bytes written (line {last_line}); kept {} files, {bytes} bytes",
        (last_line + 1) * MIN_RECORD,
        files.len()
    );
    let expected_name = |path: &std::path::Path| {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        name == "0.log"
            || name
                .strip_prefix("0.log.")
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| (1..MAX_FILES).contains(&i))
    };
    for (path, len) in &files {
        assert!(
            expected_name(path),
            "unexpected log file {}",
            path.display()
        );
        assert!(
            *len <= MAX_FILE + MAX_RECORD,
            "{} holds {len} bytes",
            path.display()
        );
    }
    assert!(
        files.len() <= MAX_FILES,
        "{} log files kept: {files:?}",
        files.len()
    );
    assert!(bytes <= cap, "the log flood kept {bytes} bytes, over {cap}");
    // Rotation dropped only the oldest: the files it keeps are full.
    assert!(
        bytes >= (MAX_FILES as u64 - 1) * MAX_FILE,
        "only {bytes} bytes kept of a flood of twice the cap"
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
    let name = refused.metadata.name.clone().unwrap();
    let message = refused.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("Node didn't have enough resource: pods")
            && message.contains("capacity: 8"),
        "{message}"
    );
    let event = wait_warning(&cluster, &name, "OutOfpods", "capacity: 8").await;
    assert!(
        event.starts_with("Node didn't have enough resource: pods"),
        "{event}"
    );

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

    let before = cluster.pod("survivor").unwrap();
    let status = cluster.node.terminate().unwrap();
    assert!(status.success(), "{status}");
    // A stopping agent leaves its pods' files for its next run: the log `--previous` will
    // read, and emptyDir data.
    assert!(
        cluster
            .container_log(&before, "app", 0)
            .contains("tick 3 from ticker"),
        "the stopped instance's log is still on the node"
    );
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
    previous_and_new_ticker_logs(&cluster, "survivor", "tick 3 from ticker").await;
}

/// `kubectl set image` on a running pod: the kubelet stops the container whose spec changed
/// and starts it again with the new image, whatever the restart policy; an image that cannot
/// be pulled leaves it waiting in ImagePullBackOff until the next is set.
#[tokio::test]
async fn a_new_image_set_on_a_running_pod_restarts_its_container_with_it() {
    let cluster = WasmCluster::start("edge-set-image", 110).await.unwrap();
    let registry = cluster.registry.host();
    let first = push_demo(&registry, "ticker").unwrap();
    let second = format!("{registry}/demos/ticker:v2");
    push_file(&e2e::demos::demo_wasm("ticker").unwrap(), &second, &[]).unwrap();
    let spec = format!(
        "  restartPolicy: Never\n  automountServiceAccountToken: false\n  containers:\n  - {{name: app, image: {first}, env: [{{name: INTERVAL_MS, value: \"100\"}}]}}\n"
    );
    cluster.kubectl.apply(&wasm_pod("renewed", &spec)).unwrap();
    cluster
        .wait_pod("renewed", "Running", MINUTE, |p| running(p, "app"))
        .await
        .unwrap();

    let missing = format!("{registry}/demos/missing:v1");
    let set_image = |image: &str| {
        cluster
            .kubectl
            .run(&["set", "image", "pod/renewed", &format!("app={image}")])
            .unwrap();
    };
    set_image(&missing);
    let message = cluster
        .wait_events(
            "renewed",
            "a Killing event for the changed spec",
            MINUTE,
            |events| {
                events
                    .iter()
                    .find(|e| e.reason.as_deref() == Some("Killing"))
                    .and_then(|e| e.message.clone())
            },
        )
        .await
        .unwrap();
    assert_eq!(
        message,
        "Container app definition changed, will be restarted"
    );
    let pod = cluster
        .wait_pod(
            "renewed",
            "waiting for an image that cannot be pulled",
            MINUTE,
            |p| {
                waiting(p, "app").is_some_and(|(reason, _)| {
                    reason == "ErrImagePull" || reason == "ImagePullBackOff"
                })
            },
        )
        .await
        .unwrap();
    let app = container(&pod, "app").unwrap();
    assert_eq!(app.restart_count, 1, "the stopped instance counts as a run");
    assert_eq!(app.image, missing);
    wait_warning(&cluster, "renewed", "Failed", "Failed to pull image").await;

    // The next image is tried at once, not after the failed one's 10 s back-off: a new image
    // has a back-off of its own.
    set_image(&second);
    let pod = cluster
        .wait_pod("renewed", "running the second image", 5 * SECOND, |p| {
            running(p, "app") && container(p, "app").is_some_and(|c| c.image == second)
        })
        .await
        .unwrap();
    assert_eq!(container(&pod, "app").unwrap().restart_count, 1);
    assert_eq!(phase(&pod), "Running");
    previous_and_new_ticker_logs(&cluster, "renewed", "tick 0 from ticker").await;
}

/// Checks that `kubectl logs --previous` reads the ticker pod's earlier instance (it holds
/// `previous_line`) and that the running instance's log starts afresh at tick 0.
async fn previous_and_new_ticker_logs(cluster: &WasmCluster, pod: &str, previous_line: &str) {
    let previous = cluster
        .kubectl
        .run(&["logs", pod, "--previous"])
        .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", cluster.node.log_tail(60)));
    assert!(previous.contains(previous_line), "{previous}");
    e2e::wait_for("the new instance to log", MINUTE, || {
        let log = cluster.kubectl.run(&["logs", pod]);
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

/// Container `name`'s terminated startedAt and finishedAt: both present, in order, and
/// within the pod's life so far.
fn run_times(pod: &Pod, name: &str) -> (jiff::Timestamp, jiff::Timestamp) {
    let state = container(pod, name)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("{name} has not terminated"));
    let started = state
        .started_at
        .as_ref()
        .unwrap_or_else(|| panic!("{name} has no startedAt: {state:?}"))
        .0;
    let finished = state
        .finished_at
        .as_ref()
        .unwrap_or_else(|| panic!("{name} has no finishedAt: {state:?}"))
        .0;
    let created = pod.metadata.creation_timestamp.as_ref().unwrap().0;
    assert!(
        created <= started && started <= finished && finished <= jiff::Timestamp::now(),
        "{name}: created {created}, started {started}, finished {finished}"
    );
    (started, finished)
}

/// The arguments wasi-example printed, from a container's CRI log: its stdout lines between
/// "The args are as follows." and the file check that follows them.
fn printed_argv(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| match line.splitn(4, ' ').collect::<Vec<_>>()[..] {
            [_, "stdout", "F", text] => Some(text),
            _ => None,
        })
        .skip_while(|text| *text != "The args are as follows.")
        .skip(1)
        .take_while(|text| !text.starts_with("File content is"))
        .map(str::to_string)
        .collect()
}

/// Waits for a Warning event with `reason` about `pod` whose message contains `needle`, and
/// returns its message.
async fn wait_warning(cluster: &WasmCluster, pod: &str, reason: &str, needle: &str) -> String {
    let what = format!("a Warning {reason} event saying {needle:?}");
    cluster
        .wait_events(pod, &what, MINUTE, |events| {
            events
                .iter()
                .find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().is_some_and(|m| m.contains(needle))
                })
                .map(|e| e.message.clone().unwrap_or_default())
        })
        .await
        .unwrap()
}

/// The number of the last complete flood line (`<n> xxx…`) in the current log file, read
/// from its tail only: the file holds up to 10 MiB and is polled while the flood runs.
fn last_flood_line(path: &std::path::Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    // The file may end in the middle of a record; the last newline ends a complete one.
    let end = tail.iter().rposition(|b| *b == b'\n')?;
    let start = tail[..end].iter().rposition(|b| *b == b'\n')? + 1;
    let record = std::str::from_utf8(&tail[start..end]).ok()?;
    let text = record.splitn(4, ' ').nth(3)?;
    text.split(' ').next()?.parse().ok()
}

/// Every file under `dir` with its size, or None if a rotation may have moved files while
/// they were read: the listing is taken twice and kept only if each path names the same
/// inode both times (a rotation gives every name another file, and `0.log` a new one).
fn settled_listing(dir: &std::path::Path) -> Option<Vec<(std::path::PathBuf, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let list = || -> Option<Vec<(std::path::PathBuf, u64, u64)>> {
        let mut files: Vec<_> = walk(dir)
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, meta.ino(), meta.len()))
            })
            .collect::<Option<_>>()?;
        files.sort();
        Some(files)
    };
    let first = list()?;
    let second = list()?;
    let same = first.len() == second.len()
        && first
            .iter()
            .zip(&second)
            .all(|(a, b)| (&a.0, a.1) == (&b.0, b.1));
    same.then(|| {
        second
            .into_iter()
            .map(|(path, _, len)| (path, len))
            .collect()
    })
}
