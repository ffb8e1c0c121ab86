//! The serving benchmark: demos/http-hello served by a wasmlet node and by `wasmtime serve`
//! (the same component, from the same Wasmtime major version), side by side under wrk on
//! loopback: saturating throughput and latency, interleaved rounds; then latency at half of
//! wasmlet's saturating rate, offered to both; the round trip of a request through
//! `kubectl port-forward` and the real API server; and the memory of an idle HTTP pod.
//!
//! Run with a release build of the node (`WASMLET_BIN`), `wasmtime` on the PATH or in
//! `$WASMTIME`, and Debian's `wrk`. Prints JSON and writes `e2e/bench/results/serve.json`.
//! Asserts no numbers; fails if a server does not answer. Error responses are counted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::demos::{demo_wasm, push_demo};
use e2e::{WasmCluster, free_port, rss_kib, wait_for, wasm_pod};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Interleaved rounds per server at saturation.
const ROUNDS: usize = 3;
const ROUND: Duration = Duration::from_secs(10);
/// Connections at saturation. The pod's bound on requests at once is raised to twice this:
/// an instance holds its slot until it has ended, a moment after its response went out, so
/// at the default bound of 16 a client with 16 connections is now and then turned away.
const CONNECTIONS: u32 = 16;
/// Each connection's pause between requests at half load. wrk's pauses are whole
/// milliseconds; the connection count sets the rate.
const HALF_LOAD_DELAY_MS: u32 = 4;
/// Idle HTTP pods added to measure the memory of one.
const IDLE_PODS: usize = 20;
/// Requests through the port-forward, one new connection each.
const FORWARD_CONNECTIONS: usize = 20;

/// One wrk run.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

impl Load {
    fn json(&self) -> Value {
        json!({
            "requests_per_second": round2(self.requests_per_second),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "requests": self.requests,
            "errors": self.errors,
        })
    }
}

