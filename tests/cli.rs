//! Bad input at the command line: each case exits non-zero with one line naming the problem,
//! before wasmlet touches the cluster.

use std::path::Path;
use std::process::{Command, Output};

use kubelet::data_dir::DataDir;

fn wasmlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmlet"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run wasmlet")
}

/// A well-formed kubeconfig for a server that is never contacted: every failure below must
/// happen before the first request.
fn unreachable_kubeconfig(dir: &Path) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
    )
    .unwrap();
    path.display().to_string()
}

fn assert_one_line_error(output: &Output, expected: &[&str]) {
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("wasmlet: "), "{stderr}");
    for part in expected {
        assert!(lines[0].contains(part), "{part:?} not in: {stderr}");
    }
}

#[test]
fn missing_kubeconfig_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").display().to_string();
    let out = wasmlet(&[
        "--kubeconfig",
        &missing,
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    assert_one_line_error(&out, &["cannot read kubeconfig", &missing]);
}

#[test]
fn malformed_kubeconfig_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: [this is: not: a kubeconfig").unwrap();
    let path = path.display().to_string();
    let out = wasmlet(&[
        "--kubeconfig",
        &path,
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    assert_one_line_error(&out, &["kubeconfig", &path]);
}

/// Both kubeconfig flags reject a file whose current context names no cluster.
#[test]
fn kubeconfig_without_a_server_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n",
    )
    .unwrap();
    let path = path.display().to_string();
    for (flag, expected) in [
        ("--kubeconfig", "invalid kubeconfig"),
        ("--bootstrap-kubeconfig", "names no cluster"),
    ] {
        let out = wasmlet(&[flag, &path, "--data-dir", &dir.path().display().to_string()]);
        assert_one_line_error(&out, &[expected, &path]);
    }
}

#[test]
fn unwritable_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    // A path below a regular file cannot be created, even by root.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let data_dir = file.join("data").display().to_string();
    let out = wasmlet(&["--kubeconfig", &kubeconfig, "--data-dir", &data_dir]);
    assert_one_line_error(&out, &["data dir", &data_dir, "cannot create it"]);
}

#[test]
fn port_in_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = wasmlet_on_port(dir.path(), &kubeconfig, &port, &[]);
    assert_one_line_error(&out, &[&port, "already in use"]);
}

/// wasmlet with `kubeconfig`, a data dir in `dir`, its API on 127.0.0.1:`port`, and `extra`.
fn wasmlet_on_port(dir: &Path, kubeconfig: &str, port: &str, extra: &[&str]) -> Output {
    let data_dir = dir.join("data").display().to_string();
    let mut args = vec![
        "--kubeconfig",
        kubeconfig,
        "--data-dir",
        &data_dir,
        "--address",
        "127.0.0.1",
        "--port",
        port,
    ];
    args.extend_from_slice(extra);
    wasmlet(&args)
}

#[test]
fn malformed_node_label_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let out = wasmlet(&[
        "--kubeconfig",
        &kubeconfig,
        "--node-labels",
        "site=lab,oops",
    ]);
    assert_one_line_error(&out, &["invalid node label", "oops"]);
}

#[test]
fn unreadable_bootstrap_kubeconfig_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir
        .path()
        .join("bootstrap.kubeconfig")
        .display()
        .to_string();
    let out = wasmlet(&[
        "--bootstrap-kubeconfig",
        &missing,
        "--kubeconfig",
        &dir.path().join("node.kubeconfig").display().to_string(),
        "--data-dir",
        &dir.path().join("data").display().to_string(),
    ]);
    assert_one_line_error(&out, &["bootstrap", &missing]);
}

/// The kubelet API verifies client certificates against a CA: with none in the kubeconfig
/// and no --client-ca-file, wasmlet says what to pass.
#[test]
fn kubeconfig_without_a_ca_needs_a_client_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let out = wasmlet_on_port(dir.path(), &kubeconfig, "0", &[]);
    assert_one_line_error(&out, &["names no cluster CA", "--client-ca-file"]);
    let missing = dir.path().join("ca.crt").display().to_string();
    let out = wasmlet_on_port(
        dir.path(),
        &kubeconfig,
        "0",
        &["--client-ca-file", &missing],
    );
    assert_one_line_error(&out, &["--client-ca-file", &missing]);
}

