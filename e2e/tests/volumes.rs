//! Volumes on a wasmlet node against the real control plane: every volume type with
//! `items`, `subPath`, file modes and read-only mounts as a P2 component sees them,
//! ConfigMap and Secret updates reaching a running pod, one pod unable to see another's
//! volumes, and the bad inputs (escapes through paths, symlinks and subPath, a Secret that
//! does not exist yet, a hostPath whose type does not match the host, an emptyDir past its
//! size limit, an unsupported type).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::status::{phase, waiting};
use e2e::{WasmCluster, WasmletOptions, status_summary, wait_for, wasm_pod};

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

/// Where the node keeps volume `volume` of pod `uid` (`<data-dir>/pods/<uid>/volumes/…`).
/// A volume's directory as the node's agent sees it: through its root, because it runs in a
/// mount namespace of its own, where Secret and projected volumes are tmpfs mounts.
fn volume_dir(cluster: &WasmCluster, uid: &str, volume: &str) -> PathBuf {
    agents_view(cluster, &node_volume_dir(cluster, uid, volume))
}

/// A volume's directory on the node, by its path.
fn node_volume_dir(cluster: &WasmCluster, uid: &str, volume: &str) -> PathBuf {
    cluster
        .node
        .data_dir()
        .join("pods")
        .join(uid)
        .join("volumes")
        .join(volume)
}

/// `path` as the node's agent sees it.
fn agents_view(cluster: &WasmCluster, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    PathBuf::from(format!("/proc/{}/root", cluster.node.pid())).join(relative)
}

/// The mount points in the mount table `mountinfo` that are a tmpfs.
fn tmpfs_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|line| line.contains(" - tmpfs "))
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// The permission bits of `path` on the host, following the volume's `..data` links as the
/// guest does; `None` when it does not exist.
fn mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Waits until `pod` is evicted, and checks it failed with the kubelet's `message`.
async fn assert_evicted(cluster: &WasmCluster, pod: &str, message: &str) {
    let pod = cluster
        .wait_pod(pod, "evicted", MINUTE, |p| {
            p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
        })
        .await
        .unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.message.as_deref(), Some(message));
}

/// The pod's UID, which names its directory on the node.
fn uid(cluster: &WasmCluster, pod: &str) -> String {
    cluster
        .pod(pod)
        .unwrap()
        .metadata
        .uid
        .expect("a pod read from the API has a UID")
}

