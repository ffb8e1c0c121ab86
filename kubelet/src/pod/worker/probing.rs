//! A pod's probes, run by its worker: which checks are due, starting them (as futures the
//! worker polls itself, never tasks of their own), and acting on their verdicts: `started`
//! and `ready`, and a kill and restart when a liveness or startup probe gives up.

use super::*;
use crate::pod::probe::{self, Kind as ProbeKind, Probes, Tracker, Verdict};

/// A check in flight, resolving to its result.
pub(super) type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// The result of one check of one container instance.
pub(super) struct CheckResult {
    index: usize,
    restart: i32,
    kind: ProbeKind,
    outcome: Result<(), String>,
}

/// The pod's grace period, the default a kill for a probe gets.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Why the node stopped a running instance itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Killed {
    /// A liveness or startup probe gave up: it restarts unless the policy is Never.
    Probe,
    /// Its image changed: it restarts with the new one whatever the policy, at once, as
    /// the kubelet restarts a container whose spec changed.
    Changed,
}

/// The probes of one running app container instance.
pub(super) struct Probing {
    /// The instance's restart count: results for an earlier instance are dropped.
    restart: i32,
    startup: Option<Tracker>,
    liveness: Option<Tracker>,
    readiness: Option<Tracker>,
    /// The node had the instance killed, and why.
    killed: Option<Killed>,
    /// When the killed instance is aborted if it is still running; cleared once it is.
    abort_at: Option<Instant>,
}

impl Probing {
    fn new(probes: &Probes, started: Instant, restart: i32) -> Self {
        let tracker =
            |probe: &Option<probe::Probe>| probe.as_ref().map(|p| Tracker::new(p, started));
        Self {
            restart,
            startup: tracker(&probes.startup),
            liveness: tracker(&probes.liveness),
            readiness: tracker(&probes.readiness),
            killed: None,
            abort_at: None,
        }
    }

    fn tracker_ref(&self, kind: ProbeKind) -> Option<&Tracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
        }
    }

    fn tracker(&mut self, kind: ProbeKind) -> Option<&mut Tracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
        }
    }

    /// The probes that run now: the startup probe alone until it passes, then the others.
    fn active(&self, awaiting_startup: bool) -> &'static [ProbeKind] {
        if self.killed.is_some() {
            &[]
        } else if awaiting_startup {
            &[ProbeKind::Startup]
        } else {
            &[ProbeKind::Liveness, ProbeKind::Readiness]
        }
    }

    /// Why the node had the instance killed, if it did.
    pub(super) fn killed(&self) -> Option<Killed> {
        self.killed
    }
}

impl<P: Provider> Worker<P> {
    /// Starts probing app container `index`'s new instance: a startup probe holds back
    /// `started`, a readiness probe `ready`, until they pass.
    pub(super) fn start_probing(&mut self, index: usize) {
        let Some(probes) = self.probes.get(index) else {
            return;
        };
        let record = &mut self.state.app[index];
        record.awaiting_startup = probes.startup.is_some();
        record.unready = probes.readiness.is_some();
        self.probing[index] = Some(Probing::new(probes, Instant::now(), record.restart_count));
    }

    /// When the next check, or the abort of an instance a probe killed, is due.
    pub(super) fn next_probe_due(&self) -> Option<Instant> {
        self.probing
            .iter()
            .zip(&self.state.app)
            .filter_map(|(probing, record)| Some((probing.as_ref()?, record)))
            .flat_map(|(probing, record)| {
                let checks = probing
                    .active(record.awaiting_startup)
                    .iter()
                    .filter_map(|&kind| probing.tracker_ref(kind)?.due);
                checks.chain(probing.abort_at)
            })
            .min()
    }

