//! The agent's data dir: created at start-up, proven writable, and locked so that two agents
//! never share one.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An opened, writable and exclusively locked data dir. The lock is released on drop.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed, checks that it can be written and takes its lock.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |reason: &str, source| Error::DataDir {
            path: path.to_path_buf(),
            reason: reason.to_string(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|e| fail("cannot create it", e))?;
        // It holds Secrets and tokens (the local store, volumes): other local users get nothing.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| fail("cannot make it private (mode 0700)", e))?;
        probe_writable(path).map_err(|e| fail("cannot write to it", e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("wasmlet.lock"))
            .map_err(|e| fail("cannot open its lock file", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| fail("another wasmlet holds its lock", e.into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where TLS material lives.
    pub fn pki_dir(&self) -> PathBuf {
        self.path.join("pki")
    }

    /// Whether the directory can still be written; the error says why not.
    pub fn check_writable(&self) -> std::io::Result<()> {
        probe_writable(&self.path)
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_cannot_take_the_same_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another wasmlet holds its lock"), "{err}");
        drop(first);
        DataDir::open(dir.path()).expect("lock released on drop");
    }

    #[test]
    fn the_data_dir_is_made_private_whatever_mode_it_had() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _open = DataDir::open(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
    }

    #[test]
    fn a_path_under_a_file_is_reported_as_not_creatable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = DataDir::open(&file.join("data")).unwrap_err().to_string();
        assert!(err.contains("cannot create it"), "{err}");
    }
}
