//! Computing the node's status and sending it when it changed, or at least every
//! [`super::STATUS_REPORT_INTERVAL`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tracing::{debug, info};

use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::events::EventRecorder;
use crate::host::{self, DiskUsage, HostFacts};
use crate::node::conditions::{self, Observations};
use crate::node::events;
use crate::node::registration::FIELD_MANAGER;
use crate::node::{STATUS_REPORT_INTERVAL, object};
use crate::provider::Provider;
use crate::unread_reply;

/// Owns the node's status: the only writer of `nodes/status`.
pub struct StatusReporter<P> {
    api: Api<Node>,
    config: NodeConfig,
    host: HostFacts,
    provider: Arc<P>,
    data_dir: Arc<DataDir>,
    conditions: Vec<NodeCondition>,
    last_sent: Option<(NodeStatus, Instant)>,
    /// Where a condition's change is recorded as the kubelet's node event.
    events: EventRecorder,
}

impl<P: Provider> StatusReporter<P> {
    /// A reporter for the node in `config`.
    pub fn new(
        client: kube::Client,
        config: NodeConfig,
        host: HostFacts,
        provider: Arc<P>,
        data_dir: Arc<DataDir>,
        events: EventRecorder,
    ) -> Self {
        Self {
            events,
            api: Api::all(client),
            config,
            host,
            provider,
            data_dir,
            conditions: Vec::new(),
            last_sent: None,
        }
    }

    /// The status as it is right now.
    pub async fn current_status(&mut self) -> NodeStatus {
        // File reads, a statvfs and a probe write: off the runtime's threads.
        let data_dir = self.data_dir.clone();
        let (memory_available_bytes, disk, data_dir_error) =
            tokio::task::spawn_blocking(move || {
                (
                    host::memory_available_bytes(),
                    DiskUsage::of(data_dir.path()).ok(),
                    data_dir.check_writable().err().map(|e| e.to_string()),
                )
            })
            .await
            .unwrap_or_else(|err| (None, None, Some(format!("the host check failed: {err}"))));
        let observed = Observations {
            memory_available_bytes,
            data_dir_disk: disk,
            data_dir_error,
            provider_error: self.provider.health().err(),
        };
        let now = Time(jiff::Timestamp::now());
        let conditions =
            conditions::compute(&observed, &self.config.pressure, &self.conditions, &now);
        for (kind, reason, message) in
            events::condition_events(&self.config.node_name, &self.conditions, &conditions)
        {
            self.events.record_node(kind, reason, &message);
        }
        self.conditions = conditions;
        object::status(
            &self.config,
            &self.host,
            disk.map_or(0, |d| d.total_bytes),
            &self.provider.node_contribution(),
            self.conditions.clone(),
        )
    }

    /// Makes the next [`report`](Self::report) send the status whatever was sent before: the
    /// API may hold another status now (the node lifecycle controller's `Unknown`).
    pub fn forget_last_sent(&mut self) {
        self.last_sent = None;
    }

    /// Sends the current status if it differs from the last one sent or the last one is
    /// older than the report interval. Returns whether a patch went out.
    pub async fn report(&mut self) -> Result<bool, kube::Error> {
        let status = self.current_status().await;
        let comparable = without_heartbeats(&status);
        if !needs_sending(
            self.last_sent.as_ref(),
            &comparable,
            Instant::now(),
            STATUS_REPORT_INTERVAL,
        ) {
            debug!("node status unchanged; not sent");
            return Ok(false);
        }
        let patch = Node {
            status: Some(status),
            ..Default::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        unread_reply::patch_status(
            &self.api,
            &self.config.node_name,
            &params,
            &Patch::Strategic(&patch),
        )
        .await?;
        if self
            .last_sent
            .as_ref()
            .is_none_or(|(last, _)| *last != comparable)
        {
            info!(node = %self.config.node_name, ready = %ready_summary(&comparable), "node status sent");
        }
        self.last_sent = Some((comparable, Instant::now()));
        Ok(true)
    }
}

fn needs_sending(
    last: Option<&(NodeStatus, Instant)>,
    status: &NodeStatus,
    now: Instant,
    report_interval: Duration,
) -> bool {
    match last {
        None => true,
        Some((sent, at)) => sent != status || now.duration_since(*at) >= report_interval,
    }
}

/// The status with heartbeat times removed, so two statuses compare equal when nothing but
/// the clock moved.
fn without_heartbeats(status: &NodeStatus) -> NodeStatus {
    let mut status = status.clone();
    for c in status.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
    }
    status
}

fn ready_summary(status: &NodeStatus) -> String {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{} ({})", c.status, c.reason.as_deref().unwrap_or_default()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_ready(ready: &str, heartbeat: i64) -> NodeStatus {
        NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                last_heartbeat_time: Some(Time(jiff::Timestamp::from_second(heartbeat).unwrap())),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_status_is_not_resent_until_the_report_interval() {
        let start = Instant::now();
        let sent = (without_heartbeats(&status_with_ready("True", 1)), start);
        let same_later = without_heartbeats(&status_with_ready("True", 99));
        let interval = Duration::from_secs(300);
        assert!(!needs_sending(
            Some(&sent),
            &same_later,
            start + Duration::from_secs(10),
            interval
        ));
        assert!(needs_sending(
            Some(&sent),
            &same_later,
            start + interval,
            interval
        ));
    }

    #[test]
    fn changed_status_is_sent_at_once() {
        let start = Instant::now();
        let sent = (without_heartbeats(&status_with_ready("True", 1)), start);
        let changed = without_heartbeats(&status_with_ready("False", 1));
        assert!(needs_sending(
            Some(&sent),
            &changed,
            start,
            Duration::from_secs(300)
        ));
        assert!(needs_sending(
            None,
            &changed,
            start,
            Duration::from_secs(300)
        ));
    }
}
