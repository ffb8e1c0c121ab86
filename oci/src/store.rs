//! The content-addressed artifact store under the data dir.
//!
//! Layout: `blobs/sha256/<hex>` holds verified content, `refs/<hash of key>.json` maps an
//! image reference to the artifact pulled for it, and `tmp/` holds downloads in progress.
//! A blob enters `blobs/` only by [`Store::commit_blob`], which hashes the file and renames
//! it into place, so a crash mid-pull leaves at most a file in `tmp/`, which
//! [`Store::open`] removes. Nothing half-written is ever trusted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{Error, Result, WasmArtifact};

/// What the store remembers about a pulled reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The reference plus, for compat images, the entry path asked for.
    pub key: String,
    /// The artifact handed out for it.
    pub artifact: WasmArtifact,
    /// Every blob the artifact needs: manifest, config, layers, extracted Wasm.
    pub blobs: Vec<String>,
    /// Seconds since the epoch when a pod last asked for it, for GC order.
    pub last_used: u64,
    /// The digest the reference named when it was an image index (the artifact's manifest
    /// is then the index's Wasm entry): what an `Always` pull compares with the registry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
}

/// A download in progress: a file in `tmp/`, removed if dropped uncommitted.
pub struct PendingBlob {
    path: PathBuf,
    committed: bool,
}

