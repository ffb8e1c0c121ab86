//! Brings up a real local control plane and a wasmlet node, shows them with kubectl, and
//! keeps them running until Ctrl-C (or exits at once with `--exit`). Everything it started
//! is stopped on the way out.

use std::time::Duration;

use clap::Parser;
use e2e::{ControlPlane, Kubectl, WasmletNode, WasmletOptions, wait_for};

/// A local Kubernetes control plane with a wasmlet node.
#[derive(Parser)]
struct Args {
    /// The wasmlet node's name.
    #[arg(long, default_value = "wasmlet")]
    node_name: String,
    /// Tear everything down after showing it instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plane = ControlPlane::start().await?;
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let mut node = WasmletNode::start(&plane, &WasmletOptions::named(&args.node_name))?;
    let ready = wait_for(
        "the wasmlet node to be Ready",
        Duration::from_secs(30),
        || {
            let out = kubectl.run(&[
                "get",
                "node",
                &args.node_name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            async move {
                out.map(|s| (s == "True").then_some(()))
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    if let Err(err) = ready {
        eprintln!("wasmlet log:\n{}", node.log_tail(30));
        return Err(err);
    }
    println!("$ kubectl get nodes -o wide");
    print!("{}", kubectl.run(&["get", "nodes", "-o", "wide"])?);
    println!();
    println!("processes:");
    for (name, pid) in plane.pids() {
        println!("  {name:<24} pid {pid}");
    }
    println!("  {:<24} pid {}", "wasmlet", node.pid());
    println!("\nexport KUBECONFIG={}", plane.admin_kubeconfig().display());
    if args.exit {
        return Ok(());
    }
    println!(
        "Ctrl-C stops everything and removes {}",
        plane.dir().display()
    );
    tokio::signal::ctrl_c().await?;
    node.terminate()?;
    Ok(())
}
