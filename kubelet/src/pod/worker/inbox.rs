//! What a worker knows of its pod object: the latest one the node was told about, whether
//! it is going away, and when its `activeDeadlineSeconds` runs out.
//!
//! The pod manager keeps one `watch` channel per worker holding only the latest desired
//! object, so however many updates arrive while a worker is busy, it holds one and acts on
//! the newest, never on a backlog.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the node was last told about a pod.
#[derive(Clone, Debug)]
pub(crate) enum Desired {
    /// The pod object, as last seen.
    Present(Arc<Pod>),
    /// The pod is gone from its source (deleted from the API, or its manifest removed).
    Gone,
}

/// The pod as last seen, and whether it is going away.
pub(crate) struct Inbox {
    rx: watch::Receiver<Desired>,
    pub(crate) pod: Pod,
    pub(crate) gone: bool,
    /// The agent is shutting down (the pod manager dropped this worker's channel): the pod
    /// stays, and so do its files, for the next run of the agent to take on.
    pub(crate) agent_stopping: bool,
    /// When the pod's active time began (its `status.startTime`), while its active deadline
    /// counts; None once the pod has finished.
    active_since: Option<Timestamp>,
    /// When `activeDeadlineSeconds` runs out, from `active_since` and the newest object.
    deadline: Option<Instant>,
}

impl Inbox {
    /// The inbox of a pod active since `active_since` (None: its deadline is not counted).
    pub(crate) fn new(
        rx: watch::Receiver<Desired>,
        pod: Pod,
        active_since: Option<Timestamp>,
    ) -> Self {
        let mut inbox = Self {
            rx,
            pod,
            gone: false,
            agent_stopping: false,
            active_since,
            deadline: None,
        };
        inbox.deadline = inbox.active_deadline();
        inbox
    }

    /// Resolves once the worker must wind the pod down: it is being deleted or is gone, the
    /// agent is stopping, or the pod's active deadline passed. Keeps `pod` current
    /// meanwhile. Cancel-safe, so it can sit in every `select!`.
    pub(crate) async fn wind_down(&mut self) {
        self.wind_down_or(|_| false).await;
    }

    /// As [`Inbox::wind_down`], or once `changed` holds for the newest object. Cancel-safe.
    pub(crate) async fn wind_down_or(&mut self, changed: impl Fn(&Pod) -> bool) {
        while !self.deleting() && !self.past_deadline() && !changed(&self.pod) {
            match self.deadline {
                Some(at) => tokio::select! {
                    () = self.receive() => {}
                    () = tokio::time::sleep_until(at) => {}
                },
                None => self.receive().await,
            }
        }
    }

    /// Resolves once the pod is gone from its source or the agent is stopping: a deleted
    /// pod's worker waits for this while the API server will not yet confirm the deletion.
    /// Cancel-safe.
    pub(crate) async fn gone_or_stopping(&mut self) {
        while !(self.gone || self.agent_stopping) {
            self.receive().await;
        }
    }

    /// Takes the next change of what the node was told.
    async fn receive(&mut self) {
        if self.rx.changed().await.is_err() {
            self.agent_stopping = true;
            return;
        }
        let desired = self.rx.borrow_and_update().clone();
        match desired {
            Desired::Present(pod) => {
                self.pod = Pod::clone(&pod);
                // `activeDeadlineSeconds` may be set or shortened on a running pod.
                self.deadline = self.active_deadline();
            }
            Desired::Gone => self.gone = true,
        }
    }

    /// Whether the pod is being deleted or is gone, or the agent is stopping: the worker
    /// must stop it and let it go (a deadline past is [`Inbox::past_deadline`]).
    pub(crate) fn deleting(&self) -> bool {
        self.gone || self.agent_stopping || self.pod.metadata.deletion_timestamp.is_some()
    }

