//! Publishing a pod's status: to the table the kubelet API reads, to the local store, and
//! to the API server, each only when it changed; and the terminal states (rejected, finished)
//! in which publishing is all that is left to do.

use super::*;

/// The body of a status patch. An API pod's carries its UID, as the kubelet's does: the API
/// server refuses the patch if the pod of that name is now another one (the pod was deleted
/// and made again, elsewhere perhaps, while this node was cut off), instead of writing this
/// node's truth over it. A static pod's mirror has a UID of the API server's making, so its
/// patch goes by name alone.
fn status_patch(status: &PodStatus, from_api: bool, uid: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            uid: from_api.then(|| uid.to_owned()),
            ..Default::default()
        },
        status: Some(status.clone()),
        ..Default::default()
    }
}

impl<P: Provider> Worker<P> {
    /// Records the status where the node keeps it (the table the kubelet API reads, the
    /// local store for the next run) when it changed, and sends it to the API server if it
    /// changed since the last one the API server accepted.
    pub(super) async fn publish(&mut self) {
        let status = self.state.to_status();
        if self.last_stored.as_ref() != Some(&status) {
            self.ctx.table.set_status(&self.key.uid, status.clone());
            self.ctx.store.put_status(&self.key.uid, &status).await;
            self.last_stored = Some(status.clone());
        }
        // A status whose patch failed waits for its retry deadline, then goes with the next
        // publish (stages that wait without `resend_due`, as the Mount back-off does).
        let waiting_retry = self
            .unsent
            .as_ref()
            .is_some_and(|(failed, at)| *failed == status && Instant::now() < *at);
        if self.last_sent.as_ref() == Some(&status) || waiting_retry {
            return;
        }
        let Some(api) = &self.api else {
            // A standalone node: the store and the table are all there is to tell.
            self.last_sent = Some(status);
            return;
        };
        let patch = status_patch(&status, self.source == PodSource::Api, &self.key.uid);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        // Under a burst, patches for different pods go out side by side, at most
        // STATUS_PATCHES_IN_FLIGHT at once; the permit is only ever held for one request.
        let _permit = self.ctx.status_patches.acquire().await;
        let started = Instant::now();
        match unread_reply::patch_status(api, &self.key.name, &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                self.ctx.link.succeeded();
                self.ctx.metrics.observe_status_patch(started.elapsed());
                self.last_sent = Some(status);
                self.unsent = None;
            }
            Err(err) => {
                let reachable = crate::link::answered(&err);
                let outage_begins = self.ctx.link.failed_with(&err);
                let no_mirror_yet = self.source == PodSource::File
                    && matches!(&err, kube::Error::Api(status) if status.is_not_found());
                if no_mirror_yet {
                    debug!(pod = %self.key.name, "the static pod has no mirror pod yet; its status waits");
                } else if reachable {
                    warn!(pod = %self.key.name, %err, "pod status update failed; retrying");
                } else if outage_begins {
                    warn!(pod = %self.key.name, %err, "the API server cannot be reached; pods run on and their status is sent when it answers");
                } else {
                    debug!(pod = %self.key.name, %err, "pod status update failed; retrying");
                }
                // Jittered, so pods whose patches failed together do not retry in lockstep.
                let jitter = Duration::from_millis(fastrand::u64(0..=STATUS_RETRY_JITTER_MS));
                self.unsent = Some((status, Instant::now() + STATUS_RETRY + jitter));
            }
        }
    }

    /// Resolves when the status must be sent again though it did not change: the last one
    /// was not accepted and its retry is due, or the link to the API server came back (while
    /// the node was cut off, the node lifecycle controller may have rewritten the status
    /// the API holds). The caller then calls [`Self::resend`]. Cancel-safe.
    pub(super) async fn resend_due(&mut self) {
        let retry_at = self.unsent.as_ref().map(|(_, at)| *at);
        tokio::select! {
            () = sleep_until(retry_at) => {}
            () = self.restorations.restored() => {}
        }
    }

    /// Forgets what was sent and what failed: the next publish sends the status.
    pub(super) fn resend(&mut self) {
        self.last_sent = None;
        self.unsent = None;
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
        loop {
            self.publish().await;
            tokio::select! {
                _ = inbox.deletion() => return Next::Terminate,
                _ = self.resend_due() => self.resend(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_pod_s_status_patch_names_its_uid_and_a_static_pod_s_does_not() {
        let status = PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };

        let api = serde_json::to_value(status_patch(&status, true, "uid-1")).unwrap();
        let mirror = serde_json::to_value(status_patch(&status, false, "hash-1")).unwrap();

        assert_eq!(api["metadata"]["uid"], "uid-1");
        assert_eq!(api["status"]["phase"], "Running");
        assert!(mirror["metadata"].get("uid").is_none(), "{mirror}");
        assert_eq!(mirror["status"]["phase"], "Running");
    }
}
