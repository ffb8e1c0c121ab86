//! The node's local store: what the node was told to run, persisted in the data dir so that
//! it can run it again after a restart while the API server is unreachable.
//!
//! It holds every pod bound to the node as last seen (from the API, with its
//! `resourceVersion`, or from a static manifest), the status the node last computed for it
//! (restart counts and last states carry on from there), and the API objects its volumes and
//! environment read (ConfigMaps, Secrets, service account tokens, pull secrets), so those can
//! be set up again offline. Objects are linked to the pods that read them and go when the
//! last such pod goes.
//!
//! SQLite (through rusqlite) in WAL mode: every write is a transaction, so a full disk or a
//! `kill -9` leaves the last committed state and never half a record, and other processes
//! (`wasmlet ps`) can read while the agent writes. One thread owns the write connection and
//! commits whatever has queued up as one transaction (group commit), so a burst of pods costs
//! a few commits, not one per pod, and no write ever blocks the async runtime.

mod reader;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

pub use reader::read_pods;
use writer::Write;

/// The store's file in the data dir.
pub const STORE_FILE: &str = "store.db";

/// Writes waiting for the writer thread; past this, writers wait (backpressure), so memory
/// stays bounded however fast pods change.
const QUEUE: usize = 4096;

/// Bumped when the schema changes incompatibly; an older file is moved aside and rebuilt from
/// the API, as a corrupt one is.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pods (
    uid TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    pod TEXT NOT NULL,
    status TEXT
);
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pod_objects (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (uid, key)
);
CREATE INDEX IF NOT EXISTS pod_objects_by_key ON pod_objects (key);
";

/// Where a pod came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSource {
    /// Bound to the node through the API server.
    Api,
    /// A static pod, from a manifest file.
    File,
}

impl PodSource {
    fn as_str(&self) -> &'static str {
        match self {
            PodSource::Api => "api",
            PodSource::File => "file",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "api" => Some(PodSource::Api),
            "file" => Some(PodSource::File),
            _ => None,
        }
    }
}

/// A pod as the store holds it.
#[derive(Clone, Debug)]
pub struct StoredPod {
    /// Its UID.
    pub uid: String,
    /// Where it came from.
    pub source: PodSource,
    /// The object as last seen, without its status.
    pub pod: Pod,
    /// The status this node last computed for it, if any.
    pub status: Option<PodStatus>,
}

/// What could go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("local store {path}: {operation}")]
    Sqlite {
        /// The store's file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a store of another schema version.
    #[error(
        "local store {path}: schema version {found}, this agent keeps version {SCHEMA_VERSION}"
    )]
    Schema {
        /// The store's file.
        path: PathBuf,
        /// The version the file holds.
        found: i64,
    },
    /// A read on the blocking pool did not finish (the runtime is shutting down).
    #[error("local store read did not finish")]
    Join(#[source] tokio::task::JoinError),
    /// The store's file could not be prepared or moved aside.
    #[error("local store {path}: {operation}")]
    Io {
        /// The store's file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The node's local store. Cheap to clone; writes are queued and committed by one thread.
#[derive(Clone, Debug)]
pub struct LocalStore {
    queue: mpsc::Sender<Write>,
    /// Reads that happen while the agent runs (an object the API cannot give now) are rare,
    /// so one connection behind a lock, used from `spawn_blocking`, serves them.
    reads: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl LocalStore {
    /// Opens (or creates) the store in `data_dir`. A file that is not a store (damaged,
    /// not SQLite, another schema) is moved aside with one log line and a fresh store is
    /// made: the node then rebuilds it from the API, never crash-loops on it. A store that
    /// cannot be opened now (a full disk, an I/O error) is an error, and the file stays
    /// where it is: its pods are what an offline node restarts once the trouble passes
    /// (the log says how to start afresh instead).
    /// Starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(STORE_FILE);
        let write = match open_checked(&path) {
            Ok(conn) => conn,
            Err(err) if !err.means_not_a_store() => {
                error!(store = %path.display(), error = %err,
                    "the local store cannot be opened now and is kept as it is; free space or mend the disk, or move it away to start with an empty one (pods are then rebuilt from the API server)");
                return Err(err);
            }
            Err(err) => {
                let aside = move_aside(&path)?;
                error!(store = %path.display(), moved_to = %aside.display(), error = %err,
                    "the local store could not be used; moved it aside and starting with an empty one (pods are rebuilt from the API server)");
                open_checked(&path)?
            }
        };
        let reads = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| sqlite(&path, "open a read connection", source))?;
        let (queue, pending) = mpsc::channel(QUEUE);
        writer::spawn(write, pending, path.clone())?;
        Ok(Self {
            queue,
            reads: Arc::new(Mutex::new(reads)),
            path,
        })
    }

    /// Every stored pod, with the status this node last computed.
    pub async fn pods(&self) -> Result<Vec<StoredPod>, StoreError> {
        let reads = self.reads.clone();
        let path = self.path.clone();
        blocking(move || {
            let conn = reads.lock().unwrap_or_else(|p| p.into_inner());
            reader::pods_from(&conn, &path)
        })
        .await
    }

    /// Records `pod` (its status is left out: the node's own status is kept apart).
    pub async fn put_pod(&self, source: PodSource, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let mut object = pod.clone();
        object.status = None;
        object.metadata.managed_fields = None;
        match serde_json::to_string(&object) {
            Ok(json) => {
                self.send(Write::Pod {
                    uid,
                    source: source.as_str(),
                    json,
                })
                .await
            }
            Err(err) => warn!(%uid, %err, "cannot serialise pod for the local store"),
        }
    }

    /// Records the status the node computed for pod `uid`.
    pub async fn put_status(&self, uid: &str, status: &PodStatus) {
        match serde_json::to_string(status) {
            Ok(json) => {
                self.send(Write::Status {
                    uid: uid.to_string(),
                    json,
                })
                .await
            }
            Err(err) => warn!(%uid, %err, "cannot serialise pod status for the local store"),
        }
    }

    /// Forgets pod `uid` and every object only it read.
    pub async fn remove_pod(&self, uid: &str) {
        self.send(Write::RemovePod {
            uid: uid.to_string(),
        })
        .await
    }

    /// Records `value` (an API object a pod read) under `key`, linked to pod `uid`.
    pub async fn put_object<T: Serialize>(&self, uid: &str, key: &ObjectKey, value: &T) {
        match serde_json::to_string(value) {
            Ok(json) => {
                self.send(Write::Object {
                    uid: uid.to_string(),
                    key: key.0.clone(),
                    json: Some(json),
                })
                .await
            }
            Err(err) => warn!(key = %key.0, %err, "cannot serialise object for the local store"),
        }
    }

    /// Records that the API said the object under `key` does not exist.
    pub async fn forget_object(&self, uid: &str, key: &ObjectKey) {
        self.send(Write::Object {
            uid: uid.to_string(),
            key: key.0.clone(),
            json: None,
        })
        .await
    }

    /// The object stored under `key`, if any and if it still reads as a `T`.
    pub async fn object<T: for<'de> Deserialize<'de> + Send + 'static>(
        &self,
        key: &ObjectKey,
    ) -> Option<T> {
        let reads = self.reads.clone();
        let key = key.0.clone();
        let path = self.path.clone();
        let found = blocking(move || {
            let conn = reads.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row("SELECT value FROM objects WHERE key = ?1", [&key], |row| {
                row.get::<_, String>(0)
            })
            .optional()
            .map_err(|source| sqlite(&path, "read an object", source))
        })
        .await;
        match found {
            Ok(Some(json)) => serde_json::from_str(&json).ok(),
            Ok(None) => None,
            Err(err) => {
                warn!(%err, "cannot read the local store");
                None
            }
        }
    }

    /// Waits until every write queued before this call is committed (or failed and logged).
    pub async fn flush(&self) {
        let (done, committed) = oneshot::channel();
        if self.queue.send(Write::Flush(done)).await.is_ok() {
            let _ = committed.await;
        }
    }

    async fn send(&self, write: Write) {
        if self.queue.send(write).await.is_err() {
            warn!("the local store's writer has stopped; a write was lost");
        }
    }
}

