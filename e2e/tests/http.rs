//! Outbound HTTP from Wasm components end to end: the http-client demo against a server this
//! test runs on 127.0.0.1, behind the pod annotations `alpha.wasi.krustlet.dev/allowed-domains`
//! and `alpha.wasi.krustlet.dev/max-concurrent-requests`; and the status a malformed
//! annotation gives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::demos::push_demo;
use e2e::status::{container, phase};
use e2e::{WasmCluster, WasmletOptions, wasm_pod};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStateWaiting, Pod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MINUTE: Duration = Duration::from_secs(60);
/// The first pod of a node waits for the component to be compiled, which a debug build of
/// the node takes tens of seconds for (about 25 s on a 2-core machine).
const FIRST_POD: Duration = Duration::from_secs(180);
const BODY: &str = "hello from the test server";
/// How long the server holds a request whose path starts with `/slow/`, so that requests
/// overlap and the bound on requests in flight shows.
const SLOW: Duration = Duration::from_millis(300);
const ALLOWED_DOMAINS: &str = "alpha.wasi.krustlet.dev/allowed-domains";
const MAX_CONCURRENT: &str = "alpha.wasi.krustlet.dev/max-concurrent-requests";

/// What the server saw, per first path segment (`/slow/3` counts under `slow`), so pods
/// running side by side are told apart.
#[derive(Default)]
struct Seen {
    requests: HashMap<String, usize>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

/// A plain HTTP/1.1 server on 127.0.0.1 answering every request with [`BODY`]. Dropping it
/// stops it.
struct TestServer {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        Ok(Self { port, seen, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self, group: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.requests.get(group).copied().unwrap_or(0)
    }

    fn max_in_flight(&self, group: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.max_in_flight.get(group).copied().unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head, counts it under its group, holds `/slow/` ones for [`SLOW`],
/// answers and closes.
async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let group = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen.requests.entry(group.clone()).or_default() += 1;
        let now = {
            let n = seen.in_flight.entry(group.clone()).or_default();
            *n += 1;
            *n
        };
        let max = seen.max_in_flight.entry(group.clone()).or_default();
        *max = (*max).max(now);
    }
    if path.starts_with("/slow/") {
        tokio::time::sleep(SLOW).await;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = seen.in_flight.get_mut(&group) {
        *n -= 1;
    }
}

/// A pod running the http-client demo once with `args`, under `annotations` (YAML lines
/// already indented for `metadata.annotations`; empty for none).
fn client_pod(name: &str, image: &str, annotations: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let manifest = wasm_pod(
        name,
        &format!(
            "  restartPolicy: Never\n  containers:\n  - name: client\n    image: {image}\n    args: [{}]\n",
            args.join(", ")
        ),
    );
    if annotations.is_empty() {
        return manifest;
    }
    manifest.replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  annotations:\n{annotations}"),
    )
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    container(pod, "client")?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The container's reason and message for not running: its waiting state, else its
/// terminated state, else its last terminated state (a restarted container).
fn why_not_running(pod: &Pod) -> Option<(String, String)> {
    let status = container(pod, "client")?;
    let state = status.state.as_ref()?;
    let waiting = |w: &ContainerStateWaiting| {
        (
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        )
    };
    let ended = |t: &ContainerStateTerminated| {
        (
            t.reason.clone().unwrap_or_default(),
            t.message.clone().unwrap_or_default(),
        )
    };
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    [
        state.waiting.as_ref().map(waiting),
        state.terminated.as_ref().map(ended),
        last.map(ended),
    ]
    .into_iter()
    .flatten()
    .find(|(reason, _)| reason == "InvalidAnnotation")
}

/// The log lines the client wrote to stdout.
fn stdout_lines(cluster: &WasmCluster, pod: &Pod) -> Vec<String> {
    cluster
        .container_log(pod, "client", 0)
        .lines()
        .filter_map(|l| l.split_once(" stdout F ").map(|(_, text)| text.to_string()))
        .collect()
}

#[tokio::test]
async fn components_reach_only_allowed_hosts_and_at_most_the_allowed_concurrency() {
    let server = TestServer::start().await.unwrap();
    // The test server is on loopback, which the node refuses unless the operator opens it.
    let cluster = WasmCluster::start_with_options(WasmletOptions {
        outbound_http_allow_networks: Some("127.0.0.0/8".into()),
        ..WasmletOptions::named("edge-http")
    })
    .await
    .unwrap();
    let image = push_demo(&cluster.registry.host(), "http-client").unwrap();
    let allow_server = format!(
        "    {ALLOWED_DOMAINS}: '[\"http://127.0.0.1:{}\"]'\n",
        server.port
    );
    let pods = [
        (
            "allowed",
            allow_server.clone(),
            vec![server.url("/allowed/1")],
        ),
        // The same server under another name is another host: the list is not a
        // reachability check.
        (
            "denied",
            format!(
                "    {ALLOWED_DOMAINS}: '[\"http://localhost:{}\", \"example.com\"]'\n",
                server.port
            ),
            vec![server.url("/denied/1")],
        ),
        // Without the annotation nothing is reachable, as in Krustlet.
        (
            "unannotated",
            String::new(),
            vec![server.url("/unannotated/1")],
        ),
        (
            "bounded",
            format!("{allow_server}    {MAX_CONCURRENT}: \"2\"\n"),
            std::iter::once("--concurrent".to_string())
                .chain((0..6).map(|i| server.url(&format!("/slow/{i}"))))
                .collect(),
        ),
    ];
    for (name, annotations, args) in &pods {
        cluster
            .kubectl
            .apply(&client_pod(name, &image, annotations, args))
            .unwrap();
    }

    let pod = cluster
        .wait_pod("allowed", "Succeeded", FIRST_POD, |p| {
            phase(p) == "Succeeded"
        })
        .await
        .unwrap();
    assert_eq!(
        stdout_lines(&cluster, &pod),
        [format!("GET {} -> 200 {BODY}", server.url("/allowed/1"))]
    );
    assert_eq!(server.requests("allowed"), 1);
    let pulled = cluster
        .wait_event("allowed", "Pulled", MINUTE)
        .await
        .unwrap();
    eprintln!("allowed: {pulled}");

    for (name, path) in [("denied", "/denied/1"), ("unannotated", "/unannotated/1")] {
        let pod = cluster
            .wait_pod(name, "Failed", MINUTE, |p| phase(p) == "Failed")
            .await
            .unwrap();
        let exit = terminated(&pod).map(|t| t.exit_code);
        assert_eq!(exit, Some(1), "{name}: the client reports the failure");
        assert_eq!(
            stdout_lines(&cluster, &pod),
            [format!(
                "GET {} -> error: HttpRequestDenied",
                server.url(path)
            )],
            "{name}"
        );
        assert_eq!(server.requests(name), 0, "{name} reached the server");
    }
    // The node says what it refused, and for which pod, where an operator looks.
    let node_log = cluster.node.log_tail(usize::MAX);
    let authority = format!("127.0.0.1:{}", server.port);
    for (pod, why) in [
        ("default/denied", "not in the pod's allowed-domains"),
        ("default/unannotated", "no allowed-domains annotation"),
    ] {
        let line = node_log
            .lines()
            .find(|l| l.contains("outbound HTTP request denied") && l.contains(pod))
            .unwrap_or_else(|| panic!("no denial logged for {pod}:\n{node_log}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("container=client"), "{line}");
        assert!(line.contains(&authority), "{line}");
        assert!(line.contains(why), "{line}");
        eprintln!("node log: {line}");
    }

    let pod = cluster
        .wait_pod("bounded", "Succeeded", MINUTE, |p| phase(p) == "Succeeded")
        .await
        .unwrap();
    let lines = stdout_lines(&cluster, &pod);
    let expected: Vec<String> = (0..6)
        .map(|i| format!("GET {} -> 200 {BODY}", server.url(&format!("/slow/{i}"))))
        .collect();
    assert_eq!(
        lines, expected,
        "all six complete: over the bound they wait"
    );
    assert_eq!(server.requests("slow"), 6);
    // Exactly two: never more than the bound, and the client really did overlap them.
    assert_eq!(server.max_in_flight("slow"), 2);
    eprintln!("bounded: 6 requests held {SLOW:?} each, at most 2 in flight, all answered 200");
}

#[tokio::test]
async fn the_node_refuses_its_own_loopback_whatever_the_pods_list_allows() {
    let server = TestServer::start().await.unwrap();
    let cluster = WasmCluster::start("edge-http-egress", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-client").unwrap();
    // By address, and by a name that resolves to it: the check is on the address dialled.
    for (name, host) in [("by-address", "127.0.0.1"), ("by-name", "localhost")] {
        let url = format!("http://{host}:{}/{name}/1", server.port);
        let annotations = format!(
            "    {ALLOWED_DOMAINS}: '[\"http://{host}:{}\"]'\n",
            server.port
        );
        cluster
            .kubectl
            .apply(&client_pod(name, &image, &annotations, &[url]))
            .unwrap();
    }
    for (name, host) in [("by-address", "127.0.0.1"), ("by-name", "localhost")] {
        let pod = cluster
            .wait_pod(name, "Failed", FIRST_POD, |p| phase(p) == "Failed")
            .await
            .unwrap();
        assert_eq!(
            stdout_lines(&cluster, &pod),
            [format!(
                "GET http://{host}:{}/{name}/1 -> error: DestinationIpProhibited",
                server.port
            )],
            "{name}"
        );
        assert_eq!(server.requests(name), 0, "{name} reached the server");
    }
    let node_log = cluster.node.log_tail(usize::MAX);
    let refusal = node_log
        .lines()
        .find(|l| l.contains("outbound HTTP refused by the node: a loopback address"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{node_log}"));
    assert!(
        refusal.contains("--outbound-http-allow-networks"),
        "{refusal}"
    );
}

#[tokio::test]
async fn malformed_http_annotations_fail_the_container_with_invalid_annotation() {
    let cluster = WasmCluster::start("edge-http-bad", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-client").unwrap();
    let url = vec!["http://127.0.0.1:9/".to_string()];
    cluster
        .kubectl
        .apply(&client_pod(
            "bad-domains",
            &image,
            &format!("    {ALLOWED_DOMAINS}: 'api.example.com, other.example.com'\n"),
            &url,
        ))
        .unwrap();
    // Under the default restartPolicy (Always) the reason shows whatever the restart policy
    // does with it next.
    let always = client_pod(
        "bad-concurrency",
        &image,
        &format!("    {ALLOWED_DOMAINS}: '[\"example.com\"]'\n    {MAX_CONCURRENT}: \"zero\"\n"),
        &url,
    )
    .replace("  restartPolicy: Never\n", "");
    cluster.kubectl.apply(&always).unwrap();

    let pod = cluster
        .wait_pod("bad-domains", "Failed", FIRST_POD, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let (_, message) = why_not_running(&pod).expect("reason InvalidAnnotation");
    for part in [
        ALLOWED_DOMAINS,
        "not valid JSON",
        "\"api.example.com, other.example.com\"",
        "expected a JSON list of URLs or hosts",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert_eq!(container(&pod, "client").map(|c| c.restart_count), Some(0));
    eprintln!("bad-domains: {message}");
    let event = cluster
        .wait_event("bad-domains", "Failed", MINUTE)
        .await
        .unwrap();
    assert!(event.contains(ALLOWED_DOMAINS), "{event}");
    let warning =
        cluster.events("bad-domains").unwrap().into_iter().any(|e| {
            e.reason.as_deref() == Some("Failed") && e.type_.as_deref() == Some("Warning")
        });
    assert!(warning, "the Failed event is a Warning");
    // The container's log says it too, for `kubectl logs`.
    let log = cluster.container_log(&pod, "client", 0);
    assert!(log.contains(ALLOWED_DOMAINS), "{log}");

    // Under restartPolicy Always too the pod fails at once rather than crash-looping: no
    // retry can mend an annotation.
    let pod = cluster
        .wait_pod(
            "bad-concurrency",
            "Failed, InvalidAnnotation",
            MINUTE,
            |p| phase(p) == "Failed" && why_not_running(p).is_some(),
        )
        .await
        .unwrap();
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("InvalidAnnotation")
    );
    assert_eq!(container(&pod, "client").map(|c| c.restart_count), Some(0));
    let (_, message) = why_not_running(&pod).unwrap();
    assert!(message.contains(MAX_CONCURRENT), "{message}");
    assert!(message.contains("\"zero\""), "{message}");
    assert!(message.contains("positive integer"), "{message}");
    let event = cluster
        .wait_event("bad-concurrency", "Failed", MINUTE)
        .await
        .unwrap();
    assert!(event.contains(MAX_CONCURRENT), "{event}");
}
