//! Writes whose reply the node does not read. The API server answers a create or a status
//! patch with the whole object, and kube's `Api` methods parse it into the typed object:
//! for an event the node never looks at again, or a status patch (a pod's, a mirror pod's,
//! the node's) whose result the node already knows, that parse was a third of each such request's CPU in the node
//! (a `perf` profile of `bench-pods`' default series: JSON deserialisation fell from 6.6%
//! of the node's samples to 1.5% without it). These send the same request, check the
//! answer's status as kube does (an error is still a [`kube::Error::Api`] with the API's
//! `Status`), and drop the body unparsed (kube still reads it whole, as text).

use kube::api::{Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Api, Resource};
use serde::Serialize;

/// [`Api::create`], without parsing the created object.
pub(crate) async fn create<K: Resource + Clone + Serialize>(
    api: &Api<K>,
    params: &PostParams,
    object: &K,
) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let mut request = Request::new(api.resource_url())
        .create(params, body)
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("create");
    let client = api.clone().into_client();
    client.request_text(request).await.map(drop)
}

/// [`Api::patch_status`], without parsing the patched object.
pub(crate) async fn patch_status<K: Resource + Clone, P: Serialize>(
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error> {
    let mut request = Request::new(api.resource_url())
        .patch_subresource("status", name, params, patch)
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("patch_status");
    let client = api.clone().into_client();
    client.request_text(request).await.map(drop)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::client::Body;

    use super::*;

    type Handle = tower_test::mock::Handle<http::Request<Body>, http::Response<Body>>;

    fn mock_api() -> (Api<Pod>, Handle) {
        let (service, handle) = tower_test::mock::pair();
        (
            Api::namespaced(kube::Client::new(service, "default"), "default"),
            handle,
        )
    }

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Patches pod `p`'s status with the pod itself.
    async fn patch_p(api: &Api<Pod>) -> Result<(), kube::Error> {
        patch_status(
            api,
            "p",
            &PatchParams::default(),
            &Patch::Strategic(&pod("p")),
        )
        .await
    }

    #[tokio::test]
    async fn the_request_is_kubes_and_the_body_is_not_parsed() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let (request, respond) = handle.next_request().await.expect("the create");
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/default/pods");
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: Pod = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent.metadata.name.as_deref(), Some("p"));
            // Not a Pod: `Api::create` would fail to parse it.
            respond.send_response(http::Response::new(Body::from(b"not json".to_vec())));

            let (request, respond) = handle.next_request().await.expect("the patch");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/default/pods/p/status"
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/strategic-merge-patch+json"
            );
            respond.send_response(http::Response::new(Body::from(b"not json".to_vec())));
        });
        create(&api, &PostParams::default(), &pod("p"))
            .await
            .unwrap();
        patch_p(&api).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_error_answer_is_the_apis_status() {
        let (api, mut handle) = mock_api();
        tokio::spawn(async move {
            let (_, respond) = handle.next_request().await.expect("the patch");
            let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"p\" not found","reason":"NotFound","code":404}"#;
            respond.send_response(
                http::Response::builder()
                    .status(404)
                    .body(Body::from(status.to_vec()))
                    .unwrap(),
            );
        });
        let err = patch_p(&api).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(status) if status.is_not_found()));
    }
}
