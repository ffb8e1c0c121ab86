//! Pod volumes set up on disk, with ConfigMaps, Secrets and tokens served by a tower-test
//! mock of the API server.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, HostPathVolumeSource,
    PodSpec, ProjectedVolumeSource, Secret, SecretVolumeSource, ServiceAccountTokenProjection,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;

use super::*;
use crate::pod::env::ObjectReads;
use crate::store::LocalStore;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What the mock API server holds: the `config` ConfigMap's data (changeable), the
/// `creds` Secret, and a counter of token requests.
#[derive(Clone, Default)]
struct Objects {
    config: Arc<Mutex<Option<String>>>,
    tokens_issued: Arc<Mutex<u32>>,
    /// Token requests still to refuse, and with what status code and body, as an API
    /// server refuses them before it has seen the pod bound to the node.
    refusals: Arc<Mutex<(u32, u16, Vec<u8>)>>,
    /// When set, token answers wait for it: an API server slow to answer.
    token_gate: Arc<Mutex<Option<Arc<tokio::sync::Notify>>>>,
}

fn client(objects: Objects) -> kube::Client {
    let (service, mut handle): (_, Handle) =
        tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let (status, body) = match path.as_str() {
                "/api/v1/namespaces/ns/configmaps/config" => {
                    match objects.config.lock().unwrap().clone() {
                        Some(value) => (
                            200,
                            serde_json::to_vec(&ConfigMap {
                                data: Some([("app.conf".to_string(), value)].into()),
                                ..Default::default()
                            })
                            .unwrap(),
                        ),
                        None => (404, not_found()),
                    }
                }
                "/api/v1/namespaces/ns/secrets/creds" => (
                    200,
                    serde_json::to_vec(&Secret {
                        data: Some(
                            [("password".to_string(), ByteString(b"hunter2".to_vec()))].into(),
                        ),
                        ..Default::default()
                    })
                    .unwrap(),
                ),
                "/api/v1/namespaces/ns/serviceaccounts/robot/token"
                    if objects.refusals.lock().unwrap().0 > 0 =>
                {
                    let mut refusals = objects.refusals.lock().unwrap();
                    refusals.0 -= 1;
                    (refusals.1, refusals.2.clone())
                }
                "/api/v1/namespaces/ns/serviceaccounts/robot/token" => {
                    let mut issued = objects.tokens_issued.lock().unwrap();
                    *issued += 1;
                    let answer = TokenRequest {
                        status: Some(TokenRequestStatus {
                            token: format!("token-{issued}"),
                            expiration_timestamp: Time(
                                jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600),
                            ),
                        }),
                        ..Default::default()
                    };
                    (201, serde_json::to_vec(&answer).unwrap())
                }
                _ => (404, not_found()),
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(body))
                .unwrap();
            let gate = objects.token_gate.lock().unwrap().clone();
            match gate {
                Some(gate) if path.ends_with("/token") => {
                    tokio::spawn(async move {
                        gate.notified().await;
                        send.send_response(response);
                    });
                }
                _ => send.send_response(response),
            }
        }
    });
    kube::Client::new(service, "ns")
}

/// One store for the tests of this module: what they read through it is keyed by pod UID.
fn store() -> &'static LocalStore {
    static STORE: std::sync::LazyLock<LocalStore> = std::sync::LazyLock::new(|| {
        let dir = std::env::temp_dir().join(format!("wasmlet-volume-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        LocalStore::open(&dir).expect("a store in the temp dir")
    });
    &STORE
}

fn metrics() -> &'static crate::metrics::AgentMetrics {
    static METRICS: std::sync::LazyLock<crate::metrics::AgentMetrics> =
        std::sync::LazyLock::new(Default::default);
    &METRICS
}

fn context(client: &kube::Client) -> VolumeContext<'_> {
    VolumeContext {
        reads: ObjectReads {
            client: Some(client),
            watched: None,
            store: store(),
        },
        allocatable: Capacity::default(),
        metrics: metrics(),
        secrets_in_memory: false,
    }
}

