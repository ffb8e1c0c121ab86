//! The store's one writer: a thread that owns the write connection and commits whatever has
//! queued up since its last commit as one transaction.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{StoreError, io};

/// Writes applied together in one transaction, at most; a larger backlog takes several.
const BATCH: usize = 512;

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

fn run(mut conn: Connection, mut pending: mpsc::Receiver<Write>, path: &Path) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = pending.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if let Err(err) = commit(&mut conn, &mut batch) {
            // The transaction rolled back whole (a full disk, say): the store keeps its last
            // committed state and the next change is tried again afresh.
            warn!(store = %path.display(), %err, "a local store transaction failed; its changes were not saved");
        }
        for write in batch.drain(..) {
            if let Write::Flush(done) = write {
                let _ = done.send(());
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: &mut [Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for write in batch.iter() {
        apply(&tx, write)?;
    }
    tx.commit()
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