/// `wasmlet push FILE IMAGE --insecure` with `bytes` in FILE (no file when `None`), to a
/// registry on 127.0.0.1 port 1: nothing listens there and an unprivileged process cannot
/// bind it, so a connection is refused at once. Credentials and log settings from the
/// caller's environment are removed: they would change what is tried and what is printed.
/// Returns the file's path and the output.
fn push(dir: &Path, bytes: Option<&[u8]>) -> (String, Output) {
    let file = dir.join("app.wasm");
    if let Some(bytes) = bytes {
        std::fs::write(&file, bytes).unwrap();
    }
    let file = file.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmlet"))
        .args(["push", &file, "127.0.0.1:1/demo/app:v1", "--insecure"])
        .env_remove("WASMLET_REGISTRY_USERNAME")
        .env_remove("WASMLET_REGISTRY_PASSWORD")
        .env_remove("RUST_LOG")
        .output()
        .expect("run wasmlet push");
    // 1 is wasmlet's own failure; a panic exits 101.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    (file, out)
}

/// The file is judged before the registry is contacted: were it not, each of these would
/// report the closed port instead.
#[test]
fn push_of_a_file_that_is_not_wasm_names_the_file_and_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    for (bytes, looks_like) in [
        (&b"#!/bin/sh\necho hello\n"[..], "a shell script"),
        (b"\x7fELF\x02\x01\x01\0\0\0\0\0", "an ELF executable"),
        (b"hello, world\n", "not the Wasm magic"),
        (b"", "only 0 bytes"),
    ] {
        let (file, out) = push(dir.path(), Some(bytes));
        assert_one_line_error(
            &out,
            &[&file, "is not a Wasm module or component", looks_like],
        );
    }
}

#[test]
fn push_of_a_missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = push(dir.path(), None);
    assert_one_line_error(
        &out,
        &[&format!("cannot read {file}"), "No such file or directory"],
    );
}

#[test]
fn push_to_a_closed_port_says_the_registry_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = push(dir.path(), Some(b"\0asm\x01\0\0\0"));
    assert_one_line_error(&out, &["registry 127.0.0.1:1 is unreachable"]);
}

/// A config file in `dir` with the version header and `settings`; returns its path.
fn config_file(dir: &Path, settings: &str) -> String {
    let config = dir.join("wasmlet.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: wasmlet.dev/v1alpha1\nkind: WasmletConfiguration\n{settings}"),
    )
    .unwrap();
    config.display().to_string()
}

#[test]
fn a_config_file_with_unknown_fields_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "maxPods: 5\nmaxPod: 6\n");
    let out = wasmlet(&["--config", &config]);
    assert_one_line_error(&out, &["config file", &config, "unknown fields: maxPod"]);
}