fn forbidden(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403, "message": message,
    }))
    .unwrap()
}

fn not_found() -> Vec<u8> {
    br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#.to_vec()
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Default::default()
    }
}

fn pod(volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("robot".into()),
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn config_volume() -> Volume {
    Volume {
        config_map: Some(ConfigMapVolumeSource {
            name: "config".into(),
            ..Default::default()
        }),
        ..volume("config")
    }
}

fn mount(name: &str, path: &str, sub_path: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub_path.map(str::to_string),
        ..Default::default()
    }
}

#[tokio::test]
async fn config_maps_are_written_read_only_and_updates_are_projected() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.config.lock().unwrap() = Some("v1".into());
    let client = client(objects.clone());
    let ctx = context(&client);
    let pod = pod(vec![config_volume()]);
    let mut volumes = PodVolumes::new(dir.path());
    volumes.set_up(&ctx, &pod).await.unwrap();

    let container = Container {
        volume_mounts: Some(vec![mount("config", "/etc/app/", None)]),
        ..Default::default()
    };
    let mounts = volumes
        .mounts_for(&container, &[], &dir.path().join("staging"))
        .await
        .unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].guest_path, "/etc/app");
    assert!(mounts[0].read_only, "API-backed volumes are read-only");
    let file = mounts[0].host_path.join("app.conf");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "v1");

    assert!(volumes.refresh(&ctx, &pod).await.is_empty());
    *objects.config.lock().unwrap() = Some("v2".into());
    assert_eq!(
        volumes.refresh(&ctx, &pod).await,
        vec!["config".to_string()]
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "v2");

    // A source that vanished leaves the files as they were.
    *objects.config.lock().unwrap() = None;
    assert!(volumes.refresh(&ctx, &pod).await.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "v2");
}

#[tokio::test]
async fn a_missing_secret_is_a_mount_error_unless_optional() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(Objects::default());
    let ctx = context(&client);
    let secret = |name: &str, optional| Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.into()),
            optional,
            ..Default::default()
        }),
        ..volume("s")
    };
    let mut volumes = PodVolumes::new(dir.path());
    let err = volumes
        .set_up(&ctx, &pod(vec![secret("absent", None)]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"s\" : secret \"absent\" not found"
    );
    volumes
        .set_up(&ctx, &pod(vec![secret("absent", Some(true))]))
        .await
        .unwrap();
    volumes
        .set_up(&ctx, &pod(vec![secret("creds", None)]))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/s/password")).unwrap(),
        "hunter2"
    );
}

/// A pod's volumes, set up under a temporary directory: the ConfigMap `config` (key
/// `app.conf`) and the emptyDir `scratch`.
async fn config_and_scratch() -> (tempfile::TempDir, PodVolumes) {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.config.lock().unwrap() = Some("conf".into());
    let client = client(objects);
    let ctx = context(&client);
    let scratch = Volume {
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..volume("scratch")
    };
    let pod = pod(vec![config_volume(), scratch]);
    let mut volumes = PodVolumes::new(dir.path());
    volumes.set_up(&ctx, &pod).await.unwrap();
    (dir, volumes)
}

#[tokio::test]
async fn a_read_only_file_mount_beside_a_writable_one_is_refused_not_made_writable() {
    let (dir, volumes) = config_and_scratch().await;
    std::fs::write(dir.path().join("volumes/scratch/notes"), "n").unwrap();
    let container = Container {
        volume_mounts: Some(vec![
            // A ConfigMap is read-only; the emptyDir file is writable.
            mount("config", "/etc/app.conf", Some("app.conf")),
            mount("scratch", "/etc/notes", Some("notes")),
        ]),
        ..Default::default()
    };
    let err = volumes
        .mounts_for(&container, &[], &dir.path().join("staging"))
        .await
        .unwrap_err();
    assert!(
        err.contains("read-only file /etc/app.conf and the writable file /etc/notes"),
        "{err}"
    );
}

