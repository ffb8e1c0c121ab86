//! The kubelet HTTPS API end to end: `kubectl logs` in all its forms, stats and metrics
//! through the API server's node proxy, the refusals of exec and attach, and
//! who may call the API at all.

use std::time::{Duration, Instant};

use e2e::demos::{push_demo, tick, unix_ms};
use e2e::{WasmCluster, wait_for, wasm_pod};
use tokio::io::{AsyncBufReadExt, BufReader};

const MINUTE: Duration = Duration::from_secs(60);

/// A ticker pod printing a numbered, millisecond-stamped line every `interval_ms`.
fn ticker(name: &str, image: &str, interval_ms: u32) -> String {
    wasm_pod(
        name,
        &format!(
            "  containers:\n  - name: ticker\n    image: {image}\n    env:\n    - {{name: INTERVAL_MS, value: \"{interval_ms}\"}}\n    - {{name: POD_NAME, value: {name}}}\n"
        ),
    )
}

/// Waits until `kubectl logs pod` shows at least `lines` lines.
async fn wait_for_lines(cluster: &WasmCluster, pod: &str, lines: usize) -> String {
    wait_for(&format!("{lines} log lines from {pod}"), MINUTE, || {
        let text = cluster.kubectl.run(&["logs", pod]);
        async move {
            let text = text.map_err(|e| e.to_string())?;
            Ok((text.lines().count() >= lines).then_some(text))
        }
    })
    .await
    .unwrap()
}

