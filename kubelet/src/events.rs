//! Pod events (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, …),
//! written as core/v1 Events: the group the `system:node` role may create, and the one
//! `kubectl describe` shows.
//!
//! Recording never waits for the API server. As with the kubelet's event broadcaster, an
//! event is queued and a background task writes it, so a pod's start is not held up by four
//! round trips (Pulling, Pulled, Created, Started), and an unreachable API server costs
//! events, never progress. Each event carries the time it was recorded.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Events waiting to be written; past this, new ones are dropped (and logged), as the
/// kubelet's broadcaster drops them, rather than growing without bound during an outage.
const QUEUE: usize = 1000;
/// Events written at once: enough to keep up with a burst of starts, few enough not to
/// crowd the node's status and lease requests.
const IN_FLIGHT: usize = 8;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something a person should look at.
    Warning,
}

/// Writes events about pods on behalf of one node.
#[derive(Clone)]
pub struct EventRecorder {
    queue: mpsc::Sender<Event>,
    node_name: String,
}

impl EventRecorder {
    /// A recorder reporting as wasmlet on `node_name`. Spawns the task that writes the
    /// events; it ends when the last recorder is dropped.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, pending));
        Self {
            queue,
            node_name: node_name.to_string(),
        }
    }

    /// Records an event about `pod`, or about one of its containers when `container` is set.
    /// Returns at once; failures are logged, never returned: an event is worth less than
    /// the work it reports.
    pub fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{pod_name}.")),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name.clone()),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            source: Some(EventSource {
                component: Some("wasmlet".into()),
                host: Some(self.node_name.clone()),
            }),
            reporting_component: Some("wasmlet".into()),
            reporting_instance: Some(self.node_name.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.to_string()),
            count: Some(1),
            ..Default::default()
        };
        if let Err(err) = self.queue.try_send(event) {
            warn!(pod = %pod_name, reason, %err, "event dropped");
        }
    }
}

async fn write_events(client: kube::Client, mut pending: mpsc::Receiver<Event>) {
    futures::stream::poll_fn(move |cx| pending.poll_recv(cx))
        .for_each_concurrent(IN_FLIGHT, |event| {
            let client = client.clone();
            async move {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let pod = event.involved_object.name.clone().unwrap_or_default();
                let reason = event.reason.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client, &namespace);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => debug!(%pod, %reason, message = ?event.message, "event"),
                    Err(err) => warn!(%pod, %reason, %err, "could not record event"),
                }
            }
        })
        .await;
}