#[tokio::test]
async fn file_sub_paths_are_staged_and_directories_mount_in_place() {
    let (dir, volumes) = config_and_scratch().await;
    let container = Container {
        volume_mounts: Some(vec![
            mount("config", "/etc/app.conf", Some("app.conf")),
            mount("scratch", "/work", None),
            VolumeMount {
                sub_path_expr: Some("cache/$(POD)".into()),
                ..mount("scratch", "/cache", None)
            },
        ]),
        ..Default::default()
    };
    let env = [("POD".to_string(), "p".to_string())];
    let staging = dir.path().join("staging");
    let mounts = volumes
        .mounts_for(&container, &env, &staging)
        .await
        .unwrap();
    let by_path = |p: &str| mounts.iter().find(|m| m.guest_path == p).unwrap();
    assert!(!by_path("/work").read_only);
    // A subPath is handed over as the directory the kubelet resolved and holds open.
    let cache = by_path("/cache");
    assert!(cache.held.is_some());
    assert!(
        std::fs::read_link(&cache.host_path)
            .unwrap()
            .ends_with("scratch/cache/p")
    );
    let etc = by_path("/etc");
    assert!(etc.read_only);
    assert!(etc.host_path.starts_with(&staging));
    let names: Vec<_> = std::fs::read_dir(&etc.host_path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.conf"], "only the mounted file is visible");
}

#[tokio::test]
async fn host_paths_are_checked_and_sub_paths_cannot_escape_them() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink("/etc", host.join("escape")).unwrap();
    let client = client(Objects::default());
    let ctx = context(&client);
    let host_volume = |type_: &str| Volume {
        host_path: Some(HostPathVolumeSource {
            path: host.display().to_string(),
            type_: Some(type_.into()),
        }),
        ..volume("host")
    };
    let mut volumes = PodVolumes::new(dir.path());
    let err = volumes
        .set_up(&ctx, &pod(vec![host_volume("File")]))
        .await
        .unwrap_err();
    assert!(err.message.contains("is not a file"), "{err}");
    volumes
        .set_up(&ctx, &pod(vec![host_volume("Directory")]))
        .await
        .unwrap();
    let container = Container {
        name: "c".into(),
        volume_mounts: Some(vec![mount("host", "/host", Some("escape"))]),
        ..Default::default()
    };
    let err = volumes
        .mounts_for(&container, &[], &dir.path().join("staging"))
        .await
        .unwrap_err();
    assert!(err.contains("leads outside its volume"), "{err}");
    let climbing = Container {
        volume_mounts: Some(vec![mount("host", "/a/../../etc", None)]),
        ..Default::default()
    };
    assert!(
        volumes
            .mounts_for(&climbing, &[], &dir.path().join("staging"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn projected_tokens_are_requested_once_and_renewed_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let client = client(objects.clone());
    let ctx = context(&client);
    let token = VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            expiration_seconds: Some(3600),
            ..token_source().service_account_token.unwrap()
        }),
        ..Default::default()
    };
    let pod = pod(vec![projected("sa", vec![token])]);
    let mut volumes = PodVolumes::new(dir.path());
    volumes.set_up(&ctx, &pod).await.unwrap();
    let token = dir.path().join("volumes/sa/token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "token-1");
    assert!(volumes.refresh(&ctx, &pod).await.is_empty());
    assert_eq!(*objects.tokens_issued.lock().unwrap(), 1);

    // Make the token look old: the next refresh asks for a new one and writes it.
    for issued in volumes.tokens.values_mut() {
        *issued = token::IssuedToken::aged(issued, jiff::SignedDuration::from_secs(3000));
    }
    assert_eq!(volumes.refresh(&ctx, &pod).await, vec!["sa".to_string()]);
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "token-2");
}

