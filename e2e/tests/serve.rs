//! Serving traffic: a `wasi:http/proxy` component (demos/http-hello) answered on the node's
//! address at its containerPort, with a Service whose EndpointSlice points there; the port
//! claimed for one pod; at most N requests at once, a slot freed when its client hangs up;
//! in-flight requests drained on delete; the node's instance pool's last slots kept from a
//! flood of requests for pods to start in;
//! `kubectl port-forward` to its port through the API server, and to no other port.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::demos::push_demo;
use e2e::{WasmCluster, WasmletOptions, free_port, status_summary, wait_for, wasm_pod};
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

const MINUTE: Duration = Duration::from_secs(60);

/// `curl` as a person runs it: the status code and the body.
fn curl(url: &str) -> (u16, String) {
    curl_within(url, 20)
}

/// `curl` giving up after `seconds` (code 0).
fn curl_within(url: &str, seconds: u32) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            &seconds.to_string(),
            "--write-out",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `curl --head`: the status code of a HEAD request.
fn curl_head(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--head",
            "--max-time",
            "20",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            url,
        ])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn serving_pod(name: &str, image: &str, port: u16, annotations: &str) -> String {
    wasm_pod(
        name,
        &format!(
            "  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: web\n    image: {image}\n    ports:\n    - {{containerPort: {port}, name: http}}\n    env:\n    - name: POD_NAME\n      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n"
        ),
    )
    .replace(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  labels: {{app: {name}}}\n{annotations}"),
    )
}

async fn wait_serving(cluster: &WasmCluster, name: &str, port: u16) {
    cluster
        .wait_pod(name, "Running", MINUTE, |p| phase(p) == "Running")
        .await
        .unwrap();
    wait_for(&format!("{name} answers on {port}"), MINUTE, || {
        let (code, body) = curl(&format!("http://127.0.0.1:{port}/ready"));
        async move { Ok::<_, String>((code == 200).then_some(body)) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.node.log_tail(30)));
}

/// A node named `node` serving demos/http-hello as pod `hello` on a free port: the cluster,
/// the image and the port.
async fn serving_hello(node: &str) -> (WasmCluster, String, u16) {
    let cluster = WasmCluster::start(node, 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    let port = free_port().unwrap();
    cluster
        .kubectl
        .apply(&serving_pod("hello", &image, port, ""))
        .unwrap();
    wait_serving(&cluster, "hello", port).await;
    (cluster, image, port)
}

#[tokio::test]
async fn a_proxy_component_is_served_at_its_port_behind_a_service_and_the_port_is_its_own() {
    let (cluster, image, port) = serving_hello("edge-serve").await;

    // Answered by a fresh instance that knows its pod, at the pod's IP, which is the node's.
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/greet?x=1"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "hello from hello: you asked for /greet?x=1");
    let pod = cluster.pod("hello").unwrap();
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("127.0.0.1")
    );
    // The guest's line and wasmlet's access line are in the container's log.
    wait_logged(
        &cluster,
        "hello",
        &["handled /greet?x=1", "GET /greet?x=1 200"],
    )
    .await;

    // A handler that traps gets its request a 500, and the server goes on serving.
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/trap"));
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("the handler failed"), "{body}");
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/after-trap")).0, 200);

    // A client that connects and sends nothing is dropped once the header timeout passes.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let connected = Instant::now();
    let closed = loop {
        match std::io::Read::read(&mut idle, &mut [0u8; 256]) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(
        closed,
        "an idle client was held for {:?}",
        connected.elapsed()
    );
    assert!(
        connected.elapsed() < Duration::from_secs(25),
        "{:?}",
        connected.elapsed()
    );

    // A Service selecting it gets an EndpointSlice at nodeIP:targetPort, and that address
    // answers.
    cluster
        .kubectl
        .apply(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  selector: {app: hello}\n  ports:\n  - {port: 80, targetPort: http}\n",
        )
        .unwrap();
    let endpoint = wait_for("the Service's EndpointSlice", MINUTE, || {
        let slices = cluster.kubectl.get_items::<serde_json::Value>(&[
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hello",
        ]);
        async move {
            let slices = slices.map_err(|e| e.to_string())?;
            let found = slices.iter().find_map(|slice| {
                let address = slice["endpoints"][0]["addresses"][0].as_str()?;
                let ready = slice["endpoints"][0]["conditions"]["ready"].as_bool()?;
                let port = slice["ports"][0]["port"].as_u64()?;
                ready.then(|| format!("{address}:{port}"))
            });
            Ok(found)
        }
    })
    .await
    .unwrap();
    assert_eq!(endpoint, format!("127.0.0.1:{port}"));
    let (code, body) = curl(&format!("http://{endpoint}/via-service"));
    assert_eq!(
        (code, body.trim()),
        (200, "hello from hello: you asked for /via-service")
    );

    // A second pod asking for the same port is refused at admission, as a hostPort would be.
    cluster
        .kubectl
        .apply(&serving_pod("hello-again", &image, port, ""))
        .unwrap();
    let refused = cluster
        .wait_pod("hello-again", "refused", MINUTE, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let status = refused.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NodePorts"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains(&format!("{port}/TCP is served by another pod")),
    );
    // And the first one still answers.
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/still")).0, 200);
}

/// Sends a request that takes `ms` to a pod that serves one at a time, and returns it (to
/// join) once a second request has been turned away while it runs, with that 503's body. A
/// slow request that arrives while a probing request holds the slot is itself turned away;
/// it is then sent again.
fn hold_the_only_slot(port: u16, ms: u64) -> (std::thread::JoinHandle<(u16, String)>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://127.0.0.1:{port}/sleep?ms={ms}");
        let slow = std::thread::spawn(move || curl(&url));
        while !slow.is_finished() {
            let (code, body) = curl(&format!("http://127.0.0.1:{port}/quick"));
            if code == 503 {
                return (slow, body);
            }
        }
        let (code, body) = slow.join().unwrap();
        assert!(
            code == 503 && Instant::now() < deadline,
            "the slow request ended ({code} {body}) and nothing was turned away"
        );
    }
}

