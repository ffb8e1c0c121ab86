//! `wasmlet join` with the line a real `kubeadm token create --print-join-command` prints,
//! against a control plane set up as `kubeadm init` sets it up for joining (the
//! `cluster-info` ConfigMap, the bootstrap signer, anonymous reads of cluster-info), and
//! the ways that line can be wrong.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{ControlPlane, Kubectl, WasmletNode, WasmletOptions, join_arguments, wasmlet_binary};
use kube::config::Kubeconfig;
use rustix::process::Signal;

#[tokio::test]
async fn a_node_joins_with_nothing_but_the_line_kubeadm_prints() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let line = plane.join_command().expect("kubeadm prints a join line");
    eprintln!("kubeadm printed: {line}");
    let options = WasmletOptions {
        join_line: Some(line.clone()),
        ..WasmletOptions::named("edge-join")
    };
    let started = Instant::now();
    let mut node = WasmletNode::start(&plane, &options).expect("wasmlet join starts");
    node.wait_ready(&kubectl, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.log_tail(40)));
    eprintln!(
        "joined node Ready {:.2} s after `wasmlet join`",
        started.elapsed().as_secs_f64()
    );

    // Discovery wrote a bootstrap kubeconfig with the printed token and the server from
    // cluster-info; TLS bootstrap then wrote the node's own kubeconfig beside it.
    let token = join_arguments(&line)
        .unwrap()
        .windows(2)
        .find(|pair| pair[0] == "--token")
        .map(|pair| pair[1].clone())
        .expect("the line has a token");
    let bootstrap = Kubeconfig::read_from(node.data_dir().join("bootstrap-kubeconfig"))
        .expect("bootstrap kubeconfig written");
    let cluster = bootstrap.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(plane.server_url().as_str()));
    let text = std::fs::read_to_string(node.data_dir().join("bootstrap-kubeconfig")).unwrap();
    assert!(text.contains(&token), "{text}");
    let own = Kubeconfig::read_from(node.kubeconfig_path()).expect("node kubeconfig written");
    let user = own.auth_infos[0].auth_info.clone().unwrap();
    assert!(user.client_certificate.is_some(), "{user:?}");
    assert!(
        node.log_tail(200).contains("cluster-info verified"),
        "{}",
        node.log_tail(40)
    );

    // It is a wasm node like any other.
    let arch = kubectl
        .run(&[
            "get",
            "node",
            "edge-join",
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/arch}",
        ])
        .unwrap();
    assert_eq!(arch, "wasm32-wasi");

    // The same line again (a restart, or typed twice) skips discovery, so a token that has
    // expired since does not matter; the node comes back with the identity it has.
    node.restart_with(Signal::TERM).unwrap();
    node.wait_ready(&kubectl, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.log_tail(40)));
    assert!(
        node.log_tail(100).contains("this node has joined before"),
        "{}",
        node.log_tail(40)
    );

    // A line for another cluster (another CA hash) does not join over this one.
    node.terminate().unwrap();
    let before = std::fs::read(node.data_dir().join("kubeconfig")).unwrap();
    let other = format!("sha256:{}", "ab".repeat(32));
    let elsewhere = replace_arg(
        &join_arguments(&line).unwrap(),
        "--discovery-token-ca-cert-hash",
        &other,
    );
    let output = Command::new(wasmlet_binary().unwrap())
        .arg("join")
        .args(&elsewhere)
        .arg("--data-dir")
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert_refused(&output, "is for another cluster");
    assert_eq!(
        std::fs::read(node.data_dir().join("kubeconfig")).unwrap(),
        before
    );
}

/// Runs `wasmlet join` with `args` and a data dir of its own; it must exit by itself.
fn join(plane: &ControlPlane, name: &str, args: &[String]) -> Output {
    let data_dir = plane.dir().join("nodes").join(name);
    let output = Command::new(wasmlet_binary().unwrap())
        .arg("join")
        .args(args)
        .args(["--node-name", name, "--address", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        !data_dir.join("bootstrap-kubeconfig").exists(),
        "nothing is written for a join that failed"
    );
    output
}

/// The last stderr line is the one error line; there is no panic or backtrace.
fn assert_refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("wasmlet: join: "), "{stderr}");
    assert!(last.contains(expected), "wanted {expected:?} in {last:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn replace_arg(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == flag).unwrap();
    args[at + 1] = value.to_string();
    args
}

#[tokio::test]
async fn a_wrong_token_or_ca_hash_is_refused_saying_which() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let args = join_arguments(&plane.join_command().unwrap()).unwrap();
    let token = args[args.iter().position(|a| a == "--token").unwrap() + 1].clone();
    let (id, _) = token.split_once('.').unwrap();

    // The right ID with the wrong secret: the signature does not verify, at once.
    let started = Instant::now();
    let wrong_secret = replace_arg(&args, "--token", &format!("{id}.0000000000000000"));
    assert_refused(
        &join(&plane, "wrong-secret", &wrong_secret),
        "does not verify",
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A token ID the cluster never signed for: kubeadm waits for the signer, so does wasmlet,
    // until the discovery timeout.
    let mut unknown = replace_arg(&args, "--token", "zzzzzz.0000000000000000");
    unknown.extend(["--discovery-timeout".into(), "2s".into()]);
    let output = join(&plane, "unknown-id", &unknown);
    assert_refused(&output, "holds no signature for token ID \"zzzzzz\"");

    // A hash that is not this cluster CA's.
    let other = format!("sha256:{}", "ab".repeat(32));
    let wrong_hash = replace_arg(&args, "--discovery-token-ca-cert-hash", &other);
    let output = join(&plane, "wrong-hash", &wrong_hash);
    assert_refused(
        &output,
        &format!("not the pinned --discovery-token-ca-cert-hash {other}"),
    );

    // Neither a hash nor the explicit skip.
    let at = args
        .iter()
        .position(|a| a == "--discovery-token-ca-cert-hash")
        .unwrap();
    let mut no_hash = args.clone();
    no_hash.drain(at..at + 2);
    assert_refused(
        &join(&plane, "no-hash", &no_hash),
        "--discovery-token-unsafe-skip-ca-verification",
    );
}
