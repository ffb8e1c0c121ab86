//! The node's Lease in `kube-node-lease`: the cheap heartbeat the node lifecycle controller
//! watches.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;

use crate::node::LEASE_DURATION_SECONDS;

/// The namespace that holds node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Keeps one node's Lease renewed. It remembers the last Lease it wrote so that a renewal is
/// a single PUT; after any failure it reads the Lease afresh.
pub struct LeaseKeeper {
    api: Api<Lease>,
    node_name: String,
    owner: Option<OwnerReference>,
    last: Option<Lease>,
}

impl LeaseKeeper {
    /// A keeper for `node`'s Lease; the Lease is owned by the Node, so it goes when the Node does.
    pub fn new(client: kube::Client, node: &Node) -> Self {
        let owner = node.metadata.uid.clone().map(|uid| OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.metadata.name.clone().unwrap_or_default(),
            uid,
            ..Default::default()
        });
        Self {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            node_name: node.metadata.name.clone().unwrap_or_default(),
            owner,
            last: None,
        }
    }

    /// Sets the Lease's renew time to now, creating the Lease if it does not exist.
    pub async fn renew(&mut self) -> Result<(), kube::Error> {
        let result = self.try_renew().await;
        if result.is_err() {
            self.last = None;
        }
        result
    }

    async fn try_renew(&mut self) -> Result<(), kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let current = match self.last.take() {
            Some(lease) => Some(lease),
            None => self.api.get_opt(&self.node_name).await?,
        };
        let written = match current {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                self.fill(spec, now);
                if lease.metadata.owner_references.is_none() {
                    lease.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
                }
                self.api
                    .replace(&self.node_name, &PostParams::default(), &lease)
                    .await?
            }
            None => {
                let mut spec = LeaseSpec::default();
                self.fill(&mut spec, now);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.node_name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: self.owner.clone().map(|o| vec![o]),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await?
            }
        };
        self.last = Some(written);
        Ok(())
    }

    fn fill(&self, spec: &mut LeaseSpec, now: MicroTime) {
        spec.holder_identity = Some(self.node_name.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
        spec.renew_time = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;

    fn node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("edge-1".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn respond(body: &serde_json::Value, code: u16) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    #[tokio::test]
    async fn lease_is_created_then_renewed_with_a_single_put() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut keeper = LeaseKeeper::new(kube::Client::new(service, "default"), &node());
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1"
            );
            send.send_response(respond(
                &serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
                404,
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::POST);
            let body: serde_json::Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            assert_eq!(body["spec"]["holderIdentity"], "edge-1");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 40);
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            send.send_response(respond(&body, 201));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                request.method(),
                Method::PUT,
                "renewal reuses the written lease"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            send.send_response(respond(&body, 200));
        });
        keeper.renew().await.unwrap();
        keeper.renew().await.unwrap();
        server.await.unwrap();
    }
}
