//! Pod events (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, …),
//! written as core/v1 Events: the group the `system:node` role may create, and the one
//! `kubectl describe` shows.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use tracing::{debug, warn};

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
    client: kube::Client,
    node_name: String,
}

impl EventRecorder {
    /// A recorder reporting as wasmlet on `node_name`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self {
            client,
            node_name: node_name.to_string(),
        }
    }

    /// Records an event about `pod`, or about one of its containers when `container` is set.
    /// Failures are logged, never returned: an event is worth less than the work it reports.
    pub async fn record(
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
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => debug!(pod = %pod_name, reason, message, "event"),
            Err(err) => warn!(pod = %pod_name, reason, %err, "could not record event"),
        }
    }
}
