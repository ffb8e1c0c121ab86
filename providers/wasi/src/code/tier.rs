//! One compiler tier: an engine with its compiler, the WASI linkers for that engine, and the
//! tier's disk cache.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kubelet::ContainerError;
use wasmtime::component::Component;
use wasmtime::{Engine, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::disk::{self, DiskCache};
use super::{Code, Compiled};
use crate::EngineError;
use crate::extension::HostExtension;
use crate::guest::{P1Host, P2Host};

/// Which compiler produced a piece of code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierKind {
    /// Winch: a single pass, so code is ready at once, but it runs slower.
    Baseline,
    /// Cranelift: optimised code, at many times the compile time.
    Optimised,
}

impl TierKind {
    /// The compiler's name, for logs and cache directories.
    pub fn compiler(self) -> &'static str {
        match self {
            TierKind::Baseline => "winch",
            TierKind::Optimised => "cranelift",
        }
    }
}

/// WASI linkers, built once per engine.
struct Linkers {
    p1: Linker<P1Host>,
    p2: wasmtime::component::Linker<P2Host>,
}

impl Linkers {
    fn new(engine: &Engine, extensions: &[Arc<dyn HostExtension>]) -> wasmtime::Result<Self> {
        let mut p1 = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |host: &mut P1Host| &mut host.wasi)?;
        let mut p2 = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2)?;
        // Only components get wasi:http: preview 1 has no HTTP interface. Whether a request
        // may go out is decided per pod by the hooks in `P2Host` (see `http`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2)?;
        for extension in extensions {
            extension.add_to_linker(&mut p2)?;
        }
        Ok(Self { p1, p2 })
    }
}

/// Code of either kind, compiled or loaded but not yet linked.
enum Unlinked {
    Module(Module),
    Component(Component),
}

/// A compiler tier.
pub(crate) struct Tier {
    kind: TierKind,
    engine: Engine,
    linkers: Linkers,
    disk: DiskCache,
    /// Compiles done, for the log and for tests of compile-once.
    compiles: AtomicU64,
}

fn invalid(artifact: &oci::WasmArtifact, what: &str, err: wasmtime::Error) -> ContainerError {
    ContainerError {
        reason: "InvalidWasm".into(),
        message: format!("{} cannot be {what}: {err:#}", artifact.reference),
        // The same bytes will fail the same way: retrying cannot help.
        fatal: true,
    }
}

impl Tier {
    /// The tier for `engine`, caching its code in `cache_root` under [`Tier::dir_name`].
    pub(crate) fn new(
        kind: TierKind,
        engine: Engine,
        cache_root: &Path,
        extensions: &[Arc<dyn HostExtension>],
    ) -> Result<Self, EngineError> {
        let linkers = Linkers::new(&engine, extensions).map_err(EngineError::Engine)?;
        let disk = DiskCache::open(cache_root, &disk::dir_name(kind.compiler(), &engine)).map_err(
            |source| EngineError::Cache {
                dir: cache_root.to_path_buf(),
                source,
            },
        )?;
        Ok(Self {
            kind,
            engine,
            linkers,
            disk,
            compiles: AtomicU64::new(0),
        })
    }

    /// The directory, below the cache root, that holds this tier's code.
    pub(crate) fn dir_name(&self) -> &str {
        self.disk.name()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The code cached on disk for `artifact`, if a verified entry loads in this engine.
    /// Blocking.
    pub(crate) fn load(&self, artifact: &oci::WasmArtifact) -> Option<Compiled> {
        let entry = self.disk.load(&artifact.wasm_digest)?;
        // SAFETY: the entry's SHA-256 matched, so these are exactly the bytes `serialize`
        // wrote on this node into the directory of this engine's configuration; wasmtime
        // checks the configuration again and refuses a mismatch with an error.
        let loaded = match artifact.kind {
            oci::WasmKind::Module => {
                unsafe { Module::deserialize(&self.engine, entry.code()) }.map(Unlinked::Module)
            }
            oci::WasmKind::Component => {
                unsafe { Component::deserialize(&self.engine, entry.code()) }
                    .map(Unlinked::Component)
            }
        };
        match loaded
            .map_err(|e| invalid(artifact, "loaded", e))
            .and_then(|code| self.link(artifact, code))
        {
            Ok(compiled) => Some(compiled),
            Err(err) => {
                tracing::warn!(digest = %artifact.wasm_digest, compiler = self.kind.compiler(), message = %err.message, "cached code does not load; compiling");
                self.disk.remove(&artifact.wasm_digest);
                None
            }
        }
    }

    /// Compiles `bytes` with this tier's compiler and caches the code on disk. A cache that
    /// cannot be written (a full disk) costs a log line, never the start. Blocking.
    pub(crate) fn compile(
        &self,
        artifact: &oci::WasmArtifact,
        bytes: &[u8],
    ) -> Result<Compiled, ContainerError> {
        let began = std::time::Instant::now();
        let code = match artifact.kind {
            oci::WasmKind::Module => Module::new(&self.engine, bytes).map(Unlinked::Module),
            oci::WasmKind::Component => {
                Component::new(&self.engine, bytes).map(Unlinked::Component)
            }
        }
        .map_err(|e| invalid(artifact, "compiled", e))?;
        let compiles = self
            .compiles
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        tracing::info!(digest = %artifact.wasm_digest, compiler = self.kind.compiler(), wasm_bytes = bytes.len(), elapsed_ms = began.elapsed().as_secs_f64() * 1e3, compiles, "compiled");
        let serialized = match &code {
            Unlinked::Module(module) => module.serialize(),
            Unlinked::Component(component) => component.serialize(),
        };
        let stored = serialized
            .map_err(std::io::Error::other)
            .and_then(|code| self.disk.store(&artifact.wasm_digest, &code));
        if let Err(err) = stored {
            tracing::warn!(digest = %artifact.wasm_digest, compiler = self.kind.compiler(), %err, "cannot cache compiled code on disk; it will be compiled again after a restart");
        }
        self.link(artifact, code)
    }

    /// Forgets the cached code of digests `keep` refuses (their images are gone).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.disk.retain(keep);
    }

    fn link(
        &self,
        artifact: &oci::WasmArtifact,
        code: Unlinked,
    ) -> Result<Compiled, ContainerError> {
        let code = match code {
            Unlinked::Module(module) => self
                .linkers
                .p1
                .instantiate_pre(&module)
                .map(Code::Module)
                .map_err(|e| invalid(artifact, "linked against WASI preview 1", e))?,
            Unlinked::Component(component) => {
                let pre = self
                    .linkers
                    .p2
                    .instantiate_pre(&component)
                    .map_err(|e| invalid(artifact, "linked against WASI 0.2", e))?;
                // A command runs; a component without `wasi:cli/run` that exports
                // `wasi:http/incoming-handler` is served.
                match CommandPre::new(pre.clone()) {
                    Ok(command) => Code::Component(command),
                    Err(not_command) => ProxyPre::new(pre).map(Code::Proxy).map_err(|_| {
                        invalid(
                            artifact,
                            "linked as a wasi:cli/command or a wasi:http/proxy component",
                            not_command,
                        )
                    })?,
                }
            }
        };
        Ok(Compiled {
            engine: self.engine.clone(),
            code,
            tier: self.kind,
        })
    }
}

#[cfg(test)]
impl Tier {
    /// How many times this tier has compiled something since the node started.
    pub(crate) fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    pub(crate) fn disk_for_tests(&mut self) -> &mut DiskCache {
        &mut self.disk
    }
}
