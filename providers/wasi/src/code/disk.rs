//! The on-disk cache of compiled code: one file per Wasm digest, in a directory named by the
//! compiler tier and the engine's compatibility hash, so code from another engine
//! configuration (or another wasmtime) is never even looked at.
//!
//! Each entry starts with the SHA-256 of its payload, checked before wasmtime sees a byte:
//! `Module::deserialize` trusts its input completely, so a torn write, a truncated file or a
//! flipped bit must mean a recompile, never a load.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Marks a file as one of ours, in this layout.
const MAGIC: &[u8; 8] = b"wlcode1\n";
const HEADER_LEN: usize = MAGIC.len() + 32;
const TEMP_SUFFIX: &str = ".tmp";

/// Opens a new temporary entry for writing; a field so tests can hand it a full disk.
type Opener = fn(&Path) -> std::io::Result<File>;

/// The cache directory of one tier of one engine configuration.
pub(crate) struct DiskCache {
    dir: PathBuf,
    pub(super) open: Opener,
}

/// A verified entry: the file's bytes, with the code after the header.
pub(crate) struct Entry(Vec<u8>);

impl Entry {
    /// The serialized code.
    pub(crate) fn code(&self) -> &[u8] {
        self.0.get(HEADER_LEN..).unwrap_or_default()
    }
}

/// The directory name for `tier`'s code from `engine`: a changed setting, target or
/// wasmtime version changes the hash, so it is a different directory.
pub(crate) fn dir_name(tier: &str, engine: &wasmtime::Engine) -> String {
    // SipHash with fixed keys: the same engine gives the same name in every run of a binary.
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{tier}-{:016x}", hasher.finish())
}

/// Removes everything in `root` but the `keep` directories: code another engine
/// configuration wrote can never be loaded again, so it only takes space.
pub(crate) fn remove_others(root: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if keep.iter().any(|k| name == **k) {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed code cached by another engine configuration")
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot remove stale cached code")
            }
        }
    }
}

impl DiskCache {
    /// Opens (creating) `root/name`, clearing temporary files a crash left behind.
    pub(crate) fn open(root: &Path, name: &str) -> std::io::Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            open: |path| File::options().write(true).create_new(true).open(path),
        })
    }

    /// The directory's name below the cache root.
    pub(crate) fn name(&self) -> &str {
        self.dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// Where the entry for `digest` lives; `None` for a digest that is not `sha256:<hex>`,
    /// so nothing from an image ever becomes a path component.
    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(hex))
    }

    /// The verified entry for `digest`, or `None`. An entry that fails the check is removed
    /// (with a log line) so it is rewritten by the next compile.
    pub(crate) fn load(&self, digest: &str) -> Option<Entry> {
        let path = self.path(digest)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read cached code; compiling");
                return None;
            }
        };
        if verified(&bytes) {
            return Some(Entry(bytes));
        }
        tracing::warn!(path = %path.display(), bytes = bytes.len(), "cached code is corrupt or truncated; removing it and compiling");
        self.remove(digest);
        None
    }

    /// Stores `code` for `digest`: written to a temporary file (never one that already
    /// exists, so never through a planted symlink), then renamed, so a reader sees a whole
    /// entry or none.
    pub(crate) fn store(&self, digest: &str, code: &[u8]) -> std::io::Result<()> {
        let path = self.path(digest).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sha256 digest")
        })?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp = path.with_extension(format!(
            "{}.{}{TEMP_SUFFIX}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = (self.open)(&temp)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(code))?;
            // No fsync: an entry torn by a crash fails its checksum and is recompiled.
            file.write_all(code)
        })();
        let result = written.and_then(|()| std::fs::rename(&temp, &path));
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Removes the entries of digests `keep` refuses.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str() else { continue };
            let digest = format!("sha256:{hex}");
            if self.path(&digest).is_some() && !keep(&digest) {
                self.remove(&digest);
            }
        }
    }

    /// Forgets the entry for `digest` (its image is gone, or it failed to load).
    pub(crate) fn remove(&self, digest: &str) {
        if let Some(path) = self.path(digest) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot remove cached code")
                }
            }
        }
    }
}

fn verified(bytes: &[u8]) -> bool {
    let (Some(magic), Some(sum), Some(code)) = (
        bytes.get(..MAGIC.len()),
        bytes.get(MAGIC.len()..HEADER_LEN),
        bytes.get(HEADER_LEN..),
    ) else {
        return false;
    };
    magic == MAGIC && sum == Sha256::digest(code).as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn an_entry_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "t").unwrap();
        assert!(cache.load(DIGEST).is_none());
        cache.store(DIGEST, b"compiled code").unwrap();
        assert_eq!(cache.load(DIGEST).unwrap().code(), b"compiled code");
    }

    #[test]
    fn a_truncated_or_flipped_entry_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "t").unwrap();
        let path = cache.path(DIGEST).unwrap();
        for damage in [
            |b: &mut Vec<u8>| b.truncate(b.len() - 3),
            |b: &mut Vec<u8>| b.truncate(10),
            |b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 1,
            |b: &mut Vec<u8>| b[0] ^= 1,
        ] {
            cache.store(DIGEST, &[7u8; 4096]).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            assert!(cache.load(DIGEST).is_none());
            assert!(!path.exists(), "the bad entry is removed");
        }
    }

    #[test]
    fn a_full_disk_leaves_no_entry_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = DiskCache::open(dir.path(), "t").unwrap();
        // /dev/full answers every write with ENOSPC, as a full disk does.
        cache.open = |_| File::options().write(true).open("/dev/full");
        let err = cache.store(DIGEST, &[1u8; 1 << 16]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        assert!(cache.load(DIGEST).is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("t")).unwrap().count(), 0);
    }

    #[test]
    fn digests_that_are_not_sha256_hex_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "t").unwrap();
        for digest in ["sha256:../../etc/passwd", "md5:abc", "sha256:", ""] {
            assert!(cache.path(digest).is_none(), "{digest}");
            assert!(cache.store(digest, b"x").is_err(), "{digest}");
        }
    }

    #[test]
    fn temporary_files_and_other_configurations_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keep")).unwrap();
        std::fs::write(dir.path().join("keep/abc.1.2.tmp"), b"torn").unwrap();
        std::fs::create_dir_all(dir.path().join("optimised-0123")).unwrap();
        std::fs::write(dir.path().join("modules-wasmtime-old"), b"x").unwrap();
        remove_others(dir.path(), &["keep"]);
        DiskCache::open(dir.path(), "keep").unwrap();
        let left: Vec<_> = walk(dir.path());
        assert_eq!(left, vec![dir.path().join("keep")]);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(entry.path());
            if entry.file_type().unwrap().is_dir() {
                out.extend(walk(&entry.path()));
            }
        }
        out.sort();
        out
    }
}
