//! Turning a reference into a verified [`WasmArtifact`] in the store.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use tokio::io::AsyncWrite;
use tokio::sync::{OnceCell, RwLock};
use tracing::info;

use crate::client::{new_http, off_runtime};
use crate::compat::{self, Layer};
use crate::media::{self, Shape};
use crate::registry::Registry;
use crate::store::{ArtifactRecord, now_secs};
use crate::wasm::describe_non_wasm;
use crate::{Error, PullPolicy, Result, Store, WasmArtifact, WasmKind};

/// The largest image config accepted: it is read whole and parsed, and a real one (the
/// entrypoint, the environment, the layers' history) is a few KiB. The OCI distribution
/// spec expects manifests of up to 4 MiB; a config has no reason to be larger.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// How fast a blob must come: at least `min_bytes` in every `window` (in its last window,
/// what is left of it), as curl's `--speed-limit`/`--speed-time`. A registry that trickles a
/// byte now and then, each within the client's read timeout, would otherwise hold the pull,
/// the pod waiting on it and the store's garbage collection for as long as it liked.
#[derive(Clone, Copy, Debug)]
struct Pace {
    min_bytes: u64,
    window: std::time::Duration,
}

/// 16 KiB a minute: far below any link an image can be pulled over.
const MIN_PACE: Pace = Pace {
    min_bytes: 16 * 1024,
    window: std::time::Duration::from_secs(60),
};
/// How long a manifest may take to come: at most [`crate::registry::MAX_MANIFEST_BYTES`],
/// so a slow link's minutes, not a trickle's forever.
const MANIFEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);
/// How stale a cached artifact's `last_used` may get before a use rewrites it.
const TOUCH_GRANULARITY_SECS: u64 = 60;
/// How the puller reaches registries.
#[derive(Clone, Debug)]
pub struct PullerConfig {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The largest layer (and extracted `.wasm`) accepted.
    pub max_layer_bytes: u64,
}

impl Default for PullerConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            max_layer_bytes: 512 * 1024 * 1024,
        }
    }
}

/// One pull.
#[derive(Clone)]
pub struct PullRequest<'a> {
    /// The image reference, as in the pod spec.
    pub image: &'a str,
    /// When to contact the registry.
    pub policy: PullPolicy,
    /// Credentials for the image's registry.
    pub auth: RegistryAuth,
    /// For compat images: the file the container's command names, overriding the image's
    /// entrypoint. Ignored by the single-layer shapes, which hold exactly one Wasm.
    pub entry: Option<&'a str>,
    /// Called once with a downloaded artifact as soon as its Wasm bytes are verified, before
    /// the pull finishes: a runtime starts compiling here.
    pub on_verified: Option<&'a (dyn Fn(&WasmArtifact) + Send + Sync)>,
}

/// Where a pulled artifact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The node's store, without asking the registry (`IfNotPresent` or `Never`).
    Present,
    /// The registry was asked: the artifact was fetched, or (`Always`) its digest was
    /// confirmed to be the one the node holds.
    Registry,
}

impl std::fmt::Debug for PullRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRequest")
            .field("image", &self.image)
            .field("policy", &self.policy)
            .field("entry", &self.entry)
            .field("on_verified", &self.on_verified.is_some())
            .finish_non_exhaustive()
    }
}

/// A pull's hold on its key's entry in [`Puller::in_flight`]. Dropping it, whether the pull
/// finished or was cancelled mid-way (its pod deleted, say), removes the entry once no other
/// pull of the key holds it, so the map holds only pulls in progress.
struct InFlight<'a> {
    puller: &'a Puller,
    key: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self
            .puller
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Two holders: the map and this one. Anyone else waiting keeps the entry alive.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(self.key);
        }
    }
}

/// Pulls artifacts into a [`Store`]. Concurrent pulls of one reference collapse into one
/// download: the second waits for the first and then finds the artifact in the store.
pub struct Puller {
    /// `host:port` of registries spoken to over plain HTTP.
    insecure_registries: Vec<String>,
    /// Made on the first pull that asks a registry.
    registry: OnceCell<Registry>,
    store: Arc<Store>,
    max_layer_bytes: u64,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls hold it shared, garbage collection exclusively, so GC never sweeps blobs of a
    /// pull whose record is not written yet.
    gc_gate: Arc<RwLock<()>>,
    /// How fast a blob must come ([`MIN_PACE`]).
    pace: Pace,
    /// How long a manifest may take ([`MANIFEST_DEADLINE`]).
    manifest_deadline: std::time::Duration,
}

