//! A pod's volumes: made under `<pod>/volumes/<name>` before its containers start, kept
//! current while it runs, and shown to each container as its `volumeMounts` ask.
//!
//! Everything a pod gets lives in its private directory (hostPath aside, which names a host
//! path on purpose), so one pod never sees another's files. ConfigMap, Secret, downwardAPI
//! and projected volumes are written atomically (see `atomic_writer`) and rewritten when
//! their sources change, as the kubelet does; they are always read-only to the guest.

mod atomic_writer;
mod confine;
mod host_path;
mod memory;
mod payload;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeProjection};
use tracing::warn;

use crate::metrics::AgentMetrics;
use crate::pod::admission::Capacity;
use crate::pod::env::{ObjectReads, Sources};
use crate::pod::{quantity, storage};
use crate::provider::Mount;
pub(crate) use confine::guest_path;
pub use memory::enter_private_mount_namespace;
pub(crate) use memory::unmount_under;
use payload::Payload;
use token::IssuedToken;

/// The least size of a Secret or projected volume's tmpfs; only the pages its files use are
/// taken from memory.
const MEMORY_VOLUME_SIZE: u64 = 16 << 20;
/// Volumes of one pod set up at once: enough for a pod's token, ConfigMaps and Secrets side
/// by side, few enough that a pod of hundreds of volumes does not send hundreds of reads.
const VOLUMES_AT_ONCE: usize = 8;

/// A volume that could not be set up, worded as the kubelet's FailedMount event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
pub struct MountError {
    /// The volume's name in the pod spec.
    pub volume: String,
    /// Why.
    pub message: String,
}

/// What a volume's set-up needs from the agent.
pub struct VolumeContext<'a> {
    /// Where ConfigMaps, Secrets and service account tokens come from.
    pub reads: ObjectReads<'a>,
    /// The node's allocatable resources: a downwardAPI limit that is unset reports them.
    pub allocatable: Capacity,
    /// Where token request retries are counted.
    pub metrics: &'a AgentMetrics,
    /// Secret and projected volumes go on a tmpfs of their own (see `memory`).
    pub secrets_in_memory: bool,
}

/// A set-up volume.
#[derive(Debug)]
struct Prepared {
    path: PathBuf,
    /// ConfigMap, Secret, downwardAPI and projected volumes: the guest never writes them.
    from_api: bool,
    /// An emptyDir's `sizeLimit`, in bytes and as written.
    size_limit: Option<(u64, String)>,
    /// An emptyDir: its files count towards the pod's ephemeral storage.
    empty_dir: bool,
}

/// One volume's set-up: the volume and whether its files changed, or why it failed; and the
/// tokens it got from the API server on the way, kept by the caller whatever the outcome
/// (volumes are set up side by side, each with `&self`), so a retry does not ask again.
struct Attempt {
    outcome: Result<(Prepared, bool), String>,
    tokens: Vec<(String, IssuedToken)>,
}

/// The volumes of one pod.
#[derive(Debug)]
pub struct PodVolumes {
    dir: PathBuf,
    volumes: BTreeMap<String, Prepared>,
    tokens: HashMap<String, IssuedToken>,
}