/// Waits until at least `count` events with `reason` have been recorded about `pod`, and
/// returns their messages, oldest first. Repeats the node wrote as one event (it aggregates
/// those that wait together) count each time.
async fn wait_events(
    cluster: &WasmCluster,
    pod: &str,
    reason: &str,
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let what = format!("{count} {reason} events");
    cluster
        .wait_events(pod, &what, timeout, |events| {
            let matching = events
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason));
            let recorded: usize = matching
                .clone()
                .map(|e| usize::try_from(e.count.unwrap_or(1)).unwrap_or(1))
                .sum();
            let messages: Vec<String> = matching
                .map(|e| e.message.clone().unwrap_or_default())
                .collect();
            (recorded >= count).then_some(messages)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn every_volume_type_is_mounted_updates_reach_the_pod_and_pods_cannot_see_each_other() {
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
            "--from-literal=user=admin",
        ])
        .unwrap();
    let paths = [
        "/etc/app/conf/greeting.txt",
        "/etc/app/level",
        "/etc/level",
        "/etc/secret/password",
        "/etc/secret/user",
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
      defaultMode: 0440
      items:
      - {{key: greeting, path: conf/greeting.txt, mode: 0400}}
      - {{key: level, path: conf/level}}
  - name: whole-config
    configMap: {{name: app-config}}
  - name: secret
    secret:
      secretName: app-secret
      defaultMode: 0440
      items: [{{key: password, path: password}}, {{key: user, path: user, mode: 0600}}]
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
            "/etc/secret/user: admin",
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
            // The round's last paths, whatever they show: the log is read while the guest
            // writes it, so without them the checks below could see half a round.
            "/host/escape/hostname: ",
            "/etc/app/../../../../../etc/hostname: ",
            "/scratch/../../host/host.txt: ",
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

    // Modes, read on the node (a WASI guest cannot see them): an item's `mode` wins over the
    // volume's `defaultMode`, which covers the items that name none, for configMaps and
    // Secrets alike. Each value differs from the 0644 default, so an ignored one shows.
    let first = uid(&cluster, "volumes");
    let modes = |what: &str| {
        for (file, wanted) in [
            ("config/conf/greeting.txt", 0o400),
            ("config/conf/level", 0o440),
            ("secret/password", 0o440),
            ("secret/user", 0o600),
        ] {
            let (volume, rest) = file.split_once('/').unwrap();
            let path = volume_dir(&cluster, &first, volume).join(rest);
            assert_eq!(
                mode(&path),
                Some(wanted),
                "{what}: mode of {}",
                path.display()
            );
        }
    };
    modes("as first written");

    // Secret and projected volumes (the latter holds the token) are in memory, each on a tmpfs
    // of its own that exists only in the agent's mount namespace; a ConfigMap and an emptyDir
    // are on disk.
    let in_memory = |uid: &str, volume: &str| {
        let mounts =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", cluster.node.pid())).unwrap();
        let point = node_volume_dir(&cluster, uid, volume).display().to_string();
        tmpfs_mounts(&mounts).contains(&point)
    };
    if rustix::process::geteuid().is_root() {
        for volume in ["secret", "projected"] {
            assert!(in_memory(&first, volume), "{volume} is not on a tmpfs");
            let point = node_volume_dir(&cluster, &first, volume)
                .display()
                .to_string();
            let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(
                !tmpfs_mounts(&ours).contains(&point),
                "{volume}'s tmpfs is visible outside the agent"
            );
        }
        for volume in ["config", "scratch"] {
            assert!(!in_memory(&first, volume), "{volume} is on a tmpfs");
        }
    } else {
        eprintln!("skipped: the tmpfs checks need wasmlet to run as root");
    }

    // A second pod on the node, with volumes of the same names, tries every way to the first
    // pod's files: the first pod's own guest paths, the host paths of its volume directories
    // on the node, and `..` out of its root and out of each of its own mounts up to the
    // node's pods directory. It sees none of them, while its own volumes work.
    let data_dir = cluster.node.data_dir().display().to_string();
    let first_scratch = volume_dir(&cluster, &first, "scratch");
    let foreign = [
        "/etc/app/conf/greeting.txt".to_string(),
        "/host/host.txt".to_string(),
        node_volume_dir(&cluster, &first, "scratch")
            .join("note")
            .display()
            .to_string(),
        node_volume_dir(&cluster, &first, "secret")
            .join("password")
            .display()
            .to_string(),
        format!("{data_dir}/pods/{first}/volumes"),
        format!("{data_dir}/pods"),
        // Root is <pods>/<uid>/rootfs/reader-0; a volume is <pods>/<uid>/volumes/<name>.
        format!("/../../../{first}/volumes/scratch/note"),
        format!("/scratch/../../../{first}/volumes/scratch/note"),
        format!("/etc/secret/../../../{first}/volumes/secret/password"),
        format!("/../../../{first}/rootfs"),
    ];
    let overwrite = format!("/scratch/../../../{first}/volumes/scratch/note");
    let args: Vec<String> = [
        "--write".to_string(),
        "/scratch/note=kept by the neighbour".to_string(),
        "--write".to_string(),
        format!("{overwrite}=overwritten by the neighbour"),
        "/scratch/note".to_string(),
        "/etc/secret/password".to_string(),
    ]
    .into_iter()
    .chain(foreign.iter().cloned())
    .collect();
    let neighbour = wasm_pod(
        "neighbour",
        &format!(
            r#"  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: reader
    image: {image}
    args: {args:?}
    volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
    - {{name: secret, mountPath: /etc/secret}}
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: secret, secret: {{secretName: app-secret}}}}
"#
        ),
    );
    cluster.kubectl.apply(&neighbour).unwrap();
    let refused: Vec<String> = foreign.iter().map(|p| format!("{p}: error")).collect();
    let cannot_write = format!("cannot write {overwrite}");
    let wanted: Vec<&str> = [
        "wrote /scratch/note",
        "/scratch/note: kept by the neighbour",
        "/etc/secret/password: hunter2",
        cannot_write.as_str(),
    ]
    .into_iter()
    .chain(refused.iter().map(String::as_str))
    .collect();
    let log = wait_log(&cluster, "neighbour", &wanted, MINUTE).await;
    // Some paths are suffixes of others (`/../…` of `/scratch/../…`), so each must begin its
    // own line with the error; containing it is not enough.
    for path in &foreign {
        let refused = format!("{path}: error");
        assert!(
            log.lines().any(|line| line.starts_with(&refused)),
            "the neighbour reached {path}:\n{log}"
        );
    }
    assert!(
        !log.contains("written by the guest"),
        "the neighbour read the first pod's note:\n{log}"
    );
    // On the node, each pod has its own directory: neither note overwrote the other, and the
    // neighbour's volume of the same name has its own (default) modes.
    let second = uid(&cluster, "neighbour");
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_to_string(first_scratch.join("note")).unwrap(),
        "written by the guest"
    );
    let second_dir = |volume: &str| volume_dir(&cluster, &second, volume);
    assert_eq!(
        std::fs::read_to_string(second_dir("scratch").join("note")).unwrap(),
        "kept by the neighbour"
    );
    assert_eq!(mode(&second_dir("secret").join("password")), Some(0o644));

    // Updates reach the running pod through the directory mounts (subPath mounts keep what
    // they had, as with the kubelet): a ConfigMap's and a Secret's, each within a few sync
    // periods.
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
    // A Secret's data is base64: "hunter3".
    cluster
        .kubectl
        .run(&[
            "patch",
            "secret",
            "app-secret",
            "-p",
            r#"{"data":{"password":"aHVudGVyMw=="}}"#,
        ])
        .unwrap();
    let log = wait_log(
        &cluster,
        "volumes",
        &[
            "/etc/app/conf/greeting.txt: hello again",
            "/etc/secret/password: hunter3",
        ],
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "configMap and Secret updates seen by the pod after {:.2} s (sync period 1 s)",
        updated_at.elapsed().as_secs_f64()
    );
    // The rewritten version keeps the modes the pod asked for.
    modes("after the updates");
    // The first pod went on reading its note every 0.5 s all along: the neighbour's write to
    // its own scratch never showed up there.
    assert!(
        !log.contains("kept by the neighbour") && !log.contains("overwritten by the neighbour"),
        "the neighbour's note reached the first pod:\n{log}"
    );
    let pod = cluster.pod("volumes").unwrap();
    assert_eq!(phase(&pod), "Running");

    // A deleted pod's in-memory volumes are unmounted with its files.
    if rustix::process::geteuid().is_root() {
        assert!(in_memory(&second, "secret"));
        cluster
            .kubectl
            .run(&["delete", "pod", "neighbour", "--wait=false"])
            .unwrap();
        wait_for("the neighbour's secret tmpfs to go", MINUTE, || async {
            Ok((!in_memory(&second, "secret")).then_some(()))
        })
        .await
        .unwrap();
    }
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
            waiting(p, "reader").is_some_and(|(reason, message)| {
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
            waiting(p, "reader").is_some_and(|(reason, _)| reason == "CreateContainerConfigError")
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
    assert_evicted(
        &cluster,
        "fills-scratch",
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\".",
    )
    .await;
    cluster
        .wait_event("fills-scratch", "Evicted", MINUTE)
        .await
        .unwrap();

    // A container that writes past its ephemeral-storage limit in its own writable root is
    // evicted, with the kubelet's message naming it and the limit as written. Its neighbour's
    // roomy limit keeps the pod's total (the sum of the limits) unexceeded, so the container's
    // own limit is the one that bites.
    let filling_root = wasm_pod(
        "fills-root",
        &format!(
            r#"  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: writer
    image: {image}
    args: ["--fill", "/big=2048", "--every", "1", "/"]
    resources: {{limits: {{ephemeral-storage: 1Mi}}}}
  - name: idle
    image: {image}
    args: ["--every", "1", "/"]
    resources: {{limits: {{ephemeral-storage: 100Mi}}}}
"#
        ),
    );
    cluster.kubectl.apply(&filling_root).unwrap();
    assert_evicted(
        &cluster,
        "fills-root",
        "Container writer exceeded its local ephemeral storage limit \"1Mi\". ",
    )
    .await;

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

    // A hostPath whose `type` does not match the host: a directory asked for as a File, and
    // a missing path asked for as a Directory (which, unlike DirectoryOrCreate, must not be
    // made). Each pod is held in ContainerCreating with the kubelet's FailedMount wording,
    // retried, and never pulled or started; the second runs once its directory appears.
    let hosts = tempfile::tempdir().unwrap();
    let missing = hosts.path().join("missing");
    let host_path_pod = |name: &str, path: &Path, type_: &str| {
        wasm_pod(
            name,
            &format!(
                r#"  automountServiceAccountToken: false
  containers:
  - name: reader
    image: {image}
    args: ["--every", "1", "/data/marker"]
    volumeMounts: [{{name: h, mountPath: /data}}]
  volumes:
  - {{name: h, hostPath: {{path: {}, type: {type_}}}}}
"#,
                path.display()
            ),
        )
    };
    cluster
        .kubectl
        .apply(&host_path_pod("dir-as-file", hosts.path(), "File"))
        .unwrap();
    cluster
        .kubectl
        .apply(&host_path_pod("missing-dir", &missing, "Directory"))
        .unwrap();
    for (pod_name, expected) in [
        (
            "dir-as-file",
            format!(
                "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} is not a file",
                hosts.path().display()
            ),
        ),
        (
            "missing-dir",
            format!(
                "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} is not a directory",
                missing.display()
            ),
        ),
    ] {
        // Two events: the failure was retried, and the pod is still held after it.
        let messages = wait_events(&cluster, pod_name, "FailedMount", 2, MINUTE).await;
        assert!(messages.iter().all(|m| *m == expected), "{messages:?}");
        let pod = cluster
            .wait_pod(pod_name, "held by its hostPath type", MINUTE, |p| {
                waiting(p, "reader").is_some_and(|(reason, message)| {
                    reason == "ContainerCreating" && message == expected
                })
            })
            .await
            .unwrap();
        assert_eq!(phase(&pod), "Pending", "{}", status_summary(&pod));
        let events = cluster.events(pod_name).unwrap();
        assert!(
            events
                .iter()
                .all(|e| !matches!(e.reason.as_deref(), Some("Pulling" | "Pulled" | "Started"))),
            "a pod whose volume failed went on: {:?}",
            events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
        );
    }
    assert!(
        !missing.exists(),
        "type: Directory must not create the path"
    );
    // The mount is retried with back-off, so the pod starts once the host has the directory.
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("marker"), "on the host").unwrap();
    wait_log(
        &cluster,
        "missing-dir",
        &["/data/marker: on the host"],
        MINUTE,
    )
    .await;
    assert!(
        cluster
            .node
            .log_tail(200)
            .lines()
            .all(|l| !l.contains("panicked"))
    );
}