/// `GET path` on the node's kubelet API through the API server's node proxy, as the cluster
/// admin: the status code and the body as the node sent them. (`kubectl get --raw` would
/// replace a plain-text error body with client-go's generic message.)
async fn proxied(cluster: &WasmCluster, path: &str) -> (u16, String) {
    let client = cluster.plane.client().await.unwrap();
    let url = format!("/api/v1/nodes/{}/proxy{path}", cluster.node.name);
    let request = http::Request::get(url)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let body = response.into_body().collect_bytes().await.unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Runs kubectl `args` to its end and returns whether it succeeded and what it printed; a
/// command still running after 30 s (a stream that did open) fails the test.
async fn kubectl_to_end(cluster: &WasmCluster, args: &[&str]) -> (bool, String) {
    let child = cluster.kubectl.spawn(args).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} still running after 30 s"))
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn raw(cluster: &WasmCluster, path: &str) -> String {
    let url = format!("/api/v1/nodes/{}/proxy{path}", cluster.node.name);
    cluster.kubectl.run(&["get", "--raw", &url]).unwrap()
}

async fn wait_for_followers(cluster: &WasmCluster, count: u32) {
    let needle = format!("wasmlet_log_followers {count}\n");
    wait_for(
        &format!("{count} log followers"),
        Duration::from_secs(20),
        || {
            let url = format!("/api/v1/nodes/{}/proxy/metrics", cluster.node.name);
            let found = cluster
                .kubectl
                .run(&["get", "--raw", &url])
                .map(|text| text.contains(&needle));
            async move { Ok(found.map_err(|e| e.to_string())?.then_some(())) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn kubectl_logs_reads_tails_stamps_limits_and_follows_a_running_pod() {
    let cluster = WasmCluster::start("edge-logs", 110).await.unwrap();
    let image = push_demo(&cluster.registry.host(), "ticker").unwrap();
    cluster
        .kubectl
        .apply(&ticker("ticker", &image, 20))
        .unwrap();
    let all = wait_for_lines(&cluster, "ticker", 5).await;
    assert!(all.starts_with("tick 0 from ticker at "), "{all}");

    let tail = cluster
        .kubectl
        .run(&["logs", "ticker", "--tail=2"])
        .unwrap();
    let ticks: Vec<u64> = tail.lines().filter_map(|l| tick(l).map(|t| t.0)).collect();
    assert_eq!(ticks.len(), 2, "{tail}");
    assert_eq!(
        ticks[1],
        ticks[0] + 1,
        "the last two lines, in order: {tail}"
    );
    assert!(ticks[0] >= 3, "from the end, not the start: {tail}");

    let stamped = cluster
        .kubectl
        .run(&["logs", "ticker", "-c", "ticker", "--timestamps", "--tail=1"])
        .unwrap();
    let (time, line) = stamped.trim_end().split_once(' ').unwrap();
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{stamped}");
    assert!(tick(line).is_some(), "{stamped}");

    let limited = cluster
        .kubectl
        .run(&["logs", "ticker", "--limit-bytes=10"])
        .unwrap();
    assert_eq!(limited, "tick 0 fro");
    // --since counts back from the node's clock. An hour covers the whole run, so it starts
    // at the first line; once the ticker has run for 4 s, 2 s leaves the first line out and
    // starts about 2 s back.
    let recent = cluster
        .kubectl
        .run(&["logs", "ticker", "--since=1h"])
        .unwrap();
    assert!(recent.starts_with("tick 0 "), "{recent}");
    let (_, first_ms) = all.lines().next().and_then(tick).unwrap();
    wait_for("the ticker to run for 4 s", MINUTE, || {
        let last = cluster.kubectl.run(&["logs", "ticker", "--tail=1"]);
        async move {
            let last = last.map_err(|e| e.to_string())?;
            let (_, ms) = tick(last.trim_end()).ok_or(format!("not a tick: {last}"))?;
            Ok((ms >= first_ms + 4000).then_some(()))
        }
    })
    .await
    .unwrap();
    let asked = unix_ms();
    let window = cluster
        .kubectl
        .run(&["logs", "ticker", "--since=2s"])
        .unwrap();
    let answered = unix_ms();
    let (n, written) = window
        .lines()
        .next()
        .and_then(tick)
        .unwrap_or_else(|| panic!("no tick in the last 2 s: {window:?}"));
    assert!(n > 0, "tick 0 is older than 2 s: {window}");
    // The first line shown was written inside the window, and the one before it (20 ms
    // earlier) outside it; a second of slack on each side for write latency and a late tick.
    assert!(
        written + 3000 >= asked,
        "the first line is from {} ms before the request: {window}",
        asked - written
    );
    assert!(
        written + 1000 <= answered,
        "lines from less than 1 s before the answer came first: {window}"
    );
    let future = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)).to_string();
    let none = cluster
        .kubectl
        .run(&["logs", "ticker", &format!("--since-time={future}")])
        .unwrap();
    assert_eq!(none, "");
    // kubectl's own view: the API server refuses these before asking the node.
    let missing = cluster
        .kubectl
        .run(&["logs", "ticker", "-c", "nope"])
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
    let bad = cluster
        .kubectl
        .run(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/ticker/log?tailLines=-1",
        ])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("tailLines"), "{bad}");
    // The node's own answers to the same mistakes, through the node proxy, which passes
    // every request on: its status codes and one-line texts.
    for (path, code, text) in [
        (
            "/containerLogs/default/ticker/nope",
            404,
            "container \"nope\" is not in pod \"ticker\"",
        ),
        (
            "/containerLogs/default/absent/ticker",
            404,
            "pod \"absent\" in namespace \"default\" is not on this node",
        ),
        (
            "/containerLogs/default/ticker/ticker?tailLines=-1",
            400,
            "tailLines=\"-1\" must be a non-negative integer",
        ),
        (
            "/containerLogs/default/ticker/ticker?sinceTime=yesterday",
            400,
            "sinceTime=\"yesterday\" is not an RFC 3339 time",
        ),
    ] {
        let (got, body) = proxied(&cluster, path).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.starts_with(text), "{path}: {body}");
    }

    // Follow: every line arrives, in order, and soon after the guest wrote it.
    let mut follow = cluster
        .kubectl
        .spawn(&["logs", "-f", "ticker", "--tail=0"])
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut latencies = Vec::new();
    let mut previous: Option<u64> = None;
    let deadline = Instant::now() + MINUTE;
    while latencies.len() < 100 {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("followed lines keep coming")
            .unwrap()
            .expect("the follow stream stays open while the pod runs");
        let now = unix_ms();
        let (n, written) = tick(&line).unwrap_or_else(|| panic!("not a tick: {line}"));
        if let Some(p) = previous {
            assert_eq!(n, p + 1, "no line lost or repeated");
        }
        previous = Some(n);
        latencies.push(now.saturating_sub(written));
    }
    wait_for_followers(&cluster, 1).await;
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "kubectl logs -f latency over {} lines: p50 {p50} ms, p99 {p99} ms",
        latencies.len()
    );
    assert!(p50 <= 100, "a followed line takes {p50} ms at the median");

    // The client hanging up ends the stream on the node; nothing is left following.
    follow.kill().await.unwrap();
    wait_for_followers(&cluster, 0).await;
}