/// `wasmtime serve`, stopped when dropped.
struct WasmtimeServe(Child);

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    let wasmtime_version = command_output(Command::new(&wasmtime).arg("--version"))?;
    command_output(Command::new("wrk").arg("--version")).ok();

    let cluster = WasmCluster::start("bench-serve", (IDLE_PODS + 10) as u32).await?;
    let image = push_demo(&cluster.registry.host(), "http-hello")?;
    let port = free_port()?;
    cluster.kubectl.apply(&http_pod("hello", &image, port))?;
    let wasmlet_url = format!("http://127.0.0.1:{port}/bench");
    wait_answering(&wasmlet_url).await?;

    let serve_port = free_port()?;
    let serve_log = cluster.plane.dir().join("wasmtime-serve.log");
    let log = std::fs::File::create(&serve_log)?;
    let _serve = WasmtimeServe(
        Command::new(&wasmtime)
            .args(["serve", "--addr", &format!("127.0.0.1:{serve_port}")])
            // http-hello reads its pod's name from the environment, as under wasmlet.
            .args(["-S", "cli", "--env", "POD_NAME=hello"])
            .arg(demo_wasm("http-hello")?)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start wasmtime serve")?,
    );
    let wasmtime_url = format!("http://127.0.0.1:{serve_port}/bench");
    wait_answering(&wasmtime_url).await?;

    // Warm both (the first requests of wasmlet's pod may still run Winch's code).
    for url in [&wasmlet_url, &wasmtime_url] {
        wrk(url, CONNECTIONS, Duration::from_secs(3), None)?;
    }
    let mut saturated: [Vec<Load>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (i, url) in [&wasmlet_url, &wasmtime_url].into_iter().enumerate() {
            let load = wrk(url, CONNECTIONS, ROUND, None)?;
            eprintln!("round {round} {url}: {load:?}");
            saturated[i].push(load);
        }
    }
    let [wasmlet_runs, wasmtime_runs] = &saturated;
    let wasmlet_rps = median(wasmlet_runs.iter().map(|l| l.requests_per_second));
    let wasmtime_rps = median(wasmtime_runs.iter().map(|l| l.requests_per_second));

    // Half of wasmlet's saturating rate, offered to both.
    let half_rate = wasmlet_rps / 2.0;
    let half_connections =
        ((half_rate * f64::from(HALF_LOAD_DELAY_MS) / 1000.0).round() as u32).clamp(1, 256);
    let script = cluster.plane.dir().join("half-load.lua");
    std::fs::write(
        &script,
        format!("function delay()\n  return {HALF_LOAD_DELAY_MS}\nend\n"),
    )?;
    let mut half = Vec::new();
    for url in [&wasmlet_url, &wasmtime_url] {
        let load = wrk(url, half_connections, ROUND, Some(&script))?;
        eprintln!("half load {url}: {load:?}");
        half.push(load);
    }

    let forward = port_forward_round_trip(&cluster, port).await?;
    eprintln!("port-forward: {forward}");
    let idle = idle_pod_memory(&cluster, &image).await?;
    eprintln!("idle pods: {idle}");

    let report = json!({
        "component": "demos/http-hello",
        "wasmtime": wasmtime_version.trim(),
        "load_generator": format!("wrk -t1 -c{CONNECTIONS} --latency, {} s rounds on loopback", ROUND.as_secs()),
        "saturated": {
            "rounds": ROUNDS,
            "wasmlet": {
                "requests_per_second_median": round2(wasmlet_rps),
                "p50_ms_median": round3(median(wasmlet_runs.iter().map(|l| l.p50_ms))),
                "p99_ms_median": round3(median(wasmlet_runs.iter().map(|l| l.p99_ms))),
                "runs": wasmlet_runs.iter().map(Load::json).collect::<Vec<_>>(),
            },
            "wasmtime_serve": {
                "requests_per_second_median": round2(wasmtime_rps),
                "p50_ms_median": round3(median(wasmtime_runs.iter().map(|l| l.p50_ms))),
                "p99_ms_median": round3(median(wasmtime_runs.iter().map(|l| l.p99_ms))),
                "runs": wasmtime_runs.iter().map(Load::json).collect::<Vec<_>>(),
            },
            "wasmlet_to_wasmtime_serve_throughput": round3(wasmlet_rps / wasmtime_rps),
        },
        "half_load": {
            "offered": format!("{half_connections} connections, each pausing {HALF_LOAD_DELAY_MS} ms between requests (about {} requests/s)", half_rate.round()),
            "wasmlet": half[0].json(),
            "wasmtime_serve": half[1].json(),
        },
        "port_forward": forward,
        "idle_http_pods": idle,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/serve.json");
    std::fs::write(out, format!("{text}\n"))?;
    Ok(())
}

fn http_pod(name: &str, image: &str, port: u16) -> String {
    let bound = CONNECTIONS * 2;
    wasm_pod(
        name,
        &format!(
            "  automountServiceAccountToken: false\n  containers:\n  - name: web\n    image: {image}\n    ports:\n    - {{containerPort: {port}}}\n    env:\n    - name: POD_NAME\n      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n"
        ),
    )
    .replace(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  annotations: {{wasmlet.dev/max-concurrent-inbound-requests: \"{bound}\"}}\n"),
    )
}

/// Waits until `url` answers 200.
async fn wait_answering(url: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("{url} to answer"),
        Duration::from_secs(120),
        || {
            let answered = curl_ok(url);
            async move { Ok::<_, String>(answered.then_some(())) }
        },
    )
    .await
}

fn curl_ok(url: &str) -> bool {
    Command::new("curl")
        .args([
            "--silent",
            "--fail",
            "--max-time",
            "5",
            "--output",
            "/dev/null",
            url,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs wrk and reads its summary; error responses and socket errors are counted.
fn wrk(
    url: &str,
    connections: u32,
    length: Duration,
    script: Option<&Path>,
) -> anyhow::Result<Load> {
    let mut command = Command::new("wrk");
    command
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", length.as_secs()))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let text = command_output(command.arg(url))?;
    let load = parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))?;
    if load.errors > 0 || load.requests == 0 {
        bail!(
            "{url}: {} errors in {} requests:\n{text}",
            load.errors,
            load.requests
        );
    }
    Ok(load)
}

fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let mut load = Load {
        requests_per_second: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => load.requests_per_second = rate.parse()?,
            ["50%", latency] => load.p50_ms = milliseconds(latency)?,
            ["99%", latency] => load.p99_ms = milliseconds(latency)?,
            [count, "requests", "in", ..] => load.requests = count.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => load.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for count in rest.iter().skip(1).step_by(2) {
                    load.errors += count.trim_end_matches(',').parse::<u64>()?;
                }
            }
            _ => {}
        }
    }
    if load.p50_ms.is_nan() || load.p99_ms.is_nan() {
        bail!("no latency distribution");
    }
    Ok(load)
}