impl PendingBlob {
    /// The temporary file to write into.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    next_tmp: AtomicU64,
    /// Record writes go one at a time, so a use's rewrite of a record, written in the
    /// background, is judged against what is there when it lands ([`Store::save_use`]).
    records: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (creating) the store at `root` and removes leftovers of interrupted downloads.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "refs", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(Error::store("create", &path))?;
        }
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp)
            .map_err(Error::store("read", &tmp))?
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            root: root.to_path_buf(),
            next_tmp: AtomicU64::new(0),
            records: tokio::sync::Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        blob_path_under(&self.root, digest)
    }

    /// Whether the verified blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A fresh temporary file for a download.
    pub fn begin_blob(&self) -> PendingBlob {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        PendingBlob {
            path: self
                .root
                .join("tmp")
                .join(format!("{}-{n}", std::process::id())),
            committed: false,
        }
    }

    /// Verifies that the pending file hashes to `expected` and moves it into place.
    pub async fn commit_blob(&self, mut pending: PendingBlob, expected: &str) -> Result<PathBuf> {
        let target = self.blob_path(expected)?;
        let actual = digest_file(pending.path()).await?;
        if actual != expected {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        sync_and_rename(pending.path(), &target).await?;
        pending.committed = true;
        Ok(target)
    }

    /// Stores `bytes` under their digest and returns it with the blob's path. The hash and
    /// the write run on a blocking thread: an image's Wasm file may be hundreds of MiB.
    pub async fn put_bytes(&self, bytes: impl Into<bytes::Bytes>) -> Result<(String, PathBuf)> {
        let bytes = bytes.into();
        let pending = self.begin_blob();
        let tmp = pending.path().to_owned();
        let root = self.root.clone();
        // The pending file goes with the blocking task, so if the caller is cancelled (a pod
        // deleted mid-pull) it is removed after the write, not before it.
        let written = tokio::task::spawn_blocking(move || {
            let digest = digest_of(&bytes);
            let target = blob_path_under(&root, &digest)?;
            if target.is_file() {
                return Ok((digest, target, None));
            }
            std::fs::write(pending.path(), &bytes)
                .map_err(Error::store("write", pending.path()))?;
            Ok((digest, target, Some(pending)))
        })
        .await
        .map_err(|e| Error::store("write", &tmp)(std::io::Error::other(e)))?;
        let (digest, target, new) = written?;
        if let Some(mut pending) = new {
            sync_and_rename(pending.path(), &target).await?;
            pending.committed = true;
        }
        Ok((digest, target))
    }

    /// Reads a whole blob.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        tokio::fs::read(&path)
            .await
            .map_err(Error::store("read", &path))
    }

    /// The record for `key`, if that reference was pulled and every blob it needs is here.
    pub async fn record(&self, key: &str) -> Option<ArtifactRecord> {
        let text = tokio::fs::read(self.record_path(key)).await.ok()?;
        let record: ArtifactRecord = serde_json::from_slice(&text).ok()?;
        (record.key == key && record.blobs.iter().all(|b| self.has_blob(b))).then_some(record)
    }

    /// Saves `record`, replacing any earlier one for its key.
    pub async fn save_record(&self, record: &ArtifactRecord) -> Result<()> {
        let _one_at_a_time = self.records.lock().await;
        self.write_record(record).await
    }

    /// Records a use of `record`'s artifact at its `last_used`, on the record as it is now,
    /// unless its key names another artifact by now: a pull (`Always`, the tag moved) wrote
    /// a newer record since `record` was read, and the old one must not land over it.
    pub async fn save_use(&self, record: &ArtifactRecord) -> Result<()> {
        let _one_at_a_time = self.records.lock().await;
        let Some(mut current) = self.record(&record.key).await else {
            return Ok(());
        };
        if current.artifact.manifest_digest != record.artifact.manifest_digest {
            return Ok(());
        }
        current.last_used = current.last_used.max(record.last_used);
        self.write_record(&current).await
    }

    async fn write_record(&self, record: &ArtifactRecord) -> Result<()> {
        let path = self.record_path(&record.key);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Store {
            action: "encode",
            path: path.clone(),
            source: e.into(),
        })?;
        let pending = self.begin_blob();
        tokio::fs::write(pending.path(), json)
            .await
            .map_err(Error::store("write", pending.path()))?;
        sync_and_rename(pending.path(), &path).await
    }

    /// Every record, for garbage collection.
    pub async fn records(&self) -> Result<Vec<ArtifactRecord>> {
        let dir = self.root.join("refs");
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(Error::store("read", &dir))?;
        let mut records = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(Error::store("read", &dir))?
        {
            if let Ok(text) = tokio::fs::read(entry.path()).await
                && let Ok(record) = serde_json::from_slice(&text)
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Forgets the record for `key` (its blobs stay until a sweep).
    pub async fn remove_record(&self, key: &str) -> Result<()> {
        let path = self.record_path(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::store("remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob digest present, with its size.
    pub async fn blobs(&self) -> Result<Vec<(String, u64)>> {
        let dir = self.root.join("blobs/sha256");
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(Error::store("read", &dir))?;
        let mut blobs = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(Error::store("read", &dir))?
        {
            let size = entry.metadata().await.map(|m| m.len()).unwrap_or(0);
            blobs.push((
                format!("sha256:{}", entry.file_name().to_string_lossy()),
                size,
            ));
        }
        Ok(blobs)
    }

    /// Removes a blob.
    pub async fn remove_blob(&self, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(Error::store("remove", &path))
    }

    fn record_path(&self, key: &str) -> PathBuf {
        let name = digest_of(key.as_bytes());
        self.root
            .join("refs")
            .join(format!("{}.json", name.trim_start_matches("sha256:")))
    }
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

async fn digest_file(path: &Path) -> Result<String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(Error::store("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(Error::store("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

async fn sync_and_rename(from: &Path, to: &Path) -> Result<()> {
    let file = tokio::fs::File::open(from)
        .await
        .map_err(Error::store("open", from))?;
    file.sync_all().await.map_err(Error::store("sync", from))?;
    tokio::fs::rename(from, to)
        .await
        .map_err(Error::store("rename into", to))
}

/// Where the blob `digest` lives in the store at `root`.
fn blob_path_under(root: &Path, digest: &str) -> Result<PathBuf> {
    let hex = parse_digest(digest)?;
    Ok(root.join("blobs/sha256").join(hex))
}

pub(crate) fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| Error::InvalidDigest(digest.to_string()))?;
    Ok(hex)
}

/// Records made without a registry, for tests of what is done with them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::{Shape, WasmKind};

    /// Stores a `size`-byte module as artifact `name`, last used at `last_used`; returns its
    /// digest.
    pub(crate) async fn artifact(store: &Store, name: &str, last_used: u64, size: usize) -> String {
        let (digest, path) = store
            .put_bytes(vec![name.as_bytes()[0]; size])
            .await
            .unwrap();
        store
            .save_record(&ArtifactRecord {
                key: name.into(),
                artifact: WasmArtifact {
                    reference: name.into(),
                    manifest_digest: digest.clone(),
                    wasm_digest: digest.clone(),
                    wasm_path: path,
                    kind: WasmKind::Module,
                    shape: Shape::CncfArtifact,
                    entrypoint: vec![],
                    args: vec![],
                    env: vec![],
                },
                blobs: vec![digest.clone()],
                last_used,
                index_digest: None,
            })
            .await
            .unwrap();
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn committed_blob_is_verified_and_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = digest_of(b"hello");
        let pending = store.begin_blob();
        tokio::fs::write(pending.path(), b"hello").await.unwrap();
        store.commit_blob(pending, &good).await.unwrap();
        assert!(store.has_blob(&good));

        let promised = digest_of(b"other");
        let pending = store.begin_blob();
        let tmp = pending.path().to_path_buf();
        tokio::fs::write(&tmp, b"tampered").await.unwrap();
        let err = store.commit_blob(pending, &promised).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&promised));
        assert!(!tmp.exists(), "the rejected download is removed");
    }

    #[tokio::test]
    async fn interrupted_downloads_are_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pending = store.begin_blob();
        tokio::fs::write(pending.path(), b"half").await.unwrap();
        let leftover = pending.path().to_path_buf();
        std::mem::forget(pending); // as if the process died mid-pull
        Store::open(dir.path()).unwrap();
        assert!(!leftover.exists());
    }

    /// A use of an artifact is written in the background; a pull that recorded a newer
    /// artifact for the key meanwhile keeps its record.
    #[tokio::test]
    async fn a_use_written_late_never_replaces_a_newer_pull_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        testing::artifact(&store, "reg.example/app:v1", 1, 10).await;
        let mut used = store.record("reg.example/app:v1").await.unwrap();
        used.last_used = 2;

        // The tag moved: an `Always` pull recorded the new artifact first.
        let mut newer = used.clone();
        newer.artifact.manifest_digest = digest_of(b"the new manifest");
        newer.last_used = 3;
        store.save_record(&newer).await.unwrap();
        store.save_use(&used).await.unwrap();
        let kept = store.record("reg.example/app:v1").await.unwrap();
        assert_eq!(
            kept.artifact.manifest_digest,
            newer.artifact.manifest_digest
        );

        // A use of the artifact still recorded is written, on the record as it is now (a
        // pull of the same manifest may have recorded another index since).
        let mut reindexed = kept.clone();
        reindexed.index_digest = Some(digest_of(b"another index"));
        store.save_record(&reindexed).await.unwrap();
        let mut again = kept.clone();
        again.last_used = 4;
        store.save_use(&again).await.unwrap();
        let now = store.record("reg.example/app:v1").await.unwrap();
        assert_eq!(now.last_used, 4);
        assert_eq!(now.index_digest, reindexed.index_digest);
    }

    #[test]
    fn malformed_digests_are_rejected_not_joined_into_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for bad in ["sha256:../../etc/passwd", "md5:abc", "sha256:ABC"] {
            assert!(
                matches!(store.blob_path(bad), Err(Error::InvalidDigest(_))),
                "{bad}"
            );
        }
    }
}
