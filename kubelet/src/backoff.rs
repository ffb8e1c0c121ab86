//! Exponential backoff for calls to the API server, written out so the retry loops that use
//! it keep their control flow visible.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubling delays from `initial` up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; each call doubles the one after, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts again from the initial delay after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps for `delay` unless `cancel` fires first; returns false when cancelled.
pub(crate) async fn sleep_unless_cancelled(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_sleep_returns_false_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!sleep_unless_cancelled(Duration::from_secs(3600), &cancel).await);
    }
}
