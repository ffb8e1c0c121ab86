//! The Mount stage: a pod's volumes, set up as the kubelet does before it starts anything,
//! while its images are pulled (and compiled) and its containers' directories made side by
//! side, since none of them needs another.

use super::*;

/// What pulling one container's image gave, and how long it took.
type Prefetched<I> = (String, Result<I, ContainerError>, Duration);

/// What the first pulls of a pod's images gave.
struct Prefetch<I> {
    pulled: Vec<Prefetched<I>>,
    /// The warning that some pull secrets could not be read, when they could not.
    secrets_warning: Option<String>,
}

impl<P: Provider> Worker<P> {
    /// Sets up the pod's volumes, as the kubelet does before it pulls: a volume that cannot
    /// be set up (a Secret that does not exist yet, say) holds the pod in ContainerCreating
    /// with a FailedMount event, and is retried. The first attempt runs beside the pulls of
    /// every image; what they fetched is kept once the volumes are set up, and the Pull stage
    /// retries what they did not.
    pub(super) async fn mount_all(&mut self, inbox: &mut Inbox) -> Next {
        let mut delay = MOUNT_BACKOFF_INITIAL;
        let mut prefetch = Some(prefetch(
            self.ctx.clone(),
            self.key.clone(),
            inbox.pod.clone(),
        ));
        // Kept until the volumes are set up: only then are the pulls reported, in the
        // kubelet's order (a pod whose volumes fail shows no Pulling or Pulled).
        let mut fetched = Prefetch {
            pulled: Vec::new(),
            secrets_warning: None,
        };
        let mut pulls_done = None;
        let mut layout = Some(layout::lay_out(self.layout_plans(&inbox.pod)));
        loop {
            let pod = inbox.pod.clone();
            let ctx = self.ctx.clone();
            let volume_ctx = ctx.volume_context();
            let pulls = async {
                match prefetch.take() {
                    Some(pulls) => Some(pulls.await),
                    None => None,
                }
            };
            let mount = async {
                let result = self.volumes.set_up(&volume_ctx, &pod).await;
                (result, Instant::now())
            };
            let laying_out = async {
                match layout.take() {
                    Some(layout) => Some(layout.await),
                    None => None,
                }
            };
            // A deletion drops the pulls (they write only to the image store) but lets the
            // volumes and directories finish: their blocking writes would go on without
            // them, and could make the pod's files again after its removal.
            let (((mounted, mounted_at), laid_out), pulled) = {
                let mut local = std::pin::pin!(async { tokio::join!(mount, laying_out) });
                let mut pulls = std::pin::pin!(pulls);
                let (mut local_done, mut pulls_done_now, mut deleted) = (None, None, false);
                loop {
                    tokio::select! {
                        done = &mut local, if local_done.is_none() => local_done = Some(done),
                        done = &mut pulls, if pulls_done_now.is_none() && !deleted => {
                            pulls_done_now = Some(done);
                        }
                        () = inbox.wind_down(), if !deleted => deleted = true,
                    }
                    match local_done.take() {
                        Some(_) if deleted => return Next::Terminate,
                        Some(done) if pulls_done_now.is_some() => {
                            break (done, pulls_done_now.flatten());
                        }
                        done => local_done = done,
                    }
                }
            };
            self.laid_out.extend(laid_out.into_iter().flatten());
            if let Some((pulled, pulled_at)) = pulled {
                fetched = pulled;
                pulls_done = Some(pulled_at);
            }
            let Err(err) = mounted else {
                // Stages that ran side by side are marked in the order they ended.
                let mut ends = vec![("mount", mounted_at)];
                ends.extend(pulls_done.map(|at| ("pull", at)));
                ends.sort_by_key(|(_, at)| *at);
                for (stage, at) in ends {
                    self.mark_at(stage, at);
                }
                self.keep_prefetched(&pod, fetched);
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
                _ = inbox.wind_down() => return Next::Terminate,
            }
            delay = (delay * 2).min(MOUNT_BACKOFF_MAX);
        }
    }

    /// Keeps the images the prefetch pulled, with their events; a failure is left for the
    /// Pull stage, which retries and reports it with the kubelet's back-off.
    fn keep_prefetched(&mut self, pod: &Pod, prefetch: Prefetch<P::Image>) {
        if let Some(warning) = prefetch.secrets_warning {
            self.unavailable_secrets(pod, &warning);
        }
        for (name, result, took) in prefetch.pulled {
            let Ok(image) = result else { continue };
            let found = [Kind::Init, Kind::App]
                .into_iter()
                .find_map(|kind| container_named(pod, kind, &name).map(|c| (kind, c)));
            let Some((kind, container)) = found else {
                continue;
            };
            self.pulled(pod, kind, container, image, took);
        }
    }
}

/// Pulls every container's image of `pod` at once, with its pull secrets; returns what each
/// gave and when the last finished.
async fn prefetch<P: Provider>(
    ctx: Arc<WorkerContext<P>>,
    key: PodKey,
    pod: Pod,
) -> (Prefetch<P::Image>, Instant) {
    let secrets = env::pull_secrets(ctx.reads(), &pod).await;
    let spec = pod.spec.clone().unwrap_or_default();
    let containers: Vec<Container> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers)
        .collect();
    let pulls = containers.iter().map(|container| {
        let (ctx, key, secrets) = (&ctx, &key, &secrets);
        async move {
            let image = container.image.clone().unwrap_or_default();
            let started = Instant::now();
            let result = ctx
                .provider
                .pull(ImageRequest {
                    pod: key,
                    image: &image,
                    pull_policy: container.image_pull_policy.as_deref(),
                    pull_secrets: &secrets.found,
                    command: container.command.as_deref().unwrap_or_default(),
                })
                .await;
            (container.name.clone(), result, started.elapsed())
        }
    });
    let pulled = futures::future::join_all(pulls).await;
    let prefetch = Prefetch {
        pulled,
        secrets_warning: secrets.unavailable_warning(),
    };
    (prefetch, Instant::now())
}
