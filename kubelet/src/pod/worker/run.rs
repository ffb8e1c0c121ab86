//! The Init and Run stages: init containers one at a time, then the app containers with
//! their restarts under the pod's `restartPolicy`, the sync tick and eviction.

use super::probing::Killed;
use super::*;
use crate::pod::storage::{self, StorageLimits, StorageUsage};

impl<P: Provider> Worker<P> {
    pub(super) async fn run_init(
        &mut self,
        inbox: &mut Inbox,
        exits: &mut FuturesUnordered<ExitFuture>,
        index: usize,
    ) -> Next {
        let pod = inbox.pod.clone();
        let policy = Self::restart_policy(&pod);
        let mut changes = self.changes.clone();
        let mut retry: Option<CreateRetry> = None;
        loop {
            let exit = match self.launch(&pod, Kind::Init, index).await {
                Ok(mut exit) => {
                    retry = None;
                    self.publish().await;
                    tokio::select! {
                        (_, _, exit) = &mut exit => exit,
                        _ = inbox.wind_down() => {
                            // Termination stops it and waits for this exit with the others.
                            exits.push(exit);
                            return Next::Terminate;
                        }
                    }
                }
                Err(err) if err.error().fatal => {
                    return self
                        .fail_to_start(&pod, Kind::Init, index, err.into_error(), exits)
                        .await;
                }
                Err(NotStarted::NotCreated(err)) => {
                    let failed = CreateRetry::after_failure(retry);
                    retry = Some(failed);
                    self.not_created(&pod, Kind::Init, index, err).await;
                    tokio::select! {
                        _ = tokio::time::sleep_until(failed.due().into()) => {}
                        // A ConfigMap or Secret it reads came or changed: try again now, or
                        // once the shortest wait is over, however often it changes.
                        () = sources_changed(&mut changes) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(failed.soonest().into()) => {}
                                _ = inbox.wind_down() => return Next::Terminate,
                            }
                        }
                        _ = inbox.wind_down() => return Next::Terminate,
                    }
                    continue;
                }
                Err(NotStarted::Refused(err)) => {
                    retry = None;
                    self.start_failed(&pod, Kind::Init, index, err).await
                }
            };
            let delay = self.record_exit(Kind::Init, index, &exit);
            self.report_failure(&pod, Kind::Init, index);
            if exit.exit_code == 0 {
                let next = index + 1;
                if next == self.state.init.len() {
                    self.state.initialized = true;
                    for app in &mut self.state.app {
                        app.state = ContainerState::waiting("ContainerCreating", None);
                    }
                    self.mark("init");
                    return Next::Stage(Stage::Run);
                }
                return Next::Stage(Stage::Init(next));
            }
            if policy == "Never" {
                self.state.finish(
                    Phase::Failed,
                    None,
                    Some(format!(
                        "init container {} failed",
                        self.state.init[index].name
                    )),
                );
                return Next::Stage(Stage::Finished);
            }
            self.prepare_restart(
                Kind::Init,
                index,
                delay,
                &pod.metadata.name.clone().unwrap_or_default(),
            );
            self.publish().await;
            if !delay.is_zero() {
                self.event(
                    &pod,
                    Some(&self.state.init[index].name.clone()),
                    EventType::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inbox.wind_down() => return Next::Terminate,
            }
        }
    }

    pub(super) async fn run_app(
        &mut self,
        inbox: &mut Inbox,
        exits: &mut FuturesUnordered<ExitFuture>,
    ) -> Next {
        let mut pod = inbox.pod.clone();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let policy = Self::restart_policy(&pod);
        let count = self.state.app.len();
        // The image each container last acted on: another in the pod's newest object (`kubectl
        // set image`) restarts the container with it, as the kubelet restarts a container
        // whose spec changed. (One set before this stage is pulled before the first start.)
        let mut acted_on: Vec<String> = containers(&pod, Kind::App)
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect();
        // Each container's pull back-off while its new image cannot be pulled.
        let mut pull_delay = vec![PULL_BACKOFF_INITIAL; count];
        let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); count];
        // Each container whose last instance could not be created: when, and the next wait.
        let mut not_created: Vec<Option<CreateRetry>> = vec![None; count];
        let period = self.ctx.sync_frequency;
        // A clone sees every change since the worker subscribed, before its volumes were set
        // up: none is missed.
        let mut changes = self.changes.clone();
        let mut sync = tokio::time::interval_at((Instant::now() + period).into(), period);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks: FuturesUnordered<probing::CheckFuture> = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            let starting: Vec<usize> = (0..count)
                .filter(|&i| due[i].is_some_and(|at| at <= now))
                .collect();
            for index in starting {
                due[index] = None;
                match self.pull_changed(inbox, &pod, index).await {
                    None => return Next::Terminate,
                    Some(Ok(())) => pull_delay[index] = PULL_BACKOFF_INITIAL,
                    // An image refused for good is tried again only at the longest back-off
                    // (it is on the node: no download), or when another is set.
                    Some(Err(err)) => {
                        let wait = if err.fatal {
                            PULL_BACKOFF_MAX
                        } else {
                            pull_delay[index]
                        };
                        due[index] = Some(Instant::now() + wait);
                        pull_delay[index] = (pull_delay[index] * 2).min(PULL_BACKOFF_MAX);
                        continue;
                    }
                }
                match self.launch(&pod, Kind::App, index).await {
                    Ok(exit) => {
                        not_created[index] = None;
                        exits.push(exit);
                    }
                    Err(err) if err.error().fatal => {
                        return self
                            .fail_to_start(&pod, Kind::App, index, err.into_error(), exits)
                            .await;
                    }
                    Err(NotStarted::NotCreated(err)) => {
                        let failed = CreateRetry::after_failure(not_created[index]);
                        due[index] = Some(failed.due());
                        not_created[index] = Some(failed);
                        self.not_created(&pod, Kind::App, index, err).await;
                    }
                    Err(NotStarted::Refused(err)) => {
                        not_created[index] = None;
                        let exit = self.start_failed(&pod, Kind::App, index, err).await;
                        exits.push(Box::pin(async move { (Kind::App, index, exit) }));
                    }
                }
            }
            // As the kubelet's phase: Pending while a container has yet to run (its instance
            // could not be created); then Running while one runs or will restart.
            let has_run = |(i, at): (usize, &Option<Instant>)| {
                at.is_some() && self.state.app.get(i).is_some_and(ContainerRecord::has_run)
            };
            let yet_to_run = self
                .state
                .app
                .iter()
                .any(|c| !c.is_running() && !c.has_run());
            if !yet_to_run
                && (self.state.app.iter().any(ContainerRecord::is_running)
                    || due.iter().enumerate().any(has_run))
            {
                self.state.phase = Phase::Running;
            }
            let first_run = self.trace.is_some()
                && self.start_sent.is_none()
                && self.state.app.iter().all(ContainerRecord::is_running);
            if first_run {
                self.mark("start");
            }
            if exits.is_empty() && due.iter().all(Option::is_none) {
                let all_ok =
                    self.state.app.iter().all(|c| {
                        matches!(c.state, ContainerState::Terminated { exit_code: 0, .. })
                    });
                self.state.finish(
                    if all_ok {
                        Phase::Succeeded
                    } else {
                        Phase::Failed
                    },
                    None,
                    None,
                );
                return Next::Stage(Stage::Finished);
            }
            self.publish().await;
            if first_run {
                self.start_sent = Some(self.status.as_ref().map_or(0, PodStatusHandle::offered));
            }
            let next_due = due.iter().flatten().min().copied();
            let next_check = self.next_probe_due();
            tokio::select! {
                Some((_, index, exit)) = exits.next() => {
                    // A container a probe killed restarts whatever its exit, as the kubelet's
                    // do; one stopped for a new image restarts at once whatever the policy,
                    // its back-off starting afresh (the kubelet's is kept per image).
                    let killed = self.probing[index].take().and_then(|p| p.killed());
                    let mut delay = self.record_exit(Kind::App, index, &exit);
                    let changed = killed == Some(Killed::Changed);
                    if changed {
                        delay = Duration::ZERO;
                        self.crash_app[index] = CrashLoop::default();
                    } else {
                        self.report_failure(&pod, Kind::App, index);
                    }
                    let restart = changed || match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => killed.is_some() || exit.exit_code != 0,
                        _ => true,
                    };
                    info!(pod = %pod_name, container = %self.state.app[index].name, exit = exit.exit_code, restart, "container exited");
                    if restart {
                        self.prepare_restart(Kind::App, index, delay, &pod_name);
                        if !delay.is_zero() {
                            let name = self.state.app[index].name.clone();
                            self.event(&pod, Some(&name), EventType::Warning, "BackOff", "Back-off restarting failed container");
                        }
                        due[index] = Some(Instant::now() + delay);
                    }
                }
                _ = sleep_until(next_due) => {}
                _ = sleep_until(next_check) => self.start_due_checks(&mut checks),
                Some(result) = checks.next() => self.apply_check(&pod, result),
                () = answered(self.status.as_mut(), self.start_sent.unwrap_or_default()), if self.trace.is_some() && self.start_sent.is_some() => {
                    self.started(&pod_name);
                }
                () = sources_changed(&mut changes) => {
                    // A ConfigMap or Secret it reads changed: its volumes follow at once, and
                    // a container that could not be created for want of one is tried again.
                    self.refresh_volumes(&inbox.pod.clone()).await;
                    for (at, retry) in due.iter_mut().zip(&not_created) {
                        if let (Some(due_at), Some(retry)) = (at.as_mut(), retry) {
                            // Now, or once the shortest wait is over, however often it changes.
                            *due_at = (*due_at).min(retry.soonest());
                        }
                    }
                }
                _ = sync.tick() => {
                    // The latest object: a label change shows in downwardAPI volumes.
                    let current = inbox.pod.clone();
                    if let Some(sender) = &mut self.status
                        && sender.up_to_date()
                        && self.last_stored.as_ref().is_some_and(|sent| overwritten(sent, current.status.as_ref()))
                    {
                        info!(pod = %pod_name, "the pod's status was changed by another writer; sending the node's again");
                        sender.send_again();
                    }
                    self.refresh_volumes(&current).await;
                    if let Some(message) = self.over_storage(&current).await {
                        return self.evict(&current, exits, message).await;
                    }
                }
                () = inbox.wind_down_or(|newest| names_another_image(newest, &acted_on)) => {
                    if inbox.deleting() || inbox.past_deadline() {
                        return Next::Terminate;
                    }
                    pod = inbox.pod.clone();
                    self.restart_for_new_images(&pod, &mut acted_on, &mut due, &mut pull_delay);
                }
            }
        }
    }

    /// Acts on app containers whose image in `pod` is not the one in `acted_on`: a running
    /// one is stopped (its exit restarts it with the new image), and one waiting to restart
    /// tries the new image now. One that ended for good under the pod's policy stays ended.
    fn restart_for_new_images(
        &mut self,
        pod: &Pod,
        acted_on: &mut [String],
        due: &mut [Option<Instant>],
        pull_delay: &mut [Duration],
    ) {
        for (index, container) in containers(pod, Kind::App).iter().enumerate() {
            let image = container.image.clone().unwrap_or_default();
            let Some(old) = acted_on.get_mut(index).filter(|old| **old != image) else {
                continue;
            };
            *old = image;
            let name = &container.name;
            info!(pod = %self.key.name, container = %name, image = %old, "the container's image changed; restarting it with the new one");
            // An instance that has ended, its exit not yet handled, is not stopped: its exit
            // and the restart policy decide, as for any ended container.
            let running = self.live_app.get(index).and_then(Option::as_ref);
            if running.is_some_and(|live| !live.abort.is_finished()) {
                let message = format!("Container {name} definition changed, will be restarted");
                self.kill(pod, index, Killed::Changed, None, &message);
            } else if let Some(at) = due.get_mut(index).and_then(Option::as_mut) {
                *at = Instant::now();
                self.crash_app[index] = CrashLoop::default();
                pull_delay[index] = PULL_BACKOFF_INITIAL;
            }
        }
    }

    /// Ends the start trace: the API server answered the request with the status that first
    /// showed the containers all running. (A pod whose containers all end before that answer
    /// leaves no trace: it never ran as far as the API server knew.)
    fn started(&mut self, pod_name: &str) {
        self.giving_way = None;
        if let Some(mut trace) = self.trace.take() {
            trace.mark("status_patch");
            self.ctx.metrics.observe_pod_start(trace.total());
            info!(pod = %pod_name, total_ms = trace.total().as_secs_f64() * 1e3, stages = %trace, "pod started");
        }
    }

    /// The kubelet's eviction message if the pod has outgrown its local storage: an emptyDir
    /// its `sizeLimit`, or its containers' writes and logs their `ephemeral-storage` limits.
    async fn over_storage(&self, pod: &Pod) -> Option<String> {
        if let Some(message) = self.volumes.over_size_limit().await {
            return Some(message);
        }
        let limits = StorageLimits::of(pod);
        if limits.is_empty() {
            return None;
        }
        let pods_dir = self.ctx.pods_dir.clone();
        let uid = self.key.uid.clone();
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .map(|c| c.name.clone())
            .collect();
        let empty_dirs = self.volumes.empty_dirs();
        let usage = tokio::task::spawn_blocking(move || {
            let empty_dirs: Vec<&std::path::Path> =
                empty_dirs.iter().map(|p| p.as_path()).collect();
            StorageUsage::measure(
                &pods_dir,
                &uid,
                names.iter().map(String::as_str),
                &empty_dirs,
            )
        })
        .await
        .ok()?;
        storage::exceeded(&limits, &usage)
    }

    /// Rewrites the API-backed volumes whose sources changed.
    async fn refresh_volumes(&mut self, pod: &Pod) {
        let ctx = self.ctx.clone();
        let updated = self.volumes.refresh(&ctx.volume_context(), pod).await;
        if !updated.is_empty() {
            info!(pod = %self.key.name, volumes = ?updated, "volumes updated");
        }
    }
}

