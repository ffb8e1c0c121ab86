//! A simulated GPIO line: a level the guest drives (output) or reads (input), which the
//! outside reads or drives through the simulator's directory (see `mirror`).

use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

/// One line's level, with waiting for changes.
#[derive(Debug)]
pub struct SimLine {
    level: watch::Sender<bool>,
    present: AtomicBool,
}

impl Default for SimLine {
    fn default() -> Self {
        Self {
            level: watch::Sender::new(false),
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
        *self.level.borrow()
    }

    /// Drives the line; waiters wake only on a change.
    pub fn set(&self, high: bool) {
        self.level.send_if_modified(|level| {
            let changed = *level != high;
            *level = high;
            changed
        });
    }

    /// Waits until the line is at `high` (at once if it is).
    pub async fn wait_for(&self, high: bool) {
        let mut changes = self.level.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = changes.wait_for(|level| *level == high).await;
    }

    /// Waits for the next change of level, whichever way.
    pub async fn wait_for_edge(&self) {
        let mut changes = self.level.subscribe();
        changes.mark_unchanged();
        let _ = changes.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_the_level_they_wait_for() {
        let line = Arc::new(SimLine::default());
        assert!(!line.is_high());
        let waiting = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for(true).await }
        });
        let edge = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for_edge().await }
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
    }
}
