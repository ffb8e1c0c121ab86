//! How a log follower learns, without polling, that a container's log grew or that the
//! container is gone.
//!
//! Each live log file has a `watch` channel: its writer bumps the value after every flush
//! and drops the sender when the container's output ends. A follower subscribes before it
//! reads, so no flush can fall between its last read and its wait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The live log files of this node. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LogHub {
    live: Arc<Mutex<HashMap<PathBuf, watch::Receiver<u64>>>>,
}

impl LogHub {
    /// Marks `path` live until the returned [`Progress`] is dropped.
    pub(super) fn publish(&self, path: &Path) -> Progress {
        let (tx, rx) = watch::channel(0);
        self.lock().insert(path.to_path_buf(), rx);
        Progress {
            tx,
            path: path.to_path_buf(),
            hub: self.clone(),
        }
    }

    /// A receiver that changes on every flush of `path` and closes when its writer ends, or
    /// `None` if nothing is writing it.
    pub fn subscribe(&self, path: &Path) -> Option<watch::Receiver<u64>> {
        let mut rx = self.lock().get(path)?.clone();
        rx.mark_unchanged();
        Some(rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, watch::Receiver<u64>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A writer's side of a live log.
#[derive(Debug)]
pub(super) struct Progress {
    tx: watch::Sender<u64>,
    path: PathBuf,
    hub: LogHub,
}

impl Progress {
    /// Tells followers that more of the file is on disk.
    pub(super) fn flushed(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let mut live = self.hub.lock();
        // A restarted writer of the same path may have replaced this entry already.
        if live
            .get(&self.path)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            live.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_hear_flushes_and_the_end() {
        let hub = LogHub::default();
        let path = Path::new("/x/0.log");
        assert!(hub.subscribe(path).is_none());
        let progress = hub.publish(path);
        let mut rx = hub.subscribe(path).unwrap();
        progress.flushed();
        rx.changed().await.unwrap();
        drop(progress);
        assert!(rx.changed().await.is_err(), "the end closes the channel");
        assert!(hub.subscribe(path).is_none(), "an ended log is not live");
    }
}
