//! Writing container logs: guest stdout/stderr to per-container files, one line per record in
//! the CRI format (`<RFC 3339 time> <stream> <F|P> <text>`), rotated by size.
//!
//! A provider gets a [`LogSink`] and writes bytes to its [`LogStream`]s; a single writer
//! task per container turns them into lines. The channel between them is bounded, so a guest
//! flooding its stdout is slowed to disk speed instead of growing memory, and rotation keeps
//! the files bounded.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tracing::warn;

use super::hub::{LogHub, Progress};

/// A line longer than this is split into partial (`P`) records, as CRI runtimes do.
const MAX_LINE: usize = 16 * 1024;
/// Chunks in flight between a guest and the writer.
const CHANNEL_DEPTH: usize = 64;

/// Size limits for one container's log.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    /// Rotate when the current file reaches this size (the kubelet's `containerLogMaxSize`).
    pub max_file_bytes: u64,
    /// Files kept, counting the current one (the kubelet's `containerLogMaxFiles`).
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Which stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn label(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a container instance's output goes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
}

impl LogSink {
    /// Opens a sink that writes to `path` (creating its directory) and the task that drains
    /// it. The task ends, flushed, once every clone of the sink and its streams is dropped;
    /// awaiting it is how a caller knows a finished container's last line is on disk.
    /// Followers of `path` in `hub` hear of every flush until then.
    pub async fn open(
        path: PathBuf,
        limits: LogLimits,
        hub: &LogHub,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        // The directory is usually there already (the worker lays out a container's
        // directories before its start): open first, make it only when it is missing.
        let file = match open_append(&path).await {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                open_append(&path).await?
            }
            opened => opened?,
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let progress = hub.publish(&path);
        let writer = tokio::spawn(write_lines(path, file, limits, rx, progress));
        Ok((Self { tx }, writer))
    }

    /// An `AsyncWrite` for one stream.
    pub fn stream(&self, stream: Stream) -> LogStream {
        LogStream {
            stream,
            tx: SyncWrapper::new(PollSender::new(self.tx.clone())),
        }
    }

    /// Writes one complete line from the agent itself (e.g. why a container was killed).
    pub async fn note(&self, stream: Stream, line: &str) {
        let _ = self
            .tx
            .send((stream, format!("{line}\n").into_bytes()))
            .await;
    }
}

/// One stream of a [`LogSink`], for a guest's stdout or stderr. It is `Sync` (runtimes such
/// as wasmtime-wasi require it); the sender is only ever used through `&mut self`.
pub struct LogStream {
    stream: Stream,
    tx: SyncWrapper<PollSender<(Stream, Vec<u8>)>>,
}

impl LogStream {
    /// Another writer to the same stream of the same log, for a provider that runs several
    /// instances of one container at once (one per HTTP request).
    pub fn duplicate(&mut self) -> Self {
        Self {
            stream: self.stream,
            tx: SyncWrapper::new(self.tx.get_mut().clone()),
        }
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "log writer stopped");
        let stream = self.stream;
        let tx = self.tx.get_mut();
        if std::task::ready!(tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(closed()));
        }
        match tx.send_item((stream, buf.to_vec())) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

struct LogFile {
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    written: u64,
    limits: LogLimits,
}

impl LogFile {
    async fn write_record(
        &mut self,
        stream: Stream,
        partial: bool,
        text: &[u8],
    ) -> std::io::Result<()> {
        let time = jiff::Timestamp::now();
        let head = format!(
            "{time:.9} {} {} ",
            stream.label(),
            if partial { "P" } else { "F" }
        );
        self.out.write_all(head.as_bytes()).await?;
        self.out.write_all(text).await?;
        self.out.write_all(b"\n").await?;
        self.written += (head.len() + text.len() + 1) as u64;
        if self.written >= self.limits.max_file_bytes {
            self.rotate().await?;
        }
        Ok(())
    }

