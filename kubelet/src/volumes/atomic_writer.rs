//! Writes a volume's files the way the kubelet's AtomicWriter does, so a reader never sees
//! half an update:
//!
//! ```text
//!   <volume>/..2026_11_22_12_00_00.123456789   the files of one version
//!   <volume>/..data -> ..2026_…                swapped by one rename
//!   <volume>/<name> -> ..data/<name>           one link per top-level entry
//! ```
//!
//! The links are relative and stay inside the volume, so a guest confined to the volume
//! follows them.

use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::payload::Payload;

const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Makes `dir` hold exactly `payload`; returns false when it already did (nothing written).
pub(crate) async fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    let dir = dir.to_path_buf();
    let payload = payload.clone();
    tokio::task::spawn_blocking(move || write_blocking(&dir, &payload))
        .await
        .map_err(io::Error::other)?
}

fn write_blocking(dir: &Path, payload: &Payload) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(old) = &old
        && holds_exactly(&dir.join(old), payload)
    {
        return Ok(false);
    }
    let now = jiff::Timestamp::now();
    let version = format!(
        "..{}_{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    let version_dir = dir.join(&version);
    std::fs::create_dir(&version_dir)?;
    for (path, file) in payload {
        let target = version_dir.join(path);
        if let Some(parent) = target.parent()
            && parent != version_dir
        {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
    }
    let tmp = dir.join(DATA_LINK_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&version, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_LINK))?;

    let top: std::collections::BTreeSet<&str> =
        payload.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &top {
        let link = dir.join(name);
        let want = Path::new(DATA_LINK).join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(want.as_path()) {
            remove_any(&link)?;
            symlink(&want, &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_version = name.starts_with("..") && name != DATA_LINK && name != version;
        let stale_link = !name.starts_with("..") && !top.contains(name.as_str());
        if stale_version || stale_link {
            remove_any(&entry.path())?;
        }
    }
    Ok(true)
}

/// Whether `version_dir` holds the payload's files, contents and modes, and nothing else.
fn holds_exactly(version_dir: &Path, payload: &Payload) -> bool {
    let same_files = payload.iter().all(|(path, file)| {
        let target = version_dir.join(path);
        let mode = std::fs::metadata(&target).map(|m| m.permissions().mode() & 0o777);
        mode.ok() == Some(file.mode) && std::fs::read(&target).ok().as_ref() == Some(&file.data)
    });
    same_files && count_files(version_dir) == payload.len()
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::payload::FileContent;

    fn payload(entries: &[(&str, &str)]) -> Payload {
        entries
            .iter()
            .map(|(p, d)| {
                (
                    p.to_string(),
                    FileContent {
                        data: d.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn files_appear_through_links_and_updates_replace_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        assert!(
            write(&vol, &payload(&[("a", "1"), ("sub/b", "2")]))
                .await
                .unwrap()
        );
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(vol.join("a")).unwrap(),
            Path::new("..data/a")
        );

        assert!(
            !write(&vol, &payload(&[("a", "1"), ("sub/b", "2")]))
                .await
                .unwrap(),
            "an unchanged payload is not rewritten"
        );

        assert!(write(&vol, &payload(&[("a", "3")])).await.unwrap());
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "3");
        assert!(!vol.join("sub").exists(), "a removed key disappears");
        let versions = std::fs::read_dir(&vol)
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("..") && name != DATA_LINK
            })
            .count();
        assert_eq!(versions, 1, "the old version is removed");
    }

    #[tokio::test]
    async fn modes_are_applied_and_a_mode_change_is_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = payload(&[("key", "v")]);
        write(dir.path(), &files).await.unwrap();
        files.get_mut("key").unwrap().mode = 0o400;
        assert!(write(dir.path(), &files).await.unwrap());
        let mode = std::fs::metadata(dir.path().join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }
}
