//! What the operator told the agent about this node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::node::pressure::PressureThresholds;
use crate::pod::quantity::{self, QuantityError};
use crate::{Error, Result};

/// The node's identity and limits, as given on the command line.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Node object's name.
    pub node_name: String,
    /// The address reported as InternalIP and used for the serving certificate.
    pub node_ip: IpAddr,
    /// The host name reported as the Hostname address and `kubernetes.io/hostname`.
    pub hostname: String,
    /// The port of the kubelet HTTPS API, advertised in `daemonEndpoints`.
    pub port: u16,
    /// Where the agent keeps its state.
    pub data_dir: PathBuf,
    /// The most pods this node accepts; reported as the `pods` capacity.
    pub max_pods: u32,
    /// How often running pods' ConfigMap, Secret and token volumes are brought up to date.
    pub sync_frequency: std::time::Duration,
    /// When the node reports MemoryPressure and DiskPressure.
    pub pressure: PressureThresholds,
    /// What the host keeps back from the node's pods (`--system-reserved`).
    pub system_reserved: Reserved,
    /// Labels added to the node besides the ones wasmlet always sets.
    pub extra_labels: BTreeMap<String, String>,
    /// Secret and projected volumes each get a tmpfs, as the kubelet's do. Only for an
    /// agent that runs as root in a mount namespace of its own, which the binary sets up.
    pub secrets_in_memory: bool,
    /// How fast the node writes events (`--event-qps`, `--event-burst`).
    pub event_limit: certs::rate_limit::ApiRateLimit,
}

/// What the host keeps for itself and its daemons (`--system-reserved cpu=500m,memory=1Gi`),
/// taken off the node's allocatable as the kubelet takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    /// CPU, in millicores.
    pub cpu_millis: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Ephemeral storage on the data dir's filesystem, in bytes.
    pub ephemeral_storage_bytes: u64,
}

impl Reserved {
    /// Parses `resource=quantity,...` for `cpu`, `memory`, `ephemeral-storage` and `pid`, as
    /// the kubelet's flag takes it (a pid reservation keeps nothing back: Wasm pods have no
    /// processes).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut reserved = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let invalid = |reason: String| Error::InvalidReservation {
                item: item.to_string(),
                reason,
            };
            let (resource, value) = item
                .split_once('=')
                .ok_or_else(|| invalid("expected resource=quantity".into()))?;
            let quantity = Quantity(value.trim().to_string());
            let amount = |parsed: std::result::Result<u64, QuantityError>| {
                parsed.map_err(|e| invalid(format!("{value:?} {e}")))
            };
            match resource.trim() {
                "cpu" => reserved.cpu_millis = amount(quantity::cpu_millis(&quantity))?,
                "memory" => reserved.memory_bytes = amount(quantity::bytes(&quantity))?,
                "ephemeral-storage" => {
                    reserved.ephemeral_storage_bytes = amount(quantity::bytes(&quantity))?;
                }
                "pid" => {
                    amount(quantity::bytes(&quantity))?;
                }
                other => {
                    return Err(invalid(format!(
                        "{other:?} cannot be reserved; only cpu, memory, ephemeral-storage and pid"
                    )));
                }
            }
        }
        Ok(reserved)
    }
}

/// Parses `k=v,k2=v2` as `--node-labels` takes it, checking each key and value the way the
/// API server will, so a typo fails at start-up rather than in a retry loop.
pub fn parse_labels(spec: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let invalid = |reason: &str| Error::InvalidLabel {
            label: pair.to_string(),
            reason: reason.to_string(),
        };
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid("expected key=value"))?;
        validate_label_key(key).map_err(|r| invalid(&r))?;
        validate_label_value(value).map_err(|r| invalid(&r))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

fn validate_label_key(key: &str) -> std::result::Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !crate::names::is_dns_subdomain(prefix) {
                return Err(format!("prefix {prefix:?} is not a DNS subdomain"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("the name part is empty".into());
    }
    validate_label_value(name)
}

fn validate_label_value(value: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if value.len() > 63 {
        return Err(format!("{value:?} is longer than 63 characters"));
    }
    if !value.chars().all(ok_char) {
        return Err(format!(
            "{value:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    let edges_ok = value
        .chars()
        .next()
        .zip(value.chars().last())
        .is_none_or(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if !edges_ok {
        return Err(format!(
            "{value:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_prefixes_and_spaces() {
        let labels = parse_labels("site=lab, example.com/tier=edge,empty=").unwrap();
        assert_eq!(labels["site"], "lab");
        assert_eq!(labels["example.com/tier"], "edge");
        assert_eq!(labels["empty"], "");
    }

    #[test]
    fn malformed_labels_are_rejected_with_the_offending_pair() {
        for bad in [
            "novalue",
            "a b=c",
            "-x=1",
            "x=-1",
            "Bad_Prefix/x=1",
            "/x=1",
            "x=a/b",
        ] {
            let err = parse_labels(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
