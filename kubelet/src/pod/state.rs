//! What the agent knows about one pod, and the PodStatus it renders.
//!
//! The worker changes this model; [`PodState::to_status`] is the only place a status is
//! built, so what the API shows always follows from the model.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::message::capped;

/// The pod's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not all containers have started yet.
    Pending,
    /// Containers are running or being restarted.
    Running,
    /// Every container exited 0 and none will restart.
    Succeeded,
    /// A container failed and will not restart, or the pod was rejected.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Whether the pod is done and holds no node resources.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// One container instance's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running yet, or waiting to restart.
    Waiting {
        /// e.g. `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`.
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When it started.
        started_at: Timestamp,
    },
    /// Exited.
    Terminated {
        /// Its exit code.
        exit_code: i32,
        /// `Completed`, `Error`, `OOMKilled`, …
        reason: String,
        /// Details.
        message: Option<String>,
        /// When it started.
        started_at: Option<Timestamp>,
        /// When it ended.
        finished_at: Timestamp,
    },
}

impl ContainerState {
    /// A waiting state.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn from_terminated(t: &ContainerStateTerminated) -> Self {
        Self::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone(),
            started_at: t.started_at.as_ref().map(|t| t.0),
            finished_at: t.finished_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
        }
    }

    fn to_k8s(&self) -> K8sState {
        let time = |t: &Timestamp| Some(Time(*t));
        match self {
            Self::Waiting { reason, message } => K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.as_deref().map(capped),
                }),
                ..Default::default()
            },
            Self::Running { started_at } => K8sState {
                running: Some(ContainerStateRunning {
                    started_at: time(started_at),
                }),
                ..Default::default()
            },
            Self::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => K8sState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    message: message.as_deref().map(capped),
                    started_at: started_at.as_ref().and_then(time),
                    finished_at: time(finished_at),
                    container_id: None,
                    signal: None,
                }),
                ..Default::default()
            },
        }
    }
}

/// The status the API last had for the container `name` (app or init).
fn reported<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// One container of the pod, across its restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// Its `image`.
    pub image: String,
    /// The pulled image's ID, once known.
    pub image_id: Option<String>,
    /// The current instance.
    pub state: ContainerState,
    /// How the previous instance ended.
    pub last_terminated: Option<ContainerState>,
    /// How many times it was restarted.
    pub restart_count: i32,
    /// The running instance has a startup probe that has not passed yet: it is not
    /// `started`, and its other probes wait.
    pub awaiting_startup: bool,
    /// The running instance's readiness probe has not passed (or has failed since).
    pub unready: bool,
}

