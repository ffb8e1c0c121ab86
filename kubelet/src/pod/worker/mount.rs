//! The Mount stage: a pod's volumes, set up before anything is pulled, as the kubelet does.

use super::*;

impl<P: Provider> Worker<P> {
    /// Sets up the pod's volumes, as the kubelet does before it pulls: a volume that cannot
    /// be set up (a Secret that does not exist yet, say) holds the pod in ContainerCreating
    /// with a FailedMount event, and is retried.
    pub(super) async fn mount_all(&mut self, inbox: &mut Inbox) -> Next {
        let mut delay = MOUNT_BACKOFF_INITIAL;
        loop {
            let pod = inbox.pod.clone();
            let ctx = self.ctx.clone();
            let volume_ctx = ctx.volume_context();
            let mounted = tokio::select! {
                result = self.volumes.set_up(&volume_ctx, &pod) => result,
                _ = inbox.deletion() => return Next::Terminate,
            };
            let Err(err) = mounted else {
                self.mark("mount");
                return Next::Stage(Stage::Pull);
            };
            let message = err.to_string();
            warn!(pod = %self.key.name, %message, "volume set-up failed; retrying");
            for record in self.state.init.iter_mut().chain(self.state.app.iter_mut()) {
                record.state = ContainerState::waiting("ContainerCreating", Some(message.clone()));
            }
            self.event(&pod, None, EventType::Warning, "FailedMount", &message);
            self.publish().await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inbox.deletion() => return Next::Terminate,
            }
            delay = (delay * 2).min(MOUNT_BACKOFF_MAX);
        }
    }
}
