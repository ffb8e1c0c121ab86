//! Publishing a pod's status: to the table the kubelet API reads, to the local store, and
//! to the status sender for the API server, only when it changed; and the terminal states
//! (rejected, finished) in which publishing is all that is left to do.

use super::*;

impl<P: Provider> Worker<P> {
    /// Records the status where the node keeps it (the table the kubelet API reads, the
    /// local store for the next run) and hands it to the status sender, when it changed.
    /// The worker does not wait for the API server: the sender patches the newest status,
    /// again after a failure and when the link comes back.
    pub(super) async fn publish(&mut self) {
        let status = self.state.to_status();
        if self.last_stored.as_ref() == Some(&status) {
            return;
        }
        self.ctx.table.set_status(&self.key.uid, status.clone());
        self.ctx.store.put_status(&self.key.uid, &status).await;
        self.last_stored = Some(status.clone());
        if let Some(sender) = &mut self.status {
            sender.offer(status);
        }
    }

    /// Waits until the newest status handed over was answered (or failed), unless the pod
    /// goes or the agent stops first: the containers' final states reach the API server
    /// before the object goes.
    pub(super) async fn newest_status_attempted(&mut self, inbox: &mut Inbox) {
        let Some(sender) = &mut self.status else {
            return;
        };
        let newest = sender.offered();
        tokio::select! {
            () = sender.attempted(newest) => {}
            () = inbox.gone_or_stopping() => {}
        }
    }

    pub(super) async fn reject(&mut self, pod: &Pod, rejection: Rejection) {
        self.state.finish(
            Phase::Failed,
            Some(&rejection.reason),
            Some(rejection.message.clone()),
        );
        self.ctx.recorder.record(
            pod,
            None,
            EventType::Warning,
            &rejection.reason,
            &rejection.message,
        );
    }

    pub(super) async fn idle_until_deleted(&mut self, inbox: &mut Inbox) -> Next {
        self.publish().await;
        inbox.wind_down().await;
        Next::Terminate
    }
}
