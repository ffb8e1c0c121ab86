//! Volumes on a wasmlet node against the real control plane: every volume type with
//! `items`, `subPath` and read-only mounts as a P2 component sees them, a ConfigMap update
//! reaching a running pod, and the bad inputs (escapes through paths, symlinks and subPath,
//! a Secret that does not exist yet, an emptyDir past its size limit, an unsupported type).

use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, WasmletOptions, status_summary, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::Pod;

const MINUTE: Duration = Duration::from_secs(60);

/// A node that resynchronises volumes every second, so updates show quickly.
async fn cluster(name: &str) -> WasmCluster {
    WasmCluster::start_with_options(WasmletOptions {
        sync_frequency: Some("1s".into()),
        ..WasmletOptions::named(name)
    })
    .await
    .unwrap()
}

/// Waits until the pod's log, read with `kubectl logs` as a person would, has every line of
/// `wanted` (each as a substring of some line), and returns the log.
async fn wait_log(cluster: &WasmCluster, pod: &str, wanted: &[&str], timeout: Duration) -> String {
    wait_for(&format!("{pod}'s log to show {wanted:?}"), timeout, || {
        let log = cluster.kubectl.run(&["logs", pod]);
        async move {
            let log = log.map_err(|e| e.to_string())?;
            let missing: Vec<&&str> = wanted.iter().filter(|w| !log.contains(**w)).collect();
            if missing.is_empty() {
                Ok(Some(log))
            } else {
                Err(format!("missing {missing:?} in:\n{log}"))
            }
        }
    })
    .await
    .unwrap()
}

fn waiting(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    Some((
        waiting.reason.clone().unwrap_or_default(),
        waiting.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test]
async fn every_volume_type_is_mounted_and_config_map_updates_reach_the_running_pod() {
    let cluster = cluster("edge-volumes").await;
    let image = push_demo(&cluster.registry.host(), "config-reader").unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("host.txt"), "from the host").unwrap();
    std::os::unix::fs::symlink("/etc", host.path().join("escape")).unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "configmap",
            "app-config",
            "--from-literal=greeting=hello",
            "--from-literal=level=debug",
        ])
        .unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "secret",
            "generic",
            "app-secret",
            "--from-literal=password=hunter2",
        ])
        .unwrap();
    let paths = [
        "/etc/app/conf/greeting.txt",
        "/etc/app/level",
        "/etc/level",
        "/etc/secret/password",
        "/etc/pod/labels",
        "/etc/pod/name",
        "/etc/pod/memory-mib",
        "/projected/level",
        "/projected/namespace",
        "/projected/token",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        "/scratch/note",
        "/host/host.txt",
        "/host/escape/hostname",
        "/etc/app/../../../../../etc/hostname",
        "/scratch/../../host/host.txt",
    ];
    let args: Vec<String> = [
        "--write",
        "/scratch/note=written by the guest",
        "--write",
        "/host/new=x",
        "--write",
        "/etc/app/new=x",
        "--every",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(paths.iter().map(|s| s.to_string()))
    .collect();
    let manifest = wasm_pod(
        "volumes",
        &format!(
            r#"  restartPolicy: Never
  containers:
  - name: reader
    image: {image}
    args: {args:?}
    resources:
      limits: {{memory: 64Mi}}
    volumeMounts:
    - {{name: config, mountPath: /etc/app}}
    - {{name: whole-config, mountPath: /etc/level, subPath: level}}
    - {{name: secret, mountPath: /etc/secret}}
    - {{name: pod-info, mountPath: /etc/pod}}
    - {{name: projected, mountPath: /projected}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: host, mountPath: /host, readOnly: true}}
  volumes:
  - name: config
    configMap:
      name: app-config
      items: [{{key: greeting, path: conf/greeting.txt, mode: 0400}}]
  - name: whole-config
    configMap: {{name: app-config}}
  - name: secret
    secret: {{secretName: app-secret}}
  - name: pod-info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - path: memory-mib
        resourceFieldRef: {{containerName: reader, resource: limits.memory, divisor: 1Mi}}
  - name: projected
    projected:
      sources:
      - configMap: {{name: app-config, items: [{{key: level, path: level}}]}}
      - downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
      - serviceAccountToken: {{path: token, expirationSeconds: 600}}
  - name: scratch
    emptyDir: {{sizeLimit: 1Mi}}
  - name: host
    hostPath: {{path: {host}, type: Directory}}
"#,
            host = host.path().display()
        ),
    )
    .replace(
        "name: volumes\n",
        "name: volumes\n  labels: {app: volumes}\n",
    );
    cluster.kubectl.apply(&manifest).unwrap();
    let log = wait_log(
        &cluster,
        "volumes",
        &[
            "/etc/app/conf/greeting.txt: hello",
            "/etc/level: debug",
            "/etc/secret/password: hunter2",
            "/etc/pod/labels: app=\"volumes\"",
            "/etc/pod/name: volumes",
            "/etc/pod/memory-mib: 64",
            "/projected/level: debug",
            "/projected/namespace: default",
            "/projected/token: eyJ",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace: default",
            "wrote /scratch/note",
            "/scratch/note: written by the guest",
            "/host/host.txt: from the host",
        ],
        MINUTE,
    )
    .await;
    // items pick keys: level is not under /etc/app. Read-only mounts refuse writes.
    for line in [
        "/etc/app/level: error",
        "cannot write /host/new",
        "cannot write /etc/app/new",
        // Escapes: a symlink to the host's /etc, and `..` past the mount, see nothing.
        "/host/escape/hostname: error",
        "/etc/app/../../../../../etc/hostname: error",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    assert!(!host.path().join("new").exists());
    // `..` past /scratch can reach another mount only through the guest's own paths.
    assert!(
        log.contains("/scratch/../../host/host.txt: error")
            || log.contains("/scratch/../../host/host.txt: from the host"),
        "{log}"
    );
    let node_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    if !node_hostname.trim().is_empty() {
        assert!(
            !log.contains(&format!(": {}", node_hostname.trim())),
            "the host's /etc/hostname leaked into the guest:\n{log}"
        );
    }
    let mode = std::fs::read_dir(cluster.node.data_dir().join("pods"))
        .unwrap()
        .flatten()
        .find_map(|pod| std::fs::metadata(pod.path().join("volumes/config/conf/greeting.txt")).ok())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode, Some(0o400), "items' mode is applied on the node");

    // An update reaches the running pod through the directory mount (subPath mounts keep
    // what they had, as with the kubelet).
    let updated_at = Instant::now();
    cluster
        .kubectl
        .run(&[
            "patch",
            "configmap",
            "app-config",
            "-p",
            r#"{"data":{"greeting":"hello again"}}"#,
        ])
        .unwrap();
    wait_log(
        &cluster,
        "volumes",
        &["/etc/app/conf/greeting.txt: hello again"],
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "configMap update seen by the pod after {:.2} s (sync period 1 s)",
        updated_at.elapsed().as_secs_f64()
    );
    let pod = cluster.pod("volumes").unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
}