impl Puller {
    /// A puller for `store`.
    pub fn new(store: Arc<Store>, config: PullerConfig) -> Self {
        Self {
            insecure_registries: config.insecure_registries,
            registry: OnceCell::new(),
            store,
            max_layer_bytes: config.max_layer_bytes,
            in_flight: Mutex::new(HashMap::new()),
            gc_gate: Arc::new(RwLock::new(())),
            pace: MIN_PACE,
            manifest_deadline: MANIFEST_DEADLINE,
        }
    }

    /// The store it pulls into.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The registry client, made on first use off the runtime's threads (making one reads
    /// the system's CA certificates).
    async fn registry(&self, reference: &Reference) -> Result<&Registry> {
        self.registry
            .get_or_try_init(|| async {
                let http = off_runtime(reference, new_http).await?;
                Ok(Registry::new(http, self.insecure_registries.clone()))
            })
            .await
    }

    /// The garbage collector's hold on the store, unless a pull is under way.
    pub(crate) fn exclusive(&self) -> Option<tokio::sync::RwLockWriteGuard<'_, ()>> {
        self.gc_gate.try_write().ok()
    }

    /// What a pull holds while it runs, for tests of what it holds up.
    #[cfg(test)]
    pub(crate) fn pulling(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc_gate.try_read().expect("no collection under way")
    }

    /// Pulls `request.image` as its policy says and returns the artifact.
    pub async fn pull(&self, request: &PullRequest<'_>) -> Result<WasmArtifact> {
        Ok(self.pull_from(request).await?.0)
    }

    /// As [`Puller::pull`], and says where the artifact came from: a kubelet's events differ
    /// for an image already on the node.
    pub async fn pull_from(&self, request: &PullRequest<'_>) -> Result<(WasmArtifact, Origin)> {
        let reference: Reference =
            request
                .image
                .parse()
                .map_err(|e: oci_client::ParseError| Error::InvalidReference {
                    reference: request.image.to_string(),
                    reason: e.to_string(),
                })?;
        let key = match request.entry {
            Some(entry) => format!("{}#{entry}", request.image),
            None => request.image.to_string(),
        };
        let _shared = self.gc_gate.read().await;
        let in_flight = self.in_flight(&key);
        let _one_at_a_time = in_flight.lock.lock().await;
        self.pull_locked(&reference, &key, request).await
    }

    async fn pull_locked(
        &self,
        reference: &Reference,
        key: &str,
        request: &PullRequest<'_>,
    ) -> Result<(WasmArtifact, Origin)> {
        let cached = self.store.record(key).await;
        match (request.policy, cached) {
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(record)) => {
                return Ok((self.touch(record).await?, Origin::Present));
            }
            (PullPolicy::Never, None) => {
                return Err(Error::NeverPull {
                    reference: request.image.to_string(),
                });
            }
            (PullPolicy::Always, Some(record)) => {
                let registry = self.registry(reference).await?;
                let remote = self
                    .by_deadline(
                        reference,
                        registry.manifest_digest(reference, &request.auth),
                    )
                    .await??;
                let unchanged = remote == record.artifact.manifest_digest
                    || record.index_digest.as_deref() == Some(remote.as_str());
                if unchanged {
                    return Ok((self.touch(record).await?, Origin::Registry));
                }
            }
            (_, None) => {}
        }
        let started = std::time::Instant::now();
        let record = self.fetch(reference, key, request).await?;
        self.store.save_record(&record).await?;
        info!(image = request.image, digest = %record.artifact.wasm_digest, shape = ?record.artifact.shape,
              elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
        Ok((record.artifact, Origin::Registry))
    }

    /// Marks a cached artifact used. `last_used` only orders artifacts for garbage
    /// collection, which works in minutes, so the record is rewritten at most once per
    /// [`TOUCH_GRANULARITY_SECS`], and in the background: its fsync was most of a cached
    /// start's image lookup (12 ms on every start, then 139 ms on the first start after a
    /// restart, measured by bench-pods). The write holds the garbage collector's gate, so
    /// collection never judges the artifact by the old time while the new one is on its way,
    /// and it is dropped if a newer pull recorded another artifact for the key first.
    async fn touch(&self, mut record: ArtifactRecord) -> Result<WasmArtifact> {
        let now = now_secs();
        if now.saturating_sub(record.last_used) < TOUCH_GRANULARITY_SECS {
            return Ok(record.artifact);
        }
        record.last_used = now;
        let artifact = record.artifact.clone();
        // The caller holds the gate shared, so no collection runs now, and another share
        // keeps it out until the record is written; should none be had, it is written here.
        match self.gc_gate.clone().try_read_owned() {
            Ok(gate) => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _gate = gate;
                    if let Err(err) = store.save_use(&record).await {
                        tracing::warn!(%err, "cannot record an artifact's use; garbage collection may take it sooner");
                    }
                });
            }
            Err(_) => self.store.save_use(&record).await?,
        }
        Ok(artifact)
    }

    /// A hold on `key`'s pull lock, shared with every other pull of `key` now.
    fn in_flight<'a>(&'a self, key: &'a str) -> InFlight<'a> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        InFlight {
            puller: self,
            key,
            lock: map.entry(key.to_string()).or_default().clone(),
        }
    }

    async fn fetch(
        &self,
        reference: &Reference,
        key: &str,
        request: &PullRequest<'_>,
    ) -> Result<ArtifactRecord> {
        let auth = &request.auth;
        let (mut manifest_digest, mut manifest) =
            self.manifest(reference, auth, reference.digest()).await?;
        let mut index_digest = None;
        if let OciManifest::ImageIndex(index) = &manifest {
            index_digest = Some(manifest_digest.clone());
            let entry = pick_wasm_platform(reference, index)?;
            let child = reference.clone_with_digest(entry.clone());
            (manifest_digest, manifest) = self.manifest(&child, auth, Some(&entry)).await?;
        }
        let OciManifest::Image(image) = manifest else {
            return Err(Error::Registry {
                reference: reference.whole(),
                message: "an image index points at another index".into(),
            });
        };
        let media_types: Vec<&str> = image.layers.iter().map(|l| l.media_type.as_str()).collect();
        let not_wasm = |detail: String| Error::NotWasm {
            reference: reference.whole(),
            media_types: media_types.iter().map(|m| m.to_string()).collect(),
            detail,
        };
        let Some((shape, wasm_layer)) = media::classify(&media_types) else {
            return Err(not_wasm("no Wasm layer and no tar layers".into()));
        };
        let mut blobs = vec![manifest_digest.clone()];
        let base = |wasm_digest: String, wasm_path, kind| WasmArtifact {
            reference: request.image.to_string(),
            manifest_digest: manifest_digest.clone(),
            wasm_digest,
            wasm_path,
            kind,
            shape,
            entrypoint: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
        };
        let artifact = match (shape, wasm_layer) {
            (Shape::Compat, _) => {
                compat::check_layers(&reference.whole(), &image.layers)?;
                let config = self
                    .image_config(reference, &image, auth, &mut blobs)
                    .await?;
                let mut layers = Vec::new();
                for layer in &image.layers {
                    let path = self
                        .download(reference, layer, auth, self.max_layer_bytes)
                        .await?;
                    blobs.push(layer.digest.clone());
                    layers.push(Layer {
                        path,
                        digest: layer.digest.clone(),
                        compression: media::tar_compression(&layer.media_type)
                            .unwrap_or(media::TarCompression::None),
                    });
                }
                let entry = request
                    .entry
                    .map(str::to_string)
                    .or_else(|| config.entrypoint.first().cloned())
                    .or_else(|| config.cmd.first().cloned())
                    .ok_or_else(|| {
                        not_wasm("the image has no entrypoint or cmd naming a .wasm".into())
                    })?;
                let (reference_text, limit, working_dir) = (
                    reference.whole(),
                    self.max_layer_bytes,
                    config.working_dir.clone(),
                );
                let entry_for_read = entry.clone();
                let bytes = tokio::task::spawn_blocking(move || {
                    compat::read_entry(
                        &reference_text,
                        &layers,
                        &entry_for_read,
                        &working_dir,
                        limit,
                    )
                })
                .await
                .map_err(|e| Error::Registry {
                    reference: reference.whole(),
                    message: format!("layer reader failed: {e}"),
                })??
                .ok_or_else(|| {
                    not_wasm(format!("the entrypoint {entry} is not a file in the image"))
                })?;
                let kind = WasmKind::detect(&bytes).ok_or_else(|| {
                    not_wasm(format!(
                        "the entrypoint {entry} is {}",
                        describe_non_wasm(&bytes)
                    ))
                })?;
                let (digest, path) = self.store.put_bytes(bytes).await?;
                blobs.push(digest.clone());
                WasmArtifact {
                    entrypoint: config.entrypoint,
                    args: config.cmd,
                    env: config.env,
                    ..base(digest, path, kind)
                }
            }
            (_, Some(i)) => {
                let layer = &image.layers[i];
                let path = self
                    .download(reference, layer, auth, self.max_layer_bytes)
                    .await?;
                blobs.push(layer.digest.clone());
                let header = read_header(&path).await?;
                let kind = WasmKind::detect(&header).ok_or_else(|| Error::InvalidWasm {
                    reference: reference.whole(),
                    detail: format!("layer {} is {}", layer.digest, describe_non_wasm(&header)),
                })?;
                base(layer.digest.clone(), path, kind)
            }
            (_, None) => return Err(not_wasm("no Wasm layer".into())),
        };
        if let Some(verified) = request.on_verified {
            verified(&artifact);
        }
        Ok(ArtifactRecord {
            key: key.to_string(),
            artifact,
            blobs,
            last_used: now_secs(),
            index_digest,
        })
    }

    /// Fetches a manifest, stores its bytes, and checks them against `expected` if given and
    /// against the digest the registry gave for them.
    async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        expected: Option<&str>,
    ) -> Result<(String, OciManifest)> {
        let registry = self.registry(reference).await?;
        let (bytes, given) = self
            .by_deadline(reference, registry.manifest(reference, auth))
            .await??;
        let (digest, _) = self.store.put_bytes(bytes.clone()).await?;
        // A registry's digest in another algorithm than ours cannot be compared.
        let given = given.filter(|given| given.starts_with("sha256:"));
        if let Some(expected) = expected.or(given.as_deref())
            && expected != digest
        {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
            reference: reference.whole(),
            message: format!("unreadable manifest: {e}"),
        })?;
        Ok((digest, manifest))
    }

    /// `request` (a manifest or its digest) unless the manifest deadline passes first.
    async fn by_deadline<T>(
        &self,
        reference: &Reference,
        request: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::time::timeout(self.manifest_deadline, request)
            .await
            .map_err(|_| Error::Registry {
                reference: reference.whole(),
                message: format!(
                    "the manifest did not come within {:?}; the pull was abandoned",
                    self.manifest_deadline
                ),
            })
    }

    async fn image_config(
        &self,
        reference: &Reference,
        image: &OciImageManifest,
        auth: &RegistryAuth,
        blobs: &mut Vec<String>,
    ) -> Result<ContainerConfig> {
        let limit = MAX_CONFIG_BYTES.min(self.max_layer_bytes);
        let path = self.download(reference, &image.config, auth, limit).await?;
        blobs.push(image.config.digest.clone());
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(Error::store("read", &path))?;
        let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
            reference: reference.whole(),
            message: format!("unreadable image config: {e}"),
        })?;
        Ok(config.config.unwrap_or_default())
    }

    /// Downloads one blob into the store (unless present), refused if its manifest gives
    /// it more than `limit` bytes, stopped if it streams more than its manifest gives, and
    /// verified against its digest by the store on commit.
    async fn download(
        &self,
        reference: &Reference,
        layer: &OciDescriptor,
        auth: &RegistryAuth,
        limit: u64,
    ) -> Result<std::path::PathBuf> {
        let Ok(declared) = u64::try_from(layer.size) else {
            return Err(Error::Registry {
                reference: reference.whole(),
                message: format!("layer {} has a negative size", layer.digest),
            });
        };
        if declared > limit {
            return Err(Error::LayerTooLarge {
                reference: reference.whole(),
                digest: layer.digest.clone(),
                size: declared,
                limit,
            });
        }
        let not_its_size = |actual: &str| Error::Registry {
            reference: reference.whole(),
            message: format!(
                "layer {} is not the {declared} bytes its manifest gives: it is {actual}",
                layer.digest
            ),
        };
        if self.store.has_blob(&layer.digest) {
            // Held already, perhaps as another image's layer: the same limits hold for it.
            let path = self.store.blob_path(&layer.digest)?;
            let stored = tokio::fs::metadata(&path)
                .await
                .map_err(Error::store("read", &path))?
                .len();
            if stored != declared {
                return Err(not_its_size(&format!("{stored} bytes")));
            }
            return Ok(path);
        }
        let pending = self.store.begin_blob();
        let file = tokio::fs::File::create(pending.path())
            .await
            .map_err(Error::store("create", pending.path()))?;
        // Nothing to fetch, and no pace could hold a registry that sent nothing: the store
        // checks that the digest is the empty blob's.
        if declared == 0 {
            drop(file);
            return self.store.commit_blob(pending, &layer.digest).await;
        }
        let registry = self.registry(reference).await?;
        // A descriptor's size is part of what its manifest's digest vouches for: a blob
        // that streams past it is not the blob the manifest names, whatever it hashes to.
        let exceeded = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let mut writer = LimitedWriter {
            inner: file,
            remaining: declared,
            exceeded: exceeded.clone(),
            written: written.clone(),
        };
        let pulled = tokio::select! {
            pulled = registry.copy_blob(reference, auth, &layer.digest, &mut writer) => pulled,
            came = stalled(&written, declared, self.pace) => {
                return Err(Error::Registry {
                    reference: reference.whole(),
                    message: format!(
                        "layer {} came too slowly ({came} bytes in the last {:?}, under {}); the pull was abandoned",
                        layer.digest, self.pace.window, self.pace.min_bytes
                    ),
                });
            }
        };
        if let Err(err) = pulled {
            if exceeded.load(Ordering::Relaxed) {
                return Err(not_its_size("larger"));
            }
            return Err(err);
        }
        // Shorter is no better: a blob committed at another size would be refused by every
        // later pull that finds it held.
        let written = tokio::fs::metadata(pending.path())
            .await
            .map_err(Error::store("read", pending.path()))?
            .len();
        if written != declared {
            return Err(not_its_size(&format!("{written} bytes")));
        }
        self.store.commit_blob(pending, &layer.digest).await
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct ImageConfig {
    config: Option<ContainerConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    working_dir: String,
}

pub(crate) fn pick_wasm_platform(
    reference: &Reference,
    index: &oci_client::manifest::OciImageIndex,
) -> Result<String> {
    let is_wasm =
        |os: &str, arch: &str| matches!(os, "wasip1" | "wasip2" | "wasi") || arch == "wasm";
    let mut seen = Vec::new();
    for entry in &index.manifests {
        if let Some(platform) = &entry.platform {
            let (os, arch) = (platform.os.to_string(), platform.architecture.to_string());
            if is_wasm(&os, &arch) {
                return Ok(entry.digest.clone());
            }
            seen.push(format!("{os}/{arch}"));
        }
    }
    Err(Error::NoWasmPlatform {
        reference: reference.whole(),
        platforms: seen,
    })
}

async fn read_header(path: &std::path::Path) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(Error::store("open", path))?;
    let mut header = vec![0u8; 8];
    let mut filled = 0;
    while filled < header.len() {
        let n = file
            .read(&mut header[filled..])
            .await
            .map_err(Error::store("read", path))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    header.truncate(filled);
    Ok(header)
}

/// Resolves when a window passes in which a `declared`-byte blob came slower than `pace`
/// (counted in `written`), with how many bytes came in it.
async fn stalled(written: &AtomicU64, declared: u64, pace: Pace) -> u64 {
    let mut seen = 0;
    loop {
        tokio::time::sleep(pace.window).await;
        let now = written.load(Ordering::Relaxed);
        let came = now.saturating_sub(seen);
        if came < pace.min_bytes.min(declared.saturating_sub(seen)) {
            return came;
        }
        seen = now;
    }
}

/// Forwards writes until `remaining` bytes are used up, then fails and raises `exceeded`, so
/// a registry cannot fill the disk with a blob larger than the limit; counts what it
/// forwarded in `written`.
struct LimitedWriter<W> {
    inner: W,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LimitedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.remaining {
            self.exceeded.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::other("blob exceeds the size limit")));
        }
        let this = &mut *self;
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.remaining -= written as u64;
        this.written.fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::artifact;

    #[tokio::test]
    async fn a_cached_start_rewrites_the_record_only_when_its_use_time_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let now = now_secs();
        artifact(&store, "reg.example/fresh:v1", now - 5, 10).await;
        artifact(&store, "reg.example/stale:v1", now - 3600, 10).await;
        let puller = Puller::new(store.clone(), PullerConfig::default());
        for image in ["reg.example/fresh:v1", "reg.example/stale:v1"] {
            let request = PullRequest {
                image,
                policy: PullPolicy::IfNotPresent,
                auth: RegistryAuth::Anonymous,
                entry: None,
                on_verified: None,
            };
            let (_, origin) = puller.pull_from(&request).await.unwrap();
            assert_eq!(
                origin,
                Origin::Present,
                "{image}: the registry was not asked"
            );
        }
        let last_used = |key: &str| {
            let store = store.clone();
            let key = key.to_string();
            async move { store.record(&key).await.unwrap().last_used }
        };
        assert_eq!(last_used("reg.example/fresh:v1").await, now - 5);
        // Written in the background.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while last_used("reg.example/stale:v1").await < now {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the use was never recorded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// An anonymous `Always` pull of `image`.
    fn always_pull(image: &str) -> PullRequest<'_> {
        PullRequest {
            image,
            policy: PullPolicy::Always,
            auth: RegistryAuth::Anonymous,
            entry: None,
            on_verified: None,
        }
    }

    /// A registry on 127.0.0.1 that accepts connections and never answers; its `host:port`
    /// and the task holding the connections.
    async fn registry_silent() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        (host, held)
    }

    /// A manifest that never comes fails the pull at its deadline, as a registry error that
    /// is tried again later: the pull does not wait on the registry for ever.
    #[tokio::test]
    async fn a_manifest_that_never_comes_fails_the_pull_at_its_deadline() {
        let (host, held) = registry_silent().await;
        let dir = tempfile::tempdir().unwrap();
        let mut puller = puller_of(&host, dir.path());
        puller.manifest_deadline = std::time::Duration::from_millis(300);
        let image = format!("{host}/demo/silent:v1");
        let request = always_pull(&image);
        let pull =
            || tokio::time::timeout(std::time::Duration::from_secs(10), puller.pull(&request));
        let err = pull().await.expect("the pull ended").unwrap_err();
        assert!(err.to_string().contains("did not come within"), "{err}");
        assert!(err.is_transient());

        // With the image held, `Always` asks only for the manifest's digest: the same.
        crate::store::testing::artifact(puller.store(), &image, now_secs(), 10).await;
        let err = pull().await.expect("the check ended").unwrap_err();
        assert!(err.to_string().contains("did not come within"), "{err}");
        held.abort();
    }

    #[tokio::test]
    async fn a_cancelled_pull_leaves_no_in_flight_entry_behind() {
        // A registry that accepts connections and never answers: the pull hangs on it.
        let (host, held) = registry_silent().await;
        let dir = tempfile::tempdir().unwrap();
        let puller = puller_of(&host, dir.path());
        let image = format!("{host}/demo/silent:v1");
        let request = always_pull(&image);
        let in_flight = || puller.in_flight.lock().unwrap().len();
        {
            let pull = puller.pull(&request);
            tokio::pin!(pull);
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(200), pull.as_mut()).await;
            assert!(waited.is_err(), "the silent registry answered: {waited:?}");
            assert_eq!(in_flight(), 1, "the pull is in flight");
        }
        assert_eq!(in_flight(), 0, "dropping the pull released its entry");
        held.abort();
    }

    #[tokio::test]
    async fn the_limited_writer_takes_up_to_the_limit_and_refuses_a_byte_more() {
        use tokio::io::AsyncWriteExt;
        let exceeded = Arc::new(AtomicBool::new(false));
        let mut writer = LimitedWriter {
            inner: Vec::new(),
            remaining: 16,
            exceeded: exceeded.clone(),
            written: Arc::default(),
        };
        writer.write_all(&[1; 10]).await.unwrap();
        writer.write_all(&[2; 6]).await.unwrap();
        assert!(
            !exceeded.load(Ordering::Relaxed),
            "exactly the limit is allowed"
        );
        let err = writer.write_all(&[3]).await.unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        assert!(exceeded.load(Ordering::Relaxed));
        assert_eq!(writer.inner.len(), 16, "the refused write reached nothing");
    }

    /// A puller into a store in `dir`, speaking plain HTTP to `host`.
    fn puller_of(host: &str, dir: &std::path::Path) -> Puller {
        Puller::new(
            Arc::new(Store::open(dir).unwrap()),
            PullerConfig {
                insecure_registries: vec![host.to_string()],
                ..PullerConfig::default()
            },
        )
    }

    /// A registry on 127.0.0.1 that answers every blob request with `body` and everything
    /// else (the `/v2/` version check) with an empty 200, which is all `pull_blob` needs.
    /// Returns its `host:port`; dropping the runtime stops it.
    async fn registry_serving(body: Vec<u8>) -> String {
        registry_trickling(body, None).await
    }

    /// As [`registry_serving`], sending the body a byte at a time with `pause` between
    /// bytes, if given.
    async fn registry_trickling(body: Vec<u8>, pause: Option<std::time::Duration>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request_line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let body: &[u8] = if request_line.contains("/blobs/") {
                        &body
                    } else {
                        &[]
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    match pause {
                        None => drop(conn.write_all(body).await),
                        Some(pause) => {
                            for byte in body.chunks(1) {
                                if conn.write_all(byte).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(pause).await;
                            }
                        }
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        host
    }

    /// Downloads `body`, served under its own digest, as a layer whose manifest gives it 16
    /// bytes: the error, and whether anything was left in the store or its `tmp/`.
    async fn download_as_16_bytes(body: Vec<u8>) -> (Error, bool) {
        // The body hashes to the digest asked for, so the digest checks would pass and only
        // the declared size stands between it and the store.
        let digest = crate::store::digest_of(&body);
        let host = registry_serving(body).await;
        let dir = tempfile::tempdir().unwrap();
        let puller = puller_of(&host, dir.path());
        let reference: Reference = format!("{host}/demo/liar:v1").parse().unwrap();
        let layer = OciDescriptor {
            media_type: media::CNCF_LAYER.into(),
            digest: digest.clone(),
            size: 16,
            ..Default::default()
        };
        let err = puller
            .download(&reference, &layer, &RegistryAuth::Anonymous, 1 << 20)
            .await
            .unwrap_err();
        let left = puller.store().has_blob(&digest)
            || std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_some();
        (err, left)
    }

    /// A registry that sends a byte now and then, each well within the client's read
    /// timeout, is given up on once a window passes with too little of the blob.
    #[tokio::test]
    async fn a_blob_that_trickles_in_is_abandoned() {
        let body = vec![0x2a; 4096];
        let digest = crate::store::digest_of(&body);
        let host = registry_trickling(body, Some(std::time::Duration::from_millis(20))).await;
        let dir = tempfile::tempdir().unwrap();
        let mut puller = puller_of(&host, dir.path());
        puller.pace = Pace {
            min_bytes: 1024,
            window: std::time::Duration::from_millis(300),
        };
        let reference: Reference = format!("{host}/demo/trickle:v1").parse().unwrap();
        let layer = OciDescriptor {
            media_type: media::CNCF_LAYER.into(),
            digest: digest.clone(),
            size: 4096,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let err = puller
            .download(&reference, &layer, &RegistryAuth::Anonymous, 1 << 20)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("came too slowly"), "{err}");
        assert!(err.is_transient(), "tried again later, as a registry error");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(!puller.store().has_blob(&digest));
    }

    /// A layer the manifest gives no bytes is not asked for (no pace could hold a registry
    /// that sent nothing for it), and is the empty blob or nothing.
    #[tokio::test]
    async fn a_layer_of_no_bytes_is_not_fetched_and_must_be_the_empty_blob() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: a request would fail the download.
        let puller = puller_of("127.0.0.1:9", dir.path());
        let reference: Reference = "127.0.0.1:9/demo/empty:v1".parse().unwrap();
        let layer = |digest: String| OciDescriptor {
            media_type: media::CNCF_LAYER.into(),
            digest,
            size: 0,
            ..Default::default()
        };
        let empty = crate::store::digest_of(b"");
        let path = puller
            .download(
                &reference,
                &layer(empty.clone()),
                &RegistryAuth::Anonymous,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"");
        let other = crate::store::digest_of(b"not empty");
        let err = puller
            .download(
                &reference,
                &layer(other.clone()),
                &RegistryAuth::Anonymous,
                1 << 20,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!puller.store().has_blob(&other));
    }

    /// Only the blob's last window may bring less than the pace asks: what was left of it.
    #[tokio::test(start_paused = true)]
    async fn a_blob_s_last_window_is_held_only_to_what_was_left() {
        let pace = Pace {
            min_bytes: 1000,
            window: std::time::Duration::from_secs(60),
        };
        let written = AtomicU64::new(1500);
        // All of it came in the first window: never stalled, however long the commit takes.
        let complete = tokio::time::timeout(pace.window * 10, stalled(&written, 1500, pace)).await;
        assert!(complete.is_err(), "stalled after all of it came");
        // 1,000 bytes of 1,500 in the first window, then 400 of the last 500: stalled.
        written.store(1000, Ordering::Relaxed);
        let check = stalled(&written, 1500, pace);
        tokio::pin!(check);
        assert!(
            tokio::time::timeout(pace.window + pace.window / 2, check.as_mut())
                .await
                .is_err()
        );
        written.store(1400, Ordering::Relaxed);
        assert_eq!(check.await, 400);
    }

    #[tokio::test]
    async fn a_blob_of_another_size_than_its_manifest_says_is_never_committed() {
        let (longer, left) = download_as_16_bytes(vec![0x2a; 64 * 1024]).await;
        assert!(
            longer
                .to_string()
                .contains("is not the 16 bytes its manifest gives: it is larger"),
            "{longer}"
        );
        assert!(!left, "a longer blob stops at 16 bytes and is removed");

        let (shorter, left) = download_as_16_bytes(vec![0x2a; 10]).await;
        assert!(
            shorter
                .to_string()
                .contains("is not the 16 bytes its manifest gives: it is 10 bytes"),
            "{shorter}"
        );
        assert!(!left, "a shorter one is removed too");
    }

    #[tokio::test]
    async fn an_image_config_over_its_limit_is_refused_before_it_is_fetched() {
        // Whatever is asked for, the registry answers: the refusal must come first.
        let host = registry_serving(vec![b' '; 1 << 20]).await;
        let dir = tempfile::tempdir().unwrap();
        let puller = puller_of(&host, dir.path());
        let reference: Reference = format!("{host}/demo/bloated:v1").parse().unwrap();
        let image = OciImageManifest {
            config: OciDescriptor {
                media_type: "application/vnd.oci.image.config.v1+json".into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                size: i64::try_from(MAX_CONFIG_BYTES + 1).unwrap(),
                ..Default::default()
            },
            ..Default::default()
        };

        let err = puller
            .image_config(
                &reference,
                &image,
                &RegistryAuth::Anonymous,
                &mut Vec::new(),
            )
            .await
            .err()
            .unwrap();

        assert!(
            matches!(err, Error::LayerTooLarge { limit, .. } if limit == MAX_CONFIG_BYTES),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_held_blob_is_used_only_at_the_size_the_manifest_gives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // Another image's large layer, already on the node.
        let (digest, _) = store.put_bytes(vec![7u8; 64 * 1024]).await.unwrap();
        let puller = Puller::new(store, PullerConfig::default());
        let reference: Reference = "registry.example/demo/small:v1".parse().unwrap();
        let config = |size| OciDescriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: digest.clone(),
            size,
            ..Default::default()
        };

        let err = puller
            .download(&reference, &config(16), &RegistryAuth::Anonymous, 1 << 20)
            .await
            .unwrap_err();

        assert!(
            err.to_string()
                .contains("is not the 16 bytes its manifest gives: it is 65536 bytes"),
            "{err}"
        );
        let held = puller
            .download(
                &reference,
                &config(64 * 1024),
                &RegistryAuth::Anonymous,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(held).unwrap().len(), 64 * 1024);
    }
}
