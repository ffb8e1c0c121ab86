//! Pods whose worker failed (a bug: it panicked), taken on again after a back-off, as the
//! kubelet restarts a crashed container: the pod's containers run again and its status moves
//! on, rather than showing what the failed worker last wrote until the agent restarts.
//! A pod whose worker fails every time waits longer each time (10 s doubling to 5 min, the
//! kubelet's crash-loop back-off), whatever events come for it meanwhile, so it cannot spin;
//! one that then runs 10 minutes without failing starts afresh, as a crash loop does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::store::PodSource;

/// The first wait after a worker failed; it doubles with each failure of the same pod.
pub(super) const INITIAL: Duration = Duration::from_secs(10);
/// The longest wait.
const MAX: Duration = Duration::from_secs(300);
/// A pod whose worker last failed this long ago counts its next failure as its first.
const RESET_AFTER: Duration = Duration::from_secs(600);
/// At most this many pods are remembered (each one the node held): past it, a failed pod
/// is not taken on again until it changes.
const REMEMBERED: usize = 4096;

/// One pod whose worker failed.
struct Failed {
    /// How often its worker has failed, and when it last did.
    failures: u32,
    last: Instant,
    source: PodSource,
    /// What it is taken on with, and when; `None` once it has been.
    waiting: Option<Waiting>,
}

struct Waiting {
    due: Instant,
    /// Its latest object, with the node's own last status.
    pod: Pod,
    /// It is gone from its source: it is taken on only to be removed.
    gone: bool,
}

/// A pod due to be taken on again.
pub(super) struct Retake {
    pub(super) uid: String,
    pub(super) source: PodSource,
    pub(super) pod: Pod,
    /// It is gone from its source: its new worker is told so at once, and removes it.
    pub(super) gone: bool,
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
    /// status; `gone` from its source, or not) is taken on again after the returned wait,
    /// unless the node holds too many.
    pub(super) fn failed(
        &mut self,
        uid: &str,
        source: PodSource,
        pod: Pod,
        gone: bool,
        now: Instant,
    ) -> Option<Duration> {
        if !self.pods.contains_key(uid) && self.pods.len() >= REMEMBERED {
            return None;
        }
        let failed = self.pods.entry(uid.to_string()).or_insert(Failed {
            failures: 0,
            last: now,
            source,
            waiting: None,
        });
        if now.duration_since(failed.last) >= RESET_AFTER {
            failed.failures = 0;
        }
        failed.failures = failed.failures.saturating_add(1);
        failed.last = now;
        let doublings = failed.failures.saturating_sub(1).min(16);
        let wait = self.initial.saturating_mul(1 << doublings).min(MAX);
        failed.waiting = Some(Waiting {
            due: now + wait,
            pod,
            gone,
        });
        Some(wait)
    }

