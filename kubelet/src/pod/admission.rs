//! Whether this node takes a pod: the kubelet's admission checks for pods, CPU, memory and
//! extended resources (the devices a provider advertises), ports, plus refusing pods that
//! were never meant for a Wasm node.
//!
//! A pod's TCP `containerPort`s are served on the node's own address (its podIP is the
//! node's), so they are claimed the way the kubelet claims a `hostPort`: one pod per port.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{self, QuantityError};

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
    /// Allocatable local storage in bytes: the data dir's filesystem.
    pub ephemeral_storage_bytes: u64,
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
    /// Local ephemeral storage in bytes.
    pub ephemeral_storage_bytes: u64,
    /// Extended resources by name, in whole units.
    pub extended: BTreeMap<String, u64>,
    /// The TCP ports its app containers declare, which it serves on the node.
    pub ports: BTreeSet<u16>,
}

/// The TCP `containerPort`s of `container` (TCP is the default protocol); a number outside
/// 1-65535, which admission refuses, is left out.
pub fn tcp_ports(container: &Container) -> Vec<u16> {
    tcp_declarations(container)
        .filter_map(|p| port_number(p.container_port))
        .collect()
}

/// The container's TCP port declarations, as written.
fn tcp_declarations(container: &Container) -> impl Iterator<Item = &ContainerPort> {
    container
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
}

/// A port number from a pod spec, if it is one (1-65535).
pub(crate) fn port_number(number: i32) -> Option<u16> {
    u16::try_from(number).ok().filter(|&n| n > 0)
}

impl Requests {
    /// The pod's effective requests, or why they cannot be counted: a quantity that does not
    /// parse, or amounts too large to count.
    pub fn of(pod: &Pod) -> Result<Self, Rejection> {
        let Some(spec) = &pod.spec else {
            return Ok(Self::default());
        };
        let mut requests = Self::default();
        for container in &spec.containers {
            requests.add(Self::of_container(container)?)?;
            requests.claim_ports(container)?;
            // Probes that cannot run here are refused now, not ignored later.
            super::probe::Probes::of(container)?;
        }
        for container in spec.init_containers.iter().flatten() {
            requests.raise_to(Self::of_container(container)?);
        }
        Ok(requests)
    }

    /// The extended resources `container` requests, in whole units (none if its quantities
    /// do not parse, which admission has refused).
    pub(crate) fn devices_of(container: &Container) -> BTreeMap<String, u64> {
        Self::of_container(container)
            .map(|requests| requests.extended)
            .unwrap_or_default()
    }

    fn of_container(container: &Container) -> Result<Self, Rejection> {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let invalid =
            |kind: &str, name: &str, q: &Quantity, why: &dyn std::fmt::Display| Rejection {
                reason: "InvalidResourceQuantity".into(),
                message: format!(
                    "container {:?}: {kind}.{name} {:?} {why}",
                    container.name, q.0
                ),
            };
        // A manifest on the node's disk has had no API server refuse a negative amount.
        let negative =
            |q: &Quantity| quantity::parse(q).is_ok_and(|v| v.is_sign_negative() && !v.is_zero());
        let checked =
            |kind: &str, name: &str, q: &Quantity, counted: Result<u64, QuantityError>| {
                if negative(q) {
                    return Err(invalid(
                        kind,
                        name,
                        q,
                        &"must be greater than or equal to 0",
                    ));
                }
                counted.map_err(|err| match err {
                    QuantityError::Malformed => invalid(kind, name, q, &err),
                    QuantityError::OutOfRange => too_much(name, &q.0),
                })
            };
        let read = |kind: &str, name: &str, q: &Quantity, as_count: Count| {
            checked(kind, name, q, as_count(q))
        };
        // An extended resource may be given as a limit only; its request is then the
        // limit, as the API server defaults it (they must be equal).
        let mut extended = BTreeMap::new();
        for (kind, set) in [("limits", limits), ("requests", requests)] {
            for (name, q) in set.into_iter().flatten() {
                if is_extended(name) {
                    extended.insert(name.clone(), read(kind, name, q, quantity::bytes)?);
                }
            }
        }
        // A limit must parse and not be negative (a manifest on the node's disk has had no
        // API server check it), but one too large to count is no limit. A request left out
        // is the limit, as the API server defaults it (so one too large to count is refused
        // as the request would be); one above its limit is refused, as the API server does.
        let request = |name: &str, as_count: Count| -> Result<u64, Rejection> {
            let requested = requests.and_then(|r| r.get(name));
            let limit = match limits.and_then(|l| l.get(name)) {
                Some(q) => match as_count(q) {
                    Err(QuantityError::OutOfRange) if requested.is_some() && !negative(q) => None,
                    counted => Some((checked("limits", name, q, counted)?, q)),
                },
                None => None,
            };
            let Some(q) = requested else {
                return Ok(limit.map_or(0, |(count, _)| count));
            };
            let count = read("requests", name, q, as_count)?;
            match limit {
                Some((most, limit)) if count > most => Err(Rejection {
                    reason: "InvalidResourceRequirements".into(),
                    message: format!(
                        "container {:?}: requests.{name} {:?} must be less than or equal to limits.{name} {:?}",
                        container.name, q.0, limit.0
                    ),
                }),
                _ => Ok(count),
            }
        };
        Ok(Self {
            cpu_millis: request("cpu", quantity::cpu_millis)?,
            memory_bytes: request("memory", quantity::bytes)?,
            ephemeral_storage_bytes: request("ephemeral-storage", quantity::bytes)?,
            extended,
            // Ports are the pod's app containers', claimed by `claim_ports`.
            ports: BTreeSet::new(),
        })
    }

