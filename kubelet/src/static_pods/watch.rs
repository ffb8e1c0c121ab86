//! Watching the manifest directory: inotify (through `notify`) says when to look, and every
//! look reads the whole directory, so a missed or reordered event costs nothing but a delay.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch as channel};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::manifest::{ManifestError, StaticPod, is_ignored_name, read_dir_manifests};

/// How long to wait after an event for the rest of its burst (an editor's save is a create,
/// several writes and a rename), so that one save is one read.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The directory is read again this often even without events, as the kubelet's
/// `--file-check-frequency`: inotify drops events when its queue overflows.
const RESYNC: Duration = Duration::from_secs(20);
/// While the directory itself is gone (removed or renamed), how often to look for it again;
/// its parent is not watched, so nothing would say when it is back.
const LOST_RETRY: Duration = Duration::from_secs(1);

/// Why the manifest directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The directory did not exist and could not be created.
    #[error("cannot create the static pod manifest directory {path}")]
    CreateDir {
        /// The manifest directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// inotify refused to watch the directory (e.g. `max_user_watches` reached).
    #[error("cannot watch the static pod manifest directory {path}")]
    Watch {
        /// The manifest directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
}

/// Watches `dir` (creating it if missing) and keeps the returned receiver holding this
/// node's complete set of static pods.
///
/// The receiver's first value is the directory as read now, so a caller never acts on a
/// made-up empty set. After that a new set is sent, within about 50 ms of a change, only
/// when the set of pod UIDs changed: a UID is the content hash, so a touched but unchanged
/// manifest sends nothing, and an edited one replaces its pod. A manifest that cannot be
/// used is logged once (until it changes) and its pods are left out. If the directory
/// cannot be listed (removed, renamed) the last set is kept, as the kubelet keeps it, and
/// the directory is watched again when it is back.
///
/// The watch ends when `cancel` fires or every receiver is dropped; the sender is dropped
/// then, so `changed()` returns an error.
pub async fn watch(
    dir: PathBuf,
    node_name: String,
    cancel: CancellationToken,
) -> Result<channel::Receiver<Vec<StaticPod>>, WatchError> {
    let (dirty_tx, dirty_rx) = mpsc::channel(1);
    let lost = Arc::new(AtomicBool::new(false));
    let started = {
        let dir = dir.clone();
        let lost = lost.clone();
        // Creating the directory and the inotify watch are syscalls and a round trip to
        // notify's thread: not for the async runtime's threads.
        tokio::task::spawn_blocking(move || start_watching(&dir, dirty_tx, lost)).await
    };
    let watcher = started.map_err(|join| WatchError::CreateDir {
        path: dir.clone(),
        source: io::Error::other(join),
    })??;
    let mut reader = Reader {
        dir,
        node_name: node_name.into(),
        logged: HashSet::new(),
        listing_failed: false,
    };
    let initial = reader.read().await.unwrap_or_default();
    let (pods_tx, pods_rx) = channel::channel(initial);
    tokio::spawn(run(
        Watch {
            watcher: Arc::new(Mutex::new(watcher)),
            dirty: dirty_rx,
            lost,
            reader,
            pods: pods_tx,
        },
        cancel,
    ));
    Ok(pods_rx)
}

/// Everything the watch task owns.
struct Watch {
    /// Kept alive for as long as the task runs: dropping it stops inotify. Behind a mutex
    /// only so that a blocking thread can use it (its calls wait for notify's thread).
    watcher: Arc<Mutex<RecommendedWatcher>>,
    /// A pending "something changed" from notify's thread; capacity 1, as one is enough.
    dirty: mpsc::Receiver<()>,
    /// Set by notify's thread when the directory itself went away.
    lost: Arc<AtomicBool>,
    reader: Reader,
    pods: channel::Sender<Vec<StaticPod>>,
}

async fn run(mut watch: Watch, cancel: CancellationToken) {
    loop {
        let period = if watch.lost.load(Ordering::Relaxed) || watch.reader.listing_failed {
            LOST_RETRY
        } else {
            RESYNC
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = watch.pods.closed() => return,
            signal = watch.dirty.recv() => {
                if signal.is_none() {
                    // The sender lives in the watcher this task holds, so this cannot
                    // happen; were it to, ending beats spinning on a closed channel.
                    warn!(dir = %watch.reader.dir.display(), "the static pod manifest watcher stopped");
                    return;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(DEBOUNCE) => {}
                }
                // Whatever arrived during the pause is covered by the read below; what
                // arrives during the read leaves a signal for the next round.
                while watch.dirty.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(period) => {}
        }
        if watch.lost.load(Ordering::Relaxed) {
            rewatch(&watch.watcher, &watch.reader.dir, &watch.lost).await;
        }
        let pods = tokio::select! {
            () = cancel.cancelled() => return,
            pods = watch.reader.read() => pods,
        };
        if let Some(pods) = pods {
            publish(&watch.pods, pods);
        }
    }
}

/// Sends `pods` if their UIDs differ from the current set's. This task is the only sender,
/// so nothing changes the set between the comparison and the send.
fn publish(sender: &channel::Sender<Vec<StaticPod>>, pods: Vec<StaticPod>) {
    let uids = |pods: &[StaticPod]| -> HashSet<String> {
        pods.iter().map(|pod| pod.uid().to_owned()).collect()
    };
    if uids(&sender.borrow()) == uids(&pods) {
        return;
    }
    let names: Vec<&str> = pods
        .iter()
        .filter_map(|pod| pod.pod.metadata.name.as_deref())
        .collect();
    info!(?names, "static pods changed");
    sender.send_replace(pods);
}

/// Creates `dir` if needed and starts inotify on it; every relevant event leaves a signal in
/// `dirty`.
fn start_watching(
    dir: &Path,
    dirty: mpsc::Sender<()>,
    lost: Arc<AtomicBool>,
) -> Result<RecommendedWatcher, WatchError> {
    std::fs::create_dir_all(dir).map_err(|source| WatchError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let watch_error = |source| WatchError::Watch {
        path: dir.to_path_buf(),
        source,
    };
    // notify reports paths under the absolute form of what it watches.
    let absolute = std::path::absolute(dir).map_err(|source| WatchError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (e.g. a queue overflow) may hide a change: read again to be sure.
        let Ok(event) = event else {
            let _ = dirty.try_send(());
            return;
        };
        if is_directory_gone(&event, &absolute) {
            lost.store(true, Ordering::Relaxed);
        }
        if is_relevant(&event, &absolute) {
            // Full means a read is already pending, which will see this change too.
            let _ = dirty.try_send(());
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(watcher)
}

/// Whether an event may change what the directory holds.
///
/// Opens and closes without writing are left out: notify asks inotify for them, and every
/// read of the directory causes them, so each read would otherwise cause the next.
/// Events only about files that are never read (editor swap files) are left out too.
fn is_relevant(event: &notify::Event, dir: &Path) -> bool {
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path == dir
                || path
                    .file_name()
                    .is_none_or(|name| !is_ignored_name(name.as_encoded_bytes()))
        })
}

/// Whether the watched directory itself was removed or renamed, which ends (or misdirects)
/// its inotify watch.
fn is_directory_gone(event: &notify::Event, dir: &Path) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) && event.paths.iter().any(|path| path == dir)
}

/// Watches the directory again after it was removed or renamed; the watch stays lost (and is
/// tried again a second later) while the directory is not back.
async fn rewatch(watcher: &Arc<Mutex<RecommendedWatcher>>, dir: &Path, lost: &Arc<AtomicBool>) {
    let watcher = watcher.clone();
    let dir = dir.to_path_buf();
    let lost = lost.clone();
    // The lock is only ever taken here, on a blocking thread, never across an await.
    let rewatched = tokio::task::spawn_blocking(move || {
        let mut watcher = watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A renamed directory is still watched under its old name: stop that first.
        let _ = watcher.unwatch(&dir);
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                lost.store(false, Ordering::Relaxed);
                info!(dir = %dir.display(), "watching the static pod manifest directory again");
            }
            Err(error) => {
                debug!(dir = %dir.display(), %error, "static pod manifest directory not back yet");
            }
        }
    })
    .await;
    if let Err(join) = rewatched {
        warn!(%join, "could not watch the static pod manifest directory again");
    }
}

