//! Pod starts in progress, which events give way to.
//!
//! A cached start takes a few milliseconds, most of them the API server's: the pod's token
//! request and its status patch. An event written at the same moment costs the API server and
//! etcd about as much as either, and on a small node shares their cores. `bench-pods` measured
//! it on two cores shared with the control plane: with events written alongside, three runs
//! gave a default pod's start a p99 of 13.3 to 17.9 ms and a token-less pod's 13.1 to 15.1
//! ms; with events giving way, six runs gave 10.7 to 13.4 ms and 6.2 to 10.4 ms.
//!
//! So an event waits while a pod start that began less than [`START_HOLD`] ago is in
//! progress, and for [`LULL`] after one ends (the next of a rollout is usually on its way),
//! for at most [`EVENT_HOLD`]. It keeps the time it was recorded, and a start that is
//! waiting for something (a large pull, a back-off) holds nothing back. Under starts that
//! never pause, events are only delayed: each goes after its 5 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a start holds events back. A cached start takes milliseconds, a fresh pull of
/// a small module a few hundred; past this, the start is waiting on something, and its
/// events (`Pulling`, `BackOff`, `FailedMount`) are what a person wants to see.
const START_HOLD: Duration = Duration::from_secs(1);
/// How long after a start ends events still wait: pods created one after another reach
/// the node a few milliseconds apart.
const LULL: Duration = Duration::from_millis(50);
/// The longest an event waits for starts, however many follow one another.
const EVENT_HOLD: Duration = Duration::from_secs(5);

/// The node's pod starts in progress. Clones share them.
#[derive(Clone, Debug, Default)]
pub(super) struct Starts {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Told each time a start ends.
    ended: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    /// When each start in progress began, by its id: at most one per pod on the node.
    began: HashMap<u64, Instant>,
    /// When the last start ended.
    last_end: Option<Instant>,
}

/// A pod start in progress: events give way to it until it is dropped, or for
/// [`START_HOLD`] at most.
#[derive(Debug)]
pub struct StartInProgress {
    id: u64,
    /// None where no events are written (a standalone node).
    shared: Option<Arc<Shared>>,
}

impl StartInProgress {
    /// A start that holds nothing back.
    pub(super) fn untracked() -> Self {
        Self {
            id: 0,
            shared: None,
        }
    }
}

impl Drop for StartInProgress {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let mut state = lock(shared);
            // One already forgotten (past its hold) was not holding anything back.
            if state.began.remove(&self.id).is_some() {
                state.last_end = Some(Instant::now());
                drop(state);
                shared.ended.send_replace(());
            }
        }
    }
}

impl Starts {
    /// A start beginning now.
    pub(super) fn begin(&self) -> StartInProgress {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared).began.insert(id, Instant::now());
        StartInProgress {
            id,
            shared: Some(self.shared.clone()),
        }
    }

    /// Tells its holder each time a start ends.
    pub(super) fn endings(&self) -> watch::Receiver<()> {
        self.shared.ended.subscribe()
    }

    /// Until when an event queued at `queued` should wait, if it should: until the youngest
    /// start in progress is [`START_HOLD`] old and the last start ended [`LULL`] ago, or the
    /// event has waited [`EVENT_HOLD`], whichever is first. None once that time is past.
    pub(super) fn hold(&self, queued: Instant, now: Instant) -> Option<Instant> {
        let mut state = lock(&self.shared);
        // A start past its hold (a pod waiting for an image, or whose containers never all
        // run) is forgotten here rather than scanned at every event until its worker ends.
        state.began.retain(|_, began| *began + START_HOLD > now);
        let youngest = state.began.values().max().map(|began| *began + START_HOLD);
        let lull = state.last_end.map(|end| end + LULL);
        let until = youngest.max(lull)?.min(queued + EVENT_HOLD);
        (until > now).then_some(until)
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Nothing panics while holding it; the state is consistent at every step.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_start_holds_events_until_it_ends() {
        let starts = Starts::default();
        let queued = Instant::now();
        assert_eq!(
            starts.hold(queued, Instant::now()),
            None,
            "no start, no wait"
        );
        let endings = starts.endings();
        let start = starts.begin();
        let until = starts.hold(queued, Instant::now()).expect("held");
        assert_eq!(until, queued + START_HOLD);
        drop(start);
        assert!(endings.has_changed().unwrap(), "the writer is told");
        let ended = Instant::now();
        assert_eq!(
            starts.hold(queued, ended),
            Some(ended + LULL),
            "the next start may be on its way"
        );
        tokio::time::advance(LULL).await;
        assert_eq!(starts.hold(queued, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_youngest_start_holds_and_a_stalled_one_stops_holding() {
        let starts = Starts::default();
        let _stalled = starts.begin();
        tokio::time::advance(Duration::from_millis(600)).await;
        let younger = starts.begin();
        let queued = Instant::now();
        tokio::time::advance(Duration::from_millis(500)).await;
        // The first is past its hold; the second holds until it is as old.
        let until = starts.hold(queued, Instant::now()).expect("held");
        assert_eq!(until, queued + START_HOLD);
        drop(younger);
        tokio::time::advance(LULL).await;
        assert_eq!(
            starts.hold(queued, Instant::now()),
            None,
            "a start older than the hold holds nothing back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_waits_at_most_its_own_hold() {
        let starts = Starts::default();
        let queued = Instant::now();
        let mut held = Vec::new();
        // A start begins every half second, for longer than an event waits.
        for _ in 0..20 {
            held.push(starts.begin());
            tokio::time::advance(Duration::from_millis(500)).await;
            let now = Instant::now();
            match starts.hold(queued, now) {
                Some(until) => assert!(until <= queued + EVENT_HOLD),
                None => {
                    assert!(now >= queued + EVENT_HOLD);
                    return;
                }
            }
        }
        panic!("the event was held for ever");
    }
}
