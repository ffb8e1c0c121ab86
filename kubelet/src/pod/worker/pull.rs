//! The Pull stage: every container's image, with the kubelet's events and back-off.

use super::*;

impl<P: Provider> Worker<P> {
    pub(super) async fn pull_all(&mut self, inbox: &mut Inbox) -> Next {
        let first = inbox.pod.clone();
        let mut delay = PULL_BACKOFF_INITIAL;
        for (kind, name) in containers(&first, Kind::Init)
            .iter()
            .map(|c| (Kind::Init, c.name.clone()))
            .chain(
                containers(&first, Kind::App)
                    .iter()
                    .map(|c| (Kind::App, c.name.clone())),
            )
        {
            if self.images.contains_key(&name) {
                // Pulled beside the volumes' set-up.
                continue;
            }
            let index = self.index_of(kind, &name);
            loop {
                // Each attempt reads the newest object and its pull secrets, as the
                // kubelet's syncs do: a Secret created or fixed after a refusal, or a new
                // image set on a pod waiting for its old one, is what the next attempt uses.
                let pod = inbox.pod.clone();
                // A container's name cannot change; the stage's own copy stands in for an
                // object that somehow lacks it.
                let Some(container) = container_named(&pod, kind, &name)
                    .or_else(|| container_named(&first, kind, &name))
                else {
                    break;
                };
                let image = container.image.clone().unwrap_or_default();
                let Some(pulled) = self.pull_once(inbox, &pod, kind, container).await else {
                    return Next::Terminate;
                };
                let Err(err) = pulled else {
                    break;
                };
                self.pull_refused(&pod, kind, index, &image, &err);
                if err.fatal {
                    self.state
                        .finish(Phase::Failed, Some(&err.reason), Some(err.message));
                    return Next::Stage(Stage::Finished);
                }
                self.pull_backing_off(&pod, kind, index, &image, &err).await;
                let image_changed = |pod: &Pod| image_changed(pod, kind, &name, &image);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // A new image has a back-off of its own, as in the kubelet, whose
                    // back-off is kept per image.
                    _ = inbox.wind_down_or(image_changed) => {
                        if inbox.deleting() || inbox.past_deadline() {
                            return Next::Terminate;
                        }
                        delay = PULL_BACKOFF_INITIAL;
                        continue;
                    }
                }
                delay = (delay * 2).min(PULL_BACKOFF_MAX);
            }
        }
        self.mark("pull");
        Next::Stage(if self.state.init.is_empty() {
            Stage::Run
        } else {
            Stage::Init(0)
        })
    }

    /// Pulls app container `index`'s image if the pod now names another than the one it
    /// has: a container whose image changed while the pod ran starts again with the new
    /// one. A pull that fails is reported as the Pull stage reports it, and the container
    /// waits for its next attempt; one refused for good (not Wasm) does not fail the pod, as
    /// it does in the Pull stage, since the pod's other containers run. None: the pod is
    /// winding down.
    pub(super) async fn pull_changed(
        &mut self,
        inbox: &mut Inbox,
        pod: &Pod,
        index: usize,
    ) -> Option<Result<(), ContainerError>> {
        let Some(container) = containers(pod, Kind::App).get(index) else {
            return Some(Ok(()));
        };
        let image = container.image.clone().unwrap_or_default();
        if self.state.app[index].image == image && self.images.contains_key(&container.name) {
            return Some(Ok(()));
        }
        let pulled = self.pull_once(inbox, pod, Kind::App, container).await?;
        if let Err(err) = &pulled {
            self.pull_refused(pod, Kind::App, index, &image, err);
            if err.fatal {
                // Not an image this node can run (`NotWasm`): it waits saying so, and the
                // other containers run on.
                self.publish().await;
            } else {
                self.pull_backing_off(pod, Kind::App, index, &image, err)
                    .await;
            }
        }
        Some(pulled)
    }

    /// One attempt to pull `container`'s image, with the pod's pull secrets as they are now;
    /// the image is kept when it is pulled. None: the pod is winding down.
    async fn pull_once(
        &mut self,
        inbox: &mut Inbox,
        pod: &Pod,
        kind: Kind,
        container: &Container,
    ) -> Option<Result<(), ContainerError>> {
        let image = container.image.clone().unwrap_or_default();
        let secrets = env::pull_secrets(self.ctx.reads(), pod).await;
        if let Some(warning) = secrets.unavailable_warning() {
            self.unavailable_secrets(pod, &warning);
        }
        let request = ImageRequest {
            pod: &self.key,
            image: &image,
            pull_policy: container.image_pull_policy.as_deref(),
            pull_secrets: &secrets.found,
            command: container.command.as_deref().unwrap_or_default(),
        };
        let started = Instant::now();
        let pulled = tokio::select! {
            result = self.ctx.provider.pull(request) => result,
            _ = inbox.wind_down() => return None,
        };
        Some(pulled.map(|pulled| self.pulled(pod, kind, container, pulled, started.elapsed())))
    }

    /// A pull of `image` for container `index` of `kind` failed: the kubelet's `Failed`
    /// event, and the container waits with the error's reason (`ErrImagePull`), showing the
    /// image it waits for.
    fn pull_refused(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        image: &str,
        err: &ContainerError,
    ) {
        let name = self.record(kind, index).name.clone();
        self.pulling(pod, &name, image);
        self.event(
            pod,
            Some(&name),
            EventType::Warning,
            "Failed",
            &format!("Failed to pull image \"{image}\": {}", err.message),
        );
        let record = self.record(kind, index);
        record.state = ContainerState::waiting(&err.reason, Some(err.message.clone()));
        // The container's image is the one the pod names now; any it had before is not what
        // it starts with.
        record.image = image.to_string();
        self.images.remove(&name);
    }

    /// After [`Worker::pull_refused`]: that state is published, then the container waits in
    /// `ImagePullBackOff`, with its event, until the next attempt.
    async fn pull_backing_off(
        &mut self,
        pod: &Pod,
        kind: Kind,
        index: usize,
        image: &str,
        err: &ContainerError,
    ) {
        self.publish().await;
        let name = self.record(kind, index).name.clone();
        self.record(kind, index).state = ContainerState::waiting(
            "ImagePullBackOff",
            Some(format!(
                "Back-off pulling image \"{image}\": {}",
                err.message
            )),
        );
        self.event(
            pod,
            Some(&name),
            EventType::Normal,
            "BackOff",
            &format!("Back-off pulling image \"{image}\""),
        );
        self.publish().await;
    }

    /// The kubelet's warning that the pull goes on without some of the pod's pull secrets.
    pub(super) fn unavailable_secrets(&self, pod: &Pod, warning: &str) {
        self.event(
            pod,
            None,
            EventType::Warning,
            "FailedToRetrieveImagePullSecret",
            warning,
        );
    }

    /// The record index of container `name` of `kind`.
    fn index_of(&self, kind: Kind, name: &str) -> usize {
        self.records(kind)
            .iter()
            .position(|r| r.name == name)
            .unwrap_or(0)
    }

    /// The kubelet's `Pulling` event, sent once an attempt is known to have pulled (or tried
    /// to): an image found on the node is only `Pulled`, "already present".
    fn pulling(&self, pod: &Pod, container: &str, image: &str) {
        self.event(
            pod,
            Some(container),
            EventType::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
    }

    /// Keeps the image pulled for `container` after `took`, with its `Pulling` (when it was
    /// not on the node) and `Pulled` events.
    pub(super) fn pulled(
        &mut self,
        pod: &Pod,
        kind: Kind,
        container: &Container,
        image: P::Image,
        took: Duration,
    ) {
        self.ctx.metrics.observe_image_pull(took);
        let reference = container.image.clone().unwrap_or_default();
        // The kubelet's two messages: an image it found needs no pull to report.
        let message = if image.already_present() {
            format!("Container image \"{reference}\" already present on machine")
        } else {
            self.pulling(pod, &container.name, &reference);
            format!(
                "Successfully pulled image \"{reference}\" in {:.3}s. Image size: {} bytes.",
                took.as_secs_f64(),
                image.size_bytes()
            )
        };
        self.event(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Pulled",
            &message,
        );
        let index = self.index_of(kind, &container.name);
        let record = self.record(kind, index);
        // The image the pod names now: one set while it waited for its old one.
        record.image = reference;
        record.image_id = Some(image.image_id());
        self.images.insert(container.name.clone(), image);
    }
}

