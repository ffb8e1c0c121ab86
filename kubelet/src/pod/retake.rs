//! Pods whose worker failed (a bug: it panicked), taken on again after a back-off, as the
//! kubelet restarts a crashed container: the pod's containers run again and its status moves
//! on, rather than showing what the failed worker last wrote until the pod next changes.
//! A pod whose worker fails every time waits longer each time (10 s doubling to 5 min, the
//! kubelet's crash-loop back-off), so it cannot spin.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::store::PodSource;

/// The first wait after a worker failed; it doubles with each failure of the same pod.
pub(super) const INITIAL: Duration = Duration::from_secs(10);
/// The longest wait.
const MAX: Duration = Duration::from_secs(300);
/// At most this many pods are remembered (each one the node held): past it, a failed pod
/// waits for its next change, as it would with no back-off at all.
const REMEMBERED: usize = 4096;

/// One pod whose worker failed.
struct Failed {
    /// How often its worker has failed.
    failures: u32,
    source: PodSource,
    /// When and with what it is taken on again; `None` once it has been.
    waiting: Option<(Instant, Pod)>,
}

/// The pods whose worker failed, by UID.
pub(super) struct Retakes {
    initial: Duration,
    pods: HashMap<String, Failed>,
}

impl Retakes {
    /// Retakes that wait `initial` after a pod's first failure.
    pub(super) fn new(initial: Duration) -> Self {
        Self {
            initial,
            pods: HashMap::new(),
        }
    }

    /// Pod `uid`'s worker failed at `now`: `pod` (its latest object, with the node's last
    /// status) is taken on again after the returned wait, unless the node holds too many.
    pub(super) fn failed(
        &mut self,
        uid: &str,
        source: PodSource,
        pod: Pod,
        now: Instant,
    ) -> Option<Duration> {
        if !self.pods.contains_key(uid) && self.pods.len() >= REMEMBERED {
            return None;
        }
        let failed = self.pods.entry(uid.to_string()).or_insert(Failed {
            failures: 0,
            source,
            waiting: None,
        });
        failed.failures = failed.failures.saturating_add(1);
        let doublings = failed.failures.saturating_sub(1).min(16);
        let wait = self.initial.saturating_mul(1 << doublings).min(MAX);
        failed.waiting = Some((now + wait, pod));
        Some(wait)
    }

    /// When the next waiting pod is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter_map(|f| f.waiting.as_ref().map(|(at, _)| *at))
            .min()
    }

    /// The pods due by `now`, no longer waiting (their failures still counted).
    pub(super) fn due(&mut self, now: Instant) -> Vec<(String, PodSource, Pod)> {
        let mut due = Vec::new();
        for (uid, failed) in &mut self.pods {
            if failed.waiting.as_ref().is_some_and(|(at, _)| *at <= now)
                && let Some((_, pod)) = failed.waiting.take()
            {
                due.push((uid.clone(), failed.source.clone(), pod));
            }
        }
        due
    }

    /// Pod `uid` was taken on by other means (a change to it came first): it waits no more.
    pub(super) fn taken_on(&mut self, uid: &str) {
        if let Some(failed) = self.pods.get_mut(uid) {
            failed.waiting = None;
        }
    }

    /// Forgets pod `uid`, failures and all; returns it if it was waiting to be taken on.
    pub(super) fn remove(&mut self, uid: &str) -> Option<(PodSource, Pod)> {
        let failed = self.pods.remove(uid)?;
        failed.waiting.map(|(_, pod)| (failed.source, pod))
    }

    /// The pods from `source` waiting to be taken on.
    pub(super) fn waiting(&self, source: &PodSource) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, f)| f.source == *source && f.waiting.is_some())
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_of_a_pod_doubles_its_wait_up_to_the_cap() {
        let mut retakes = Retakes::new(INITIAL);
        let now = Instant::now();
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                let wait = retakes.failed("a", PodSource::Api, Pod::default(), now);
                assert_eq!(retakes.due(now + MAX).len(), 1, "due once, then not again");
                wait.unwrap().as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert!(retakes.next_due().is_none());
        assert!(retakes.remove("a").is_none(), "it was not waiting");
        let wait = retakes.failed("a", PodSource::Api, Pod::default(), now);
        assert_eq!(wait, Some(INITIAL), "a pod forgotten starts afresh");
    }

    #[test]
    fn a_pod_is_due_only_when_its_wait_is_over_and_only_while_waiting() {
        let mut retakes = Retakes::new(INITIAL);
        let now = Instant::now();
        retakes.failed("a", PodSource::Api, Pod::default(), now);
        retakes.failed("b", PodSource::File, Pod::default(), now + INITIAL);
        assert_eq!(retakes.next_due(), Some(now + INITIAL));
        assert!(retakes.due(now).is_empty());
        let due = retakes.due(now + INITIAL);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "a");
        retakes.taken_on("b");
        assert!(retakes.next_due().is_none(), "b was taken on by a change");
        assert!(retakes.due(now + MAX).is_empty());
    }

    #[test]
    fn a_pod_removed_is_handed_back_if_it_was_waiting_and_the_record_is_bounded() {
        let mut retakes = Retakes::new(INITIAL);
        let now = Instant::now();
        retakes.failed("api", PodSource::Api, Pod::default(), now);
        retakes.failed("file", PodSource::File, Pod::default(), now);
        assert_eq!(retakes.waiting(&PodSource::File), ["file"]);
        assert!(matches!(retakes.remove("file"), Some((PodSource::File, _))));
        assert!(retakes.waiting(&PodSource::File).is_empty());
        assert_eq!(
            retakes.due(now + INITIAL).len(),
            1,
            "the API pod still waits"
        );
        for i in 0..REMEMBERED {
            retakes.failed(&format!("p{i}"), PodSource::Api, Pod::default(), now);
        }
        assert_eq!(retakes.pods.len(), REMEMBERED);
        assert!(
            retakes
                .failed("one-more", PodSource::Api, Pod::default(), now)
                .is_none()
        );
        assert!(
            retakes
                .failed("p1", PodSource::Api, Pod::default(), now)
                .is_some()
        );
    }
}
