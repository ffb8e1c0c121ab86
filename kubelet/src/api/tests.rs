//! The routes behind the real middleware, with the API server's reviews answered by a
//! tower-test mock: who gets in, and what the log and unsupported endpoints answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body as AxumBody;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::client::Body;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::auth::{PeerIdentity, User};
use super::*;
use crate::logs::{LogLimits, LogSink, Stream};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers every review: tokens `good` and `weak` are valid (only `good`'s user, and the
/// certificate user `admin`, are authorized); everything else is not. Each review asked
/// adds one to `asked`.
fn reviewing_client(asked: Arc<AtomicUsize>) -> kube::Client {
    let (service, mut handle): (_, Handle) =
        tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            asked.fetch_add(1, Ordering::SeqCst);
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if path.ends_with("/tokenreviews") {
                let mut review: TokenReview = serde_json::from_slice(&bytes).unwrap();
                let token = review.spec.token.clone().unwrap_or_default();
                let known = token == "good" || token == "weak";
                review.status = Some(TokenReviewStatus {
                    authenticated: Some(known),
                    user: known.then(|| UserInfo {
                        username: Some(format!("user-{token}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                serde_json::to_vec(&review).unwrap()
            } else {
                let mut review: SubjectAccessReview = serde_json::from_slice(&bytes).unwrap();
                let user = review.spec.user.clone().unwrap_or_default();
                let attrs = review.spec.resource_attributes.clone().unwrap();
                assert_eq!(attrs.resource.as_deref(), Some("nodes"));
                assert_eq!(attrs.name.as_deref(), Some("edge-1"));
                review.status = Some(SubjectAccessReviewStatus {
                    allowed: user == "admin" || user == "user-good",
                    ..Default::default()
                });
                serde_json::to_vec(&review).unwrap()
            };
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(body))
                    .unwrap(),
            );
        }
    });
    kube::Client::new(service, "default")
}

fn state(pods_dir: &std::path::Path) -> ApiState {
    ApiState {
        node_name: "edge-1".into(),
        pods: SharedPodState {
            pods_dir: pods_dir.to_path_buf(),
            ..Default::default()
        },
        gate: Arc::new(Gatekeeper::new(reviewing_client(Arc::default()), "edge-1")),
        rates: Default::default(),
        port_forwards: Default::default(),
    }
}

fn admin() -> PeerIdentity {
    PeerIdentity(Some(User {
        name: "admin".into(),
        groups: vec![],
        uid: None,
    }))
}

async fn call(
    state: &ApiState,
    path: &str,
    identity: Option<PeerIdentity>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut request = request.body(AxumBody::empty()).unwrap();
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
    }
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn callers_are_authenticated_then_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    assert_eq!(
        call(&state, "/healthz", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, "/healthz", None, Some("forged")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (code, body) = call(&state, "/pods", None, Some("weak")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "Forbidden (user=user-weak, verb=get, resource=nodes, subresource=proxy)"
    );
    assert_eq!(
        call(&state, "/healthz", None, Some("good")).await,
        (StatusCode::OK, "ok".into())
    );
    let (code, body) = call(&state, "/pods", Some(admin()), None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains(r#""kind":"PodList""#), "{body}");
    let unknown = PeerIdentity(Some(User {
        name: "someone".into(),
        groups: vec![],
        uid: None,
    }));
    assert_eq!(
        call(&state, "/healthz", Some(unknown), None).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn container_logs_answer_like_the_kubelet() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    state.pods.table.put("u1", pod);
    let logs = |q: &str| format!("/containerLogs/default/web/app{q}");
    let (code, body) = call(&state, &logs(""), Some(admin()), None).await;
    assert_eq!(
        (code, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "container \"app\" in pod \"web\" is waiting to start"
        )
    );

    let log_dir = dir.path().join("u1/logs/app");
    for (restart, line) in [(0, "first run\n"), (1, "second run\n")] {
        let (sink, writer) = LogSink::open(
            log_dir.join(format!("{restart}.log")),
            LogLimits::default(),
            &state.pods.logs,
        )
        .await
        .unwrap();
        sink.stream(Stream::Stdout)
            .write_all(line.as_bytes())
            .await
            .unwrap();
        drop(sink);
        writer.await.unwrap();
    }
    assert_eq!(
        call(&state, &logs(""), Some(admin()), None).await,
        (StatusCode::OK, "second run\n".into())
    );
    assert_eq!(
        call(&state, &logs("?previous=true"), Some(admin()), None).await,
        (StatusCode::OK, "first run\n".into())
    );
    // Following a finished instance returns what there is and ends.
    assert_eq!(
        call(&state, &logs("?follow=true"), Some(admin()), None).await,
        (StatusCode::OK, "second run\n".into())
    );
    let (code, body) = call(&state, &logs("?tailLines=-1"), Some(admin()), None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("tailLines"), "{body}");
    let (code, body) = call(
        &state,
        "/containerLogs/default/web/nope",
        Some(admin()),
        None,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "container \"nope\" is not in pod \"web\""
        )
    );
    let (code, _) = call(
        &state,
        "/containerLogs/default/ghost/app",
        Some(admin()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn exec_says_it_is_not_supported_for_wasm_pods() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let (code, body) = call(
        &state,
        "/exec/default/web/app?command=sh",
        Some(admin()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 400);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("not supported for Wasm pods"),
        "{body}"
    );
}

/// `kubectl port-forward`'s handshake, through the API server, for `default/{pod}`.
async fn forward(state: &ApiState, pod: &str) -> (StatusCode, String) {
    let mut request = Request::post(format!("/portForward/default/{pod}"))
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .body(AxumBody::empty())
        .unwrap();
    request.extensions_mut().insert(admin());
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn port_forward_wants_the_handshake_and_a_running_pod_on_this_node() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    // A plain request is not the handshake.
    let (code, body) = call(&state, "/portForward/default/web", Some(admin()), None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("missing upgrade headers"), "{body}");

    let (code, body) = forward(&state, "web").await;
    assert_eq!(
        (code, body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "pod \"web\" in namespace \"default\" is not on this node"
        )
    );
    // On this node but not running: its ports may be another pod's by now.
    let mut pod = Pod {
        metadata: kube::api::ObjectMeta {
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Succeeded".into()),
        pod_ip: Some("127.0.0.1".into()),
        ..Default::default()
    });
    state.pods.table.put("u1", pod);
    let (code, body) = forward(&state, "web").await;
    assert_eq!(
        (code, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "unable to forward port because pod is not running. Current status=Succeeded"
        )
    );

    // Running, but every session slot is taken: refused before the upgrade.
    let state = ApiState {
        port_forwards: PortForwardSessions::new(0),
        ..state
    };
    state.pods.table.set_status(
        "u1",
        k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.0.0.1".into()),
            ..Default::default()
        },
    );
    let (code, body) = forward(&state, "web").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("too many port-forward sessions"), "{body}");
    let state = ApiState {
        port_forwards: PortForwardSessions::new(1),
        ..state
    };
    assert_eq!(
        forward(&state, "web").await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

#[tokio::test]
async fn stats_list_running_containers_with_their_usage() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let mut pod = Pod::default();
    pod.metadata.namespace = Some("default".into());
    pod.metadata.name = Some("web".into());
    pod.metadata.uid = Some("u1".into());
    state.pods.table.put("u1", pod);
    let usage = Arc::new(crate::usage::ContainerUsage::default());
    usage.set_memory_bytes(3 << 20);
    state.pods.table.container_started("u1", "app", usage);
    let (code, body) = call(&state, "/stats/summary", Some(admin()), None).await;
    assert_eq!(code, StatusCode::OK);
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], "edge-1");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let pod = &summary["pods"][0];
    assert_eq!(pod["podRef"]["name"], "web");
    assert_eq!(pod["containers"][0]["name"], "app");
    assert_eq!(pod["memory"]["workingSetBytes"], 3 << 20);
    let (code, body) = call(&state, "/metrics/resource", Some(admin()), None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        body.contains(r#"pod_memory_working_set_bytes{namespace="default",pod="web"} 3145728"#),
        "{body}"
    );
}

#[tokio::test]
async fn answers_are_remembered_so_a_scraper_costs_one_review_per_ttl() {
    let asked = Arc::new(AtomicUsize::new(0));
    let gate = Gatekeeper::new(reviewing_client(asked.clone()), "edge-1");
    let stats = super::auth::Attributes::of(&http::Method::GET, "/stats/summary");
    for _ in 0..3 {
        let user = gate.review_token("good").await.unwrap().unwrap();
        assert!(gate.allowed(&user, &stats).await.unwrap());
        assert_eq!(gate.review_token("made-up").await.unwrap(), None);
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3,
        "one TokenReview per token and one SubjectAccessReview, each asked once"
    );
    let weak = gate.review_token("weak").await.unwrap().unwrap();
    assert!(!gate.allowed(&weak, &stats).await.unwrap());
    assert!(!gate.allowed(&weak, &stats).await.unwrap());
    assert_eq!(
        asked.load(Ordering::SeqCst),
        5,
        "a denial is remembered too"
    );
}

#[tokio::test]
async fn a_flood_of_made_up_tokens_costs_the_api_server_a_bounded_number_of_reviews() {
    let asked = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let state = ApiState {
        gate: Arc::new(Gatekeeper::new(reviewing_client(asked.clone()), "edge-1")),
        ..state(dir.path())
    };
    let mut throttled = 0;
    for n in 0..200 {
        let (code, body) = call(&state, "/healthz", None, Some(&format!("made-up-{n}"))).await;
        match code {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(body.contains("too many new bearer tokens"), "{body}");
                throttled += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let reviews = asked.load(Ordering::SeqCst);
    // The burst, plus what the rate refills while the loop runs (well under a second).
    assert!(
        (20..=40).contains(&reviews),
        "{reviews} reviews for 200 tokens"
    );
    assert_eq!(reviews + throttled, 200);
    // A token already answered is still answered from the cache, throttle or not.
    assert_eq!(
        call(&state, "/healthz", None, Some("made-up-0")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(asked.load(Ordering::SeqCst), reviews);
}
