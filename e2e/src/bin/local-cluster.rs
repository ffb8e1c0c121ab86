//! The main demo: a real local control plane, a registry and a wasmlet node; the demo apps
//! published and their pods applied from `demos/*/pod.yaml`; then `kubectl get` and each
//! pod's log through `kubectl logs`, as a person would read it. Everything keeps running until Ctrl-C (or stops at once with `--exit`), and
//! everything it started is stopped on the way out.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use e2e::demos::push_demo;
use e2e::{WasmCluster, WasmletOptions, status_summary, wait_for};
use k8s_openapi::api::core::v1::Pod;

/// A local Kubernetes control plane with a wasmlet node running the demos.
#[derive(Parser)]
struct Args {
    /// The wasmlet node's name.
    #[arg(long, default_value = "wasmlet")]
    node_name: String,
    /// Tear everything down after showing it instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

/// Each demo's directory, which is also its pod's name.
const DEMOS: [&str; 8] = [
    "wasi-example",
    "ticker",
    "exit-error",
    "hello-component",
    "misbehave",
    "config-reader",
    "http-hello",
    "thermostat",
];

/// The simulated devices the node grants: the thermostat's sensor and fan.
const DEVICES: [&str; 2] = ["fan=gpio:sim:17:out", "temp=i2c:sim:tmp102@0x48"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = WasmCluster::start_with_options(WasmletOptions {
        devices: DEVICES.iter().map(ToString::to_string).collect(),
        ..WasmletOptions::named(&args.node_name)
    })
    .await?;
    let kubectl = &cluster.kubectl;
    println!("$ kubectl get nodes -o wide");
    print!("{}", kubectl.run(&["get", "nodes", "-o", "wide"])?);

    let demos_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demos");
    for demo in DEMOS {
        push_demo(&cluster.registry.host(), demo)?;
        let manifest = std::fs::read_to_string(demos_dir.join(demo).join("pod.yaml"))?
            .replace("REGISTRY", &cluster.registry.host());
        kubectl.apply(&manifest)?;
    }
    // Each demo settles into its own end state: done, running, or failing on purpose.
    let settled = wait_for("the demo pods to settle", Duration::from_secs(60), || {
        let pods: anyhow::Result<Vec<Pod>> = kubectl.get_items(&["pods"]);
        async move {
            let pods = pods.map_err(|e| e.to_string())?;
            let done = pods.len() == DEMOS.len() && pods.iter().all(settled);
            Ok(done.then_some(()))
        }
    })
    .await;
    println!("\n$ kubectl get pods -o wide");
    print!("{}", kubectl.run(&["get", "pods", "-o", "wide"])?);
    if let Err(err) = settled {
        eprintln!("{err:#}");
    }
    // The HTTP demo, asked as a person would, at its podIP (the node's) and its Service's
    // EndpointSlice, then through `kubectl port-forward`; its access lines then show in its
    // log below.
    println!("\n$ curl http://127.0.0.1:8088/hello    # http-hello, served by the node");
    print!("{}", curl("http://127.0.0.1:8088/hello"));
    port_forward(kubectl).await;
    println!("\n$ kubectl get endpointslices -l kubernetes.io/service-name=http-hello");
    match kubectl.run(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=http-hello",
    ]) {
        Ok(out) => print!("{out}"),
        Err(err) => println!("({err:#})"),
    }
    thermostat(&cluster).await;
    for demo in DEMOS {
        let pod = cluster.pod(demo)?;
        println!(
            "\n$ kubectl logs {demo} --tail=12    # {}",
            status_summary(&pod)
        );
        match kubectl.run(&["logs", demo, "--tail=12"]) {
            Ok(log) => print!("{log}"),
            Err(err) => println!("({err:#})"),
        }
    }
    println!("\nprocesses:");
    for (name, pid) in cluster.plane.pids() {
        println!("  {name:<24} pid {pid}");
    }
    println!("  {:<24} pid {}", "wasmlet", cluster.node.pid());
    println!("\nregistry: {}", cluster.registry.host());
    println!(
        "export KUBECONFIG={}",
        cluster.plane.admin_kubeconfig().display()
    );
    // What `kubeadm token create --print-join-command` prints, for joining a second node
    // as README's "Joining a node" says (with its own --node-name, --port and --data-dir).
    match cluster.plane.join_command() {
        Ok(line) => {
            println!("\nto join another node, run with wasmlet in place of kubeadm:\n  {line}")
        }
        Err(err) => println!("\n(no join line: {err:#})"),
    }
    if args.exit {
        return Ok(());
    }
    println!(
        "Ctrl-C stops everything and removes {}",
        cluster.plane.dir().display()
    );
    tokio::signal::ctrl_c().await?;
    cluster.node.terminate()?;
    Ok(())
}

/// The thermostat's devices, driven from outside: the simulated sensor warmed past the
/// threshold, and the fan line followed through its file.
async fn thermostat(cluster: &WasmCluster) {
    let devices = cluster.node.data_dir().join("devices");
    println!("\n$ kubectl get node -o jsonpath='{{.status.allocatable}}'");
    match cluster.kubectl.run(&[
        "get",
        "node",
        "-o",
        "jsonpath={.items[0].status.allocatable}",
    ]) {
        Ok(out) => println!("{out}"),
        Err(err) => println!("({err:#})"),
    }
    let fan = devices.join("fan");
    println!("$ echo 27.5 > {}", devices.join("temp").display());
    if let Err(err) = std::fs::write(devices.join("temp"), "27.5\n") {
        return println!("({err})");
    }
    let on = wait_for("the fan to go on", Duration::from_secs(10), || {
        let level = std::fs::read_to_string(&fan).unwrap_or_default();
        async move { Ok((level.trim() == "1").then_some(())) }
    })
    .await;
    println!("$ cat {}", fan.display());
    match on {
        Ok(()) => println!("1"),
        Err(err) => println!("({err:#})"),
    }
}

/// What `curl` prints for `url`, or why it could not run.
fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", url])
        .output();
    match out {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => format!("(cannot run curl: {err})\n"),
    }
}

/// `kubectl port-forward` to the HTTP demo through the API server, and a request through it.
async fn port_forward(kubectl: &e2e::Kubectl) {
    let Ok(local) = e2e::free_port() else {
        return println!("(no free local port for port-forward)");
    };
    let ports = format!("{local}:8088");
    println!("\n$ kubectl port-forward pod/http-hello {ports} &");
    let mut forward = match kubectl.spawn(&["port-forward", "pod/http-hello", &ports]) {
        Ok(child) => child,
        Err(err) => return println!("({err:#})"),
    };
    let Some(stdout) = forward.stdout.take() else {
        return;
    };
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let listening = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    match listening {
        Ok(Ok(Some(line))) => println!("{line}"),
        _ => return println!("(kubectl port-forward did not start listening)"),
    }
    let url = format!("http://127.0.0.1:{local}/through-port-forward");
    println!("$ curl {url}");
    print!("{}", curl(&url));
    let _ = forward.kill().await;
}

fn settled(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let running = status
        .container_statuses
        .iter()
        .flatten()
        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()) || c.restart_count > 0);
    matches!(phase.as_str(), "Succeeded" | "Failed") || (phase == "Running" && running)
}