#[tokio::test]
async fn previous_logs_stats_metrics_and_unsupported_streams_through_the_api_server() {
    let cluster = WasmCluster::start("edge-api", 110).await.unwrap();
    let crashing = push_demo(&cluster.registry.host(), "exit-error").unwrap();
    let ticking = push_demo(&cluster.registry.host(), "ticker").unwrap();
    cluster
        .kubectl
        .apply(&wasm_pod(
            "crasher",
            &format!("  containers:\n  - name: app\n    image: {crashing}\n"),
        ))
        .unwrap();
    cluster
        .kubectl
        .apply(&ticker("ticker", &ticking, 100))
        .unwrap();

    let never = cluster
        .kubectl
        .run(&["logs", "ticker", "--previous"])
        .unwrap_err()
        .to_string();
    assert!(never.contains("previous terminated container"), "{never}");
    wait_for("crasher to restart", MINUTE, || {
        let pod = cluster.pod("crasher");
        async move {
            let restarts = pod
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.first().map(|c| c.restart_count))
                .unwrap_or(0);
            Ok((restarts >= 1).then_some(()))
        }
    })
    .await
    .unwrap();
    let previous = cluster
        .kubectl
        .run(&["logs", "crasher", "--previous"])
        .unwrap();
    assert_eq!(
        previous,
        "starting, about to fail\nfatal: configuration missing; exiting with 3\n"
    );
    wait_for_lines(&cluster, "ticker", 3).await;

    // Stats, as metrics-server reads them, through the API server's node proxy.
    let summary: serde_json::Value =
        serde_json::from_str(&raw(&cluster, "/stats/summary")).unwrap();
    assert_eq!(summary["node"]["nodeName"], "edge-api");
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    let pods = summary["pods"].as_array().unwrap();
    let ticker_stats = pods
        .iter()
        .find(|p| p["podRef"]["name"] == "ticker")
        .unwrap_or_else(|| panic!("{summary}"));
    let container = &ticker_stats["containers"][0];
    assert_eq!(container["name"], "ticker");
    assert!(
        container["memory"]["workingSetBytes"].as_u64().unwrap() >= 65536,
        "at least one wasm page: {container}"
    );
    assert!(
        container["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{container}"
    );
    let resource = raw(&cluster, "/metrics/resource");
    assert!(
        resource.contains(r#"container_cpu_usage_seconds_total{container="ticker",namespace="default",pod="ticker"}"#),
        "{resource}"
    );
    assert!(
        resource.contains("node_memory_working_set_bytes "),
        "{resource}"
    );
    let metrics = raw(&cluster, "/metrics");
    assert!(
        metrics.contains(r#"wasmlet_pods{phase="Running"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmlet_pod_start_duration_seconds_count "),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmlet_image_pull_duration_seconds_count 2"),
        "{metrics}"
    );
    assert_eq!(cluster.node_pods().unwrap(), ["crasher", "ticker"]);

    let exec = cluster
        .kubectl
        .run(&["exec", "ticker", "--", "ls"])
        .unwrap_err()
        .to_string();
    assert!(exec.contains("not supported for Wasm pods"), "{exec}");

    // attach gets the same clear refusal: as the node answers it (a Kubernetes Status, 400)
    // and as kubectl shows it after its upgrade is refused.
    let (code, body) = proxied(&cluster, "/attach/default/ticker/ticker?stdout=true").await;
    assert_eq!(code, 400, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["code"], 400, "{body}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("attach is not supported for Wasm pods: "),
        "{body}"
    );
    let (ok, attach) = kubectl_to_end(&cluster, &["attach", "ticker", "-c", "ticker"]).await;
    assert!(!ok, "attach succeeded: {attach}");
    assert!(
        attach.contains("attach is not supported for Wasm pods"),
        "{attach}"
    );
}

/// A client for the node's kubelet API (not the API server) with `credentials` from a
/// kubeconfig's user, or none. Server verification is off: this is about the caller.
async fn kubelet_client(
    cluster: &WasmCluster,
    kubeconfig: &std::path::Path,
    credentials: Option<kube::config::AuthInfo>,
) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.cluster_url = format!("https://127.0.0.1:{}", cluster.node.port)
        .parse()
        .unwrap();
    config.root_cert = None;
    config.accept_invalid_certs = true;
    if let Some(credentials) = credentials {
        config.auth_info = credentials;
    }
    kube::Client::try_from(config).unwrap()
}

/// The status of `GET path`, or the transport error (a refused handshake).
async fn status_of(client: &kube::Client, path: &str, token: Option<&str>) -> Result<u16, String> {
    let mut request = http::Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(kube::client::Body::empty()).unwrap();
    client
        .send(request)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:#}"))
}

#[tokio::test]
async fn the_kubelet_api_lets_in_only_authenticated_authorized_callers() {
    let cluster = WasmCluster::start("edge-auth", 110).await.unwrap();
    let admin_kubeconfig = cluster.plane.admin_kubeconfig();
    let admin = kubelet_client(&cluster, &admin_kubeconfig, None).await;
    assert_eq!(status_of(&admin, "/pods", None).await, Ok(200));

    let anonymous = kubelet_client(&cluster, &admin_kubeconfig, Some(Default::default())).await;
    assert_eq!(status_of(&anonymous, "/pods", None).await, Ok(401));
    assert_eq!(
        status_of(&anonymous, "/healthz", Some("abcdef.0123456789abcdef")).await,
        Ok(401)
    );

    // Signed by the cluster CA but another node: authenticated, not allowed here.
    let other_node = cluster.plane.node_kubeconfig("someone-else").unwrap();
    let other = kubelet_client(&cluster, &other_node, None).await;
    assert_eq!(status_of(&other, "/pods", None).await, Ok(403));

    // Signed by a CA the cluster does not know: the handshake itself is refused.
    let rogue_ca = certs::Authority::generate("rogue").unwrap();
    let rogue_pair = rogue_ca
        .issue(&certs::CertificateSpec::client(
            "kubernetes-admin",
            &["system:masters"],
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rogue.crt"), &rogue_pair.cert_pem).unwrap();
    std::fs::write(dir.path().join("rogue.key"), &rogue_pair.key_pem).unwrap();
    let rogue = kubelet_client(
        &cluster,
        &admin_kubeconfig,
        Some(kube::config::AuthInfo {
            client_certificate: Some(dir.path().join("rogue.crt").display().to_string()),
            client_key: Some(dir.path().join("rogue.key").display().to_string()),
            ..Default::default()
        }),
    )
    .await;
    let refused = status_of(&rogue, "/pods", None).await;
    assert!(
        refused.is_err(),
        "a rogue client certificate got {refused:?}"
    );

    // A service account token: valid (TokenReview), but without rights until bound.
    cluster
        .kubectl
        .run(&["create", "serviceaccount", "reader"])
        .unwrap();
    let token = wait_for("the reader's token", MINUTE, || {
        let token = cluster.kubectl.run(&[
            "get",
            "secrets",
            "-o",
            "go-template={{range .items}}{{if eq (index .metadata.annotations \"kubernetes.io/service-account.name\") \"reader\"}}{{.data.token | base64decode}}{{end}}{{end}}",
        ]);
        async move { Ok(token.map_err(|e| e.to_string())?.trim().to_string()).map(|t| (!t.is_empty()).then_some(t)) }
    })
    .await
    .unwrap();
    // Asked about /stats/summary, not /pods: the node remembers a denial for 30 s, as the
    // kubelet's authorizer does, and /pods is what the binding below grants.
    assert_eq!(
        status_of(&anonymous, "/stats/summary", Some(&token)).await,
        Ok(403)
    );
    cluster
        .kubectl
        .run(&[
            "create",
            "clusterrole",
            "node-proxy",
            "--verb=get",
            "--resource=nodes/proxy",
        ])
        .unwrap();
    cluster
        .kubectl
        .run(&[
            "create",
            "clusterrolebinding",
            "reader-node-proxy",
            "--clusterrole=node-proxy",
            "--serviceaccount=default:reader",
        ])
        .unwrap();
    wait_for(
        "the binding to take effect",
        Duration::from_secs(20),
        || {
            let status = status_of(&anonymous, "/pods", Some(&token));
            async move { Ok((status.await == Ok(200)).then_some(())) }
        },
    )
    .await
    .unwrap();
    // nodes/proxy does not grant nodes/stats: the subresource is checked per path.
    assert_eq!(
        status_of(&anonymous, "/stats/summary", Some(&token)).await,
        Ok(403)
    );
}