/// Resolves when the API server answered the request for `version` of the pod's status
/// (or the request failed); at once on a standalone node, where the store and the table are
/// all there is to tell.
async fn answered(sender: Option<&mut PodStatusHandle>, version: u64) {
    if let Some(sender) = sender {
        sender.attempted(version).await;
    }
}

/// Resolves when an object the pod reads changed; never without watches.
async fn sources_changed(changes: &mut Option<watch::Receiver<u64>>) {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A container whose last instance could not be created: it is tried again after 2 s,
/// doubling to a minute, as the kubelet's back-off; sooner when an object it reads changes,
/// but never within 2 s of the failure, however often that object changes.
#[derive(Clone, Copy)]
struct CreateRetry {
    failed_at: Instant,
    delay: Duration,
}

impl CreateRetry {
    /// A failure now, the first or the one after `previous`.
    fn after_failure(previous: Option<CreateRetry>) -> Self {
        Self {
            failed_at: Instant::now(),
            delay: previous.map_or(CREATE_BACKOFF_INITIAL, |p| {
                (p.delay * 2).min(CREATE_BACKOFF_MAX)
            }),
        }
    }

    /// When it is tried again if nothing changes.
    fn due(&self) -> Instant {
        self.failed_at + self.delay
    }

    /// The soonest it may be tried again once something it reads changed.
    fn soonest(&self) -> Instant {
        (self.failed_at + CREATE_BACKOFF_INITIAL).max(Instant::now())
    }
}

/// Whether an app container of `pod` names another image than the one `acted_on` holds for
/// it (a missing image reads as "", as a pull reads it).
fn names_another_image(pod: &Pod, acted_on: &[String]) -> bool {
    containers(pod, Kind::App)
        .iter()
        .zip(acted_on)
        .any(|(c, old)| c.image.as_deref().unwrap_or_default() != old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_retries_double_from_two_seconds_to_a_minute() {
        let mut retry = None;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let failed = CreateRetry::after_failure(retry);
            assert_eq!(failed.due(), failed.failed_at + failed.delay);
            delays.push(failed.delay.as_secs());
            retry = Some(failed);
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn a_change_brings_a_retry_sooner_but_never_within_two_seconds_of_the_failure() {
        let first = CreateRetry::after_failure(None);
        let third = CreateRetry::after_failure(Some(CreateRetry::after_failure(Some(first))));
        assert_eq!(third.soonest(), third.failed_at + CREATE_BACKOFF_INITIAL);
        assert!(third.soonest() < third.due());
        let before = Instant::now();
        let long_ago = CreateRetry {
            failed_at: before - Duration::from_secs(5),
            delay: CREATE_BACKOFF_MAX,
        };
        assert!(long_ago.soonest() >= before, "now, not in the past");
    }
}
