//! Records the resolved wasmtime version so the node can report `wasmtime://<version>`;
//! wasmtime does not export its version, and Cargo.lock is where the resolved one lives.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let lock = manifest_dir
        .ancestors()
        .map(|dir| dir.join("Cargo.lock"))
        .find(|path| path.exists());
    let version = lock
        .and_then(|path| {
            println!("cargo:rerun-if-changed={}", path.display());
            std::fs::read_to_string(path).ok()
        })
        .and_then(|text| wasmtime_version(&text))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WASMTIME_VERSION={version}");
}

fn wasmtime_version(lock: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasmtime\"" {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_string());
        }
    }
    None
}
