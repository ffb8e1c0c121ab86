//! The kubelet's node events, which `kubectl describe node` lists: `Starting` when the agent
//! starts, `Rebooted` when the host booted since the agent last ran, and one per condition
//! whenever its status changes (each one at start), with the kubelet's reasons and messages.

use std::path::Path;

use k8s_openapi::api::core::v1::NodeCondition;

use crate::events::EventType;

/// The file in the data dir that holds the boot ID the agent last ran under.
const BOOT_ID_FILE: &str = "boot_id";

/// The events for conditions whose status differs from `previous` (all of them at start), as
/// reason and message.
pub fn condition_events(
    node_name: &str,
    previous: &[NodeCondition],
    current: &[NodeCondition],
) -> Vec<(EventType, &'static str, String)> {
    current
        .iter()
        .filter(|c| {
            previous
                .iter()
                .find(|p| p.type_ == c.type_)
                .is_none_or(|p| p.status != c.status)
        })
        .filter_map(|c| reason(&c.type_, &c.status))
        .map(|(kind, reason)| {
            (
                kind,
                reason,
                format!("Node {node_name} status is now: {reason}"),
            )
        })
        .collect()
}

/// The kubelet's reason for a condition's status.
fn reason(type_: &str, status: &str) -> Option<(EventType, &'static str)> {
    let normal = |reason| Some((EventType::Normal, reason));
    match (type_, status) {
        ("MemoryPressure", "False") => normal("NodeHasSufficientMemory"),
        ("MemoryPressure", "True") => normal("NodeHasInsufficientMemory"),
        ("DiskPressure", "False") => normal("NodeHasNoDiskPressure"),
        ("DiskPressure", "True") => normal("NodeHasDiskPressure"),
        ("PIDPressure", "False") => normal("NodeHasSufficientPID"),
        ("PIDPressure", "True") => normal("NodeHasInsufficientPID"),
        ("Ready", "True") => normal("NodeReady"),
        ("Ready", _) => normal("NodeNotReady"),
        _ => None,
    }
}

/// The `Rebooted` event's message if the host booted since the agent last ran under
/// `data_dir`, and records `boot_id` for the next run. Nothing on a first run, or when the
/// boot ID cannot be read.
pub async fn rebooted(data_dir: &Path, node_name: &str, boot_id: &str) -> Option<String> {
    if boot_id.is_empty() {
        return None;
    }
    let file = data_dir.join(BOOT_ID_FILE);
    let last = tokio::fs::read_to_string(&file).await.ok();
    if last.as_deref().map(str::trim) != Some(boot_id) {
        let _ = tokio::fs::write(&file, boot_id).await;
    }
    let last = last?;
    (last.trim() != boot_id)
        .then(|| format!("Node {node_name} has been rebooted, boot id: {boot_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_condition_is_reported_at_start_and_then_only_its_changes() {
        let start = [
            condition("MemoryPressure", "False"),
            condition("DiskPressure", "False"),
            condition("PIDPressure", "False"),
            condition("Ready", "True"),
        ];
        let reasons = |events: Vec<(EventType, &'static str, String)>| {
            events.into_iter().map(|e| e.1).collect::<Vec<_>>()
        };
        assert_eq!(
            reasons(condition_events("edge-1", &[], &start)),
            [
                "NodeHasSufficientMemory",
                "NodeHasNoDiskPressure",
                "NodeHasSufficientPID",
                "NodeReady"
            ]
        );
        assert!(condition_events("edge-1", &start, &start).is_empty());
        let mut later = start.clone();
        later[1] = condition("DiskPressure", "True");
        later[3] = condition("Ready", "False");
        let events = condition_events("edge-1", &start, &later);
        assert_eq!(
            reasons(events.clone()),
            ["NodeHasDiskPressure", "NodeNotReady"]
        );
        assert_eq!(events[1].2, "Node edge-1 status is now: NodeNotReady");
    }

    #[tokio::test]
    async fn a_new_boot_id_is_a_reboot_and_the_first_run_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(rebooted(dir.path(), "n", "boot-1").await, None);
        assert_eq!(rebooted(dir.path(), "n", "boot-1").await, None);
        assert_eq!(
            rebooted(dir.path(), "n", "boot-2").await.as_deref(),
            Some("Node n has been rebooted, boot id: boot-2")
        );
        assert_eq!(rebooted(dir.path(), "n", "boot-2").await, None);
    }
}
