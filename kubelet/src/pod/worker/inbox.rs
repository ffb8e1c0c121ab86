//! What a worker knows of its pod object: the latest one the node was told about, and
//! whether it is going away.
//!
//! The pod manager keeps one `watch` channel per worker holding only the latest desired
//! object, so however many updates arrive while a worker is busy, it holds one and acts on
//! the newest, never on a backlog.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

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
}

impl Inbox {
    pub(crate) fn new(rx: watch::Receiver<Desired>, pod: Pod) -> Self {
        Self {
            rx,
            pod,
            gone: false,
            agent_stopping: false,
        }
    }

    /// Resolves once the pod is being deleted or is gone; keeps `pod` current meanwhile.
    /// Cancel-safe, so it can sit in every `select!`.
    pub(crate) async fn deletion(&mut self) {
        self.deletion_or(|_| false).await;
    }

    /// Resolves once the pod is being deleted or is gone, or `changed` holds for the newest
    /// object; keeps `pod` current meanwhile. Cancel-safe.
    pub(crate) async fn deletion_or(&mut self, changed: impl Fn(&Pod) -> bool) {
        while !self.deleting() && !changed(&self.pod) {
            self.receive().await;
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
            Desired::Present(pod) => self.pod = Pod::clone(&pod),
            Desired::Gone => self.gone = true,
        }
    }

    /// Whether the worker must wind the pod down: it is being deleted, is gone, or the agent
    /// is stopping.
    pub(crate) fn deleting(&self) -> bool {
        self.gone || self.agent_stopping || self.pod.metadata.deletion_timestamp.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (watch::Sender<Desired>, Inbox) {
        let (tx, rx) = watch::channel(Desired::Present(Arc::default()));
        (tx, Inbox::new(rx, Pod::default()))
    }

    #[tokio::test]
    async fn a_closed_inbox_means_the_agent_is_stopping_not_that_the_pod_is_gone() {
        // The pod manager drops every worker's channel when the agent stops; the pod and its
        // files must outlive that, for the agent's next run.
        let (tx, mut stopping) = inbox();
        drop(tx);
        stopping.deletion().await;
        assert!(stopping.agent_stopping && !stopping.gone);
        assert!(stopping.deleting(), "the worker still winds down");

        let (tx, mut deleted) = inbox();
        tx.send_replace(Desired::Gone);
        deleted.deletion().await;
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
        inbox.deletion().await;
        assert!(inbox.deleting() && !inbox.gone);
        assert!(
            inbox.pod.metadata.resource_version.is_none(),
            "the newest object won"
        );
    }
}