    /// Whether the pod has been active longer than its `activeDeadlineSeconds`.
    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|at| at <= Instant::now())
    }

    /// Stops counting the active deadline: the pod has finished.
    pub(crate) fn finished(&mut self) {
        self.active_since = None;
        self.deadline = None;
    }

    /// When the newest object's `activeDeadlineSeconds` runs out, on the runtime's clock.
    fn active_deadline(&self) -> Option<Instant> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let end = self
            .active_since?
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()?;
        // Already past (or a deadline of no time at all) is now.
        let left = Duration::try_from(end.duration_since(Timestamp::now())).unwrap_or_default();
        Instant::now().checked_add(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (watch::Sender<Desired>, Inbox) {
        let (tx, rx) = watch::channel(Desired::Present(Arc::default()));
        (tx, Inbox::new(rx, Pod::default(), None))
    }

    #[tokio::test]
    async fn a_closed_inbox_means_the_agent_is_stopping_not_that_the_pod_is_gone() {
        // The pod manager drops every worker's channel when the agent stops; the pod and its
        // files must outlive that, for the agent's next run.
        let (tx, mut stopping) = inbox();
        drop(tx);
        stopping.wind_down().await;
        assert!(stopping.agent_stopping && !stopping.gone);
        assert!(stopping.deleting(), "the worker still winds down");

        let (tx, mut deleted) = inbox();
        tx.send_replace(Desired::Gone);
        deleted.wind_down().await;
        assert!(deleted.gone && !deleted.agent_stopping);
    }

    #[tokio::test]
    async fn only_the_newest_object_is_kept_however_many_updates_arrive() {
        let (tx, mut inbox) = inbox();
        for version in 0..1000 {
            let mut pod = Pod::default();
            pod.metadata.resource_version = Some(version.to_string());
            tx.send_replace(Desired::Present(Arc::new(pod)));
        }
        let mut deleting = Pod::default();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        tx.send_replace(Desired::Present(Arc::new(deleting)));
        inbox.wind_down().await;
        assert!(inbox.deleting() && !inbox.gone);
        assert!(
            inbox.pod.metadata.resource_version.is_none(),
            "the newest object won"
        );
    }

    fn with_deadline(seconds: i64) -> Pod {
        let mut pod = Pod::default();
        pod.spec.get_or_insert_default().active_deadline_seconds = Some(seconds);
        pod
    }

    #[tokio::test(start_paused = true)]
    async fn the_active_deadline_counts_from_the_pods_start_and_winds_it_down() {
        let (_tx, rx) = watch::channel(Desired::Present(Arc::default()));
        let started = Timestamp::now() - SignedDuration::from_secs(1);
        let mut inbox = Inbox::new(rx, with_deadline(3), Some(started));
        assert!(!inbox.past_deadline());
        let waited = Instant::now();
        inbox.wind_down().await;
        let took = waited.elapsed();
        assert!(inbox.past_deadline() && !inbox.deleting());
        assert!(
            took > Duration::from_millis(1500) && took <= Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_on_a_running_pod_takes_effect_and_a_finished_pod_has_none() {
        let (tx, rx) = watch::channel(Desired::Present(Arc::default()));
        let an_hour_ago = Timestamp::now() - SignedDuration::from_secs(3600);
        let mut inbox = Inbox::new(rx, Pod::default(), Some(an_hour_ago));
        let none = tokio::time::timeout(Duration::from_secs(3600), inbox.wind_down()).await;
        assert!(none.is_err(), "no deadline, no wind-down");
        // Active for an hour: a deadline of ten seconds is past at once.
        tx.send_replace(Desired::Present(Arc::new(with_deadline(10))));
        let waited = Instant::now();
        inbox.wind_down().await;
        assert!(inbox.past_deadline());
        assert_eq!(waited.elapsed(), Duration::ZERO);

        inbox.finished();
        assert!(!inbox.past_deadline());
        let none = tokio::time::timeout(Duration::from_secs(60), inbox.wind_down()).await;
        assert!(none.is_err(), "a finished pod's deadline no longer counts");
    }
}
