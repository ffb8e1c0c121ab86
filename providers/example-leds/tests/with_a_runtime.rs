//! The LED strip beside a runtime, as the agent drives it: the node sees the LEDs, a
//! container's start gets them and learns which, and a pod's end frees them.

use std::sync::Arc;

use example_leds_provider::{LedStrip, RESOURCE};
use kubelet::testing::{NoImage, RecordingRuntime, container_start};
use kubelet::{ContainerStart, Provider, WithDevices};

async fn container(dir: &std::path::Path, uid: &str, leds: u64) -> ContainerStart {
    container_start(dir, uid, Vec::new(), [(RESOURCE.to_string(), leds)].into())
        .await
        .unwrap()
}

#[tokio::test]
async fn pods_get_free_leds_learn_which_and_give_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let runtime = RecordingRuntime::default();
    let provider = WithDevices::new(runtime.clone(), Arc::new(LedStrip::new(3)));
    assert_eq!(
        provider.node_contribution().extended_capacity(),
        [(RESOURCE.to_string(), 3)].into()
    );

    provider
        .start(&NoImage, container(dir, "a", 2).await)
        .await
        .unwrap();
    provider
        .start(&NoImage, container(dir, "b", 1).await)
        .await
        .unwrap();
    let full = provider.start(&NoImage, container(dir, "c", 1).await).await;
    assert_eq!(full.unwrap_err().reason, "UnexpectedAdmissionError");

    provider.pod_ended(&container(dir, "a", 0).await.pod).await;
    provider
        .start(&NoImage, container(dir, "c", 2).await)
        .await
        .unwrap();

    let given: Vec<(String, String)> = runtime
        .started()
        .into_iter()
        .map(|started| (started.uid, format!("{:?}", started.env)))
        .collect();
    let leds = |uid: &str, list: &str| (uid.to_string(), format!("[(\"LEDS\", \"{list}\")]"));
    assert_eq!(given, [leds("a", "0,1"), leds("b", "2"), leds("c", "0,1")]);
}
