//! A simulated GPIO line: a level the guest drives (output) or reads (input), which the
//! outside reads or drives through the simulator's directory (see `mirror`).

use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

/// A line's level and how many times it has risen and fallen, so an edge is never missed
/// by a waiter that was away when it happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Level {
    high: bool,
    rises: u64,
    falls: u64,
}

/// One line's level, with waiting for levels and edges.
#[derive(Debug)]
pub struct SimLine {
    level: watch::Sender<Level>,
    present: AtomicBool,
}

impl Default for SimLine {
    fn default() -> Self {
        Self {
            level: watch::Sender::new(Level::default()),
            present: AtomicBool::new(true),
        }
    }
}

impl SimLine {
    /// Whether the line is plugged in.
    pub fn presence(&self) -> &AtomicBool {
        &self.present
    }

    /// Whether the line is high.
    pub fn is_high(&self) -> bool {
        self.level.borrow().high
    }

    /// How many times the line has risen (`rising`) or fallen so far.
    pub fn edges(&self, rising: bool) -> u64 {
        let level = *self.level.borrow();
        if rising { level.rises } else { level.falls }
    }

    /// Drives the line; waiters wake only on a change.
    pub fn set(&self, high: bool) {
        self.level.send_if_modified(|level| {
            if level.high == high {
                return false;
            }
            level.high = high;
            if high {
                level.rises = level.rises.wrapping_add(1);
            } else {
                level.falls = level.falls.wrapping_add(1);
            }
            true
        });
    }

    /// Waits until the line is at `high` (at once if it is).
    pub async fn wait_for(&self, high: bool) {
        let mut changes = self.level.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = changes.wait_for(|level| level.high == high).await;
    }

    /// Waits until the line has risen (`rising`) or fallen more than `seen` times: at once
    /// if it already has, however long ago.
    pub async fn wait_for_edge(&self, rising: bool, seen: u64) {
        let mut changes = self.level.subscribe();
        let _ = changes
            .wait_for(|level| {
                let count = if rising { level.rises } else { level.falls };
                count != seen
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_the_level_or_edge_they_wait_for() {
        let line = Arc::new(SimLine::default());
        assert!(!line.is_high());
        let waiting = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for(true).await }
        });
        let rises = line.edges(true);
        let edge = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for_edge(true, rises).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        line.set(false);
        tokio::task::yield_now().await;
        assert!(!edge.is_finished(), "setting the same level is no edge");
        line.set(true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), edge)
            .await
            .unwrap()
            .unwrap();
        assert!(line.is_high());
        // Already there: no wait.
        line.wait_for(true).await;

        // A whole press while nobody waited is still seen by a waiter that noted the count
        // before it.
        let falls = line.edges(false);
        let rises = line.edges(true);
        line.set(false);
        line.set(true);
        tokio::time::timeout(Duration::from_secs(5), line.wait_for_edge(false, falls))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), line.wait_for_edge(true, rises))
            .await
            .unwrap();
    }
}