#[tokio::test]
async fn a_configmap_change_reaches_a_running_pods_volume_at_once_through_its_watch() {
    // The default sync frequency (1 m): only the ConfigMap's watch can bring the change in
    // time.
    let cluster = WasmCluster::start_with_options(WasmletOptions::named("vol-watched"))
        .await
        .unwrap();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    cluster
        .kubectl
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: live\ndata:\n  level: one\n")
        .unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "watcher",
            &format!(
                "  volumes: [{{name: live, configMap: {{name: live}}}}]\n  containers:\n  - name: app\n    image: {image}\n    volumeMounts: [{{name: live, mountPath: /live}}]\n"
            ),
        ))
        .unwrap();
    let pod = cluster
        .wait_pod("watcher", "Running", MINUTE, |p| phase(p) == "Running")
        .await
        .unwrap();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let file = cluster
        .node
        .data_dir()
        .join("pods")
        .join(&uid)
        .join("volumes/live/level");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");

    cluster
        .kubectl
        .run(&[
            "patch",
            "configmap",
            "live",
            "-p",
            r#"{"data":{"level":"two"}}"#,
        ])
        .unwrap();
    let patched = Instant::now();
    // Issue 12's bound: within 1 s of the API accepting the change (measured p99 11 to 18 ms).
    wait_for(
        "the new value in the pod's volume",
        Duration::from_secs(1),
        || {
            let now = std::fs::read_to_string(&file).unwrap_or_default();
            async move { Ok((now == "two").then_some(())) }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "ConfigMap change in the pod's volume {:.0} ms after the patch returned",
        patched.elapsed().as_secs_f64() * 1e3
    );
}
