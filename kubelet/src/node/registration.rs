//! Creating the Node, or bringing an existing one up to date.
//!
//! An existing Node is updated, never skipped: the agent may have restarted with new
//! labels. NodeRestriction forbids a node from changing its own taints, so taints are set on
//! create only; a Node that lost them is reported with the command that restores them.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tracing::{info, warn};

use crate::node::object;

/// The field manager wasmlet writes as.
pub const FIELD_MANAGER: &str = "wasmlet";

/// Creates `desired` or updates the existing Node of that name, returning the Node as the
/// API server has it.
pub async fn register(api: &Api<Node>, desired: &Node) -> Result<Node, kube::Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    let existing = match api.get_opt(name).await? {
        Some(node) => node,
        None => match api.create(&PostParams::default(), desired).await {
            Ok(node) => {
                info!(node = name, "registered node");
                return Ok(node);
            }
            // Another writer created it between our GET and POST; update that one.
            Err(kube::Error::Api(status)) if status.is_already_exists() => api.get(name).await?,
            Err(err) => return Err(err),
        },
    };
    warn_about_missing_taints(name, &existing);
    let wanted = desired.metadata.labels.clone().unwrap_or_default();
    let current = existing.metadata.labels.clone().unwrap_or_default();
    let changed: std::collections::BTreeMap<_, _> = wanted
        .into_iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .collect();
    if changed.is_empty() {
        info!(node = name, "node already registered and up to date");
        return Ok(existing);
    }
    info!(node = name, labels = ?changed, "updating labels of existing node");
    let patch = Node {
        metadata: kube::api::ObjectMeta {
            labels: Some(changed),
            ..Default::default()
        },
        ..Default::default()
    };
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Strategic(&patch),
    )
    .await
}

fn warn_about_missing_taints(name: &str, node: &Node) {
    let present = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .cloned()
        .unwrap_or_default();
    for taint in object::taints() {
        let found = present
            .iter()
            .any(|t| t.key == taint.key && t.value == taint.value && t.effect == taint.effect);
        if !found {
            warn!(
                node = name,
                "node lacks taint {k}={v}:{e}; a node may not change its own taints, so run: \
                 kubectl taint node {name} {k}={v}:{e}",
                k = taint.key,
                v = taint.value.as_deref().unwrap_or_default(),
                e = taint.effect,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::object::tests::config;
    use http::{Method, Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn client() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    fn json_response(code: u16, body: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    fn not_found() -> Response<Body> {
        json_response(
            404,
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "nodes \"edge-1\" not found"}),
        )
    }

    async fn body_json(request: Request<Body>) -> serde_json::Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn desired() -> Node {
        object::new_node(&config(), Default::default())
    }

    #[tokio::test]
    async fn missing_node_is_created_with_labels_and_taints() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            assert_eq!(request.uri().path(), "/api/v1/nodes/edge-1");
            send.send_response(not_found());
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::POST);
            let body = body_json(request).await;
            assert_eq!(
                body["metadata"]["labels"]["kubernetes.io/arch"],
                "wasm32-wasi"
            );
            assert_eq!(body["spec"]["taints"].as_array().unwrap().len(), 2);
            send.send_response(json_response(201, &body));
        });
        let node = register(&Api::all(client), &desired()).await.unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("edge-1"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn existing_node_gets_only_its_changed_labels_patched() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            let mut existing = desired();
            let labels = existing.metadata.labels.as_mut().unwrap();
            labels.insert("site".into(), "old".into());
            send.send_response(json_response(200, &existing));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(
                request.headers()["content-type"],
                "application/strategic-merge-patch+json"
            );
            let body = body_json(request).await;
            assert_eq!(
                body["metadata"]["labels"],
                serde_json::json!({"site": "lab"})
            );
            assert!(
                body.get("spec").is_none(),
                "taints are never patched: {body}"
            );
            send.send_response(json_response(200, &desired()));
        });
        register(&Api::all(client), &desired()).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn up_to_date_node_is_left_alone() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(json_response(200, &desired()));
        });
        register(&Api::all(client), &desired()).await.unwrap();
        server.await.unwrap();
    }
}