    /// Starts every check that is due, and aborts an instance a probe killed once its grace
    /// period is over.
    pub(super) fn start_due_checks(&mut self, checks: &mut FuturesUnordered<CheckFuture>) {
        let now = Instant::now();
        let pod_ip = self
            .ctx
            .host_ip
            .parse()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        for index in 0..self.probing.len() {
            let awaiting_startup = self.state.app[index].awaiting_startup;
            let Some(probing) = self.probing[index].as_mut() else {
                continue;
            };
            if probing.killed.is_some() {
                if probing.abort_at.is_some_and(|at| at <= now) {
                    probing.abort_at = None;
                    if let Some(live) = &self.live_app[index] {
                        live.abort.abort();
                    }
                }
                continue;
            }
            let restart = probing.restart;
            for &kind in probing.active(awaiting_startup) {
                let Some(probe) = self.probes[index].get(kind) else {
                    continue;
                };
                let Some(tracker) = probing.tracker(kind) else {
                    continue;
                };
                if tracker.due.is_none_or(|due| due > now) {
                    continue;
                }
                // Not due again until this check's result is in.
                tracker.due = None;
                let action = probe.action.clone();
                let timeout = probe.timeout;
                checks.push(Box::pin(async move {
                    CheckResult {
                        index,
                        restart,
                        kind,
                        outcome: probe::check(&action, pod_ip, timeout).await,
                    }
                }));
            }
        }
    }

    /// Counts a check's result and acts on the verdict, as the kubelet's prober does.
    pub(super) fn apply_check(&mut self, pod: &Pod, result: CheckResult) {
        let CheckResult {
            index,
            restart,
            kind,
            outcome,
        } = result;
        let Some(probe) = self.probes.get(index).and_then(|p| p.get(kind)).cloned() else {
            return;
        };
        let Some(probing) = self.probing.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if probing.restart != restart || probing.killed.is_some() {
            return;
        }
        let Some(tracker) = probing.tracker(kind) else {
            return;
        };
        let verdict = tracker.record(&probe, outcome.is_ok(), Instant::now());
        let name = self.state.app[index].name.clone();
        if let Err(why) = &outcome {
            debug!(pod = %self.key.name, container = %name, probe = kind.label(), %why, "probe failed");
            self.event(
                pod,
                Some(&name),
                EventType::Warning,
                "Unhealthy",
                &format!("{} probe failed: {why}", kind.label()),
            );
        }
        let record = &mut self.state.app[index];
        match (kind, verdict) {
            (ProbeKind::Startup, Some(Verdict::Passed)) => record.awaiting_startup = false,
            (ProbeKind::Readiness, Some(Verdict::Passed)) => record.unready = false,
            (ProbeKind::Readiness, Some(Verdict::Failed)) => record.unready = true,
            (ProbeKind::Startup | ProbeKind::Liveness, Some(Verdict::Failed)) => {
                self.kill_for_probe(pod, index, kind, probe.termination_grace);
            }
            _ => {}
        }
    }

    /// Stops container `index` because its `kind` probe gave up; it is aborted if it is still
    /// running after the grace period, and restarted unless the policy is Never.
    fn kill_for_probe(
        &mut self,
        pod: &Pod,
        index: usize,
        kind: ProbeKind,
        probe_grace: Option<Duration>,
    ) {
        let name = self.state.app[index].name.clone();
        info!(pod = %self.key.name, container = %name, probe = kind.label(), "probe failed past its threshold; killing the container");
        let message = format!(
            "Container {name} failed {} probe, will be restarted",
            kind.label().to_lowercase()
        );
        self.kill(pod, index, Killed::Probe, probe_grace, &message);
    }

    /// Stops running container `index` for `why`, with a `Killing` event saying `message`;
    /// it is aborted if it is still running after `grace` (the pod's grace period without
    /// one). Its exit decides the restart.
    pub(super) fn kill(
        &mut self,
        pod: &Pod,
        index: usize,
        why: Killed,
        grace: Option<Duration>,
        message: &str,
    ) {
        let grace = grace.unwrap_or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_GRACE, Duration::from_secs)
        });
        let name = self.state.app[index].name.clone();
        self.event(pod, Some(&name), EventType::Normal, "Killing", message);
        if let Some(probing) = self.probing[index].as_mut() {
            // Stopped again (another new image within the grace period): the first grace
            // period stands.
            if probing.killed.is_none() {
                // A grace period past what a clock can hold (the API allows any int64 of
                // seconds) is one that never ends.
                probing.abort_at = Instant::now().checked_add(grace);
            }
            probing.killed = Some(why);
        }
        if let Some(live) = &self.live_app[index] {
            live.stop.cancel();
        }
    }
}
