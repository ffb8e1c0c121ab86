//! hostPath volumes: the `type` checks the kubelet makes before mounting a host path.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Checks (or, for the `…OrCreate` types, makes) `path` as `type_` demands. An unset type
/// makes a missing directory, as Docker's bind mounts did.
pub(crate) async fn prepare(path: &Path, type_: Option<&str>) -> Result<(), String> {
    let path_text = path.display().to_string();
    let fail = |what: &str| {
        Err(format!(
            "hostPath type check failed: {path_text} is not {what}"
        ))
    };
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(format!("cannot read hostPath {path_text}: {err}")),
    };
    let create_error = |err: io::Error| format!("cannot create hostPath {path_text}: {err}");
    match (type_.unwrap_or_default(), meta) {
        ("" | "DirectoryOrCreate", None) => {
            tokio::fs::create_dir_all(path).await.map_err(create_error)
        }
        ("", Some(_)) => Ok(()),
        ("DirectoryOrCreate" | "Directory", Some(m)) if m.is_dir() => Ok(()),
        ("DirectoryOrCreate" | "Directory", _) => fail("a directory"),
        ("FileOrCreate", None) => tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map(drop)
            .map_err(create_error),
        ("FileOrCreate" | "File", Some(m)) if m.is_file() => Ok(()),
        ("FileOrCreate" | "File", _) => fail("a file"),
        ("Socket", Some(m)) if m.file_type().is_socket() => Ok(()),
        ("Socket", _) => fail("a socket file"),
        ("CharDevice", Some(m)) if m.file_type().is_char_device() => Ok(()),
        ("CharDevice", _) => fail("a character device"),
        ("BlockDevice", Some(m)) if m.file_type().is_block_device() => Ok(()),
        ("BlockDevice", _) => fail("a block device"),
        (other, _) => Err(format!("unknown hostPath type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn types_are_checked_and_or_create_types_create() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();

        prepare(dir.path(), Some("Directory")).await.unwrap();
        let err = prepare(&file, Some("Directory")).await.unwrap_err();
        assert!(err.ends_with("is not a directory"), "{err}");
        prepare(&file, Some("File")).await.unwrap();
        assert!(prepare(dir.path(), Some("File")).await.is_err());
        assert!(
            prepare(&dir.path().join("none"), Some("File"))
                .await
                .is_err()
        );
        assert!(prepare(&file, Some("Socket")).await.is_err());
        prepare(Path::new("/dev/null"), Some("CharDevice"))
            .await
            .unwrap();

        let made = dir.path().join("made/deeper");
        prepare(&made, Some("DirectoryOrCreate")).await.unwrap();
        assert!(made.is_dir());
        let touched = dir.path().join("touched");
        prepare(&touched, Some("FileOrCreate")).await.unwrap();
        assert!(touched.is_file());
        assert!(prepare(&file, Some("Sideways")).await.is_err());
    }
}
