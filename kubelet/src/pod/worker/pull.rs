//! The Pull stage: every container's image, with the kubelet's events and back-off.

use super::*;

impl<P: Provider> Worker<P> {
    pub(super) async fn pull_all(&mut self, inbox: &mut Inbox) -> Next {
        let pod = inbox.pod.clone();
        let secrets = env::pull_secrets(self.ctx.reads(), &pod).await;
        let mut delay = PULL_BACKOFF_INITIAL;
        for (kind, container) in Self::containers(&pod, Kind::Init)
            .into_iter()
            .map(|c| (Kind::Init, c))
            .chain(
                Self::containers(&pod, Kind::App)
                    .into_iter()
                    .map(|c| (Kind::App, c)),
            )
        {
            if self.images.contains_key(&container.name) {
                // Pulled beside the volumes' set-up.
                continue;
            }
            let index = self.index_of(kind, &container.name);
            let image = container.image.clone().unwrap_or_default();
            loop {
                let request = ImageRequest {
                    pod: &self.key,
                    image: &image,
                    pull_policy: container.image_pull_policy.as_deref(),
                    pull_secrets: &secrets,
                    command: container.command.as_deref().unwrap_or_default(),
                };
                let started = Instant::now();
                let pulled = tokio::select! {
                    result = self.ctx.provider.pull(request) => result,
                    _ = inbox.deletion() => return Next::Terminate,
                };
                match pulled {
                    Ok(pulled) => {
                        self.pulled(&pod, kind, &container, pulled, started.elapsed());
                        break;
                    }
                    Err(err) => {
                        self.pulling(&pod, &container.name, &image);
                        self.event(
                            &pod,
                            Some(&container.name),
                            EventType::Warning,
                            "Failed",
                            &format!("Failed to pull image \"{image}\": {}", err.message),
                        );
                        self.record(kind, index).state =
                            ContainerState::waiting(&err.reason, Some(err.message.clone()));
                        if err.fatal {
                            self.state
                                .finish(Phase::Failed, Some(&err.reason), Some(err.message));
                            return Next::Stage(Stage::Finished);
                        }
                        self.publish().await;
                        self.record(kind, index).state = ContainerState::waiting(
                            "ImagePullBackOff",
                            Some(format!(
                                "Back-off pulling image \"{image}\": {}",
                                err.message
                            )),
                        );
                        self.event(
                            &pod,
                            Some(&container.name),
                            EventType::Normal,
                            "BackOff",
                            &format!("Back-off pulling image \"{image}\""),
                        );
                        self.publish().await;
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = inbox.deletion() => return Next::Terminate,
                        }
                        delay = (delay * 2).min(PULL_BACKOFF_MAX);
                    }
                }
            }
        }
        self.mark("pull");
        Next::Stage(if self.state.init.is_empty() {
            Stage::Run
        } else {
            Stage::Init(0)
        })
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
        self.record(kind, index).image_id = Some(image.image_id());
        self.images.insert(container.name.clone(), image);
    }
}