#[tokio::test]
async fn requests_past_the_bound_get_503_and_a_delete_drains_the_ones_in_flight() {
    let cluster = WasmCluster::start("edge-busy", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    let port = free_port().unwrap();
    let one_at_a_time = "  annotations:\n    wasmlet.dev/max-concurrent-inbound-requests: \"1\"\n";
    cluster
        .kubectl
        .apply(&serving_pod("busy", &image, port, one_at_a_time))
        .unwrap();
    wait_serving(&cluster, "busy", port).await;

    // One slow request holds the only slot: the next is turned away at once.
    let (slow, turned_away) = hold_the_only_slot(port, 3000);
    assert!(
        turned_away.contains("serving 1 requests already"),
        "{turned_away}"
    );
    let (code, body) = slow.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/after")).0, 200);

    // An answered request's instance finishes what it does after its response, whether
    // hyper wrote the Content-Length's bytes or, for a HEAD request, none: hyper drops such
    // a body without reading it to its end, which is no hang-up.
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/then-log"));
    assert_eq!(
        (code, body.as_str()),
        (200, "answered; more work follows\n")
    );
    wait_logged(
        &cluster,
        "busy",
        &["finished the work after answering GET /then-log"],
    )
    .await;
    assert_eq!(curl_head(&format!("http://127.0.0.1:{port}/then-log")), 200);
    wait_logged(
        &cluster,
        "busy",
        &["finished the work after answering HEAD /then-log"],
    )
    .await;

    // A client that hangs up gives its slot back: the instance goes with its request
    // (else it would sleep its minute out, or spin for ever, holding the only slot).
    let (code, body) = curl_within(&format!("http://127.0.0.1:{port}/sleep?ms=60000"), 1);
    assert_eq!(code, 0, "the minute's sleep was answered: {body}");
    wait_answered(&format!("http://127.0.0.1:{port}/freed")).await;
    // So does one that hangs up on a handler stuck after its response's head.
    let (code, body) = curl_within(&format!("http://127.0.0.1:{port}/hang"), 1);
    assert_eq!((code, body.as_str()), (200, ""), "the head, and no body");
    wait_answered(&format!("http://127.0.0.1:{port}/freed-again")).await;

    // Deleting the pod while a request is in flight: it is answered before the pod goes.
    let (in_flight, _) = hold_the_only_slot(port, 2000);
    let deleted = Instant::now();
    cluster
        .kubectl
        .run(&["delete", "pod", "busy", "--wait=false"])
        .unwrap();
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(code, 200, "the request in flight was answered: {body}");
    wait_gone(&cluster, "busy").await;
    assert!(
        deleted.elapsed() < Duration::from_secs(20),
        "{:?}",
        deleted.elapsed()
    );
    // Nothing listens there any more.
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/gone")).0, 0);
}

/// Waits up to a minute for every one of `lines` to be in `pod`'s `kubectl logs`.
async fn wait_logged(cluster: &WasmCluster, pod: &str, lines: &[&str]) {
    wait_for(&format!("{lines:?} in {pod}'s log"), MINUTE, || {
        let logs = cluster.kubectl.run(&["logs", pod]).unwrap_or_default();
        async move {
            if lines.iter().all(|line| logs.contains(line)) {
                Ok(Some(()))
            } else {
                Err(logs)
            }
        }
    })
    .await
    .unwrap();
}

/// Waits up to 10 s for `url` to be answered with a 200 (a slot was given back).
async fn wait_answered(url: &str) {
    wait_for(
        &format!("{url} to be answered"),
        Duration::from_secs(10),
        || async {
            let (code, body) = curl(url);
            if code == 200 {
                Ok(Some(()))
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await
    .unwrap();
}

/// Whether the pod named `name` is gone from the API, waiting a minute at most.
async fn wait_gone(cluster: &WasmCluster, name: &str) {
    wait_for(&format!("{name} to be gone"), MINUTE, || {
        let gone = cluster.pod(name).is_err();
        async move { Ok::<_, String>(gone.then_some(())) }
    })
    .await
    .unwrap_or_else(|e| {
        let pod = cluster
            .pod(name)
            .map(|p| status_summary(&p))
            .unwrap_or_default();
        panic!("{e:#}: {pod}\n{}", cluster.node.log_tail(30))
    });
}

/// An instance still streaming its response when the pod's grace period runs out ends with
/// the pod: nothing of a deleted pod runs on, holding its client, CPU and memory.
#[tokio::test]
async fn a_response_still_streaming_when_the_grace_period_ends_ends_with_its_pod() {
    use std::io::{ErrorKind, Read, Write};

    let cluster = WasmCluster::start("edge-stream", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    let port = free_port().unwrap();
    let short_grace = serving_pod("stream", &image, port, "").replace(
        "terminationGracePeriodSeconds: 20",
        "terminationGracePeriodSeconds: 2",
    );
    cluster.kubectl.apply(&short_grace).unwrap();
    wait_serving(&cluster, "stream", port).await;

    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: stream\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    // Reads what arrives until `want` has, or the server closes the connection (true), by
    // `until` at the latest.
    let mut read_until = |until: Instant, received: &mut Vec<u8>, want: Option<&str>| loop {
        if want.is_some_and(|w| String::from_utf8_lossy(received).contains(w)) {
            return false;
        }
        if Instant::now() >= until {
            panic!(
                "still open, having received: {}\n{}",
                String::from_utf8_lossy(&received[received.len().saturating_sub(100)..]),
                cluster.node.log_tail(40)
            );
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    };
    let streaming = Instant::now() + Duration::from_secs(20);
    assert!(!read_until(streaming, &mut received, Some("tick 3")));

    let deleted = Instant::now();
    cluster
        .kubectl
        .run(&["delete", "pod", "stream", "--wait=false"])
        .unwrap();
    // Two seconds of grace, then the instance is stopped and its connection closed.
    assert!(read_until(
        deleted + Duration::from_secs(20),
        &mut received,
        None
    ));
    eprintln!(
        "the stream ended {:.1} s after the delete",
        deleted.elapsed().as_secs_f64()
    );
    wait_gone(&cluster, "stream").await;
}

/// A deletion the API server cannot take when the pod's containers have stopped (the
/// node's link is down just then) is confirmed once the link returns, with no restart of
/// the node: the pod does not stay Terminating.
#[tokio::test]
async fn a_deletion_the_api_server_could_not_take_is_confirmed_once_the_link_returns() {
    let cluster = WasmCluster::start_with_options(WasmletOptions {
        behind_link: true,
        ..WasmletOptions::named("edge-unconfirmed")
    })
    .await
    .unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    let port = free_port().unwrap();
    let one_at_a_time = "  annotations:\n    wasmlet.dev/max-concurrent-inbound-requests: \"1\"\n";
    cluster
        .kubectl
        .apply(&serving_pod("held", &image, port, one_at_a_time))
        .unwrap();
    wait_serving(&cluster, "held", port).await;

    // A request in flight holds the pod's stop open for four seconds.
    let (in_flight, _) = hold_the_only_slot(port, 4000);
    cluster
        .kubectl
        .run(&["delete", "pod", "held", "--wait=false"])
        .unwrap();
    let node = &cluster.node;
    let log_shows = |what: &'static str| {
        wait_for(what, MINUTE, move || {
            let log = node.log_tail(200);
            async move { Ok::<_, String>(log.contains(what).then_some(())) }
        })
    };
    log_shows("stopping the pod's containers").await.unwrap();
    cluster.node.uplink().unwrap().cut();
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(code, 200, "the request in flight was answered: {body}");
    log_shows("could not remove the pod object; trying again")
        .await
        .unwrap();
    assert!(cluster.pod("held").is_ok(), "the pod is still there");

    cluster.node.uplink().unwrap().restore();
    wait_gone(&cluster, "held").await;
}

#[tokio::test]
async fn a_command_component_may_listen_on_its_declared_port_and_nowhere_else() {
    let cluster = WasmCluster::start("edge-listen", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "tcp-listener").unwrap();
    let (port, other) = (free_port().unwrap(), free_port().unwrap());
    cluster
        .kubectl
        .apply(&wasm_pod(
            "listener",
            &format!(
                "  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: {image}\n    args: [\"0.0.0.0:{other}\", \"0.0.0.0:{port}\"]\n    ports:\n    - {{containerPort: {port}}}\n"
            ),
        ))
        .unwrap();
    cluster
        .wait_pod("listener", "Running", MINUTE, |p| phase(p) == "Running")
        .await
        .unwrap();
    let body = wait_for("the component's own listener to answer", MINUTE, || {
        let (code, body) = curl(&format!("http://127.0.0.1:{port}/"));
        async move { Ok::<_, String>((code == 200).then_some(body)) }
    })
    .await
    .unwrap();
    assert_eq!(body.trim(), "hello from a component that listens itself");
    let logs = cluster.kubectl.run(&["logs", "listener"]).unwrap();
    assert!(logs.contains(&format!("bind 0.0.0.0:{port}: ok")), "{logs}");
    // The undeclared port was refused in the guest, and nothing listens there.
    assert!(
        logs.contains(&format!("bind 0.0.0.0:{other}: refused")),
        "{logs}"
    );
    assert_eq!(curl(&format!("http://127.0.0.1:{other}/")).0, 0);
}

#[tokio::test]
async fn a_port_that_cannot_be_served_says_so() {
    let cluster = WasmCluster::start("edge-noport", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "portless",
            &format!("  containers:\n  - name: web\n    image: {image}\n"),
        ))
        .unwrap();
    let pod = cluster
        .wait_pod("portless", "a clear status", MINUTE, |p| {
            status_summary(p).contains("declares no TCP containerPort")
        })
        .await
        .unwrap();
    assert!(
        status_summary(&pod).contains("ContainerCannotRun"),
        "{}",
        status_summary(&pod)
    );

    // A module that declares a port runs, and its log says nothing is served there.
    let ticker = push_demo(&cluster.registry.host(), "ticker").unwrap();
    let port = free_port().unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "module-with-port",
            &format!("  containers:\n  - name: app\n    image: {ticker}\n    ports:\n    - {{containerPort: {port}}}\n"),
        ))
        .unwrap();
    cluster
        .wait_pod("module-with-port", "Running", MINUTE, |p| {
            phase(p) == "Running"
        })
        .await
        .unwrap();
    wait_for("the note in its log", MINUTE, || {
        let logs = cluster
            .kubectl
            .run(&["logs", "module-with-port"])
            .unwrap_or_default();
        async move {
            if logs.contains(&format!(
                "containerPort {port} is declared, but a module is not served"
            )) {
                Ok(Some(()))
            } else {
                Err(logs)
            }
        }
    })
    .await
    .unwrap();
}

/// `kubectl port-forward` running, with what it has printed so far.
struct PortForward {
    _kubectl: tokio::process::Child,
    printed: Arc<Mutex<String>>,
}

impl PortForward {
    /// Starts `kubectl port-forward pod/NAME PORTS` and waits until it listens.
    async fn start(cluster: &WasmCluster, pod: &str, ports: &str) -> Self {
        let mut kubectl = cluster
            .kubectl
            .spawn(&["port-forward", &format!("pod/{pod}"), ports])
            .unwrap();
        let printed = Arc::new(Mutex::new(String::new()));
        fn collect(from: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<String>>) {
            tokio::spawn(async move {
                let mut lines = BufReader::new(from).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut printed = into.lock().unwrap();
                    printed.push_str(&line);
                    printed.push('\n');
                }
            });
        }
        collect(kubectl.stdout.take().unwrap(), printed.clone());
        collect(kubectl.stderr.take().unwrap(), printed.clone());
        let forward = Self {
            _kubectl: kubectl,
            printed,
        };
        forward.wait_printed("Forwarding from 127.0.0.1:").await;
        forward
    }

    async fn wait_printed(&self, needle: &str) -> String {
        wait_for(&format!("kubectl to print {needle:?}"), MINUTE, || {
            let printed = self.printed.lock().unwrap().clone();
            async move {
                if printed.contains(needle) {
                    Ok(Some(printed))
                } else {
                    Err(printed)
                }
            }
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn kubectl_port_forward_reaches_the_pods_declared_port_and_no_other() {
    let (cluster, _, port) = serving_hello("edge-forward").await;

    // Through the API server to the node's /portForward, and on to the pod's port.
    let local = free_port().unwrap();
    let forward = PortForward::start(&cluster, "hello", &format!("{local}:{port}")).await;
    let (code, body) = curl(&format!("http://127.0.0.1:{local}/forwarded"));
    assert_eq!(
        (code, body.trim()),
        (200, "hello from hello: you asked for /forwarded")
    );
    // Many connections at once, each a pair of streams on the one SPDY connection.
    let clients: Vec<_> = (0..16)
        .map(|i| std::thread::spawn(move || curl(&format!("http://127.0.0.1:{local}/many/{i}"))))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (code, body) = client.join().unwrap();
        assert_eq!(
            (code, body.trim()),
            (
                200,
                format!("hello from hello: you asked for /many/{i}").as_str()
            )
        );
    }
    let printed = forward.wait_printed("Handling connection for").await;
    assert_eq!(
        printed
            .matches(&format!("Handling connection for {local}"))
            .count(),
        17,
        "{printed}"
    );
    assert!(!printed.contains("error"), "{printed}");
    drop(forward);

    // The node's own kubelet port is on the pod's address too, but the pod does not declare
    // it: the connection is closed and kubectl prints the node's reason.
    let local = free_port().unwrap();
    let node_port = cluster.node.port;
    let forward = PortForward::start(&cluster, "hello", &format!("{local}:{node_port}")).await;
    let (code, _) = curl(&format!("http://127.0.0.1:{local}/"));
    assert_eq!(code, 0, "the node's port answered through a port-forward");
    forward
        .wait_printed(&format!(
            "error forwarding port {node_port} to pod default/hello, uid {}: the pod declares no TCP containerPort {node_port}",
            cluster.pod("hello").unwrap().metadata.uid.unwrap_or_default()
        ))
        .await;
}

#[tokio::test]
async fn a_handler_that_loops_forever_gets_a_504_under_its_cpu_limit_while_others_are_served() {
    let cluster = WasmCluster::start("edge-spin", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "http-hello").unwrap();
    let port = free_port().unwrap();
    let limited = serving_pod("spinner", &image, port, "").replace(
        "    ports:\n",
        "    resources: {limits: {cpu: 250m}}\n    ports:\n",
    );
    cluster.kubectl.apply(&limited).unwrap();
    wait_serving(&cluster, "spinner", port).await;

    let before = cluster.cpu_by_pod().unwrap()["spinner"];
    let sent = Instant::now();
    let spinning =
        std::thread::spawn(move || curl_within(&format!("http://127.0.0.1:{port}/spin"), 50));
    // While one instance spins, the pod answers others (each a fresh instance).
    let mut answered = 0;
    while !spinning.is_finished() {
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "the spinning request was never answered"
        );
        let (code, body) = curl(&format!("http://127.0.0.1:{port}/meanwhile"));
        assert_eq!(code, 200, "{body}");
        answered += 1;
        // Paced, not synchronised: the loop ends when the spinning request does.
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, body) = spinning.join().unwrap();
    let after = cluster.cpu_by_pod().unwrap()["spinner"];
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("did not answer within 30 s"), "{body}");
    assert!(
        answered >= 10,
        "only {answered} requests answered meanwhile"
    );
    // The instance was stopped at the timeout, and it spun within the pod's quarter core:
    // unlimited, it would have taken a whole one.
    let seconds = after.1.duration_since(before.1).as_secs_f64();
    let cores = (after.0 - before.0) as f64 / 1e9 / seconds;
    eprintln!(
        "the spinning pod used {cores:.3} cores over {seconds:.1} s; {answered} answered meanwhile"
    );
    assert!(
        cores < 0.4,
        "the pod used {cores:.2} cores over {seconds:.1} s"
    );
    assert!(
        cores > 0.1,
        "the spinning handler used only {cores:.2} cores"
    );
    let logs = cluster.kubectl.run(&["logs", "spinner"]).unwrap();
    assert!(logs.contains("GET /spin 504"), "{logs}");
}

/// Waits for the node to log, for `pod`, that its image is ready with Cranelift's code: the
/// code whose instances come from the node's pool.
async fn wait_optimised(cluster: &WasmCluster, pod: &str) {
    wait_for(&format!("{pod} to run Cranelift's code"), MINUTE, || {
        let log = cluster.node.log_tail(usize::MAX);
        async move {
            let ready = log.lines().any(|line| {
                line.contains("image ready")
                    && line.contains(&format!("pod={pod} "))
                    && line.contains("cranelift")
            });
            Ok::<_, String>(ready.then_some(()))
        }
    })
    .await
    .unwrap();
}

/// Runs `name` from `manifest` once so that Cranelift compiles its code in the
/// background, waits for that, and deletes it: the next pod of the image starts with
/// Cranelift's code.
async fn warm_up(cluster: &WasmCluster, name: &str, manifest: &str, port: Option<u16>) {
    let cranelift_compiles = || {
        cluster
            .node
            .log_tail(usize::MAX)
            .lines()
            .filter(|line| line.contains("compiled") && line.contains("cranelift"))
            .count()
    };
    let before = cranelift_compiles();
    cluster.kubectl.apply(manifest).unwrap();
    match port {
        Some(port) => wait_serving(cluster, name, port).await,
        None => cluster
            .wait_pod(name, "started", MINUTE, |p| {
                ["Running", "Succeeded"].contains(&phase(p).as_str())
            })
            .await
            .map(drop)
            .unwrap(),
    }
    wait_for(&format!("Cranelift's code for {name}"), MINUTE, || {
        let compiled = cranelift_compiles() > before;
        async move { Ok::<_, String>(compiled.then_some(())) }
    })
    .await
    .unwrap();
    cluster
        .kubectl
        .run(&["delete", "pod", name, "--grace-period=1"])
        .unwrap();
    wait_gone(cluster, name).await;
}

/// A flood of slow requests to a served pod whose instances come from the node's pool
/// (Cranelift's code) cannot take the pool's last slots: requests past them get a 503 that
/// says why, and a pod created meanwhile starts at once, not after the flood. The pod is a
/// command component, several core instances, so that the one or two slots a full pool may
/// have left over (each request takes several too) would not be enough for it.
#[tokio::test]
async fn a_flood_of_requests_leaves_the_pools_last_slots_for_a_pod_to_start() {
    // Four pods: a pool of 16 slots that requests may take and 16 more kept for pods.
    let cluster = WasmCluster::start("edge-flood", 4).await.unwrap();
    let host = cluster.registry.host();
    let hello = push_demo(&host, "http-hello").unwrap();
    let command = push_demo(&host, "hello-component").unwrap();
    let many = "  annotations:\n    wasmlet.dev/max-concurrent-inbound-requests: \"64\"\n";
    let greeting = |name: &str| {
        wasm_pod(
            name,
            &format!(
                "  automountServiceAccountToken: false\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: {command}\n"
            ),
        )
    };
    let port = free_port().unwrap();
    warm_up(
        &cluster,
        "warm-web",
        &serving_pod("warm-web", &hello, port, many),
        Some(port),
    )
    .await;
    warm_up(&cluster, "warm-command", &greeting("warm-command"), None).await;

    let port = free_port().unwrap();
    cluster
        .kubectl
        .apply(&serving_pod("flooded", &hello, port, many))
        .unwrap();
    wait_serving(&cluster, "flooded", port).await;
    wait_optimised(&cluster, "flooded").await;

    let flood: Vec<_> = (0..16)
        .map(|_| {
            // Within the 30 s a response may take.
            let url = format!("http://127.0.0.1:{port}/sleep?ms=28000");
            std::thread::spawn(move || curl_within(&url, 60))
        })
        .collect();
    wait_for(
        "a request turned away for the pods' slots",
        Duration::from_secs(20),
        || async {
            let (code, body) = curl(&format!("http://127.0.0.1:{port}/quick"));
            if code == 503 && body.contains("kept for starting pods") {
                Ok(Some(()))
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await
    .unwrap();

    let flood_held = Instant::now();
    cluster.kubectl.apply(&greeting("late")).unwrap();
    let started = cluster
        .wait_pod("late", "Succeeded", Duration::from_secs(15), |p| {
            phase(p) == "Succeeded"
        })
        .await;
    let waited = flood_held.elapsed();
    assert!(
        started.is_ok(),
        "{started:?}\n{}",
        cluster.node.log_tail(40)
    );
    wait_optimised(&cluster, "late").await;
    let still_held = flood.iter().filter(|t| !t.is_finished()).count();
    assert!(
        still_held > 0,
        "the flood had ended before the pod started ({waited:?})"
    );
    let answers: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap().0).collect();
    eprintln!(
        "pod done {waited:?} into the flood; {still_held} requests held; answers {answers:?}"
    );
    assert!(answers.contains(&200), "{answers:?}");
    assert!(
        answers.iter().all(|code| [200, 503].contains(code)),
        "{answers:?}"
    );
}
