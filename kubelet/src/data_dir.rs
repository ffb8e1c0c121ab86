//! The agent's data dir: created at start-up, proven writable, and locked so that two agents
//! never share one.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The file a running agent holds an exclusive `flock` on.
const LOCK_FILE: &str = "wasmlet.lock";

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
            .open(path.join(LOCK_FILE))
            .map_err(|e| fail("cannot open its lock file", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| fail("another wasmlet holds its lock", e.into()))?;
        if let Err(e) = name_holder(&lock) {
            tracing::warn!(
                "cannot name the lock's holder: {e}; wasmlet logs -f cannot tell when it stops"
            );
        }
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

/// Writes the holder's pid namespace into its lock file: the kernel's lock table shows a
/// reader only the locks of processes in its own pid namespace ([`agent_holds`]).
fn name_holder(mut lock: &File) -> std::io::Result<()> {
    use std::io::Write;
    let namespace = pid_namespace().ok_or_else(|| std::io::Error::other("no /proc/self/ns/pid"))?;
    lock.set_len(0)?;
    lock.write_all(format!("{namespace}\n").as_bytes())
}

/// This process's pid namespace, as `pid:[4026531836]`.
fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()?
        .into_os_string()
        .into_string()
        .ok()
}

/// Whether a running agent holds `path`'s lock, as the kernel's `/proc/locks` says, which
/// reads it without taking it: a reader that took the lock even for a moment could make an
/// agent starting then fail. `None` if this host cannot tell: no lock file or lock table, or
/// the last agent ran in another pid namespace, whose locks the table does not show.
pub fn agent_holds(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let lock_path = path.join(LOCK_FILE);
    // It holds one short line; a longer file names no namespace.
    let mut holder = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(File::open(&lock_path).ok()?, 64),
        &mut holder,
    )
    .ok()?;
    if holder.trim() != pid_namespace()? {
        return None;
    }
    let lock = std::fs::metadata(&lock_path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(flock_held_on(&locks, lock.ino()))
}

/// Whether `/proc/locks` lists a `flock` held (not waited for) on inode `inode`: lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF` (`MAJOR:MINOR:INODE`), and a waiter's
/// `1: -> FLOCK …`. The device is not compared: how a stacked file system (overlayfs)
/// numbers it there and in `stat` may differ, and a lock on a like-numbered file elsewhere
/// only errs towards "held", which is what a reader assumed before asking.
fn flock_held_on(locks: &str, inode: u64) -> bool {
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields
                .get(5)
                .and_then(|file| file.rsplit(':').next())
                .and_then(|ino| ino.parse::<u64>().ok())
                == Some(inode)
    })
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
    fn whether_an_agent_holds_a_data_dir_is_read_without_taking_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let agent = DataDir::open(dir.path()).unwrap();
        assert_eq!(agent_holds(dir.path()), Some(true));
        // Asking took nothing: a second agent is still refused, and the first one's going
        // is seen.
        assert!(DataDir::open(dir.path()).is_err());
        drop(agent);
        assert_eq!(agent_holds(dir.path()), Some(false));
        // A directory no agent ever ran in cannot say, nor one whose agent ran in another
        // pid namespace (a container), whose locks this one's lock table does not show.
        let never = tempfile::tempdir().unwrap();
        assert_eq!(agent_holds(never.path()), None);
        std::fs::write(dir.path().join(LOCK_FILE), "pid:[1]\n").unwrap();
        assert_eq!(agent_holds(dir.path()), None);
    }

    #[test]
    fn only_a_held_flock_on_the_file_counts() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 fd:01:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 fd:01:78 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 12 fd:01:77 0 EOF\n";
        assert!(flock_held_on(locks, 78));
        // A POSIX lock and a waiter on the file hold no flock.
        assert!(!flock_held_on(locks, 77));
        assert!(!flock_held_on(locks, 79));
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