/// A token volume first in the spec and more ConfigMap volumes after it than are set up at
/// once: the last ConfigMap's files are written while the token request is still unanswered.
#[tokio::test]
async fn a_volume_does_not_wait_for_another_s_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.config.lock().unwrap() = Some("v1".into());
    let gate = Arc::new(tokio::sync::Notify::new());
    *objects.token_gate.lock().unwrap() = Some(gate.clone());
    let client = client(objects.clone());
    let ctx = context(&client);
    let mut volumes_of_pod = token_pod().spec.unwrap().volumes.unwrap();
    for n in 1..=VOLUMES_AT_ONCE {
        volumes_of_pod.push(Volume {
            name: format!("config-{n}"),
            ..config_volume()
        });
    }
    let pod = pod(volumes_of_pod);
    let mut volumes = PodVolumes::new(dir.path());
    let config_file = dir
        .path()
        .join(format!("volumes/config-{VOLUMES_AT_ONCE}/app.conf"));
    let config_written_first = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !config_file.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the ConfigMap volume waited for the token request"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            !dir.path().join("volumes/sa/token").exists(),
            "the token was not answered yet"
        );
        gate.notify_one();
    };
    let (set_up, ()) = tokio::join!(volumes.set_up(&ctx, &pod), config_written_first);
    set_up.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/sa/token")).unwrap(),
        "token-1"
    );
}

/// Every volume is attempted; the error is the first failure in the spec's order.
#[tokio::test]
async fn a_failed_volume_is_reported_and_the_others_are_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.config.lock().unwrap() = Some("v1".into());
    let client = client(objects);
    let absent = |name: &str| Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some("absent".into()),
            ..Default::default()
        }),
        ..volume(name)
    };
    let pod = pod(vec![absent("first"), config_volume(), absent("second")]);
    let mut volumes = PodVolumes::new(dir.path());
    let err = volumes.set_up(&context(&client), &pod).await.unwrap_err();
    assert_eq!(err.volume, "first");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/config/app.conf")).unwrap(),
        "v1"
    );
    assert!(
        volumes.volumes.contains_key("config"),
        "the set-up volume is kept"
    );
}

/// A token fetched for a volume whose other source is missing is kept: the retry, once the
/// source exists, does not ask the API server again.
#[tokio::test]
async fn a_token_is_kept_when_its_volume_fails_for_another_source() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let client = client(objects.clone());
    let ctx = context(&client);
    let api_access = projected("api-access", vec![token_source(), config_source()]);
    let pod = pod(vec![api_access]);
    let mut volumes = PodVolumes::new(dir.path());
    assert!(
        volumes.set_up(&ctx, &pod).await.is_err(),
        "the ConfigMap is missing"
    );
    *objects.config.lock().unwrap() = Some("v1".into());
    volumes.set_up(&ctx, &pod).await.unwrap();
    assert_eq!(*objects.tokens_issued.lock().unwrap(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/api-access/token")).unwrap(),
        "token-1"
    );
}

/// A projected volume kept in memory whose payload is larger than the tmpfs it is first
/// mounted with (before its payload is known): the tmpfs grows to hold it.
#[tokio::test]
async fn an_in_memory_volume_larger_than_its_first_tmpfs_is_written() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let big = "x".repeat(MEMORY_VOLUME_SIZE as usize + 1);
    *objects.config.lock().unwrap() = Some(big.clone());
    let client = client(objects);
    let ctx = VolumeContext {
        secrets_in_memory: true,
        ..context(&client)
    };
    let big_volume = projected("big", vec![config_source()]);
    let mut volumes = PodVolumes::new(dir.path());
    let set_up = volumes.set_up(&ctx, &pod(vec![big_volume])).await;
    let path = dir.path().join("volumes/big");
    let on_tmpfs = memory::is_tmpfs(&path);
    let written = std::fs::read_to_string(path.join("app.conf")).map(|f| f.len());
    memory::unmount_under(dir.path()).unwrap();
    set_up.unwrap();
    assert!(on_tmpfs.unwrap());
    assert_eq!(written.unwrap(), big.len());
}

