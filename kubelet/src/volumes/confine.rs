//! Keeping a mount inside its volume: `subPath` resolution that refuses symlinks leading
//! out, guest paths that cannot climb, and file mounts staged as directories (a WASI guest
//! can only be given directories).

use std::io;
use std::path::{Component, Path, PathBuf};

/// `sub_path` inside `root`, made as directories where missing (as the kubelet does). Every
/// step is resolved on the host, and one that leads outside `root` (a symlink to `/etc`,
/// say) is refused.
pub(crate) async fn sub_path(root: &Path, sub_path: &str) -> Result<PathBuf, String> {
    super::payload::check_relative(sub_path).map_err(|e| format!("subPath: {e}"))?;
    let root = root.to_path_buf();
    let sub = sub_path.to_string();
    tokio::task::spawn_blocking(move || resolve_blocking(&root, &sub))
        .await
        .map_err(|e| e.to_string())?
}

fn resolve_blocking(root: &Path, sub_path: &str) -> Result<PathBuf, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve volume {}: {e}", root.display()))?;
    let mut current = root.clone();
    for part in sub_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let next = current.join(part);
        match std::fs::symlink_metadata(&next) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)
                    .map_err(|e| format!("cannot create subPath {sub_path:?}: {e}"))?;
                current = next;
            }
            Err(err) => return Err(format!("cannot resolve subPath {sub_path:?}: {err}")),
            Ok(_) => {
                let resolved = next
                    .canonicalize()
                    .map_err(|e| format!("cannot resolve subPath {sub_path:?}: {e}"))?;
                if !resolved.starts_with(&root) {
                    return Err(format!(
                        "subPath {sub_path:?} leads outside its volume (to {})",
                        resolved.display()
                    ));
                }
                current = resolved;
            }
        }
    }
    Ok(current)
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
pub(crate) async fn stage_file(file: &Path, dir: &Path, name: &str) -> io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let target = dir.join(name);
    match tokio::fs::hard_link(file, &target).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
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
        assert_eq!(sub_path(&vol, "a").await.unwrap(), real.join("a"));
        assert_eq!(sub_path(&vol, "link-in").await.unwrap(), real.join("a"));
        assert_eq!(
            sub_path(&vol, "new/dir").await.unwrap(),
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

    #[test]
    fn guest_paths_are_normalised_and_must_not_climb() {
        assert_eq!(guest_path("/data/").unwrap(), "/data");
        assert_eq!(guest_path("/a/./b").unwrap(), "/a/b");
        assert!(guest_path("/a/../../etc").is_err());
        assert!(guest_path("relative").is_err());
        assert!(guest_path("/").is_err());
    }
}