#[test]
fn config_defaults_prints_a_file_the_agent_reads_back() {
    let out = wasmlet(&["config", "defaults"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "apiVersion: wasmlet.dev/v1alpha1",
        "kind: WasmletConfiguration",
        "maxPods: \"110\"",
        "syncFrequency: \"1m\"",
        "# kubeconfig:",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    // Read back, with a kubeconfig that does not exist: the file is accepted and the agent
    // gets as far as the kubeconfig.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmlet.yaml");
    std::fs::write(&config, &text).unwrap();
    let missing = dir.path().join("nope").display().to_string();
    let out = wasmlet(&[
        "--config",
        &config.display().to_string(),
        "--kubeconfig",
        &missing,
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    assert_one_line_error(&out, &["cannot read kubeconfig", &missing]);
}

#[test]
fn a_config_file_value_of_the_wrong_type_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "maxPods: lots\n");
    let out = wasmlet(&["--config", &config]);
    assert_one_line_error(&out, &["config file", "max-pods", "lots"]);
}

#[test]
fn a_flag_that_contradicts_the_config_file_wins_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "maxPods: 5\nkubeconfig: /from/the/file\n");
    let missing = dir.path().join("from-the-flag").display().to_string();
    let out = wasmlet(&[
        "--config",
        &config,
        "--kubeconfig",
        &missing,
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notes = stderr
        .matches("--kubeconfig on the command line overrides kubeconfig in config file")
        .count();
    assert_eq!(notes, 1, "{stderr}");
    assert!(!stderr.contains("maxPods"), "{stderr}");
    // The flag's value is the one used.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&missing), "{stderr}");
    assert!(!out.status.success());
}

#[test]
fn join_against_an_unreachable_server_retries_then_fails_in_one_line_with_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = wasmlet(&[
        "join",
        "127.0.0.1:1",
        "--token",
        "abcdef.0123456789abcdef",
        "--discovery-token-unsafe-skip-ca-verification",
        "--discovery-timeout",
        "6s",
        "--log-format",
        "json",
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let (last, logs) = lines.split_last().expect("some output");
    assert!(
        last.starts_with(
            "wasmlet: join: could not read cluster-info from https://127.0.0.1:1 within 6s"
        ),
        "{stderr}"
    );
    // Every log line is a JSON object; the retries are warnings that say what happens next.
    let retries = logs
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .filter(|log| {
            log["level"] == "WARN"
                && log["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("trying again in"))
        })
        .count();
    assert_eq!(retries, 2, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("bootstrap-kubeconfig").exists());
}

#[test]
fn a_join_token_that_is_not_id_dot_secret_is_refused() {
    let out = wasmlet(&["join", "127.0.0.1:1", "--token", "abc.def"]);
    assert_one_line_error(&out, &["--token must be 6 and 16 characters of [a-z0-9]"]);
}

/// A flag's value that clap refuses, or a flag it does not know, is one line too.
#[test]
fn a_bad_flag_or_value_is_one_line() {
    for (args, expected) in [
        (&["--max-pods", "0"][..], "'--max-pods <MAX_PODS>'"),
        (&["--compile-tiering", "fastest"][..], "'--compile-tiering"),
        (&["--no-such-flag"][..], "'--no-such-flag'"),
    ] {
        let out = wasmlet(args);
        assert_one_line_error(&out, &[expected]);
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let data_dir = dir.path().display().to_string();
    let out = wasmlet(&[
        "--kubeconfig",
        &kubeconfig,
        "--data-dir",
        &data_dir,
        "--node-name",
        "Edge_1",
    ]);
    assert_one_line_error(
        &out,
        &["\"Edge_1\" is not a valid DNS subdomain (lower-case letters, digits, '-' and '.'"],
    );
    let help = wasmlet(&["--help"]);
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--max-pods"));
}

#[test]
fn a_malformed_or_repeated_device_is_one_line_before_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let data_dir = dir.path().display().to_string();
    for (devices, expected) in [
        (
            &["fan=gpio:sim:17:sideways"][..],
            "neither \"in\" nor \"out\"",
        ),
        (&["Fan=gpio:sim:17:out"][..], "label \"Fan\""),
        (&["temp=i2c:sim:tmp102@0x99"][..], "not a 7-bit address"),
        // A chip or bus that is not there (the /dev root is the empty data dir).
        (&["fan=gpio:gpiochip0:17:out"][..], "gpiochip0"),
        (&["bus=i2c:i2c-1"][..], "i2c-1"),
        (&["a=i2c:i2c-1", "b=i2c:i2c-1"][..], "i2c-1 is given twice"),
        (
            &["fan=gpio:sim:17:out", "fan=gpio:sim:18:out"][..],
            "label \"fan\" is given twice",
        ),
    ] {
        let mut args = vec![
            "--kubeconfig",
            &kubeconfig,
            "--data-dir",
            &data_dir,
            "--dev-root",
            &data_dir,
        ];
        for device in devices {
            args.extend(["--device", device]);
        }
        let out = wasmlet(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_one_line_error(&out, &["--device", expected]);
    }
}

/// How long a command under test may take to do what it must; far above what it needs, so
/// that only a command that never does it fails.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The UID of the pod [`store_pod`] writes.
const POD_UID: &str = "0f6c3c3e-0000-4000-8000-000000000001";

/// Records pod `default/ticker` (one container, `app`) and `status` in the local store in
/// `data_dir`, through the store the agent writes with.
fn store_pod(data_dir: &Path, status: serde_json::Value) {
    use kubelet::store::{LocalStore, PodSource};
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ticker", "namespace": "default", "uid": POD_UID},
        "spec": {"containers": [{"name": "app", "image": "127.0.0.1:5000/ticker:v1"}]},
    }))
    .unwrap();
    let status: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(status).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = LocalStore::open(data_dir).unwrap();
        store.put_pod(PodSource::Api, &pod).await;
        store.put_status(POD_UID, &status).await;
        store.flush().await;
    });
}

/// The pod's status with its container `app` at restart count `restarts` in `state`.
fn pod_status(phase: &str, restarts: i32, state: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "phase": phase,
        "containerStatuses": [{
            "name": "app", "image": "127.0.0.1:5000/ticker:v1", "imageID": "",
            "ready": phase == "Running", "restartCount": restarts, "state": state,
        }],
    })
}

fn running() -> serde_json::Value {
    serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
}

fn completed() -> serde_json::Value {
    serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
}

/// Appends `lines` to the log of instance `instance` of the pod's container, as the agent
/// writes them (CRI records).
fn append_log(data_dir: &Path, instance: i32, lines: &[&str]) {
    use std::io::Write;
    let dir = data_dir.join("pods").join(POD_UID).join("logs").join("app");
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{instance}.log")))
        .unwrap();
    for line in lines {
        writeln!(file, "2026-01-01T00:00:00.000000000Z stdout F {line}").unwrap();
    }
}