/// Reads the directory off the async runtime and logs what is wrong with it, once.
struct Reader {
    dir: PathBuf,
    node_name: Arc<str>,
    /// The manifest errors of the last read, so that each is logged once, not at every read.
    logged: HashSet<ManifestError>,
    /// Whether the last read could not list the directory.
    listing_failed: bool,
}

impl Reader {
    /// The static pods in the directory now; `None` when it cannot be listed.
    async fn read(&mut self) -> Option<Vec<StaticPod>> {
        let dir = self.dir.clone();
        let node_name = self.node_name.clone();
        let read = tokio::task::spawn_blocking(move || read_dir_manifests(&dir, &node_name)).await;
        let error = match read {
            Ok(Ok((pods, errors))) => {
                self.listing_failed = false;
                for error in self.not_yet_logged(errors) {
                    warn!("{error}");
                }
                return Some(pods);
            }
            Ok(Err(error)) => error,
            Err(join) => io::Error::other(join),
        };
        if !self.listing_failed {
            warn!(
                dir = %self.dir.display(),
                %error,
                "cannot list the static pod manifest directory; keeping the static pods it had"
            );
        }
        self.listing_failed = true;
        None
    }

    /// Of `errors`, those not already logged at the last read.
    fn not_yet_logged(&mut self, errors: Vec<ManifestError>) -> Vec<ManifestError> {
        let current: HashSet<ManifestError> = errors.into_iter().collect();
        let mut new: Vec<ManifestError> = current.difference(&self.logged).cloned().collect();
        new.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        self.logged = current;
        new
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::*;

    const NODE: &str = "node-a";
    use super::super::manifest::tests::WEB;
    /// The requirement is well within 1 s; the slack is for a loaded CI machine.
    const DEADLINE: Duration = Duration::from_secs(3);

    /// Waits until the set satisfies `want`, failing the test past `deadline`.
    async fn wait_for(
        pods: &mut channel::Receiver<Vec<StaticPod>>,
        deadline: Duration,
        want: impl Fn(&[StaticPod]) -> bool,
    ) -> Vec<StaticPod> {
        let waited = timeout(deadline, async {
            loop {
                {
                    let current = pods.borrow_and_update();
                    if want(&current) {
                        return current.clone();
                    }
                }
                pods.changed().await.expect("the watch ended");
            }
        })
        .await;
        match waited {
            Ok(current) => current,
            Err(_) => panic!("not seen within {deadline:?}: {:#?}", *pods.borrow()),
        }
    }

    fn names(pods: &[StaticPod]) -> Vec<&str> {
        pods.iter()
            .filter_map(|pod| pod.pod.metadata.name.as_deref())
            .collect()
    }

    #[tokio::test]
    async fn a_written_manifest_is_seen_and_a_removed_one_disappears() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("manifests");
        let cancel = CancellationToken::new();
        let mut pods = watch(dir.clone(), NODE.to_owned(), cancel.clone())
            .await
            .unwrap();
        assert!(dir.is_dir(), "the directory is created");
        assert!(pods.borrow_and_update().is_empty());

        std::fs::write(dir.join("web.yaml"), WEB).unwrap();
        let seen = wait_for(&mut pods, DEADLINE, |pods| !pods.is_empty()).await;
        assert_eq!(names(&seen), ["web-node-a"]);

        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        wait_for(&mut pods, DEADLINE, <[StaticPod]>::is_empty).await;
        cancel.cancel();
    }

