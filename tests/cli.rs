//! Bad input at the command line: each case exits non-zero with one line naming the problem,
//! before wasmlet touches the cluster.

use std::path::Path;
use std::process::{Command, Output};

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
