//! Devices beside a runtime: a [`DeviceProvider`] advertises host devices as extended
//! resources and grants them to containers; [`WithDevices`] puts one next to any
//! [`Provider`] that runs the containers, so a vendor's device plugin and the WASI runtime
//! compose without a wrapper written for the pair.
//!
//! The agent counts a pod's extended resources against what the node advertises at
//! admission, as the kubelet's device manager does; the device provider then picks and
//! holds the actual devices when a container starts and frees them when the pod ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::task::JoinHandle;

use crate::events::EventRecorder;
use crate::pod::admission::Rejection;
use crate::provider::{
    ContainerError, ContainerExit, ContainerStart, ImageRequest, NodeContribution, PodKey, Provider,
};

/// A source of host devices, granted to containers as extended resources.
///
/// Every method is called on the runtime's threads and must return at once: keep the
/// bookkeeping in memory and do slow device I/O in tasks of your own.
pub trait DeviceProvider: Send + Sync + 'static {
    /// The devices present and usable now, by extended resource name (for example
    /// `peripherals.wasmlet.dev/fan: 1`). Read at every admission and every node status
    /// update, so a device that appears or fails is reflected at once.
    fn extended_resources(&self) -> BTreeMap<String, Quantity>;

    /// Whether the devices can be granted right now; an `Err` makes the node not Ready.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The recorder for events about pods holding devices (`kubelet::events::EventRecorder::
    /// record_for`), given once when the agent starts.
    fn attach_events(&self, events: EventRecorder) {
        let _ = events;
    }

    /// Refuses a pod whose device requests cannot be met in a way the counts miss (for
    /// example a device class this host lacks). Called after the agent's own admission.
    fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let _ = pod;
        Ok(())
    }

    /// Grants `devices` (extended resource name to count) to a container about to start,
    /// picking which devices it gets. Granting again what the same pod holds succeeds:
    /// containers restart.
    fn allocate(
        &self,
        pod: &PodKey,
        container: &str,
        devices: &BTreeMap<String, u64>,
    ) -> Result<Allocation, ContainerError>;

    /// Frees everything granted to the pod's containers. Idempotent.
    fn release(&self, pod: &PodKey);
}

/// What a container was given, beyond the counts: as a device plugin's allocate response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Environment variables added to the container's (it wins over the pod spec's), e.g.
    /// which of several identical devices it got.
    pub env: Vec<(String, String)>,
}

/// A runtime provider with a device provider beside it: one [`Provider`] for the agent.
pub struct WithDevices<P, D> {
    runtime: P,
    devices: Arc<D>,
}

impl<P: Provider, D: DeviceProvider> WithDevices<P, D> {
    /// `runtime` runs the containers; `devices` advertises and grants devices to them.
    pub fn new(runtime: P, devices: Arc<D>) -> Self {
        Self { runtime, devices }
    }
}

impl<P: Provider, D: DeviceProvider> Provider for WithDevices<P, D> {
    type Image = P::Image;

    fn node_contribution(&self) -> NodeContribution {
        let mut contribution = self.runtime.node_contribution();
        contribution
            .extended_resources
            .extend(self.devices.extended_resources());
        contribution
    }

    fn health(&self) -> Result<(), String> {
        self.runtime.health().and_then(|()| self.devices.health())
    }

    fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        self.runtime
            .admit(pod)
            .and_then(|()| self.devices.admit(pod))
    }

    fn attach_events(&self, events: EventRecorder) {
        self.runtime.attach_events(events.clone());
        self.devices.attach_events(events);
    }

    async fn pull(&self, request: ImageRequest<'_>) -> Result<Self::Image, ContainerError> {
        self.runtime.pull(request).await
    }

    async fn start(
        &self,
        image: &Self::Image,
        mut start: ContainerStart,
    ) -> Result<JoinHandle<ContainerExit>, ContainerError> {
        if !start.devices.is_empty() {
            let allocation = self
                .devices
                .allocate(&start.pod, &start.container, &start.devices)?;
            for (name, value) in allocation.env {
                start.env.retain(|(existing, _)| *existing != name);
                start.env.push((name, value));
            }
        }
        self.runtime.start(image, start).await
    }

    async fn pod_ended(&self, pod: &PodKey) {
        self.devices.release(pod);
        self.runtime.pod_ended(pod).await;
    }

    async fn collect_garbage(&self, images: &std::collections::HashSet<String>) {
        self.runtime.collect_garbage(images).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::testing::{NoImage, RecordingRuntime};

    /// One exclusive device, `example.com/led`.
    #[derive(Default)]
    struct Led {
        holder: Mutex<Option<String>>,
    }

    impl DeviceProvider for Led {
        fn extended_resources(&self) -> BTreeMap<String, Quantity> {
            [("example.com/led".to_string(), Quantity("1".into()))].into()
        }

        fn allocate(
            &self,
            pod: &PodKey,
            _: &str,
            devices: &BTreeMap<String, u64>,
        ) -> Result<Allocation, ContainerError> {
            let mut holder = self.holder.lock().unwrap();
            match (&*holder, devices.get("example.com/led")) {
                (_, None) => Ok(Allocation::default()),
                (Some(uid), _) if *uid != pod.uid => Err(ContainerError {
                    reason: "UnexpectedAdmissionError".into(),
                    message: format!("the led is held by {uid}"),
                    fatal: false,
                }),
                _ => {
                    *holder = Some(pod.uid.clone());
                    Ok(Allocation {
                        env: vec![("LED".into(), "0".into())],
                    })
                }
            }
        }

        fn release(&self, pod: &PodKey) {
            let mut holder = self.holder.lock().unwrap();
            if holder.as_deref() == Some(pod.uid.as_str()) {
                *holder = None;
            }
        }
    }

    async fn start(dir: &std::path::Path, uid: &str, leds: u64) -> ContainerStart {
        let devices = [("example.com/led".to_string(), leds)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        let env = vec![("LED".into(), "from the spec".into())];
        crate::testing::container_start(dir, uid, env, devices)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn devices_join_the_node_and_are_granted_before_the_runtime_starts() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let runtime = RecordingRuntime::default();
        let composed = WithDevices::new(runtime.clone(), Arc::new(Led::default()));
        let contribution = composed.node_contribution();
        assert_eq!(contribution.runtime_version, "recording://1");
        assert_eq!(
            contribution.extended_capacity(),
            [("example.com/led".to_string(), 1)].into()
        );

        composed
            .start(&NoImage, start(dir, "a", 1).await)
            .await
            .unwrap();
        // Restarting a container of the pod that holds it is fine.
        composed
            .start(&NoImage, start(dir, "a", 1).await)
            .await
            .unwrap();
        let refused = composed
            .start(&NoImage, start(dir, "b", 1).await)
            .await
            .unwrap_err();
        assert_eq!(refused.message, "the led is held by a");
        // A container without devices starts regardless.
        composed
            .start(&NoImage, start(dir, "c", 0).await)
            .await
            .unwrap();
        let started = runtime.started();
        let uids: Vec<&str> = started.iter().map(|s| s.uid.as_str()).collect();
        assert_eq!(uids, ["a", "a", "c"]);
        // The allocation's env wins over the spec's; without devices the spec's stays.
        assert_eq!(started[0].env, [("LED".to_string(), "0".to_string())]);
        assert_eq!(
            started[2].env,
            [("LED".to_string(), "from the spec".to_string())]
        );

        composed.pod_ended(&start(dir, "a", 0).await.pod).await;
        composed
            .start(&NoImage, start(dir, "b", 1).await)
            .await
            .unwrap();
    }
}