/// A projected volume `name` of `sources`.
fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..Default::default()
        }),
        ..volume(name)
    }
}

/// The service account's token, at `token`.
fn token_source() -> VolumeProjection {
    VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            path: "token".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `config` ConfigMap's keys.
fn config_source() -> VolumeProjection {
    VolumeProjection {
        config_map: Some(k8s_openapi::api::core::v1::ConfigMapProjection {
            name: "config".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn token_pod() -> Pod {
    pod(vec![projected("sa", vec![token_source()])])
}

#[tokio::test]
async fn a_token_refused_while_the_api_server_catches_up_with_the_binding_is_asked_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.refusals.lock().unwrap() = (
        3,
        403,
        forbidden(
            r#"serviceaccounts "robot" is forbidden: User "system:node:edge" cannot create resource "serviceaccounts/token": no relationship found between node 'edge' and this object"#,
        ),
    );
    let client = client(objects.clone());
    let mut volumes = PodVolumes::new(dir.path());
    volumes
        .set_up(&context(&client), &token_pod())
        .await
        .expect("the fourth request gets the token, in the same set-up");
    assert_eq!(*objects.tokens_issued.lock().unwrap(), 1);
    assert_eq!(objects.refusals.lock().unwrap().0, 0);
}

#[tokio::test]
async fn a_token_refused_because_node_restriction_has_not_seen_the_pod_is_asked_again_at_once() {
    // NodeRestriction looks the pod up in its informer's cache, whose "not found" names
    // the resource in the singular: `kind: pod`, not the API's `pods`.
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.refusals.lock().unwrap() = (
        2,
        404,
        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pod \"p\" not found","reason":"NotFound","details":{"name":"p","kind":"pod"},"code":404}"#.to_vec(),
    );
    let client = client(objects.clone());
    let mut volumes = PodVolumes::new(dir.path());
    volumes
        .set_up(&context(&client), &token_pod())
        .await
        .expect("the third request gets the token, in the same set-up");
    assert_eq!(*objects.tokens_issued.lock().unwrap(), 1);
    assert_eq!(objects.refusals.lock().unwrap().0, 0);
}

#[tokio::test]
async fn a_token_refused_for_another_reason_fails_the_set_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    *objects.refusals.lock().unwrap() = (
        2,
        403,
        forbidden("serviceaccounts \"robot\" is forbidden: by policy"),
    );
    let client = client(objects.clone());
    let mut volumes = PodVolumes::new(dir.path());
    let err = volumes
        .set_up(&context(&client), &token_pod())
        .await
        .unwrap_err();
    assert!(err.message.contains("by policy"), "{err}");
    assert_eq!(
        objects.refusals.lock().unwrap().0,
        1,
        "asked once, not again"
    );
}

#[tokio::test]
async fn an_empty_dir_past_its_size_limit_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(Objects::default());
    let ctx = context(&client);
    let scratch = Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Ki".into())),
            ..Default::default()
        }),
        ..volume("scratch")
    };
    let mut volumes = PodVolumes::new(dir.path());
    volumes.set_up(&ctx, &pod(vec![scratch])).await.unwrap();
    assert_eq!(volumes.over_size_limit().await, None);
    std::fs::write(dir.path().join("volumes/scratch/big"), vec![0u8; 2048]).unwrap();
    assert_eq!(
        volumes.over_size_limit().await.as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Ki\".")
    );
}

#[test]
fn sub_path_expressions_expand_known_variables_only() {
    let env = [("A".to_string(), "x".to_string())];
    assert_eq!(expand("$(A)/$(B)/c", &env), "x/$(B)/c");
    assert_eq!(expand("plain", &env), "plain");
    assert_eq!(expand("open $(A", &env), "open $(A");
}