/// wasmlet running in the background, its stdout read line by line; killed if a test
/// gives up on it.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Background {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmlet"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run wasmlet");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line of output, within the deadline.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|err| panic!("no line of output within {DEADLINE:?}: {err}"))
    }

    /// The rest of the output, once wasmlet closes its stdout (that is, exits) within the
    /// deadline, its exit status and its stderr.
    fn finish(mut self) -> (Vec<String>, std::process::ExitStatus, String) {
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) => rest.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(err) => {
                    panic!("wasmlet still runs after {DEADLINE:?} ({err}); printed {rest:?}")
                }
            }
        }
        // Its stdout is closed: it is exiting.
        let status = self.child.wait().expect("wait for wasmlet");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
        }
        (rest, status, stderr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_of_a_finished_container_prints_its_whole_log_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    store_pod(dir.path(), pod_status("Succeeded", 0, completed()));
    append_log(dir.path(), 0, &["one", "two", "three"]);
    let data_dir = dir.path().display().to_string();
    let logs = Background::start(&["logs", "ticker", "-f", "--data-dir", &data_dir]);
    let (lines, status, stderr) = logs.finish();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(lines, ["one", "two", "three"], "{stderr}");
}

/// The store saying the container ended stops the follower, after the lines written up to
/// then; so do a restart (a newer instance's log) and the agent stopping (its data dir's
/// lock free: it runs nothing, whatever the store last said).
#[test]
fn logs_follow_ends_when_the_followed_container_ends_restarts_or_its_agent_stops() {
    for end in ["succeeded", "restarted", "agent stopped"] {
        let dir = tempfile::tempdir().unwrap();
        let agent = DataDir::open(dir.path()).unwrap();
        store_pod(dir.path(), pod_status("Running", 0, running()));
        append_log(dir.path(), 0, &["first"]);
        let data_dir = dir.path().display().to_string();
        let logs = Background::start(&["logs", "ticker", "-f", "--data-dir", &data_dir]);
        assert_eq!(logs.next_line(), "first");
        append_log(dir.path(), 0, &["last"]);
        match end {
            "succeeded" => store_pod(dir.path(), pod_status("Succeeded", 0, completed())),
            "restarted" => append_log(dir.path(), 1, &["next instance"]),
            _ => drop(agent),
        }
        let (rest, status, stderr) = logs.finish();
        assert!(status.success(), "{end}: {status}: {stderr}");
        assert_eq!(rest, ["last"], "{end}: {stderr}");
    }
}

#[test]
fn ps_and_logs_of_a_data_dir_that_is_not_there_fail_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").display().to_string();
    assert_one_line_error(
        &wasmlet(&["ps", "--data-dir", &missing]),
        &["data dir", &missing, "does not exist"],
    );
    assert_one_line_error(
        &wasmlet(&["logs", "ticker", "--data-dir", &missing]),
        &["data dir", &missing, "does not exist"],
    );
    // A directory the agent never ran with has no store: not a node with no pods.
    let empty = dir.path().display().to_string();
    assert_one_line_error(
        &wasmlet(&["ps", "--data-dir", &empty]),
        &["data dir", &empty, "no local store"],
    );
}

#[test]
fn ps_and_logs_read_the_data_dir_of_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state");
    std::fs::create_dir(&data_dir).unwrap();
    store_pod(&data_dir, pod_status("Running", 0, running()));
    append_log(&data_dir, 0, &["hello"]);
    let config = config_file(
        dir.path(),
        &format!("dataDir: {}\nmaxPods: 5\n", data_dir.display()),
    );
    let out = wasmlet(&["ps", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|row| row.contains("ticker") && row.contains("Running")),
        "{table}"
    );
    let out = wasmlet(&["logs", "ticker", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // A file the agent would refuse is refused here too, by name.
    let bad = config_file(dir.path(), "maxPod: 5\n");
    assert_one_line_error(
        &wasmlet(&["ps", "--config", &bad]),
        &["config file", &bad, "unknown fields: maxPod"],
    );
}

/// `wasmlet … | head -1`: Rust ignores SIGPIPE, so the reader going away is a write error,
/// which must end the command quietly, not panic.
#[test]
fn print_commands_with_their_stdout_closed_exit_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // The container runs, on a running agent.
    let _agent = DataDir::open(dir.path()).unwrap();
    store_pod(dir.path(), pod_status("Running", 0, running()));
    append_log(dir.path(), 0, &["hello"]);
    let data_dir = dir.path().display().to_string();
    for args in [
        &["config", "defaults"][..],
        &["ps", "--data-dir", &data_dir],
        &["logs", "ticker", "--data-dir", &data_dir],
    ] {
        // The read end is closed before wasmlet starts, so its first write fails, however
        // little it prints.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_wasmlet"))
            .args(args)
            .stdout(writer)
            .output()
            .expect("run wasmlet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    // Following a running container stops when its reader goes, not when the container
    // ends (which for a server may be never).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmlet"))
        .args(["logs", "ticker", "-f", "--data-dir", &data_dir])
        .stdout(writer)
        .spawn()
        .expect("run wasmlet");
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("logs -f still follows {DEADLINE:?} after its reader went");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