impl ContainerRecord {
    fn new(name: &str, image: &str, waiting_reason: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            image_id: None,
            state: ContainerState::waiting(waiting_reason, None),
            last_terminated: None,
            restart_count: 0,
            awaiting_startup: false,
            unready: false,
        }
    }

    /// Whether the instance is running and its probes let it count as ready.
    pub fn is_ready(&self) -> bool {
        self.is_running() && !self.awaiting_startup && !self.unready
    }

    /// Continues from what the API last heard about this container, when the pod was taken
    /// on by an earlier run of the agent: the restart count carries on, and an instance that
    /// was running (or had just ended) did not survive that agent, so it counts as one more
    /// restart and becomes the last terminated state, as after any restart.
    fn carried_over(mut self, reported: Option<&ContainerStatus>) -> Self {
        let Some(reported) = reported else {
            return self;
        };
        let state = reported.state.as_ref();
        let ended = if let Some(running) = state.and_then(|s| s.running.as_ref()) {
            Some(ContainerState::Terminated {
                exit_code: 137,
                reason: "Error".into(),
                message: Some("wasmlet restarted while the container ran".into()),
                started_at: running.started_at.as_ref().map(|t| t.0),
                finished_at: Timestamp::now(),
            })
        } else {
            state
                .and_then(|s| s.terminated.as_ref())
                .map(ContainerState::from_terminated)
        };
        self.restart_count = reported
            .restart_count
            .max(0)
            .saturating_add(i32::from(ended.is_some()));
        self.last_terminated = ended.or_else(|| {
            reported
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(ContainerState::from_terminated)
        });
        self
    }

    /// Exactly as the API last heard of this container, for a pod that finished under an
    /// earlier run of the agent: nothing of it runs again, so nothing is counted again.
    fn kept_as_reported(mut self, reported: Option<&ContainerStatus>) -> Self {
        let Some(reported) = reported else {
            return self;
        };
        let terminated = |state: Option<&K8sState>| {
            state
                .and_then(|s| s.terminated.as_ref())
                .map(ContainerState::from_terminated)
        };
        let waiting = reported
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .map(|w| {
                ContainerState::waiting(w.reason.as_deref().unwrap_or_default(), w.message.clone())
            });
        // Waiting with its reason when the pod failed before it ran (`NotWasm`, say).
        if let Some(state) = terminated(reported.state.as_ref()).or(waiting) {
            self.state = state;
        }
        self.last_terminated = terminated(reported.last_state.as_ref());
        self.restart_count = reported.restart_count.max(0);
        self.image_id = Some(reported.image_id.clone()).filter(|id| !id.is_empty());
        self
    }

    /// Whether the current instance is running.
    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    /// Whether an instance of it has run (and ended).
    pub fn has_run(&self) -> bool {
        self.restart_count > 0
            || self.last_terminated.is_some()
            || matches!(self.state, ContainerState::Terminated { .. })
    }

    fn to_status(&self, pod_uid: &str) -> ContainerStatus {
        let running = self.is_running();
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone().unwrap_or_default(),
            container_id: self
                .image_id
                .as_ref()
                .map(|_| format!("wasmlet://{pod_uid}/{}/{}", self.name, self.restart_count)),
            ready: self.is_ready(),
            started: Some(running && !self.awaiting_startup),
            restart_count: self.restart_count,
            state: Some(self.state.to_k8s()),
            last_state: self.last_terminated.as_ref().map(ContainerState::to_k8s),
            ..Default::default()
        }
    }
}

/// The conditions the node sets, in the order its statuses list them.
const CONDITIONS: [&str; 4] = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];

/// The agent's model of one pod.
#[derive(Clone, Debug)]
pub struct PodState {
    /// The phase.
    pub phase: Phase,
    /// A pod-level reason, e.g. `OutOfpods`, `NotWasm`.
    pub reason: Option<String>,
    /// A pod-level message.
    pub message: Option<String>,
    /// Init containers, in order.
    pub init: Vec<ContainerRecord>,
    /// App containers.
    pub app: Vec<ContainerRecord>,
    /// Whether every init container has succeeded.
    pub initialized: bool,
    host_ip: String,
    uid: String,
    start_time: Timestamp,
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl PodState {
    /// The state of a pod the agent has just taken on. A pod that already finished (seen
    /// again after a restart of the agent) keeps the phase, reason and container states it
    /// finished with, so that publishing it again changes nothing and the next restart still
    /// sees it finished.
    pub fn new(pod: &Pod, host_ip: &str) -> Self {
        let status = pod.status.as_ref();
        let finished = match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => Some(Phase::Succeeded),
            Some("Failed") => Some(Phase::Failed),
            _ => None,
        };
        let record = |record: ContainerRecord, name: &str| match finished {
            Some(_) => record.kept_as_reported(reported(pod, name)),
            None => record.carried_over(reported(pod, name)),
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let app_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let mut state = Self {
            phase: finished.unwrap_or(Phase::Pending),
            reason: finished.and(status.and_then(|s| s.reason.clone())),
            message: finished.and(status.and_then(|s| s.message.clone())),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| {
                    record(
                        ContainerRecord::new(
                            &c.name,
                            c.image.as_deref().unwrap_or_default(),
                            "PodInitializing",
                        ),
                        &c.name,
                    )
                })
                .collect(),
            app: spec
                .containers
                .iter()
                .map(|c| {
                    record(
                        ContainerRecord::new(
                            &c.name,
                            c.image.as_deref().unwrap_or_default(),
                            app_reason,
                        ),
                        &c.name,
                    )
                })
                .collect(),
            initialized: !has_init,
            host_ip: host_ip.to_string(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now),
            transitions: BTreeMap::new(),
        };
        if finished.is_some() {
            state.carry_conditions(status.and_then(|s| s.conditions.as_deref()));
        }
        state
    }

