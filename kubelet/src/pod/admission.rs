//! Whether this node takes a pod: the kubelet's admission checks for pods, CPU, memory and
//! extended resources (the devices a provider advertises), plus refusing pods that were
//! never meant for a Wasm node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity;

/// What the node can give pods in all (cpu, memory, pods; extended resources are in
/// [`ExtendedCapacity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Capacity {
    /// `max-pods`.
    pub pods: usize,
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
}

/// Extended resources the node advertises (`vendor.example/gpio: 2`), in whole units.
pub type ExtendedCapacity = BTreeMap<String, u64>;

/// What a pod asks for: the sum over app containers, or the largest init container if that
/// is more, as the scheduler counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Extended resources by name, in whole units.
    pub extended: BTreeMap<String, u64>,
}

impl Requests {
    /// The pod's effective requests.
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else {
            return Self::default();
        };
        let apps =
            spec.containers
                .iter()
                .map(Self::of_container)
                .fold(Self::default(), |mut sum, one| {
                    sum.cpu_millis += one.cpu_millis;
                    sum.memory_bytes += one.memory_bytes;
                    for (name, count) in one.extended {
                        *sum.extended.entry(name).or_default() += count;
                    }
                    sum
                });
        spec.init_containers
            .iter()
            .flatten()
            .map(Self::of_container)
            .fold(apps, |mut most, one| {
                most.cpu_millis = most.cpu_millis.max(one.cpu_millis);
                most.memory_bytes = most.memory_bytes.max(one.memory_bytes);
                for (name, count) in one.extended {
                    let entry = most.extended.entry(name).or_default();
                    *entry = (*entry).max(count);
                }
                most
            })
    }

    fn of_container(container: &Container) -> Self {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        // An extended resource may be given as a limit only; its request is then the
        // limit, as the API server defaults it (they must be equal).
        let extended = limits
            .into_iter()
            .flatten()
            .chain(requests.into_iter().flatten())
            .filter(|(name, _)| is_extended(name))
            .filter_map(|(name, q)| Some((name.clone(), quantity::bytes(q)?)))
            .collect();
        Self {
            cpu_millis: requests
                .and_then(|r| r.get("cpu"))
                .and_then(quantity::cpu_millis)
                .unwrap_or(0),
            memory_bytes: requests
                .and_then(|r| r.get("memory"))
                .and_then(quantity::bytes)
                .unwrap_or(0),
            extended,
        }
    }
}

/// An extended resource: a fully qualified name outside the `kubernetes.io` domain, such as
/// the devices a provider advertises.
fn is_extended(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(domain, _)| !domain.ends_with("kubernetes.io"))
}

/// Why a pod was refused: the pod's `status.reason` and `status.message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// e.g. `OutOfpods`, `OutOfcpu`, `NotWasm`.
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// Decides whether `pod` fits beside the `admitted` pods.
pub fn admit(
    pod: &Pod,
    admitted: &[Requests],
    capacity: Capacity,
    extended: &ExtendedCapacity,
) -> Result<(), Rejection> {
    if let Some(rejection) = not_meant_for_wasm(pod) {
        return Err(rejection);
    }
    if admitted.len() >= capacity.pods {
        return Err(Rejection {
            reason: "OutOfpods".into(),
            message: format!(
                "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                admitted.len(),
                capacity.pods
            ),
        });
    }
    let wanted = Requests::of(pod);
    let used_cpu: u64 = admitted.iter().map(|r| r.cpu_millis).sum();
    let used_memory: u64 = admitted.iter().map(|r| r.memory_bytes).sum();
    let checks = [
        ("cpu", "m", wanted.cpu_millis, used_cpu, capacity.cpu_millis),
        (
            "memory",
            "",
            wanted.memory_bytes,
            used_memory,
            capacity.memory_bytes,
        ),
    ];
    let devices = wanted.extended.iter().map(|(name, requested)| {
        let used = admitted.iter().filter_map(|r| r.extended.get(name)).sum();
        // A resource the node does not advertise has a capacity of nothing.
        let capacity = extended.get(name).copied().unwrap_or(0);
        (name.as_str(), "", *requested, used, capacity)
    });
    for (resource, unit, requested, used, capacity) in checks.into_iter().chain(devices) {
        if used + requested > capacity {
            return Err(Rejection {
                reason: format!("OutOf{resource}"),
                message: format!(
                    "Node didn't have enough resource: {resource}, requested: {requested}{unit}, used: {used}{unit}, capacity: {capacity}{unit}"
                ),
            });
        }
    }
    Ok(())
}

