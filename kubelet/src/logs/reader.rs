//! Reading container logs back for `/containerLogs`: which instance's files, and the byte
//! stream `kubectl logs` receives.
//!
//! An instance's log is `<restart>.log` plus its rotations `<restart>.log.1` (newest) …
//! beside it. Records are CRI lines; the caller gets the text back, one line per full
//! record, optionally stamped, filtered by time, tailed, and cut at a byte limit. A follow
//! stream waits on the writer's [`LogHub`](super::LogHub) channel rather than polling, and
//! it ends when the writer does; dropping it (a client that hung up) frees everything.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use jiff::Timestamp;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::query::LogQuery;

/// The instance numbers (restart counts) that have a log in `dir`, oldest first.
pub async fn instances(dir: &Path) -> io::Result<Vec<i32>> {
    let mut found = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<i32>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Where a container's instance logs live: `<pods_dir>/<uid>/logs/<container>`.
pub fn container_dir(pods_dir: &Path, uid: &str, container: &str) -> PathBuf {
    pods_dir.join(uid).join("logs").join(container)
}

/// The current file of instance `restart` in `dir`.
pub fn instance_path(dir: &Path, restart: i32) -> PathBuf {
    dir.join(format!("{restart}.log"))
}

/// The files of the instance whose current file is `current`, oldest first.
async fn files_of(current: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for i in (1..=64).rev() {
        let rotated = PathBuf::from(format!("{}.{i}", current.display()));
        if tokio::fs::try_exists(&rotated).await.unwrap_or(false) {
            files.push(rotated);
        }
    }
    files.push(current.to_path_buf());
    files
}

/// The log of the instance whose current file is `current`, as `query` asks. `live` is the
/// writer's channel if the instance is still writing; without it the stream ends at EOF even
/// when following, as `kubectl logs -f` does for a terminated container.
pub fn stream(
    current: PathBuf,
    query: LogQuery,
    live: Option<watch::Receiver<u64>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    async_stream::try_stream! {
        let format = Format { since: query.since, timestamps: query.timestamps };
        let mut limit = Limit(query.limit_bytes);
        let mut tail = query.tail_lines.map(|n| (n, VecDeque::<Vec<u8>>::new()));
        let mut cursor = None;
        for path in files_of(&current).await {
            let Some(mut file) = Cursor::open(&path).await? else { continue };
            let mut chunk = Vec::new();
            file.read_lines(|record| {
                let Some(line) = format.line(record) else { return true };
                match &mut tail {
                    // The last lines cannot be known before the end.
                    Some((n, kept)) => {
                        kept.push_back(line);
                        if kept.len() > *n {
                            kept.pop_front();
                        }
                        true
                    }
                    None => {
                        chunk.extend_from_slice(&line);
                        limit.wants_more(chunk.len())
                    }
                }
            })
            .await?;
            if let Some(bytes) = limit.take(chunk) {
                yield bytes;
            }
            if limit.reached() {
                return;
            }
            if path == current {
                cursor = Some(file);
            }
        }
        if let Some((_, kept)) = tail {
            if let Some(bytes) = limit.take(kept.into_iter().flatten().collect()) {
                yield bytes;
            }
            if limit.reached() {
                return;
            }
        }
        let (true, Some(mut live)) = (query.follow, live) else { return };
        loop {
            let ended = live.changed().await.is_err();
            let mut chunk = Vec::new();
            let mut emit = |record: &[u8]| {
                if let Some(line) = format.line(record) {
                    chunk.extend_from_slice(&line);
                }
                limit.wants_more(chunk.len())
            };
            // The writer rotates by renaming the file away and creating a new one: finish
            // the old handle, then move to the new file from its start.
            if let Some(file) = cursor.as_mut() {
                let rotated = file.was_replaced(&current).await;
                file.read_lines(&mut emit).await?;
                if rotated {
                    cursor = None;
                }
            }
            if cursor.is_none() {
                cursor = Cursor::open(&current).await?;
                if let Some(file) = cursor.as_mut() {
                    file.read_lines(&mut emit).await?;
                }
            }
            if let Some(bytes) = limit.take(chunk) {
                yield bytes;
            }
            if ended || limit.reached() {
                return;
            }
        }
    }
}

/// How records become output lines.
struct Format {
    since: Option<Timestamp>,
    timestamps: bool,
}

impl Format {
    /// The output for one CRI record, or `None` if it is filtered out or malformed.
    fn line(&self, record: &[u8]) -> Option<Vec<u8>> {
        let mut parts = record.splitn(4, |b| *b == b' ');
        let (time, _stream, tag, text) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next().unwrap_or_default(),
        );
        if let Some(since) = self.since {
            let written: Timestamp = std::str::from_utf8(time).ok()?.parse().ok()?;
            if written < since {
                return None;
            }
        }
        let mut line = Vec::with_capacity(time.len() + text.len() + 2);
        if self.timestamps {
            line.extend_from_slice(time);
            line.push(b' ');
        }
        line.extend_from_slice(text);
        // A partial record is the first piece of a line longer than the writer's limit.
        if tag != b"P" {
            line.push(b'\n');
        }
        Some(line)
    }
}

/// What is left of `limitBytes`.
struct Limit(Option<u64>);

impl Limit {
    fn take(&mut self, mut chunk: Vec<u8>) -> Option<Bytes> {
        if let Some(left) = self.0.as_mut() {
            chunk.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= chunk.len() as u64;
        }
        (!chunk.is_empty()).then(|| Bytes::from(chunk))
    }

    fn reached(&self) -> bool {
        self.0 == Some(0)
    }

    /// Whether a chunk of `len` bytes is still short of what is left, so reading goes on.
    fn wants_more(&self, len: usize) -> bool {
        self.0.is_none_or(|left| (len as u64) < left)
    }
}

/// An open log file and the bytes after its last complete record.
struct Cursor {
    file: tokio::fs::File,
    inode: u64,
    carry: Vec<u8>,
}

impl Cursor {
    /// Opens `path`, or `None` if it does not exist (yet, or any more).
    async fn open(path: &Path) -> io::Result<Option<Self>> {
        let file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let inode = file.metadata().await?.ino();
        Ok(Some(Self {
            file,
            inode,
            carry: Vec::new(),
        }))
    }

    /// Whether `path` is no longer this file.
    async fn was_replaced(&self, path: &Path) -> bool {
        tokio::fs::metadata(path)
            .await
            .map_or(true, |m| m.ino() != self.inode)
    }

    /// Reads to EOF and hands each complete record to `each`, stopping early when `each`
    /// says it has enough (`limitBytes` reached: the rest is never read). A record the writer
    /// has not finished flushing waits for the next read.
    async fn read_lines(&mut self, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.carry.extend_from_slice(&buf[..n]);
            let Some(end) = self.carry.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            for record in self.carry[..end].split(|b| *b == b'\n') {
                if !each(record) {
                    self.carry.clear();
                    return Ok(());
                }
            }
            self.carry.drain(..=end);
        }
    }
}
