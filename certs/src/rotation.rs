//! When to renew a certificate, and how long to wait between failed attempts.

use std::time::{Duration, SystemTime};

use crate::x509::CertInfo;

/// A sleep until a rotation deadline is cut into pieces no longer than this, so a clock that
/// jumps (suspend, NTP) is noticed within the hour.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The first pause after a refused or failed request; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest pause between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// When to start renewing a certificate valid from `not_before` to `not_after`: at
/// 70% + `jitter` × 20% of its lifetime (`jitter` in [0, 1)), client-go's rule with a
/// spread that keeps a fleet of nodes from renewing at the same instant. A certificate whose
/// validity is empty or inverted is due from its `not_before`.
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_before;
    };
    let fraction = 0.7 + 0.2 * jitter.clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// [`rotation_deadline`] with a fresh random jitter.
pub fn deadline_for(info: &CertInfo) -> SystemTime {
    rotation_deadline(info.not_before, info.not_after, fastrand::f64())
}

/// How long to sleep before looking at `deadline` again: zero once it has passed (renew now),
/// never more than [`MAX_SLEEP`].
pub fn sleep_before(deadline: SystemTime, now: SystemTime) -> Duration {
    deadline
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_SLEEP)
}

/// The pause before attempt `failures + 1` after `failures` consecutive failures.
pub fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn deadline_falls_between_seventy_and_ninety_percent_of_the_lifetime() {
        let (start, end) = (at(1_000), at(11_000));
        assert_eq!(rotation_deadline(start, end, 0.0), at(8_000));
        assert_eq!(rotation_deadline(start, end, 0.5), at(9_000));
        assert!(rotation_deadline(start, end, 0.999_999) < at(10_000));
        assert_eq!(rotation_deadline(start, end, 7.0), at(10_000), "clamped");
        for _ in 0..1000 {
            let d = rotation_deadline(start, end, fastrand::f64());
            assert!(d >= at(8_000) && d < at(10_000), "{d:?}");
        }
    }

    #[test]
    fn an_inverted_validity_is_due_at_once() {
        assert_eq!(rotation_deadline(at(500), at(100), 0.5), at(500));
    }

    #[test]
    fn a_passed_deadline_means_renew_now_and_long_waits_are_cut() {
        assert_eq!(sleep_before(at(100), at(200)), Duration::ZERO);
        assert_eq!(sleep_before(at(200), at(100)), Duration::from_secs(100));
        assert_eq!(sleep_before(at(1_000_000), at(0)), MAX_SLEEP);
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let delays: Vec<u64> = (0..10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
