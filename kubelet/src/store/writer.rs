//! The store's one writer: a thread that owns the write connection and commits whatever has
//! queued up since its last commit as one transaction.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, Transaction, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::{StoreError, io};

/// Writes applied together in one transaction, at most; a larger backlog takes several.
const BATCH: usize = 512;
/// The most unsaved writes kept for the next transaction while the disk cannot take them;
/// past it the oldest are dropped.
const MAX_KEPT: usize = 8 * BATCH;

/// One queued change.
#[derive(Debug)]
pub(super) enum Write {
    Pod {
        uid: String,
        source: &'static str,
        json: String,
    },
    Status {
        uid: String,
        json: String,
    },
    RemovePod {
        uid: String,
    },
    /// An object a pod read; `None` when the API said it does not exist.
    Object {
        uid: String,
        key: String,
        json: Option<String>,
    },
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Starts the writer thread; it ends when every [`super::LocalStore`] is dropped.
pub(super) fn spawn(
    conn: Connection,
    pending: mpsc::Receiver<Write>,
    path: PathBuf,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("wasmlet-store".into())
        .spawn(move || run(conn, pending, &path))
        .map(|_| ())
        .map_err(|source| io(Path::new(""), "start the writer thread", source))
}

fn run(conn: Connection, mut pending: mpsc::Receiver<Write>, path: &Path) {
    let mut writer = Writer {
        conn,
        kept: Vec::new(),
        path,
    };
    while let Some(first) = pending.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        writer.commit(batch);
    }
}

/// The write connection, and the changes of transactions that failed for want of room or
/// of a working disk, which go again, first, with the next.
struct Writer<'a> {
    conn: Connection,
    kept: Vec<Write>,
    path: &'a Path,
}

impl Writer<'_> {
    /// Commits what was kept and `batch` as one transaction, then answers the flushes in it
    /// (a flush waits for one attempt, not for a disk to be freed: the agent's last flush,
    /// when it stops, is the last attempt, and says so if it fails).
    fn commit(&mut self, batch: Vec<Write>) {
        let mut writes = std::mem::take(&mut self.kept);
        writes.extend(batch);
        let result = (|| {
            let tx = self.conn.transaction()?;
            for write in &writes {
                apply(&tx, write)?;
            }
            tx.commit()
        })();
        let mut unsaved = Vec::new();
        let mut flushes = Vec::new();
        for write in writes {
            match write {
                Write::Flush(done) => flushes.push(done),
                write => unsaved.push(write),
            }
        }
        if let Err(err) = result {
            self.keep(&err, unsaved, !flushes.is_empty());
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// After a failed transaction: keeps its changes to try again with the next if the disk
    /// is what refused them (`asked`: a flush was waiting on them), and says what was lost.
    fn keep(&mut self, err: &rusqlite::Error, unsaved: Vec<Write>, asked: bool) {
        if !passing(err) {
            warn!(store = %self.path.display(), %err, "a local store transaction failed; its changes were not saved");
            return;
        }
        // The transaction rolled back whole: what it held is what the node must still find
        // after a restart (a pod's end, a removal), so it is tried again.
        self.kept = latest_only(unsaved);
        if self.kept.len() > MAX_KEPT {
            let dropped = self.kept.len() - MAX_KEPT;
            self.kept.drain(..dropped);
            error!(store = %self.path.display(), %err, dropped, "the local store cannot be written; its oldest unsaved changes were dropped");
        } else if asked {
            error!(store = %self.path.display(), %err, unsaved = self.kept.len(), "the local store could not save its latest changes when asked to; they are tried again with the next change, and lost if the agent stops now");
        } else {
            warn!(store = %self.path.display(), %err, kept = self.kept.len(), "a local store transaction failed; its changes are tried again with the next");
        }
    }
}

/// Whether `err` is the disk's trouble of the moment (full, failing, locked), which a later
/// transaction may not meet, rather than something wrong with a change itself.
fn passing(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
        )
    )
}