/// Whether container `name` of `kind` in `pod` names another image than `attempted`, read as
/// an attempt reads it: a missing image is "", not a change (a static pod may have none).
fn image_changed(pod: &Pod, kind: Kind, name: &str, attempted: &str) -> bool {
    container_named(pod, kind, name)
        .is_some_and(|c| c.image.as_deref().unwrap_or_default() != attempted)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    fn pod(init: Option<&str>, app: Option<&str>) -> Pod {
        let container = |name: &str, image: Option<&str>| Container {
            name: name.into(),
            image: image.map(Into::into),
            ..Default::default()
        };
        Pod {
            spec: Some(PodSpec {
                init_containers: Some(vec![container("setup", init)]),
                containers: vec![container("app", app)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_another_image_for_the_same_container_is_a_change() {
        let before = pod(Some("r/setup:1"), Some("r/app:1"));
        assert!(!image_changed(&before, Kind::App, "app", "r/app:1"));
        assert!(image_changed(
            &pod(Some("r/setup:1"), Some("r/app:2")),
            Kind::App,
            "app",
            "r/app:1"
        ));
        // An init container is another container.
        assert!(!image_changed(
            &pod(Some("r/setup:2"), Some("r/app:1")),
            Kind::App,
            "app",
            "r/app:1"
        ));
        assert!(image_changed(
            &pod(Some("r/setup:2"), Some("r/app:1")),
            Kind::Init,
            "setup",
            "r/setup:1"
        ));
        // No image is what an attempt asked for as "": waiting goes on, it does not spin.
        assert!(!image_changed(&pod(None, None), Kind::App, "app", ""));
        assert!(!image_changed(&before, Kind::App, "gone", "r/app:1"));
    }
}