impl PodVolumes {
    /// The volumes of the pod whose files are under `pod_dir`; none set up yet.
    pub fn new(pod_dir: &Path) -> Self {
        Self {
            dir: pod_dir.join("volumes"),
            volumes: BTreeMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// Sets up every volume of `pod`, keeping what earlier calls made (an emptyDir's files
    /// survive). Volumes are set up side by side, a few at a time: a token volume waiting on
    /// the API server does not hold up a ConfigMap's files. Every volume is attempted; the
    /// first in the spec's order that cannot be set up is the error, and the others are kept.
    pub async fn set_up(&mut self, ctx: &VolumeContext<'_>, pod: &Pod) -> Result<(), MountError> {
        let volumes: Vec<&Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .collect();
        // Unordered, so a slow volume (a token request) does not hold up the ones queued
        // behind it; a loop rather than `stream::iter(..).map(..)`, since a closure over the
        // pod and the context would make the worker's future not `Send` for every lifetime.
        let mut queued = volumes.iter().enumerate();
        let mut pending = futures::stream::FuturesUnordered::new();
        for (i, volume) in queued.by_ref().take(VOLUMES_AT_ONCE) {
            pending.push(self.materialise_nth(i, ctx, pod, volume));
        }
        let mut attempts = Vec::with_capacity(volumes.len());
        while let Some(attempt) = pending.next().await {
            attempts.push(attempt);
            if let Some((i, volume)) = queued.next() {
                pending.push(self.materialise_nth(i, ctx, pod, volume));
            }
        }
        drop(pending);
        attempts.sort_by_key(|(i, _)| *i);
        let mut first_failure = None;
        for (volume, (_, attempt)) in volumes.iter().zip(attempts) {
            self.tokens.extend(attempt.tokens);
            match attempt.outcome {
                Ok((prepared, _)) => {
                    self.volumes.insert(volume.name.clone(), prepared);
                }
                Err(message) => {
                    first_failure.get_or_insert_with(|| MountError {
                        volume: volume.name.clone(),
                        message,
                    });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Rewrites the API-backed volumes whose sources changed and returns their names. A
    /// source that cannot be read now leaves the volume as it was, as the kubelet does.
    pub async fn refresh(&mut self, ctx: &VolumeContext<'_>, pod: &Pod) -> Vec<String> {
        let mut updated = Vec::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if !self.volumes.get(&volume.name).is_some_and(|v| v.from_api) {
                continue;
            }
            let attempt = self.materialise(ctx, pod, volume).await;
            self.tokens.extend(attempt.tokens);
            match attempt.outcome {
                Ok((_, true)) => updated.push(volume.name.clone()),
                Ok(_) => {}
                Err(err) => {
                    warn!(volume = %volume.name, %err, "cannot refresh volume; keeping its files")
                }
            }
        }
        updated
    }

    /// `materialise` for the `i`th volume of the spec, said with its answer.
    async fn materialise_nth(
        &self,
        i: usize,
        ctx: &VolumeContext<'_>,
        pod: &Pod,
        volume: &Volume,
    ) -> (usize, Attempt) {
        (i, self.materialise(ctx, pod, volume).await)
    }

    /// Sets up one volume, with the tokens it asked for.
    async fn materialise(&self, ctx: &VolumeContext<'_>, pod: &Pod, volume: &Volume) -> Attempt {
        let mut tokens = Vec::new();
        let outcome = self.materialise_into(ctx, pod, volume, &mut tokens).await;
        Attempt { outcome, tokens }
    }

    /// Sets up one volume; says whether its files changed. Tokens it gets go into `tokens`.
    async fn materialise_into(
        &self,
        ctx: &VolumeContext<'_>,
        pod: &Pod,
        volume: &Volume,
        tokens: &mut Vec<(String, IssuedToken)>,
    ) -> Result<(Prepared, bool), String> {
        // The API server and the static pod reader refuse such names already; whatever a
        // pod's source, its volumes stay under its own volumes directory.
        let mut parts = Path::new(&volume.name).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(format!(
                "volume name {:?} is not a valid DNS label",
                volume.name
            ));
        }
        let path = self.dir.join(&volume.name);
        if let Some(empty) = &volume.empty_dir {
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| format!("cannot create the emptyDir: {e}"))?;
            let size_limit = empty
                .size_limit
                .as_ref()
                .map(|q| {
                    quantity::bytes(q)
                        .map(|b| (b, q.0.clone()))
                        .map_err(|err| format!("sizeLimit {:?} {err}", q.0))
                })
                .transpose()?;
            return Ok((
                Prepared {
                    path,
                    from_api: false,
                    size_limit,
                    empty_dir: true,
                },
                false,
            ));
        }
        if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            host_path::prepare(&path, host.type_.as_deref()).await?;
            return Ok((
                Prepared {
                    path,
                    from_api: false,
                    size_limit: None,
                    empty_dir: false,
                },
                false,
            ));
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        // Each volume reads its own sources: two volumes of one Secret read it twice (from
        // the node's watch, mostly), as the kubelet's volume plugins do.
        let mut sources = Sources::new(ctx.reads, uid, namespace);
        // Mounted at the first set-up, while the payload is gathered (a token request's round
        // trip); a refresh (every sync tick) writes into that mount.
        let in_memory = volume.secret.is_some() || volume.projected.is_some();
        let mount_tmpfs =
            ctx.secrets_in_memory && in_memory && !self.volumes.contains_key(&volume.name);
        let mounting = async {
            if mount_tmpfs {
                memory::mount_tmpfs(&path, MEMORY_VOLUME_SIZE).await
            } else {
                Ok(())
            }
        };
        let (payload, mounted) = tokio::join!(
            self.payload(ctx, &mut sources, pod, volume, tokens),
            mounting
        );
        let payload = payload?;
        let tmpfs_failed = |e| format!("cannot mount a tmpfs for the volume: {e}");
        mounted.map_err(tmpfs_failed)?;
        // Room for the old and the new version side by side while one replaces the other.
        let bytes = payload
            .values()
            .fold(0u64, |sum, f| sum.saturating_add(f.data.len() as u64));
        let size = bytes.saturating_mul(2).saturating_add(1 << 20);
        if mount_tmpfs && size > MEMORY_VOLUME_SIZE {
            memory::grow_tmpfs(&path, size)
                .await
                .map_err(tmpfs_failed)?;
        }
        let changed = atomic_writer::write(&path, &payload)
            .await
            .map_err(|e| format!("cannot write the volume's files: {e}"))?;
        Ok((
            Prepared {
                path,
                from_api: true,
                size_limit: None,
                empty_dir: false,
            },
            changed,
        ))
    }

    /// The files of an API-backed volume.
    async fn payload(
        &self,
        ctx: &VolumeContext<'_>,
        sources: &mut Sources<'_>,
        pod: &Pod,
        volume: &Volume,
        tokens: &mut Vec<(String, IssuedToken)>,
    ) -> Result<Payload, String> {
        if let Some(map) = &volume.config_map {
            let source = Keyed::ConfigMap(&map.name);
            return keyed_files(
                sources,
                source,
                map.items.as_deref(),
                map.default_mode,
                map.optional,
            )
            .await;
        }
        if let Some(secret) = &volume.secret {
            let source = Keyed::Secret(secret.secret_name.as_deref().unwrap_or_default());
            return keyed_files(
                sources,
                source,
                secret.items.as_deref(),
                secret.default_mode,
                secret.optional,
            )
            .await;
        }
        if let Some(downward) = &volume.downward_api {
            return payload::downward(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                downward.default_mode,
                ctx.allocatable,
            );
        }
        if let Some(projected) = &volume.projected {
            let mut files = Payload::new();
            for source in projected.sources.iter().flatten() {
                let part = self
                    .projection(
                        ctx,
                        sources,
                        pod,
                        &volume.name,
                        source,
                        projected.default_mode,
                        tokens,
                    )
                    .await?;
                files.extend(part);
            }
            return Ok(files);
        }
        Err(format!(
            "wasmlet cannot mount this volume type (it supports emptyDir, hostPath, configMap, \
             secret, downwardAPI and projected): {}",
            volume_type(volume)
        ))
    }

    /// One source of a projected volume; a token it had to ask for is added to `tokens`.
    #[allow(clippy::too_many_arguments)]
    async fn projection(
        &self,
        ctx: &VolumeContext<'_>,
        sources: &mut Sources<'_>,
        pod: &Pod,
        volume: &str,
        source: &VolumeProjection,
        default_mode: Option<i32>,
        tokens: &mut Vec<(String, IssuedToken)>,
    ) -> Result<Payload, String> {
        if let Some(map) = &source.config_map {
            let keyed = Keyed::ConfigMap(&map.name);
            return keyed_files(
                sources,
                keyed,
                map.items.as_deref(),
                default_mode,
                map.optional,
            )
            .await;
        }
        if let Some(secret) = &source.secret {
            let keyed = Keyed::Secret(&secret.name);
            return keyed_files(
                sources,
                keyed,
                secret.items.as_deref(),
                default_mode,
                secret.optional,
            )
            .await;
        }
        if let Some(downward) = &source.downward_api {
            return payload::downward(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                default_mode,
                ctx.allocatable,
            );
        }
        if let Some(sa) = &source.service_account_token {
            payload::check_relative(&sa.path)?;
            let key = format!("{volume}/{}", sa.path);
            let now = jiff::Timestamp::now();
            let token = match self.tokens.get(&key) {
                Some(token) if !token.due(now) => token.clone(),
                _ => {
                    let fresh = token::obtain(
                        ctx,
                        pod,
                        &key,
                        sa.audience.as_deref(),
                        sa.expiration_seconds,
                    )
                    .await?;
                    tokens.push((key, fresh.clone()));
                    fresh
                }
            };
            return Ok([(
                sa.path.clone(),
                payload::FileContent {
                    data: token.token.into_bytes(),
                    mode: (default_mode.unwrap_or(payload::DEFAULT_MODE) & 0o777) as u32,
                },
            )]
            .into());
        }
        Err("a projected volume source names no configMap, secret, downwardAPI or serviceAccountToken".into())
    }

    /// The mounts `container` asks for, with `subPath` resolved inside its volume. File
    /// mounts are gathered, by the directory they appear in, into directories under
    /// `staging` (fresh for each container instance).
    pub async fn mounts_for(
        &self,
        container: &Container,
        env: &[(String, String)],
        staging: &Path,
    ) -> Result<Vec<Mount>, String> {
        let mut mounts: Vec<Mount> = Vec::new();
        // Per guest directory: the staging directory, whether its files are read-only, and
        // the first file's path (to name in a refusal).
        let mut files: BTreeMap<String, (PathBuf, bool, String)> = BTreeMap::new();
        for wanted in container.volume_mounts.iter().flatten() {
            let volume = self.volumes.get(&wanted.name).ok_or_else(|| {
                format!("volumeMount {:?} names no volume of the pod", wanted.name)
            })?;
            let guest = confine::guest_path(&wanted.mount_path)?;
            let read_only = wanted.read_only == Some(true) || volume.from_api;
            let sub = match (&wanted.sub_path_expr, &wanted.sub_path) {
                (Some(expr), _) if !expr.is_empty() => Some(expand(expr, env)),
                (_, Some(sub)) if !sub.is_empty() => Some(sub.clone()),
                _ => None,
            };
            let held = match sub {
                Some(sub) => Some(confine::sub_path(&volume.path, &sub).await.map_err(|e| {
                    format!(
                        "failed to prepare subPath for volumeMount {:?} of container {:?}: {e}",
                        wanted.name, container.name
                    )
                })?),
                None => None,
            };
            let (source, is_dir) = match &held {
                Some(held) => (held.path(), held.is_dir()),
                // The volume's own directory (or a hostPath file), which the kubelet made or
                // checked and no container can replace.
                None => {
                    let is_dir = tokio::fs::metadata(&volume.path)
                        .await
                        .map_err(|e| format!("cannot mount {}: {e}", volume.path.display()))?
                        .is_dir();
                    (volume.path.clone(), is_dir)
                }
            };
            if is_dir {
                mounts.push(Mount {
                    guest_path: guest,
                    host_path: source,
                    read_only,
                    held,
                });
                continue;
            }
            let (parent, name) = guest.rsplit_once('/').unwrap_or_default();
            if parent.is_empty() {
                return Err(format!(
                    "cannot mount the file {guest}: a WASI guest is given directories, and / is the container's own"
                ));
            }
            let next = staging.join(files.len().to_string());
            let entry = files
                .entry(parent.to_string())
                .or_insert((next, read_only, guest.clone()));
            // One directory is one preopen with one mode, and the staged files share their
            // source's inode: a writable file beside a read-only one would make the
            // read-only one writable, through to its source.
            if entry.1 != read_only {
                let (writable, read_only_file) = if read_only {
                    (&entry.2, &guest)
                } else {
                    (&guest, &entry.2)
                };
                return Err(format!(
                    "cannot mount the read-only file {read_only_file} and the writable file {writable} into one directory: a WASI guest is given whole directories, each with one mode; mount them into different directories"
                ));
            }
            confine::stage_file(&source, &entry.0, name)
                .await
                .map_err(|e| format!("cannot mount the file {guest}: {e}"))?;
        }
        for (parent, (dir, read_only, _)) in files {
            if mounts.iter().any(|m| m.guest_path == parent) {
                return Err(format!(
                    "cannot mount files into {parent}, which is itself a mount: a WASI guest cannot see both"
                ));
            }
            mounts.push(Mount {
                guest_path: parent,
                host_path: dir,
                read_only,
                held: None,
            });
        }
        Ok(mounts)
    }

    /// Where the pod's emptyDirs are.
    pub fn empty_dirs(&self) -> Vec<PathBuf> {
        self.volumes
            .values()
            .filter(|v| v.empty_dir)
            .map(|v| v.path.clone())
            .collect()
    }

    /// The eviction message for the first emptyDir grown past its `sizeLimit`, if any.
    pub async fn over_size_limit(&self) -> Option<String> {
        for (name, volume) in &self.volumes {
            let Some((limit, text)) = &volume.size_limit else {
                continue;
            };
            let path = volume.path.clone();
            let used = tokio::task::spawn_blocking(move || storage::disk_usage(&path))
                .await
                .unwrap_or(0);
            if used > *limit {
                return Some(format!(
                    "Usage of EmptyDir volume {name:?} exceeds the limit {text:?}."
                ));
            }
        }
        None
    }
}

/// The object a configMap or secret volume (or projection) shows.
enum Keyed<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
}

/// The files of a configMap or secret source, read through `sources`.
async fn keyed_files(
    sources: &mut Sources<'_>,
    keyed: Keyed<'_>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<Payload, String> {
    let optional = optional == Some(true);
    match keyed {
        Keyed::ConfigMap(name) => {
            let found = sources.config_map(name).await.map_err(|e| e.0)?;
            payload::config_map(name, found, items, default_mode, optional)
        }
        Keyed::Secret(name) => {
            let found = sources.secret(name).await.map_err(|e| e.0)?;
            payload::secret(name, found, items, default_mode, optional)
        }
    }
}

/// `$(NAME)` in a `subPathExpr`, replaced by the container's environment; an unknown name is
/// left as written, as the kubelet leaves it.
pub(crate) fn expand(expr: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                let name = &after[..end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, value)) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A volume's type, named for a message.
fn volume_type(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
        })
        .unwrap_or_else(|| "none given".into())
}

#[cfg(test)]
mod tests;