    /// Takes the reported conditions as they were, transition times included.
    fn carry_conditions(&mut self, reported: Option<&[PodCondition]>) {
        for condition in reported.into_iter().flatten() {
            let Some(&type_) = CONDITIONS.iter().find(|t| **t == condition.type_) else {
                continue;
            };
            let status = condition.status == "True";
            if type_ == "Initialized" {
                self.initialized = status;
            }
            if let Some(at) = &condition.last_transition_time {
                self.transitions.insert(type_, (status, at.0));
            }
        }
    }

    /// When the node first took the pod on (its `status.startTime`).
    pub fn start_time(&self) -> Timestamp {
        self.start_time
    }

    /// Ends the pod with `phase` and a pod-level reason and message.
    pub fn finish(&mut self, phase: Phase, reason: Option<&str>, message: Option<String>) {
        self.phase = phase;
        self.reason = reason.map(str::to_string);
        self.message = message;
    }

    /// The PodStatus for the current model. Condition transition times move only when a
    /// condition's status changes.
    pub fn to_status(&mut self) -> PodStatus {
        let all_ready = !self.app.is_empty() && self.app.iter().all(ContainerRecord::is_ready);
        let ready = all_ready && !self.phase.is_terminal();
        let not_ready_reason = if self.phase.is_terminal() {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let init_reason = (!self.initialized).then_some("ContainersNotInitialized");
        let conditions = [
            ("PodScheduled", true, None),
            ("Initialized", self.initialized, init_reason),
            (
                "ContainersReady",
                ready,
                (!ready).then_some(not_ready_reason),
            ),
            ("Ready", ready, (!ready).then_some(not_ready_reason)),
        ]
        .into_iter()
        .map(|(type_, status, reason)| self.condition(type_, status, reason))
        .collect();
        PodStatus {
            phase: Some(self.phase.as_str().into()),
            reason: self.reason.clone(),
            message: self.message.as_deref().map(capped),
            conditions: Some(conditions),
            host_ip: Some(self.host_ip.clone()),
            // Wasm pods share the node's network: their address is the node's.
            pod_ip: Some(self.host_ip.clone()),
            pod_ips: Some(vec![PodIP {
                ip: self.host_ip.clone(),
            }]),
            start_time: Some(Time(self.start_time)),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(|c| c.to_status(&self.uid)).collect()),
            container_statuses: Some(self.app.iter().map(|c| c.to_status(&self.uid)).collect()),
            qos_class: None,
            ..Default::default()
        }
    }

    fn condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
    ) -> PodCondition {
        let now = Timestamp::now();
        let entry = self.transitions.entry(type_).or_insert((status, now));
        if entry.0 != status {
            *entry = (status, now);
        }
        PodCondition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.map(str::to_string),
            last_transition_time: Some(Time(entry.1)),
            ..Default::default()
        }
    }
}

