//! Reading the stored pods: by the agent at start-up, and by `wasmlet ps` from another
//! process while the agent runs or when it is stopped.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use tracing::warn;

use super::{PodSource, STORE_FILE, StoreError, StoredPod, open_connection, sqlite};

/// The pods stored in `data_dir`, read without taking the data dir's lock or writing
/// anything: for the local tools.
pub fn read_pods(data_dir: &Path) -> Result<Vec<StoredPod>, StoreError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| sqlite(&path, "open", source))?;
    pods_from(&conn, &path)
}

/// Every pod in the store behind `conn`. A row that no longer parses (written by another
/// version) is skipped with a log line: the API server will tell the node again.
pub(super) fn pods_from(conn: &Connection, path: &Path) -> Result<Vec<StoredPod>, StoreError> {
    let mut query = conn
        .prepare("SELECT uid, source, pod, status FROM pods ORDER BY uid")
        .map_err(|source| sqlite(path, "read pods", source))?;
    let rows = query
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(|source| sqlite(path, "read pods", source))?;
    let mut pods = Vec::new();
    for row in rows {
        let (uid, source, pod, status) = row.map_err(|source| sqlite(path, "read pods", source))?;
        let parsed = PodSource::parse(&source).zip(serde_json::from_str(&pod).ok());
        let Some((source, pod)) = parsed else {
            warn!(%uid, "a stored pod does not parse; skipping it");
            continue;
        };
        let status = status.and_then(|s| serde_json::from_str(&s).ok());
        pods.push(StoredPod {
            uid,
            source,
            pod,
            status,
        });
    }
    Ok(pods)
}
