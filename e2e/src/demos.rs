use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::wasmlet::wasmlet_binary;

/// The demos that are wasm32-wasip2 components; the others are wasm32-wasip1 modules.
pub const COMPONENT_DEMOS: [&str; 6] = [
    "hello-component",
    "http-client",
    "config-reader",
    "http-hello",
    "tcp-listener",
    "thermostat",
];

/// The built demo `name` (`demos/build.sh` builds them): a wasm32-wasip1 module, or for
/// the [`COMPONENT_DEMOS`] a wasm32-wasip2 component.
pub fn demo_wasm(name: &str) -> anyhow::Result<PathBuf> {
    let target = if COMPONENT_DEMOS.contains(&name) {
        "wasm32-wasip2"
    } else {
        "wasm32-wasip1"
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../demos/target")
        .join(target)
        .join("release");
    // A binary keeps the crate's name; a library (a wasi:http/proxy component) has its
    // dashes turned into underscores.
    let path = dir.join(format!("{name}.wasm"));
    let path = if path.is_file() {
        path
    } else {
        dir.join(format!("{}.wasm", name.replace('-', "_")))
    };
    if !path.is_file() {
        bail!("{} is missing; run demos/build.sh", path.display());
    }
    Ok(path)
}

/// A local registry holding demo `name` as `bench/<name>:v1` (pushed in-process, CNCF
/// format), for a benchmark whose provider pulls as it does on a node.
pub async fn bench_registry(name: &str) -> anyhow::Result<(crate::Registry, String)> {
    let registry = crate::Registry::start()?;
    let image = format!("{}/bench/{name}:v1", registry.host());
    oci::push::push(
        &demo_wasm(name)?,
        &image,
        oci::push::PushFormat::Cncf,
        &oci::RegistryAuth::Anonymous,
        true,
    )
    .await?;
    Ok((registry, image))
}

/// Publishes `file` to `image` with `wasmlet push --insecure`, as an operator would.
pub fn push_file(file: &std::path::Path, image: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    wasmlet_push(file, image, &["--insecure"], env)
}

/// Publishes `file` to `image` over HTTPS with `wasmlet push`.
pub fn push_file_over_https(
    file: &std::path::Path,
    image: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    wasmlet_push(file, image, &[], env)
}

fn wasmlet_push(
    file: &std::path::Path,
    image: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let out = Command::new(wasmlet_binary()?)
        .arg("push")
        .arg(file)
        .arg(image)
        .args(flags)
        .envs(env.iter().copied())
        .output()
        .context("run wasmlet push")?;
    if !out.status.success() {
        bail!(
            "wasmlet push {image} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Publishes demo `name` as `<registry>/demos/<name>:v1` and returns that reference.
pub fn push_demo(registry: &str, name: &str) -> anyhow::Result<String> {
    let image = format!("{registry}/demos/{name}:v1");
    push_file(&demo_wasm(name)?, &image, &[])?;
    Ok(image)
}

/// `(n, ms)` from the ticker demo's line `tick <n> from <pod> at <ms>`: its count, and the
/// wall clock (ms since the epoch) when it wrote the line.
pub fn tick(line: &str) -> Option<(u64, u64)> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["tick", n, "from", _, "at", ms] => Some((n.parse().ok()?, ms.parse().ok()?)),
        _ => None,
    }
}

/// Every ticker line a container wrote to stdout, from its CRI log file on the node, as
/// [`tick`] reads it.
pub fn cri_ticks(cri_log: &str) -> Vec<(u64, u64)> {
    cri_log
        .lines()
        .filter_map(|line| tick(line.split_once(" stdout F ")?.1))
        .collect()
}

/// Milliseconds since the epoch: the clock the ticker stamps its lines with.
pub fn unix_ms() -> u64 {
    jiff::Timestamp::now()
        .as_millisecond()
        .try_into()
        .unwrap_or(0)
}