/// A DaemonSet that tolerates everything lands on every node, including this one, but its
/// pods are Linux containers. They are refused up front rather than failing to pull forever.
fn not_meant_for_wasm(pod: &Pod) -> Option<Rejection> {
    let from_daemon_set = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let spec = pod.spec.as_ref()?;
    let selects_wasm = spec
        .node_selector
        .as_ref()
        .is_some_and(|s| s.get("kubernetes.io/arch").map(String::as_str) == Some("wasm32-wasi"));
    let tolerates_wasm_explicitly = spec.tolerations.iter().flatten().any(|t| {
        t.key.as_deref() == Some("kubernetes.io/arch") && t.value.as_deref() == Some("wasm32-wasi")
    });
    (from_daemon_set && !selects_wasm && !tolerates_wasm_explicitly).then(|| Rejection {
        reason: "NotWasm".into(),
        message: "pod belongs to a DaemonSet that does not target kubernetes.io/arch=wasm32-wasi; \
                  this node runs only WebAssembly workloads"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod_requesting(cpu: &str, memory: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(
                            [
                                ("cpu".to_string(), Quantity(cpu.into())),
                                ("memory".to_string(), Quantity(memory.into())),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const ROOMY: Capacity = Capacity {
        pods: 2,
        cpu_millis: 2000,
        memory_bytes: 1 << 30,
    };

    const NONE: ExtendedCapacity = ExtendedCapacity::new();

    #[test]
    fn pods_beyond_max_pods_are_refused_as_out_of_pods() {
        let used = [Requests::default(), Requests::default()];
        let err = admit(&pod_requesting("0", "0"), &used, ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "OutOfpods");
        assert!(err.message.contains("capacity: 2"), "{}", err.message);
    }

    #[test]
    fn requests_beyond_allocatable_are_refused() {
        assert_eq!(
            admit(&pod_requesting("3", "1Mi"), &[], ROOMY, &NONE)
                .unwrap_err()
                .reason,
            "OutOfcpu"
        );
        assert_eq!(
            admit(&pod_requesting("1", "2Gi"), &[], ROOMY, &NONE)
                .unwrap_err()
                .reason,
            "OutOfmemory"
        );
        assert!(admit(&pod_requesting("1", "512Mi"), &[], ROOMY, &NONE).is_ok());
    }

    #[test]
    fn catch_all_daemon_set_pods_are_not_wasm_but_targeted_ones_are() {
        let mut pod = pod_requesting("0", "0");
        pod.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            ..Default::default()
        }]);
        pod.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(
            admit(&pod, &[], ROOMY, &NONE).unwrap_err().reason,
            "NotWasm"
        );
        pod.spec.as_mut().unwrap().node_selector =
            Some([("kubernetes.io/arch".to_string(), "wasm32-wasi".to_string())].into());
        assert!(admit(&pod, &[], ROOMY, &NONE).is_ok());
    }

    #[test]
    fn extended_resources_are_counted_against_what_the_node_advertises() {
        const GPIO: &str = "devices.wasmlet.dev/gpio";
        // Given as a limit only, as device requests usually are.
        let wanting = |count: &str| {
            let mut pod = pod_requesting("0", "0");
            pod.spec.as_mut().unwrap().containers[0]
                .resources
                .as_mut()
                .unwrap()
                .limits = Some([(GPIO.to_string(), Quantity(count.into()))].into());
            pod
        };
        let advertised: ExtendedCapacity = [(GPIO.to_string(), 3)].into();
        let holding_two = Requests::of(&wanting("2"));
        assert_eq!(holding_two.extended.get(GPIO), Some(&2));
        assert!(
            admit(
                &wanting("1"),
                std::slice::from_ref(&holding_two),
                ROOMY,
                &advertised
            )
            .is_ok()
        );
        let refused = admit(&wanting("2"), &[holding_two], ROOMY, &advertised).unwrap_err();
        assert_eq!(refused.reason, format!("OutOf{GPIO}"));
        assert!(
            refused
                .message
                .contains("requested: 2, used: 2, capacity: 3"),
            "{}",
            refused.message
        );
        let err = admit(&wanting("1"), &[], ROOMY, &NONE).unwrap_err();
        assert!(
            err.message.contains("capacity: 0"),
            "not advertised: {}",
            err.message
        );
        assert!(
            Requests::of(&pod_requesting("1", "1Mi"))
                .extended
                .is_empty(),
            "cpu and memory are not extended resources"
        );
    }
}