/// `writes` with what a later write replaces whole left out, so that what they leave in the
/// store is unchanged and what is kept grows with the pods, not with their changes: a pod's
/// statuses and its reads of one object but the last; and a pod's objects but the first
/// since it was last removed, which takes the last one's content (it keeps the first's
/// place, since statuses and object reads after it need its row).
fn latest_only(writes: Vec<Write>) -> Vec<Write> {
    let mut pods: Vec<Write> = Vec::with_capacity(writes.len());
    let mut first_pod_at = HashMap::new();
    for write in writes {
        match write {
            Write::Pod { uid, source, json } => match first_pod_at.get(&uid) {
                Some(&at) => pods[at] = Write::Pod { uid, source, json },
                None => {
                    first_pod_at.insert(uid.clone(), pods.len());
                    pods.push(Write::Pod { uid, source, json });
                }
            },
            Write::RemovePod { uid } => {
                first_pod_at.remove(&uid);
                pods.push(Write::RemovePod { uid });
            }
            other => pods.push(other),
        }
    }
    let mut statuses = HashSet::new();
    let mut objects = HashSet::new();
    let mut kept: Vec<Write> = pods
        .into_iter()
        .rev()
        .filter(|write| match write {
            Write::Status { uid, .. } => statuses.insert(uid.clone()),
            Write::Object { uid, key, .. } => objects.insert((uid.clone(), key.clone())),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

fn apply(tx: &Transaction<'_>, write: &Write) -> rusqlite::Result<()> {
    match write {
        Write::Pod { uid, source, json } => {
            tx.prepare_cached(
                "INSERT INTO pods (uid, source, pod) VALUES (?1, ?2, ?3)
                 ON CONFLICT (uid) DO UPDATE SET source = excluded.source, pod = excluded.pod",
            )?
            .execute(params![uid, source, json])?;
        }
        Write::Status { uid, json } => {
            tx.prepare_cached("UPDATE pods SET status = ?2 WHERE uid = ?1")?
                .execute(params![uid, json])?;
        }
        Write::RemovePod { uid } => {
            tx.prepare_cached("DELETE FROM pods WHERE uid = ?1")?
                .execute([uid])?;
            tx.prepare_cached("DELETE FROM pod_objects WHERE uid = ?1")?
                .execute([uid])?;
            tx.prepare_cached(
                "DELETE FROM objects WHERE key NOT IN (SELECT key FROM pod_objects)",
            )?
            .execute([])?;
        }
        Write::Object { uid, key, json } => {
            match json {
                Some(json) => {
                    tx.prepare_cached(
                        "INSERT INTO objects (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value
                         WHERE value != excluded.value",
                    )?
                    .execute(params![key, json])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM objects WHERE key = ?1")?
                        .execute([key])?;
                }
            }
            // Only pods the store holds link objects, so a late read by a pod already
            // removed cannot pin an object forever.
            tx.prepare_cached(
                "INSERT OR IGNORE INTO pod_objects (uid, key)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM pods WHERE uid = ?1)",
            )?
            .execute(params![uid, key])?;
        }
        Write::Flush(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uid: &str, json: &str) -> Write {
        Write::Status {
            uid: uid.into(),
            json: json.into(),
        }
    }

    #[test]
    fn changes_a_full_disk_refused_go_again_with_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = super::super::open_checked(&path).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        // The file may not grow: as good as a full disk for the next insert.
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let mut writer = Writer {
            conn,
            kept: Vec::new(),
            path: &path,
        };
        let pod = Write::Pod {
            uid: "u1".into(),
            source: "api",
            json: format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024)),
        };
        let (flushed, answer) = oneshot::channel();

        writer.commit(vec![
            pod,
            status("u1", "\"Running\""),
            Write::Flush(flushed),
        ]);

        assert!(answer.blocking_recv().is_ok(), "a flush is answered anyway");
        assert_eq!(writer.kept.len(), 2, "the pod and its status are kept");
        writer
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        writer.commit(vec![status("u1", "\"Succeeded\"")]);
        assert!(writer.kept.is_empty());
        let stored: String = writer
            .conn
            .query_row("SELECT status FROM pods WHERE uid = 'u1'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(stored, "\"Succeeded\"");
    }

    #[test]
    fn what_a_later_write_replaces_is_not_kept() {
        let object = |uid: &str, key: &str, json: &str| Write::Object {
            uid: uid.into(),
            key: key.into(),
            json: Some(json.into()),
        };
        let pod = |uid: &str, json: &str| Write::Pod {
            uid: uid.into(),
            source: "api",
            json: json.into(),
        };
        let writes = vec![
            pod("a", "a1"),
            status("a", "1"),
            object("a", "cm", "v1"),
            status("b", "1"),
            pod("a", "a2"),
            Write::RemovePod { uid: "c".into() },
            pod("c", "c1"),
            Write::RemovePod { uid: "c".into() },
            pod("c", "c2"),
            status("a", "2"),
            object("b", "cm", "v2"),
            pod("a", "a3"),
            object("a", "cm", "v3"),
        ];

        let kept: Vec<String> = latest_only(writes)
            .iter()
            .map(|write| match write {
                Write::Status { uid, json } => format!("status {uid} {json}"),
                Write::Object { uid, json, .. } => format!("object {uid} {json:?}"),
                Write::Pod { uid, json, .. } => format!("pod {uid} {json}"),
                other => format!("{other:?}"),
            })
            .collect();

        assert_eq!(
            kept,
            [
                "pod a a3",
                "status b 1",
                "RemovePod { uid: \"c\" }",
                "pod c c1",
                "RemovePod { uid: \"c\" }",
                "pod c c2",
                "status a 2",
                "object b Some(\"v2\")",
                "object a Some(\"v3\")",
            ]
        );
    }
}
