//! Stopping: every container within the grace period, eviction, the active deadline, and
//! removing the pod object and its files when it is gone.

use super::*;
use crate::backoff::Backoff;

impl<P: Provider> Worker<P> {
    /// Stops every running container: at once, since a Wasm guest cannot catch SIGTERM, and
    /// aborted if the runtime takes longer than the pod's grace period to wind it down.
    pub(super) async fn stop_containers(
        &mut self,
        pod: &Pod,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) {
        let grace = Duration::from_secs(
            pod.metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64,
        );
        let mut stopping = Vec::new();
        if let Some(live) = self.live_init.take() {
            stopping.push(live);
        }
        for (index, live) in self.live_app.iter_mut().enumerate() {
            if let Some(live) = live.take() {
                let name = self.state.app[index].name.clone();
                self.ctx.recorder.record(
                    pod,
                    Some(&name),
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                stopping.push(live);
            }
        }
        if !stopping.is_empty() {
            info!(pod = %self.key.name, grace_s = grace.as_secs(), "stopping the pod's containers");
        }
        for live in &stopping {
            live.stop.cancel();
        }
        let drained = tokio::time::timeout(grace, async {
            while let Some((kind, index, exit)) = exits.next().await {
                self.record_exit(kind, index, &exit);
            }
        })
        .await;
        if drained.is_err() {
            for live in &stopping {
                live.abort.abort();
            }
            while let Some((kind, index, exit)) = exits.next().await {
                self.record_exit(kind, index, &exit);
            }
        }
    }

    /// Evicts the pod, as the kubelet's eviction manager does when a pod outgrows what it
    /// asked for: its containers stop and it fails with reason `Evicted`.
    pub(super) async fn evict(
        &mut self,
        pod: &Pod,
        exits: &mut FuturesUnordered<ExitFuture>,
        message: String,
    ) -> Next {
        warn!(pod = %self.key.name, %message, "evicting pod");
        self.event(pod, None, EventType::Warning, "Evicted", &message);
        Next::Stage(self.stop_as_failed(pod, exits, "Evicted", message).await)
    }

    /// The pod has been active longer than its `activeDeadlineSeconds`: its containers are
    /// stopped and it fails with the kubelet's reason, message and (Normal) event.
    pub(super) async fn deadline_exceeded(
        &mut self,
        pod: &Pod,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) -> Stage {
        const MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
        info!(pod = %self.key.name, "active deadline exceeded; stopping the pod");
        self.event(pod, None, EventType::Normal, "DeadlineExceeded", MESSAGE);
        self.stop_as_failed(pod, exits, "DeadlineExceeded", MESSAGE.into())
            .await
    }

    /// Stops whatever runs, within the grace period, and ends the pod Failed for `reason`.
    async fn stop_as_failed(
        &mut self,
        pod: &Pod,
        exits: &mut FuturesUnordered<ExitFuture>,
        reason: &str,
        message: String,
    ) -> Stage {
        self.stop_containers(pod, exits).await;
        self.state
            .finish(Phase::Failed, Some(reason), Some(message));
        Stage::Finished
    }

    /// Stops whatever runs, within the grace period, then deletes the pod object and the
    /// pod's files (the manager then forgets its record in the local store). When only the
    /// agent is stopping, all of that stays (logs for `--previous`, emptyDir data) for the agent's next run. A static pod's
    /// object is its manifest: its mirror pod is the mirror keeper's to remove.
    pub(super) async fn terminate(
        &mut self,
        inbox: &mut Inbox,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) {
        let pod = inbox.pod.clone();
        self.stop_containers(&pod, exits).await;
        if inbox.agent_stopping {
            return;
        }
        // Free its share of the node and its devices before the object goes: the moment it
        // is gone the scheduler may bind a pod that needs them here.
        self.ctx.release(&self.key).await;
        if !inbox.gone && self.source == PodSource::Api {
            self.publish().await;
            self.newest_status_attempted(inbox).await;
            self.delete_object(inbox).await;
        }
        super::super::remove_files(&self.ctx.pods_dir, &self.key.uid).await;
    }

    /// Confirms the deletion to the API server (grace 0, for this UID only), trying again
    /// with back-off until it is confirmed, the pod is gone, or the agent stops: until then
    /// nothing else would ever confirm it, and the pod would stay Terminating.
    async fn delete_object(&self, inbox: &mut Inbox) {
        let Some(api) = &self.api else { return };
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.key.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match api.delete(&self.key.name, &params).await {
                Ok(_) => return info!(pod = %self.key.name, "pod deleted"),
                Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {
                    return;
                }
                Err(err) => {
                    let retry_in = backoff.next_delay();
                    warn!(pod = %self.key.name, %err, ?retry_in, "could not remove the pod object; trying again");
                    tokio::select! {
                        () = inbox.gone_or_stopping() => return,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
    }
}
