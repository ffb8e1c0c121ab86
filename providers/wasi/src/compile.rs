//! Compiling a pulled artifact once and linking it against WASI, so each container start is
//! only an instantiation.

use kubelet::ContainerError;
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::guest::{P1Host, P2Host};

/// A compiled, pre-linked Wasm binary. Cheap to clone.
#[derive(Clone)]
pub enum Compiled {
    /// A WASI preview 1 module.
    Module(InstancePre<P1Host>),
    /// A `wasi:cli/command` component.
    Component(CommandPre<P2Host>),
}

/// WASI linkers, built once per engine.
pub(crate) struct Linkers {
    p1: Linker<P1Host>,
    p2: wasmtime::component::Linker<P2Host>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut p1 = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |host: &mut P1Host| &mut host.wasi)?;
        let mut p2 = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2)?;
        // Only components get wasi:http: preview 1 has no HTTP interface. Whether a request
        // may go out is decided per pod by the hooks in `P2Host` (see `http`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2)?;
        Ok(Self { p1, p2 })
    }
}

fn invalid(artifact: &oci::WasmArtifact, what: &str, err: wasmtime::Error) -> ContainerError {
    ContainerError {
        reason: "InvalidWasm".into(),
        message: format!("{} cannot be {what}: {err:#}", artifact.reference),
        // The same bytes will fail the same way: retrying cannot help.
        fatal: true,
    }
}

/// Compiles (or loads from the on-disk cache) and links `artifact`.
pub(crate) async fn compile(
    engine: &Engine,
    linkers: &Linkers,
    artifact: &oci::WasmArtifact,
) -> Result<Compiled, ContainerError> {
    let bytes = tokio::fs::read(&artifact.wasm_path)
        .await
        .map_err(|e| ContainerError {
            reason: "CreateContainerError".into(),
            message: format!("cannot read {}: {e}", artifact.wasm_path.display()),
            fatal: false,
        })?;
    let engine = engine.clone();
    let kind = artifact.kind;
    // Compilation is CPU-bound; keep it off the async workers.
    let compiled = tokio::task::spawn_blocking(move || match kind {
        oci::WasmKind::Module => Module::new(&engine, &bytes).map(Ok),
        oci::WasmKind::Component => Component::new(&engine, &bytes).map(Err),
    })
    .await
    .map_err(|e| ContainerError {
        reason: "CreateContainerError".into(),
        message: format!("the compiler task failed: {e}"),
        fatal: false,
    })?
    .map_err(|e| invalid(artifact, "compiled", e))?;
    match compiled {
        Ok(module) => linkers
            .p1
            .instantiate_pre(&module)
            .map(Compiled::Module)
            .map_err(|e| invalid(artifact, "linked against WASI preview 1", e)),
        Err(component) => linkers
            .p2
            .instantiate_pre(&component)
            .and_then(CommandPre::new)
            .map(Compiled::Component)
            .map_err(|e| invalid(artifact, "linked as a wasi:cli/command component", e)),
    }
}
