//! CrashLoopBackOff: the first restart is immediate, then 10 s doubling to 5 minutes; a
//! container that ran for 10 minutes starts over, as the kubelet's back-off does.

use std::time::{Duration, Instant};

/// The first delayed restart waits this long.
pub const INITIAL: Duration = Duration::from_secs(10);
/// No restart waits longer.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long is considered healthy again.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// One container's restart back-off.
#[derive(Clone, Debug, Default)]
pub struct CrashLoop {
    next: Option<Duration>,
}

impl CrashLoop {
    /// The delay before restarting a container that started at `started` and ended at `now`.
    pub fn delay_after_exit(&mut self, started: Instant, now: Instant) -> Duration {
        if now.duration_since(started) >= RESET_AFTER {
            self.next = None;
        }
        let delay = self.next.unwrap_or(Duration::ZERO);
        self.next = Some(if delay.is_zero() {
            INITIAL
        } else {
            (delay * 2).min(MAX)
        });
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_five_minutes() {
        let mut crash = CrashLoop::default();
        let t = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|_| crash.delay_after_exit(t, t).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn a_long_healthy_run_resets_the_back_off() {
        let mut crash = CrashLoop::default();
        let t = Instant::now();
        crash.delay_after_exit(t, t);
        crash.delay_after_exit(t, t);
        assert_eq!(crash.delay_after_exit(t, t + RESET_AFTER), Duration::ZERO);
    }
}