    /// `n.log` → `n.log.1` → `n.log.2` …, dropping the oldest beyond `max_files`.
    async fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush().await?;
        let rotated = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let keep = self.limits.max_files.max(1) - 1;
        if keep == 0 {
            tokio::fs::remove_file(&self.path).await.ok();
        } else {
            tokio::fs::remove_file(rotated(keep)).await.ok();
            for i in (1..keep).rev() {
                tokio::fs::rename(rotated(i), rotated(i + 1)).await.ok();
            }
            tokio::fs::rename(&self.path, rotated(1)).await?;
        }
        self.out = BufWriter::new(open_append(&self.path).await?);
        self.written = 0;
        Ok(())
    }
}

async fn write_lines(
    path: PathBuf,
    file: tokio::fs::File,
    limits: LogLimits,
    mut rx: mpsc::Receiver<(Stream, Vec<u8>)>,
    progress: Progress,
) {
    let written = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut log = LogFile {
        path,
        out: BufWriter::new(file),
        written,
        limits,
    };
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let result: std::io::Result<()> = async {
        while let Some((stream, bytes)) = rx.recv().await {
            let buf = &mut pending[stream as usize];
            buf.extend_from_slice(&bytes);
            // Written in place and removed once: draining each line from the front would
            // move the rest of the chunk per line, quadratic in a chunk of short lines.
            let mut start = 0;
            while let Some(len) = buf[start..].iter().position(|b| *b == b'\n') {
                let end = start + len;
                log.write_record(stream, false, &buf[start..end]).await?;
                start = end + 1;
            }
            while buf.len() - start >= MAX_LINE {
                let end = start + MAX_LINE;
                log.write_record(stream, true, &buf[start..end]).await?;
                start = end;
            }
            buf.drain(..start);
            // Flush whenever the guest pauses, so a follower sees each line at once.
            if rx.is_empty() {
                log.out.flush().await?;
                progress.flushed();
            }
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut pending[stream as usize]);
            if !rest.is_empty() {
                log.write_record(stream, false, &rest).await?;
            }
        }
        log.out.flush().await
    }
    .await;
    if let Err(err) = result {
        warn!(path = %log.path.display(), %err, "container log writer failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_and_close(path: &Path, limits: LogLimits, chunks: &[(Stream, &[u8])]) {
        let (sink, writer) = LogSink::open(path.to_path_buf(), limits, &LogHub::default())
            .await
            .unwrap();
        let (mut out, mut err) = (sink.stream(Stream::Stdout), sink.stream(Stream::Stderr));
        for (stream, bytes) in chunks {
            match stream {
                Stream::Stdout => out.write_all(bytes).await.unwrap(),
                Stream::Stderr => err.write_all(bytes).await.unwrap(),
            }
        }
        drop((sink, out, err));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn lines_are_split_per_stream_and_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        write_and_close(
            &path,
            LogLimits::default(),
            &[
                (Stream::Stdout, b"hel"),
                (Stream::Stderr, b"oops\n"),
                (Stream::Stdout, b"lo\nlast"),
            ],
        )
        .await;
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let time = parts.next().unwrap();
                assert!(time.ends_with('Z') && time.contains('T'), "{time}");
                (parts.next().unwrap(), parts.nth(1).unwrap())
            })
            .collect();
        assert!(records.contains(&("stderr", "oops")), "{text}");
        assert!(records.contains(&("stdout", "hello")), "{text}");
        assert!(records.contains(&("stdout", "last")), "{text}");
    }

    #[tokio::test]
    async fn a_flood_is_bounded_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogLimits {
            max_file_bytes: 4096,
            max_files: 3,
        };
        let line = [b'x'; 100];
        let mut chunks = Vec::new();
        for _ in 0..2000 {
            chunks.push((Stream::Stdout, &line[..]));
            chunks.push((Stream::Stdout, &b"\n"[..]));
        }
        write_and_close(&path, limits, &chunks).await;
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 3, "{files} files");
        assert!(total <= 3 * (4096 + 200), "{total} bytes kept");
    }
}