    /// When the next waiting pod is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter_map(|f| f.waiting.as_ref().map(|w| w.due))
            .min()
    }

    /// The pods due by `now`, no longer waiting (their failures still counted).
    pub(super) fn due(&mut self, now: Instant) -> Vec<Retake> {
        let mut due = Vec::new();
        for (uid, failed) in &mut self.pods {
            if failed.waiting.as_ref().is_some_and(|w| w.due <= now)
                && let Some(Waiting { pod, gone, .. }) = failed.waiting.take()
            {
                due.push(Retake {
                    uid: uid.clone(),
                    source: failed.source.clone(),
                    pod,
                    gone,
                });
            }
        }
        due
    }

    /// Whether pod `uid` waits to be taken on.
    pub(super) fn is_waiting(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|f| f.waiting.is_some())
    }

    /// Keeps `pod` as what pod `uid` is taken on with, with the node's status, if it waits;
    /// otherwise hands it back. An event for a waiting pod (its own last status patch, a
    /// re-list) does not cut its back-off short.
    pub(super) fn hold(&mut self, uid: &str, mut pod: Pod) -> Option<Pod> {
        match self.pods.get_mut(uid).and_then(|f| f.waiting.as_mut()) {
            Some(waiting) => {
                pod.status = waiting.pod.status.take();
                waiting.pod = pod;
                None
            }
            None => Some(pod),
        }
    }

    /// Pod `uid` is gone from its source: if it waits, it is taken on only to be removed.
    /// Whether it waits.
    pub(super) fn gone(&mut self, uid: &str) -> bool {
        match self.pods.get_mut(uid).and_then(|f| f.waiting.as_mut()) {
            Some(waiting) => {
                waiting.gone = true;
                true
            }
            None => false,
        }
    }

    /// Forgets pod `uid`, failures and all: it has been removed.
    pub(super) fn forget(&mut self, uid: &str) {
        self.pods.remove(uid);
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
    use k8s_openapi::api::core::v1::PodStatus;

    fn pod(phase: Option<&str>) -> Pod {
        Pod {
            status: phase.map(|p| PodStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_failure_of_a_pod_doubles_its_wait_up_to_the_cap_until_it_runs_long_enough() {
        let mut retakes = Retakes::new(INITIAL);
        let mut now = Instant::now();
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                let wait = retakes.failed("a", PodSource::Api, pod(None), false, now);
                now += MAX;
                assert_eq!(retakes.due(now).len(), 1, "due once, then not again");
                assert!(retakes.due(now).is_empty());
                wait.unwrap().as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert!(retakes.next_due().is_none());
        let later = now + RESET_AFTER;
        let wait = retakes.failed("a", PodSource::Api, pod(None), false, later);
        assert_eq!(
            wait,
            Some(INITIAL),
            "a pod that ran long enough starts afresh"
        );
        retakes.forget("a");
        let wait = retakes.failed("a", PodSource::Api, pod(None), false, later);
        assert_eq!(wait, Some(INITIAL), "a pod forgotten starts afresh");
    }

    #[test]
    fn a_waiting_pod_keeps_its_status_and_its_wait_whatever_events_come() {
        let mut retakes = Retakes::new(INITIAL);
        let now = Instant::now();
        retakes.failed("a", PodSource::Api, pod(Some("Running")), false, now);
        retakes.failed("b", PodSource::File, pod(None), false, now + INITIAL);
        assert!(retakes.hold("a", pod(Some("Pending"))).is_none(), "held");
        assert!(
            retakes.hold("c", pod(None)).is_some(),
            "not waiting: handed back"
        );
        assert!(retakes.gone("b") && !retakes.gone("c"));
        assert_eq!(retakes.next_due(), Some(now + INITIAL));
        assert!(retakes.due(now).is_empty(), "an event cut no wait short");
        let due = retakes.due(now + INITIAL);
        assert_eq!(due.len(), 1, "a only: b failed later");
        let phase = due[0].pod.status.as_ref().and_then(|s| s.phase.as_deref());
        assert_eq!(phase, Some("Running"), "the node's status, not the event's");
        assert!(!due[0].gone);
        assert!(!retakes.is_waiting("a") && retakes.hold("a", pod(None)).is_some());
        let due = retakes.due(now + INITIAL * 2);
        assert!(due.len() == 1 && due[0].uid == "b" && due[0].gone);
    }

    #[test]
    fn waiting_pods_are_listed_by_source_and_the_record_is_bounded() {
        let mut retakes = Retakes::new(INITIAL);
        let now = Instant::now();
        retakes.failed("api", PodSource::Api, pod(None), false, now);
        retakes.failed("file", PodSource::File, pod(None), false, now);
        assert_eq!(retakes.waiting(&PodSource::File), ["file"]);
        assert!(retakes.is_waiting("file"));
        retakes.forget("file");
        assert!(retakes.waiting(&PodSource::File).is_empty());
        for i in 1..REMEMBERED {
            retakes.failed(&format!("p{i}"), PodSource::Api, pod(None), false, now);
        }
        assert_eq!(retakes.pods.len(), REMEMBERED);
        let refused = retakes.failed("one-more", PodSource::Api, pod(None), false, now);
        assert!(refused.is_none());
        assert!(
            retakes
                .failed("p1", PodSource::Api, pod(None), false, now)
                .is_some()
        );
    }
}