    #[tokio::test]
    async fn manifests_present_at_start_are_in_the_first_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
        let cancel = CancellationToken::new();

        let pods = watch(dir.path().to_owned(), NODE.to_owned(), cancel.clone())
            .await
            .unwrap();

        assert_eq!(names(&pods.borrow()), ["web-node-a"]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_edited_manifest_replaces_its_pod_and_a_touched_one_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, WEB).unwrap();
        let cancel = CancellationToken::new();
        let mut pods = watch(dir.path().to_owned(), NODE.to_owned(), cancel.clone())
            .await
            .unwrap();
        let first = pods.borrow_and_update()[0].uid().to_owned();

        // Rewriting the same bytes is a change to inotify but not to the pod.
        std::fs::write(&file, WEB).unwrap();
        let unchanged = timeout(Duration::from_millis(500), pods.changed()).await;
        assert!(unchanged.is_err(), "an unchanged manifest sent a new set");

        std::fs::write(&file, WEB.replace("app:1", "app:2")).unwrap();
        let edited = wait_for(&mut pods, DEADLINE, |pods| {
            pods.first().is_some_and(|pod| pod.uid() != first)
        })
        .await;
        assert_eq!(edited.len(), 1);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_removed_and_recreated_directory_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), WEB).unwrap();
        let cancel = CancellationToken::new();
        let mut pods = watch(dir.clone(), NODE.to_owned(), cancel.clone())
            .await
            .unwrap();
        assert_eq!(pods.borrow_and_update().len(), 1);

        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("db.yaml"), WEB.replace("web", "db")).unwrap();

        wait_for(&mut pods, LOST_RETRY * 3 + DEADLINE, |pods| {
            names(pods) == ["db-node-a"]
        })
        .await;
        // And the new directory goes on being watched.
        std::fs::write(dir.join("web.yaml"), WEB).unwrap();
        wait_for(&mut pods, DEADLINE, |pods| pods.len() == 2).await;
        cancel.cancel();
    }

    #[tokio::test]
    async fn cancelling_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let mut pods = watch(dir.path().to_owned(), NODE.to_owned(), cancel.clone())
            .await
            .unwrap();

        cancel.cancel();

        let ended = timeout(DEADLINE, pods.changed()).await;
        assert!(matches!(ended, Ok(Err(_))), "{ended:?}");
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_created_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();

        let watched = watch(
            file.join("manifests"),
            NODE.to_owned(),
            CancellationToken::new(),
        )
        .await;

        assert!(
            matches!(watched, Err(WatchError::CreateDir { .. })),
            "{watched:?}"
        );
    }

    #[test]
    fn a_manifest_error_is_logged_once_until_it_changes() {
        let mut reader = Reader {
            dir: PathBuf::from("/manifests"),
            node_name: NODE.into(),
            logged: HashSet::new(),
            listing_failed: false,
        };
        let error = |line| ManifestError {
            file: PathBuf::from("/manifests/web.yaml"),
            line: Some(line),
            message: "bad".to_owned(),
        };

        assert_eq!(reader.not_yet_logged(vec![error(3)]), [error(3)]);
        assert_eq!(reader.not_yet_logged(vec![error(3)]), []);
        assert_eq!(reader.not_yet_logged(vec![error(4)]), [error(4)]);
        assert_eq!(reader.not_yet_logged(vec![]), []);
        assert_eq!(reader.not_yet_logged(vec![error(4)]), [error(4)]);
    }

    #[test]
    fn reads_and_swap_files_do_not_count_as_changes() {
        let dir = Path::new("/manifests");
        let event = |kind, path: &str| notify::Event::new(kind).add_path(dir.join(path));

        assert!(!is_relevant(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "web.yaml"
            ),
            dir
        ));
        assert!(!is_relevant(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "web.yaml"
            ),
            dir
        ));
        assert!(!is_relevant(
            &event(EventKind::Modify(ModifyKind::Any), ".web.yaml.swp"),
            dir
        ));
        assert!(is_relevant(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "web.yaml"
            ),
            dir
        ));
        assert!(is_relevant(
            &event(EventKind::Modify(ModifyKind::Any), "web.yaml"),
            dir
        ));
        assert!(is_relevant(&notify::Event::new(EventKind::Other), dir));
    }
}