/// Whether the status the API server holds (`theirs`) has moved away from the one this node
/// last sent (`ours`) in what the node owns: the phase and each of its conditions. Another
/// writer does that while the node is cut off (the node lifecycle controller marks its pods
/// not Ready), and only sending ours again puts it right.
pub fn overwritten(ours: &PodStatus, theirs: Option<&PodStatus>) -> bool {
    let Some(theirs) = theirs else {
        return true;
    };
    let condition = |status: &PodStatus, type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    };
    ours.phase != theirs.phase
        || ours
            .conditions
            .iter()
            .flatten()
            .any(|c| condition(theirs, &c.type_).as_ref() != Some(&c.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod(init: &[&str], app: &[&str]) -> Pod {
        let containers = |names: &[&str]| -> Vec<Container> {
            names
                .iter()
                .map(|n| Container {
                    name: n.to_string(),
                    image: Some(format!("reg/{n}:v1")),
                    ..Default::default()
                })
                .collect()
        };
        Pod {
            metadata: kube::api::ObjectMeta {
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                init_containers: (!init.is_empty()).then(|| containers(init)),
                containers: containers(app),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn condition(status: &PodStatus, type_: &str) -> (String, Option<String>) {
        let c = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_pod_taken_over_from_an_earlier_agent_keeps_counting_restarts() {
        let mut taken_over = pod(&[], &["ran", "backing-off", "fresh"]);
        let started: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = |name: &str, restarts: i32, state: K8sState| ContainerStatus {
            name: name.into(),
            restart_count: restarts,
            state: Some(state),
            last_state: Some(ContainerState::waiting("x", None).to_k8s()),
            ..Default::default()
        };
        taken_over.status = Some(PodStatus {
            container_statuses: Some(vec![
                status(
                    "ran",
                    2,
                    ContainerState::Running {
                        started_at: started,
                    }
                    .to_k8s(),
                ),
                status(
                    "backing-off",
                    3,
                    ContainerState::waiting("CrashLoopBackOff", None).to_k8s(),
                ),
            ]),
            ..Default::default()
        });
        let state = PodState::new(&taken_over, "10.0.0.1");
        let ran = &state.app[0];
        assert_eq!(ran.restart_count, 3);
        assert!(matches!(
            &ran.last_terminated,
            Some(ContainerState::Terminated { exit_code: 137, started_at: Some(t), .. }) if *t == started
        ));
        assert_eq!(
            state.app[1].restart_count, 3,
            "a waiting container had not run again"
        );
        assert_eq!(state.app[2].restart_count, 0);
        assert_eq!(state.app[2].last_terminated, None);
    }

    #[test]
    fn new_pod_is_pending_with_init_containers_gating_the_app() {
        let mut state = PodState::new(&pod(&["setup"], &["app"]), "10.0.0.5");
        let status = state.to_status();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(condition(&status, "PodScheduled").0, "True");
        assert_eq!(
            condition(&status, "Initialized"),
            ("False".into(), Some("ContainersNotInitialized".into()))
        );
        let app = &status.container_statuses.unwrap()[0];
        assert_eq!(
            app.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
    }

    #[test]
    fn a_guest_chosen_message_of_any_length_is_written_capped() {
        let mut state = PodState::new(&pod(&[], &["app"]), "10.0.0.5");
        let backtrace = format!(
            "wasm trap: call stack exhausted\n{}",
            "  0: f\n".repeat(100_000)
        );
        state.app[0].state = ContainerState::Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: Some(backtrace.clone()),
            started_at: None,
            finished_at: Timestamp::now(),
        };
        state.finish(Phase::Failed, Some("Error"), Some(backtrace));
        let status = state.to_status();
        let pod_message = status.message.unwrap();
        let terminated = status.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        for message in [pod_message, terminated.message.unwrap()] {
            assert!(message.len() <= crate::message::MAX_MESSAGE_BYTES);
            assert!(message.starts_with("wasm trap: call stack exhausted"));
        }
    }

    #[test]
    fn running_containers_make_the_pod_ready() {
        let mut state = PodState::new(&pod(&[], &["app"]), "10.0.0.5");
        state.phase = Phase::Running;
        state.app[0].image_id = Some("sha256:abc".into());
        state.app[0].state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        let status = state.to_status();
        assert_eq!(condition(&status, "Ready").0, "True");
        assert_eq!(condition(&status, "ContainersReady").0, "True");
        let app = &status.container_statuses.unwrap()[0];
        assert!(app.ready);
        assert_eq!(app.image_id, "sha256:abc");
        assert_eq!(app.container_id.as_deref(), Some("wasmlet://u1/app/0"));
    }

    #[test]
    fn probes_hold_back_started_and_ready_until_they_pass() {
        let mut state = PodState::new(&pod(&[], &["app"]), "10.0.0.5");
        state.phase = Phase::Running;
        state.app[0].state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        state.app[0].awaiting_startup = true;
        state.app[0].unready = true;
        let status = state.to_status();
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!((app.started, app.ready), (Some(false), false));
        assert_eq!(condition(&status, "Ready").0, "False");
        state.app[0].awaiting_startup = false;
        let app = state.to_status().container_statuses.unwrap()[0].clone();
        assert_eq!((app.started, app.ready), (Some(true), false));
        state.app[0].unready = false;
        let status = state.to_status();
        assert!(status.container_statuses.as_ref().unwrap()[0].ready);
        assert_eq!(condition(&status, "ContainersReady").0, "True");
    }

    #[test]
    fn terminated_container_reports_exit_code_reason_and_last_state() {
        let mut state = PodState::new(&pod(&[], &["app"]), "10.0.0.5");
        let ended = ContainerState::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            message: Some("exit 3".into()),
            started_at: Some(Timestamp::now()),
            finished_at: Timestamp::now(),
        };
        state.app[0].last_terminated = Some(ended.clone());
        state.app[0].state = ended;
        state.app[0].restart_count = 1;
        state.finish(Phase::Failed, None, None);
        let status = state.to_status();
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(
            condition(&status, "Ready"),
            ("False".into(), Some("PodCompleted".into()))
        );
        let app = &status.container_statuses.unwrap()[0];
        let terminated = app.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (3, Some("Error"))
        );
        assert_eq!(app.restart_count, 1);
        assert!(app.last_state.as_ref().unwrap().terminated.is_some());
    }

    /// A Job's pod that finished, or one rejected at admission, is taken on again after
    /// the agent restarts: its status must come out as it went in, or the store would hold
    /// Pending and the next restart would run it again.
    #[test]
    fn a_finished_pod_taken_on_again_keeps_the_status_it_finished_with() {
        let mut finished = pod(&["setup"], &["app"]);
        let mut first = PodState::new(&finished, "10.0.0.1");
        first.initialized = true;
        first.init[0].state = ContainerState::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
            message: None,
            started_at: Some(Timestamp::now()),
            finished_at: Timestamp::now(),
        };
        first.app[0].image_id = Some("sha256:abc".into());
        first.app[0].restart_count = 2;
        first.app[0].last_terminated = Some(first.init[0].state.clone());
        first.app[0].state = ContainerState::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            message: Some("exit 3".into()),
            started_at: Some(Timestamp::now()),
            finished_at: Timestamp::now(),
        };
        first.finish(
            Phase::Failed,
            Some("DeadlineExceeded"),
            Some("too slow".into()),
        );
        let reported = first.to_status();
        finished.status = Some(reported.clone());

        let again = PodState::new(&finished, "10.0.0.1").to_status();

        assert_eq!(again, reported);

        // One that failed before it ran keeps its container's waiting reason.
        let mut never_ran = pod(&[], &["app"]);
        let mut first = PodState::new(&never_ran, "10.0.0.1");
        first.app[0].state = ContainerState::waiting("NotWasm", Some("a Linux image".into()));
        first.finish(Phase::Failed, None, None);
        let reported = first.to_status();
        never_ran.status = Some(reported.clone());
        assert_eq!(PodState::new(&never_ran, "10.0.0.1").to_status(), reported);
    }

    #[test]
    fn transition_time_moves_only_on_change() {
        let mut state = PodState::new(&pod(&[], &["app"]), "h");
        let first = state.to_status();
        let second = state.to_status();
        let time = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&first), time(&second));
        state.phase = Phase::Running;
        state.app[0].state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        let ready = state.to_status();
        assert_eq!(condition(&ready, "Ready").0, "True");
        assert_ne!(
            time(&ready),
            time(&second),
            "Ready flipped, so its time moved"
        );
        assert_eq!(time(&ready), time(&state.to_status()));
    }

    #[test]
    fn a_status_another_writer_changed_counts_as_overwritten() {
        let mut state = PodState::new(&pod(&[], &["app"]), "10.0.0.1");
        state.phase = Phase::Running;
        state.app[0].state = ContainerState::Running {
            started_at: Timestamp::now(),
        };
        let ours = state.to_status();
        assert!(
            !overwritten(&ours, Some(&ours)),
            "our own status is not overwritten"
        );
        let mut extra = ours.clone();
        extra.qos_class = Some("BestEffort".into());
        assert!(
            !overwritten(&ours, Some(&extra)),
            "fields we do not set are not ours"
        );
        let mut not_ready = ours.clone();
        for c in not_ready.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" {
                c.status = "False".into();
            }
        }
        assert!(
            overwritten(&ours, Some(&not_ready)),
            "the lifecycle controller's Ready=False"
        );
        assert!(overwritten(&ours, None), "no status at all");
    }
}
