//! Secret and projected volumes (projected ones carry service account tokens) kept in memory,
//! each on its own tmpfs, as the kubelet keeps them, so their payloads never reach the disk.
//!
//! Mounting needs root. The binary turns this on only after it has moved the agent into a
//! mount namespace of its own ([`NodeConfig::secrets_in_memory`](crate::NodeConfig)): the
//! mounts are then invisible outside the agent and vanish with it, even if it is killed.
//! Pod clean-up unmounts them first in any case, so a long-running agent holds none for
//! pods that are gone.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// `f_type` of a tmpfs (linux/magic.h).
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Moves the process into a mount namespace of its own, into which the host's mounts still
/// propagate but out of which none of its own do: the tmpfs it mounts for volumes are then
/// seen only by the agent and are gone when it exits, however it exits.
///
/// # Safety
///
/// Namespaces belong to threads: call this before the process starts any other thread, so
/// that every thread it starts later is in the new namespace.
pub unsafe fn enter_private_mount_namespace() -> io::Result<()> {
    // SAFETY: only the mount namespace is unshared (never the file table), and the caller
    // promises no other thread exists yet.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )?;
    Ok(())
}

/// A tmpfs at `dir` (made if missing), unless one is there already. Its size bounds what the
/// volume's files may take of the node's memory.
pub(crate) async fn mount_tmpfs(dir: &Path, size_bytes: u64) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        if is_tmpfs(&dir)? {
            return Ok(());
        }
        let options = std::ffi::CString::new(format!("mode=0700,size={size_bytes}"))
            .map_err(io::Error::other)?;
        rustix::mount::mount(
            "tmpfs",
            &dir,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            options.as_c_str(),
        )?;
        Ok(())
    })
    .await
    .map_err(io::Error::other)?
}

/// Makes the tmpfs mounted at `dir` hold at least `size_bytes`: a payload larger than the
/// size it was mounted with, which is chosen before the payload is known. Never shrinks one,
/// and leaves alone a `dir` that is on a tmpfs without being its root (a data dir on `/run`:
/// `mount_tmpfs` mounted nothing there).
pub(crate) async fn grow_tmpfs(dir: &Path, size_bytes: u64) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fs = rustix::fs::statfs(&dir)?;
        // The fields' integer types differ between architectures (u64 here, not everywhere).
        #[allow(clippy::useless_conversion)]
        let capacity = u64::try_from(fs.f_blocks)
            .unwrap_or(0)
            .saturating_mul(u64::try_from(fs.f_bsize).unwrap_or(0));
        let own_mount = rustix::fs::stat(&dir)?.st_dev != rustix::fs::stat(dir.join(".."))?.st_dev;
        if capacity >= size_bytes || !own_mount {
            return Ok(());
        }
        let options = std::ffi::CString::new(format!("mode=0700,size={size_bytes}"))
            .map_err(io::Error::other)?;
        rustix::mount::mount_remount(
            &dir,
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            options.as_c_str(),
        )
        .map_err(io::Error::from)
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether `dir` is on a tmpfs.
pub(crate) fn is_tmpfs(dir: &Path) -> io::Result<bool> {
    // `f_type`'s integer type differs between architectures.
    Ok(u64::try_from(rustix::fs::statfs(dir)?.f_type).ok() == Some(TMPFS_MAGIC))
}

/// Unmounts every mount at or under `dir`, deepest first, so that removing `dir` removes only
/// its own files. Blocking: it reads the mount table.
pub(crate) fn unmount_under(dir: &Path) -> io::Result<()> {
    // The mount table has absolute paths without symlinks; the data dir may be given as
    // `./data` or through a link. A directory that is already gone has nothing mounted.
    let dir = match std::fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts = mount_points_under(&table, &dir);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in mounts {
        // Detached: a file still open in a finishing guest cannot keep the pod's removal
        // waiting; the kernel frees the tmpfs when the last file is closed.
        rustix::mount::unmount(&mount, UnmountFlags::DETACH)?;
    }
    Ok(())
}

/// The mount points in `mountinfo` (the format of `/proc/self/mountinfo`) at or under `dir`.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_under_a_directory_are_found_with_escapes_decoded() {
        let table = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /data/pods/u1/volumes/secret rw,nosuid - tmpfs tmpfs rw,size=1024k
91 22 0:51 / /data/pods/u1/volumes/my\\040token rw - tmpfs tmpfs rw
92 22 0:52 / /data/pods/u10/volumes/secret rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_under(table, Path::new("/data/pods/u1")),
            vec![
                PathBuf::from("/data/pods/u1/volumes/secret"),
                PathBuf::from("/data/pods/u1/volumes/my token"),
            ]
        );
    }

    #[tokio::test]
    async fn a_volume_on_tmpfs_is_in_memory_and_unmounted_before_removal() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volumes/secret");
        mount_tmpfs(&volume, 1 << 20).await.unwrap();
        assert!(is_tmpfs(&volume).unwrap());
        std::fs::write(volume.join("password"), "hunter2").unwrap();
        // A second set-up (a restarted worker) keeps the mount it finds.
        mount_tmpfs(&volume, 1 << 20).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("password")).unwrap(),
            "hunter2"
        );
        // The size bounds it, and a larger payload grows it, keeping its files.
        assert!(std::fs::write(volume.join("big"), vec![0u8; 2 << 20]).is_err());
        grow_tmpfs(&volume, 4 << 20).await.unwrap();
        std::fs::write(volume.join("big"), vec![0u8; 2 << 20]).unwrap();
        // Never shrinks it.
        grow_tmpfs(&volume, 1 << 20).await.unwrap();
        std::fs::write(volume.join("more"), vec![0u8; 1 << 20]).unwrap();
        // A directory on that tmpfs, not its root, is left alone.
        let inner = volume.join("inner");
        std::fs::create_dir(&inner).unwrap();
        grow_tmpfs(&inner, 64 << 20).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("password")).unwrap(),
            "hunter2"
        );

        unmount_under(dir.path()).unwrap();
        assert!(!is_tmpfs(&volume).unwrap());
        assert!(
            !volume.join("password").exists(),
            "the payload went with the tmpfs"
        );
        std::fs::remove_dir_all(dir.path().join("volumes")).unwrap();
    }
}