    /// Adds `container`'s TCP ports, refusing a number that is not a port and a port that
    /// another container of the pod already declares.
    fn claim_ports(&mut self, container: &Container) -> Result<(), Rejection> {
        for port in tcp_declarations(container) {
            let number = port_number(port.container_port).ok_or_else(|| Rejection {
                reason: "InvalidContainerPort".into(),
                message: format!(
                    "container {:?}: containerPort {} is not a port number (1-65535)",
                    container.name, port.container_port
                ),
            })?;
            if !self.ports.insert(number) {
                return Err(Rejection {
                    reason: "NodePorts".into(),
                    message: format!(
                        "Node didn't have free ports for the requested pod ports: {number}/TCP is declared twice in the pod (container {:?})",
                        container.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Adds `other`'s requests to these, as app containers' requests add up.
    fn add(&mut self, other: Self) -> Result<(), Rejection> {
        let total = |resource: &str, a: u64, b: u64| {
            a.checked_add(b)
                .ok_or_else(|| too_much(resource, "the sum of the containers' requests"))
        };
        self.cpu_millis = total("cpu", self.cpu_millis, other.cpu_millis)?;
        self.memory_bytes = total("memory", self.memory_bytes, other.memory_bytes)?;
        self.ephemeral_storage_bytes = total(
            "ephemeral-storage",
            self.ephemeral_storage_bytes,
            other.ephemeral_storage_bytes,
        )?;
        for (name, count) in other.extended {
            let sum = total(&name, self.extended.get(&name).copied().unwrap_or(0), count)?;
            self.extended.insert(name, sum);
        }
        Ok(())
    }

    /// Raises these requests to `other`'s where `other` asks for more, as an init container
    /// that runs alone counts.
    fn raise_to(&mut self, other: Self) {
        self.cpu_millis = self.cpu_millis.max(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.max(other.memory_bytes);
        self.ephemeral_storage_bytes = self
            .ephemeral_storage_bytes
            .max(other.ephemeral_storage_bytes);
        for (name, count) in other.extended {
            let entry = self.extended.entry(name).or_default();
            *entry = (*entry).max(count);
        }
    }
}

/// Reads a quantity as a count of its resource's unit.
type Count = fn(&Quantity) -> Result<u64, QuantityError>;

/// The refusal of a request too large to count.
fn too_much(resource: &str, requested: &str) -> Rejection {
    Rejection {
        reason: format!("OutOf{resource}"),
        message: format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, which is more than can be counted"
        ),
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

/// Decides whether `pod` fits beside the `admitted` pods; if it does, what it takes.
pub fn admit(
    pod: &Pod,
    admitted: &[Requests],
    capacity: Capacity,
    extended: &ExtendedCapacity,
) -> Result<Requests, Rejection> {
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
    let wanted = Requests::of(pod)?;
    if let Some(port) = wanted
        .ports
        .iter()
        .find(|port| admitted.iter().any(|r| r.ports.contains(port)))
    {
        return Err(Rejection {
            reason: "NodePorts".into(),
            message: format!(
                "Node didn't have free ports for the requested pod ports: {port}/TCP is served by another pod on this node"
            ),
        });
    }
    // Each admitted pod fitted the capacity, so these sums cannot overflow; saturating keeps
    // that true even if the capacity shrank since.
    let used = |of: fn(&Requests) -> u64| admitted.iter().map(of).fold(0, u64::saturating_add);
    let (used_cpu, used_memory) = (used(|r| r.cpu_millis), used(|r| r.memory_bytes));
    let used_storage = used(|r| r.ephemeral_storage_bytes);
    let checks = [
        ("cpu", "m", wanted.cpu_millis, used_cpu, capacity.cpu_millis),
        (
            "memory",
            "",
            wanted.memory_bytes,
            used_memory,
            capacity.memory_bytes,
        ),
        (
            "ephemeral-storage",
            "",
            wanted.ephemeral_storage_bytes,
            used_storage,
            capacity.ephemeral_storage_bytes,
        ),
    ];
    let devices = wanted.extended.iter().map(|(name, requested)| {
        let used = admitted
            .iter()
            .filter_map(|r| r.extended.get(name))
            .fold(0u64, |sum, n| sum.saturating_add(*n));
        // A resource the node does not advertise has a capacity of nothing.
        let capacity = extended.get(name).copied().unwrap_or(0);
        (name.as_str(), "", *requested, used, capacity)
    });
    for (resource, unit, requested, used, capacity) in checks.into_iter().chain(devices) {
        if used
            .checked_add(requested)
            .is_none_or(|total| total > capacity)
        {
            return Err(Rejection {
                reason: format!("OutOf{resource}"),
                message: format!(
                    "Node didn't have enough resource: {resource}, requested: {requested}{unit}, used: {used}{unit}, capacity: {capacity}{unit}"
                ),
            });
        }
    }
    Ok(wanted)
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
        ephemeral_storage_bytes: 1 << 40,
    };

    const NONE: ExtendedCapacity = ExtendedCapacity::new();

    fn pod_serving(ports: &[(&str, i32, Option<&str>)]) -> Pod {
        use k8s_openapi::api::core::v1::ContainerPort;
        let containers = ports
            .iter()
            .map(|(name, port, protocol)| Container {
                name: name.to_string(),
                ports: Some(vec![ContainerPort {
                    container_port: *port,
                    protocol: protocol.map(str::to_string),
                    ..Default::default()
                }]),
                ..Default::default()
            })
            .collect();
        Pod {
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_tcp_port_is_one_pods_on_the_node() {
        let first = admit(&pod_serving(&[("web", 8080, None)]), &[], ROOMY, &NONE).unwrap();
        assert_eq!(first.ports, BTreeSet::from([8080]));
        let err = admit(
            &pod_serving(&[("web", 8080, Some("TCP"))]),
            std::slice::from_ref(&first),
            ROOMY,
            &NONE,
        )
        .unwrap_err();
        assert_eq!(err.reason, "NodePorts");
        assert!(
            err.message.contains("8080/TCP is served by another pod"),
            "{}",
            err.message
        );
        // Another port, or the same number over UDP (not served), is free.
        assert!(
            admit(
                &pod_serving(&[("web", 8081, None)]),
                std::slice::from_ref(&first),
                ROOMY,
                &NONE
            )
            .is_ok()
        );
        let udp = admit(
            &pod_serving(&[("dns", 8080, Some("UDP"))]),
            &[first],
            ROOMY,
            &NONE,
        )
        .unwrap();
        assert!(udp.ports.is_empty());
    }

    #[test]
    fn a_pod_cannot_declare_a_port_twice_or_a_number_that_is_no_port() {
        let twice = admit(
            &pod_serving(&[("a", 80, None), ("b", 80, None)]),
            &[],
            ROOMY,
            &NONE,
        );
        assert_eq!(twice.unwrap_err().reason, "NodePorts");
        for bad in [0, 70_000, -1] {
            let err = admit(&pod_serving(&[("a", bad, None)]), &[], ROOMY, &NONE).unwrap_err();
            assert_eq!(err.reason, "InvalidContainerPort", "{bad}");
            assert!(err.message.contains(&bad.to_string()), "{}", err.message);
        }
        let container = &pod_serving(&[("a", 70_000, None)]).spec.unwrap().containers[0];
        assert!(tcp_ports(container).is_empty());
    }

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
    fn absurd_requests_are_refused_not_wrapped() {
        // Each container's request fits a u64; their sum does not.
        let mut pod = pod_requesting("0", "18446744073709551615");
        let spec = pod.spec.as_mut().unwrap();
        spec.containers.push(spec.containers[0].clone());
        let err = admit(&pod, &[], ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "OutOfmemory");
        assert!(
            err.message.contains("more than can be counted"),
            "{}",
            err.message
        );

        let err = admit(&pod_requesting("1e30", "0"), &[], ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "OutOfcpu");
        assert!(err.message.contains("1e30"), "{}", err.message);

        // A manifest on the node's disk has had no API server validate it.
        let err = admit(&pod_requesting("lots", "0"), &[], ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "InvalidResourceQuantity");
        assert!(
            err.message
                .contains(r#"requests.cpu "lots" is not a quantity"#),
            "{}",
            err.message
        );
    }

    #[test]
    fn limits_are_checked_and_stand_for_requests_left_out_as_the_api_server_defaults() {
        let limited = |limits: &[(&str, &str)], requests: &[(&str, &str)]| {
            let quantities = |set: &[(&str, &str)]| {
                let map: BTreeMap<String, Quantity> = set
                    .iter()
                    .map(|(name, q)| (name.to_string(), Quantity(q.to_string())))
                    .collect();
                Some(map)
            };
            let mut pod = pod_requesting("0", "0");
            pod.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
                limits: quantities(limits),
                requests: quantities(requests),
                ..Default::default()
            });
            admit(&pod, &[], ROOMY, &NONE)
        };
        // A static pod's manifest has had no API server check its limits.
        let err = limited(&[("memory", "lots")], &[]).unwrap_err();
        assert_eq!(err.reason, "InvalidResourceQuantity");
        assert!(
            err.message
                .contains(r#"limits.memory "lots" is not a quantity"#),
            "{}",
            err.message
        );
        let err = limited(&[("cpu", "1")], &[("cpu", "2")]).unwrap_err();
        assert_eq!(err.reason, "InvalidResourceRequirements");
        assert!(
            err.message
                .contains(r#"requests.cpu "2" must be less than or equal to limits.cpu "1""#),
            "{}",
            err.message
        );
        // A limit alone is the request: it is counted against what the node has.
        let counted = limited(&[("cpu", "500m"), ("ephemeral-storage", "1Gi")], &[]).unwrap();
        assert_eq!(counted.cpu_millis, 500);
        assert_eq!(counted.ephemeral_storage_bytes, 1 << 30);
        assert_eq!(
            limited(&[("memory", "2Gi")], &[]).unwrap_err().reason,
            "OutOfmemory"
        );
        // A request under its limit counts as itself; a limit too large to count is none,
        // unless it stands for the request.
        let under = limited(&[("memory", "512Mi")], &[("memory", "1Mi")]).unwrap();
        assert_eq!(under.memory_bytes, 1 << 20);
        let unbounded = limited(&[("memory", "1e30")], &[("memory", "1Mi")]).unwrap();
        assert_eq!(unbounded.memory_bytes, 1 << 20);
        assert_eq!(
            limited(&[("memory", "1e30")], &[]).unwrap_err().reason,
            "OutOfmemory"
        );
        // Nor may an amount be negative, limit or request.
        for (limits, requests, field) in [
            (
                &[("memory", "-1Gi")][..],
                &[("memory", "1Mi")][..],
                "limits.memory",
            ),
            (&[][..], &[("cpu", "-1")][..], "requests.cpu"),
        ] {
            let err = limited(limits, requests).unwrap_err();
            assert_eq!(err.reason, "InvalidResourceQuantity", "{field}");
            assert!(
                err.message.contains(field)
                    && err.message.contains("must be greater than or equal to 0"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn ephemeral_storage_requests_are_counted_against_the_nodes_disk() {
        let wanting = |storage: &str| {
            let mut pod = pod_requesting("0", "0");
            let resources = pod.spec.as_mut().unwrap().containers[0]
                .resources
                .as_mut()
                .unwrap();
            resources
                .requests
                .get_or_insert_default()
                .insert("ephemeral-storage".into(), Quantity(storage.into()));
            pod
        };
        let half = admit(&wanting("512Gi"), &[], ROOMY, &NONE).unwrap();
        assert_eq!(half.ephemeral_storage_bytes, 1 << 39);
        let err = admit(&wanting("513Gi"), &[half], ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "OutOfephemeral-storage");
        assert!(
            err.message.contains("capacity: 1099511627776"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_request_that_fills_the_node_exactly_fits() {
        let full = admit(&pod_requesting("2", "1Gi"), &[], ROOMY, &NONE).unwrap();
        assert_eq!((full.cpu_millis, full.memory_bytes), (2000, 1 << 30));
        let err = admit(&pod_requesting("1m", "0"), &[full], ROOMY, &NONE).unwrap_err();
        assert_eq!(err.reason, "OutOfcpu");
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
        let holding_two = Requests::of(&wanting("2")).unwrap();
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
                .unwrap()
                .extended
                .is_empty(),
            "cpu and memory are not extended resources"
        );
    }
}
