//! The node's conditions, computed from what the agent observes.
//!
//! Reasons and messages follow the kubelet's so that tools reading them keep working, and
//! each one says what was actually measured.

use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::host::DiskUsage;
use crate::node::pressure::PressureThresholds;

/// What the agent saw this round.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// Memory available on the host, if it could be read.
    pub memory_available_bytes: Option<u64>,
    /// The data dir's filesystem, if it could be measured.
    pub data_dir_disk: Option<DiskUsage>,
    /// Why the data dir cannot be written, if it cannot.
    pub data_dir_error: Option<String>,
    /// Why the provider cannot run pods, if it cannot.
    pub provider_error: Option<String>,
}

struct Verdict {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// The four conditions for `observed`. A condition whose status did not change since
/// `previous` keeps its `lastTransitionTime`; every condition gets `now` as its heartbeat.
pub fn compute(
    observed: &Observations,
    thresholds: &PressureThresholds,
    previous: &[NodeCondition],
    now: &Time,
) -> Vec<NodeCondition> {
    verdicts(observed, thresholds)
        .into_iter()
        .map(|v| {
            let status = if v.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == v.type_ && p.status == status)
                .and_then(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_: v.type_.to_string(),
                status,
                reason: Some(v.reason.to_string()),
                message: Some(v.message),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(last_transition_time),
            }
        })
        .collect()
}

fn verdicts(observed: &Observations, thresholds: &PressureThresholds) -> Vec<Verdict> {
    let memory_pressure = observed
        .memory_available_bytes
        .is_some_and(|b| thresholds.memory_pressure(b));
    let disk_pressure = observed
        .data_dir_disk
        .is_some_and(|d| thresholds.disk_pressure(d));
    let memory_min = thresholds.memory_available;
    let disk_min = thresholds.nodefs_available;
    let not_ready: Vec<String> = [
        observed
            .data_dir_error
            .as_ref()
            .map(|e| format!("data dir is not writable: {e}")),
        observed
            .provider_error
            .as_ref()
            .map(|e| format!("provider is not ready: {e}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    vec![
        Verdict {
            type_: "MemoryPressure",
            status: memory_pressure,
            reason: if memory_pressure {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            // Verdicts, not readings: a message that carried the live numbers would change
            // the status every period and defeat sending it only on change.
            message: match (observed.memory_available_bytes, memory_pressure) {
                (None, _) => "available memory could not be read".into(),
                (Some(_), true) => format!("less than {memory_min} of memory available"),
                (Some(_), false) => format!("at least {memory_min} of memory available"),
            },
        },
        Verdict {
            type_: "DiskPressure",
            status: disk_pressure,
            reason: if disk_pressure {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            message: match (observed.data_dir_disk, disk_pressure) {
                (None, _) => "the data dir's filesystem could not be measured".into(),
                (Some(_), true) => {
                    format!("less than {disk_min} free in the data dir's filesystem")
                }
                (Some(_), false) => {
                    format!("at least {disk_min} free in the data dir's filesystem")
                }
            },
        },
        Verdict {
            type_: "PIDPressure",
            status: false,
            reason: "KubeletHasSufficientPID",
            message: "wasmlet runs pods as tasks, not processes".into(),
        },
        Verdict {
            type_: "Ready",
            status: not_ready.is_empty(),
            reason: if not_ready.is_empty() {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            },
            message: if not_ready.is_empty() {
                "wasmlet is posting ready status".into()
            } else {
                not_ready.join("; ")
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn healthy() -> Observations {
        Observations {
            memory_available_bytes: Some(8 << 30),
            data_dir_disk: Some(DiskUsage {
                total_bytes: 100 << 30,
                available_bytes: 50 << 30,
            }),
            ..Default::default()
        }
    }

    fn with_defaults(
        observed: &Observations,
        previous: &[NodeCondition],
        now: &Time,
    ) -> Vec<NodeCondition> {
        compute(observed, &PressureThresholds::default(), previous, now)
    }

    fn find<'a>(conditions: &'a [NodeCondition], type_: &str) -> &'a NodeCondition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn healthy_host_is_ready_without_pressure() {
        let c = with_defaults(&healthy(), &[], &at(100));
        assert_eq!(find(&c, "Ready").status, "True");
        assert_eq!(find(&c, "Ready").reason.as_deref(), Some("KubeletReady"));
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(find(&c, t).status, "False", "{t}");
        }
    }

    #[test]
    fn unwritable_data_dir_and_sick_provider_make_the_node_not_ready_with_both_reasons() {
        let observed = Observations {
            data_dir_error: Some("read-only file system".into()),
            provider_error: Some("engine failed".into()),
            ..healthy()
        };
        let c = with_defaults(&observed, &[], &at(100));
        let ready = find(&c, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
        let message = ready.message.as_deref().unwrap();
        assert!(message.contains("read-only file system") && message.contains("engine failed"));
    }

    #[test]
    fn low_memory_and_disk_are_reported_as_pressure() {
        let observed = Observations {
            memory_available_bytes: Some(10 << 20),
            data_dir_disk: Some(DiskUsage {
                total_bytes: 100 << 30,
                available_bytes: 5 << 30,
            }),
            ..Default::default()
        };
        let c = with_defaults(&observed, &[], &at(100));
        assert_eq!(find(&c, "MemoryPressure").status, "True");
        assert_eq!(find(&c, "DiskPressure").status, "True");
        assert_eq!(
            find(&c, "DiskPressure").message.as_deref(),
            Some("less than 10% free in the data dir's filesystem")
        );
        assert_eq!(
            find(&c, "MemoryPressure").message.as_deref(),
            Some("less than 100 MiB of memory available")
        );
    }

    #[test]
    fn operator_thresholds_decide_pressure_and_appear_in_the_message() {
        let thresholds = PressureThresholds::parse("nodefs.available<60%").unwrap();
        let c = compute(&healthy(), &thresholds, &[], &at(100));
        let disk = find(&c, "DiskPressure");
        assert_eq!(disk.status, "True");
        assert_eq!(
            disk.message.as_deref(),
            Some("less than 60% free in the data dir's filesystem")
        );
    }

    #[test]
    fn changing_readings_leave_the_conditions_unchanged() {
        let mut other = healthy();
        other.memory_available_bytes = Some(3 << 30);
        other.data_dir_disk = Some(DiskUsage {
            total_bytes: 100 << 30,
            available_bytes: 70 << 30,
        });
        let strip = |mut c: Vec<NodeCondition>| {
            c.iter_mut().for_each(|c| c.last_heartbeat_time = None);
            c
        };
        let first = with_defaults(&healthy(), &[], &at(100));
        assert_eq!(strip(with_defaults(&other, &first, &at(110))), strip(first));
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_moves_when_it_flips() {
        let first = with_defaults(&healthy(), &[], &at(100));
        let second = with_defaults(&healthy(), &first, &at(200));
        let ready = find(&second, "Ready");
        assert_eq!(ready.last_transition_time, Some(at(100)));
        assert_eq!(ready.last_heartbeat_time, Some(at(200)));
        let sick = Observations {
            provider_error: Some("x".into()),
            ..healthy()
        };
        let third = with_defaults(&sick, &second, &at(300));
        assert_eq!(find(&third, "Ready").last_transition_time, Some(at(300)));
    }
}