/// wrk's durations: `523.00us`, `1.10ms`, `1.20s`, `2.00m`.
fn milliseconds(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .context("a duration without a unit")?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => bail!("unit {other:?}"),
    })
}

/// A request's round trip through `kubectl port-forward`: over one kept-alive connection
/// (wrk, one connection), and with a new connection each (curl, which makes kubectl open a
/// new pair of streams), against the same requests sent to the pod directly.
async fn port_forward_round_trip(cluster: &WasmCluster, port: u16) -> anyhow::Result<Value> {
    let local = free_port()?;
    let mut kubectl =
        cluster
            .kubectl
            .spawn(&["port-forward", "pod/hello", &format!("{local}:{port}")])?;
    let stdout = kubectl.stdout.take().context("kubectl's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("kubectl port-forward did not start listening")??;
    let forwarded = format!("http://127.0.0.1:{local}/bench");
    let direct = format!("http://127.0.0.1:{port}/bench");
    let kept_alive = wrk(&forwarded, 1, Duration::from_secs(5), None)?;
    let kept_alive_direct = wrk(&direct, 1, Duration::from_secs(5), None)?;
    let mut new_connection = Vec::new();
    for _ in 0..FORWARD_CONNECTIONS {
        let started = Instant::now();
        if !curl_ok(&forwarded) {
            bail!("a request through the port-forward failed");
        }
        new_connection.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = kubectl.kill().await;
    Ok(json!({
        "kept_alive_connection": kept_alive.json(),
        "kept_alive_connection_direct": kept_alive_direct.json(),
        "new_connection_per_request_ms_median": round3(median(new_connection.iter().copied())),
        "new_connection_per_request_ms_max": round3(new_connection.iter().copied().fold(0.0, f64::max)),
        "note": "through kubectl, the API server and the node's SPDY session; curl's time includes its own start",
    }))
}

/// The node's RSS before and after `IDLE_PODS` more HTTP pods are running and have each
/// answered once, then left idle for ten seconds.
async fn idle_pod_memory(cluster: &WasmCluster, image: &str) -> anyhow::Result<Value> {
    let pid = cluster.node.pid();
    let before = rss_kib(pid)?;
    let mut urls = Vec::new();
    for i in 0..IDLE_PODS {
        let port = free_port()?;
        cluster
            .kubectl
            .apply(&http_pod(&format!("idle-{i}"), image, port))?;
        urls.push(format!("http://127.0.0.1:{port}/"));
    }
    for url in &urls {
        wait_answering(url).await?;
    }
    // Idle means idle: what the pods hold once nothing is asked of them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pid)?;
    let per_pod = (after.saturating_sub(before)) as f64 / IDLE_PODS as f64;
    Ok(json!({
        "pods": IDLE_PODS,
        "node_rss_before_kib": before,
        "node_rss_after_kib": after,
        "per_idle_http_pod_mib": round3(per_pod / 1024.0),
    }))
}

fn command_output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:1/bench
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  300.00us   9.10ms   90.00%
    Req/Sec     9.10k   100.00    10.00k    80.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.10ms
  91000 requests in 10.00s, 9.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   9100.50
Transfer/sec:      0.91MB
";
        let load = parse_wrk(text).unwrap();
        assert_eq!(load.requests, 91_000);
        assert_eq!(load.errors, 7);
        assert!((load.requests_per_second - 9100.5).abs() < 1e-9);
        assert!((load.p50_ms - 0.85).abs() < 1e-9);
        assert!((load.p99_ms - 2.1).abs() < 1e-9);
        assert!(milliseconds("1.5s").unwrap() == 1500.0);
        assert!(milliseconds("12").is_err());
    }
}
