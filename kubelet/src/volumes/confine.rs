//! Keeping a mount inside its volume: `subPath` resolution that the kernel holds beneath the
//! volume, guest paths that cannot climb, and file mounts staged as directories (a WASI guest
//! can only be given directories).
//!
//! A `subPath` is resolved with `openat2(RESOLVE_BENEATH)` from the volume's directory and
//! the result is held open: the mount names that open file (`/proc/self/fd/N`), so the
//! provider opens exactly what was checked. Checking a path and then using it by path would
//! let a sibling container that shares the volume swap a component for a symlink in between
//! (the class of CVE-2017-1002101).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::Arc;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};

use crate::provider::HeldPath;

/// `sub_path` inside `root`, made as directories where missing (as the kubelet does), and
/// held open. A path that leads outside `root` (through `..` or a symlink to `/etc`, say) is
/// refused.
pub(crate) async fn sub_path(root: &Path, sub_path: &str) -> Result<HeldPath, String> {
    super::payload::check_relative(sub_path).map_err(|e| format!("subPath: {e}"))?;
    let root = root.to_path_buf();
    let sub = sub_path.to_string();
    tokio::task::spawn_blocking(move || resolve_blocking(&root, &sub))
        .await
        .map_err(|e| e.to_string())?
}

/// Opens `path` beneath `dir`, never leaving it, whatever symlinks it meets.
fn open_beneath(dir: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        if path.is_empty() { "." } else { path },
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?)
}

fn resolve_blocking(root: &Path, sub_path: &str) -> Result<HeldPath, String> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open volume {}: {e}", root.display()))?;
    let outside = |err: io::Error| {
        if err.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) {
            format!("subPath {sub_path:?} leads outside its volume")
        } else {
            format!("cannot resolve subPath {sub_path:?}: {err}")
        }
    };
    let parts: Vec<&str> = sub_path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    // Missing directories are made one at a time, each inside its parent as resolved
    // beneath the volume; `mkdirat` of a single name follows no symlink.
    for depth in 1..=parts.len() {
        let prefix = parts[..depth].join("/");
        match open_beneath(&root_fd, &prefix) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let parent =
                    open_beneath(&root_fd, &parts[..depth - 1].join("/")).map_err(outside)?;
                match rustix::fs::mkdirat(&parent, parts[depth - 1], Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => {
                        return Err(format!("cannot create subPath {sub_path:?}: {err}"));
                    }
                }
            }
            Err(err) => return Err(outside(err)),
        }
    }
    let held = open_beneath(&root_fd, &parts.join("/")).map_err(outside)?;
    let is_dir = rustix::fs::fstat(&held)
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        .map_err(|e| format!("cannot resolve subPath {sub_path:?}: {e}"))?;
    Ok(HeldPath::new(Arc::new(held), is_dir))
}

/// A guest path as its normal form (`/a/b`), or why it is not an absolute path without `..`.
pub(crate) fn guest_path(path: &str) -> Result<String, String> {
    let mut normal = String::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => {
                normal.push('/');
                normal.push_str(&part.to_string_lossy());
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("mountPath {path:?} must not contain '..'"));
            }
        }
    }
    if !path.starts_with('/') {
        return Err(format!("mountPath {path:?} must be absolute"));
    }
    if normal.is_empty() {
        return Err(format!("mountPath {path:?} must not be the root"));
    }
    Ok(normal)
}

/// Puts `file` into `dir` under `name`, sharing its inode where the file system allows (so
/// writes through a writable mount reach the volume, as a bind mount's would), else a copy.
/// `file` may be a held path (`/proc/self/fd/N`): the link is made to the file it holds.
pub(crate) async fn stage_file(file: &Path, dir: &Path, name: &str) -> io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let target = dir.join(name);
    let (source, link) = (file.to_path_buf(), target.clone());
    let linked = tokio::task::spawn_blocking(move || {
        // SYMLINK_FOLLOW: link what a /proc/self/fd path refers to, not the magic link.
        rustix::fs::linkat(CWD, &source, CWD, &link, AtFlags::SYMLINK_FOLLOW)
    })
    .await
    .map_err(io::Error::other)?;
    match linked {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        // Another file system: a copy, which reads through the held file itself.
        Err(_) => tokio::fs::copy(file, &target).await.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sub_paths_resolve_inside_and_are_made_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("a")).unwrap();
        std::os::unix::fs::symlink("a", vol.join("link-in")).unwrap();
        let real = vol.canonicalize().unwrap();
        let target = |held: HeldPath| std::fs::read_link(held.path()).unwrap();
        assert_eq!(target(sub_path(&vol, "a").await.unwrap()), real.join("a"));
        assert_eq!(
            target(sub_path(&vol, "link-in").await.unwrap()),
            real.join("a")
        );
        assert_eq!(
            target(sub_path(&vol, "new/dir").await.unwrap()),
            real.join("new/dir")
        );
        assert!(vol.join("new/dir").is_dir());
    }

    #[tokio::test]
    async fn symlinks_out_of_the_volume_and_climbing_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", vol.join("rel")).unwrap();
        for bad in ["abs", "rel", "rel/x", "../outside", "/etc"] {
            let err = sub_path(&vol, bad).await.unwrap_err();
            assert!(
                err.contains("outside its volume") || err.contains("subPath:"),
                "{bad}: {err}"
            );
        }
        assert!(
            !dir.path().join("outside/x").exists(),
            "nothing is made outside"
        );
    }

    #[tokio::test]
    async fn a_component_swapped_for_a_symlink_after_the_check_changes_nothing_held() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("shared")).unwrap();
        std::fs::write(vol.join("shared/file"), "mine").unwrap();
        let held = sub_path(&vol, "shared").await.unwrap();
        assert!(held.is_dir());
        // A sibling container replaces the directory with a link to the host's /etc.
        std::fs::rename(vol.join("shared"), vol.join("moved")).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("shared")).unwrap();
        let seen = std::fs::read_to_string(held.path().join("file")).unwrap();
        assert_eq!(
            seen, "mine",
            "the held directory is the one that was checked"
        );
        // And resolving again now refuses the link out.
        let err = sub_path(&vol, "shared").await.unwrap_err();
        assert!(err.contains("outside its volume"), "{err}");
    }

    #[tokio::test]
    async fn a_held_file_is_staged_as_a_link_to_the_file_itself() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("conf"), "v1").unwrap();
        let held = sub_path(&vol, "conf").await.unwrap();
        assert!(!held.is_dir());
        let staged = dir.path().join("staged");
        stage_file(&held.path(), &staged, "app.conf").await.unwrap();
        std::fs::write(staged.join("app.conf"), "v2").unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("conf")).unwrap(), "v2");
    }

    #[test]
    fn guest_paths_are_normalised_and_must_not_climb() {
        assert_eq!(guest_path("/data/").unwrap(), "/data");
        assert_eq!(guest_path("/a/./b").unwrap(), "/a/b");
        assert!(guest_path("/a/../../etc").is_err());
        assert!(guest_path("relative").is_err());
        assert!(guest_path("/").is_err());
    }
}