/// The key of an API object in the store, by kind, namespace and name (or, for tokens, by
/// the pod and the volume they were issued for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A ConfigMap.
    pub fn config_map(namespace: &str, name: &str) -> Self {
        Self(format!("configmap/{namespace}/{name}"))
    }

    /// A Secret.
    pub fn secret(namespace: &str, name: &str) -> Self {
        Self(format!("secret/{namespace}/{name}"))
    }

    /// A service account token issued for pod `uid`'s volume `volume` and this `audience`.
    pub fn token(uid: &str, volume: &str, audience: Option<&str>) -> Self {
        Self(format!(
            "token/{uid}/{volume}/{}",
            audience.unwrap_or_default()
        ))
    }
}

impl StoreError {
    /// Whether the file is not a store this agent can use (damaged, not an SQLite
    /// database, another schema), as against one it cannot use now.
    fn means_not_a_store(&self) -> bool {
        match self {
            Self::Schema { .. } => true,
            Self::Sqlite {
                source: rusqlite::Error::SqliteFailure(failure, _),
                ..
            } => matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ),
            _ => false,
        }
    }
}

fn sqlite(path: &Path, operation: &'static str, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        operation,
        source,
    }
}

fn io(path: &Path, operation: &'static str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        operation,
        source,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(StoreError::Join(err)))
}

/// Opens the store for writing and proves it usable: readable schema of this version and a
/// passing integrity check. The file is made 0600 first: it holds Secrets.
fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|source| sqlite(path, "open", source))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|source| sqlite(path, "check integrity", source))?;
    if check != "ok" {
        return Err(sqlite(
            path,
            "check integrity",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            ),
        ));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| sqlite(path, "read the schema version", source))?;
    let empty: bool = conn
        .query_row(
            "SELECT count(*) = 0 FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .map_err(|source| sqlite(path, "read the schema", source))?;
    if !empty && version != SCHEMA_VERSION {
        return Err(StoreError::Schema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    // The store itself is not written when it is current (its WAL may still be); a new one
    // gets its tables and version at once or not at all.
    if empty {
        conn.execute_batch(&format!(
            "BEGIN;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
        ))
        .map_err(|source| sqlite(path, "create the schema", source))?;
    }
    Ok(conn)
}

/// A connection with the settings every user of the file shares: WAL, so readers in other
/// processes never block the writer; `synchronous=NORMAL`, which in WAL mode survives a
/// killed process (a power cut may lose the last commits, never consistency); and a busy
/// timeout for the moments a checkpoint holds the file.
pub(crate) fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(conn)
}

/// Creates `path` mode 0600 if missing, and makes an existing one 0600.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|source| io(path, "create the file", source))
}

/// Renames the store (and its WAL and shared-memory files) to `store.db.corrupt-<seconds>`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::now().as_second();
    let aside = path.with_extension(format!("db.corrupt-{stamp}"));
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(path, "move the store aside", err)),
        }
    }
    std::fs::rename(path, &aside).map_err(|source| io(path, "move the store aside", source))?;
    info!(from = %path.display(), to = %aside.display(), "moved the local store aside");
    Ok(aside)
}

#[cfg(test)]
mod tests;