#[tokio::test]
async fn bad_volumes_get_clear_statuses_and_the_pod_waits_for_a_missing_secret() {
    let cluster = cluster("edge-bad-volumes").await;
    let image = push_demo(&cluster.registry.host(), "config-reader").unwrap();

    // A Secret that does not exist yet: FailedMount, ContainerCreating, then it runs.
    let waiting_pod = wasm_pod(
        "needs-secret",
        &format!(
            r#"  automountServiceAccountToken: false
  containers:
  - name: reader
    image: {image}
    args: ["--every", "1", "/secret/token"]
    volumeMounts: [{{name: s, mountPath: /secret}}]
  volumes:
  - {{name: s, secret: {{secretName: later}}}}
"#
        ),
    );
    cluster.kubectl.apply(&waiting_pod).unwrap();
    let message = cluster
        .wait_event("needs-secret", "FailedMount", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        message,
        "MountVolume.SetUp failed for volume \"s\" : secret \"later\" not found"
    );
    let pod = cluster
        .wait_pod("needs-secret", "waiting for its volume", MINUTE, |p| {
            waiting(p).is_some_and(|(reason, message)| {
                reason == "ContainerCreating" && message.contains("secret \"later\" not found")
            })
        })
        .await
        .unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    cluster
        .kubectl
        .run(&[
            "create",
            "secret",
            "generic",
            "later",
            "--from-literal=token=at-last",
        ])
        .unwrap();
    // The mount is retried with back-off (0.5 s doubling), so it runs soon after.
    wait_log(
        &cluster,
        "needs-secret",
        &["/secret/token: at-last"],
        MINUTE,
    )
    .await;

    // A subPath that is a symlink out of its hostPath volume is refused before the guest runs.
    let host = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", host.path().join("escape")).unwrap();
    let escaping = wasm_pod(
        "sub-path-escape",
        &format!(
            r#"  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: reader
    image: {image}
    args: ["/mnt"]
    volumeMounts: [{{name: h, mountPath: /mnt, subPath: escape}}]
  volumes:
  - {{name: h, hostPath: {{path: {}}}}}
"#,
            host.path().display()
        ),
    );
    cluster.kubectl.apply(&escaping).unwrap();
    let pod = cluster
        .wait_pod("sub-path-escape", "refused its subPath", MINUTE, |p| {
            waiting(p).is_some_and(|(reason, _)| reason == "CreateContainerConfigError")
                || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await
        .unwrap();
    let summary = status_summary(&pod);
    assert!(
        summary.contains("leads outside its volume"),
        "the status names the escape: {summary}"
    );
    let failed = cluster
        .wait_event("sub-path-escape", "Failed", MINUTE)
        .await
        .unwrap();
    assert!(failed.contains("leads outside its volume"), "{failed}");

    // An emptyDir written past its sizeLimit: the pod is evicted, as the kubelet does.
    let filling = wasm_pod(
        "fills-scratch",
        &format!(
            r#"  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: reader
    image: {image}
    args: ["--fill", "/scratch/big=2048", "--every", "1", "/scratch"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - {{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}
"#
        ),
    );
    cluster.kubectl.apply(&filling).unwrap();
    let pod = cluster
        .wait_pod("fills-scratch", "evicted", MINUTE, |p| {
            p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
        })
        .await
        .unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(
        status.message.as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\".")
    );
    cluster
        .wait_event("fills-scratch", "Evicted", MINUTE)
        .await
        .unwrap();

    // A volume type the node cannot provide is named, and the pod is held, not run blind.
    let unsupported = wasm_pod(
        "wants-nfs",
        &format!(
            r#"  automountServiceAccountToken: false
  containers:
  - name: reader
    image: {image}
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, nfs: {{server: 127.0.0.1, path: /exports}}}}
"#
        ),
    );
    cluster.kubectl.apply(&unsupported).unwrap();
    let message = cluster
        .wait_event("wants-nfs", "FailedMount", MINUTE)
        .await
        .unwrap();
    assert!(
        message.contains("cannot mount this volume type") && message.contains("nfs"),
        "{message}"
    );
    assert!(
        cluster
            .node
            .log_tail(200)
            .lines()
            .all(|l| !l.contains("panicked"))
    );
}
