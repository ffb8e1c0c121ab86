//! One certificate signing request, from creation to its answer.

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, ListSemantic};
use rcgen::KeyPair;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::csr::{Kind, NodeCertificate, public_key};
use crate::x509::CertInfo;
use crate::{Error, Result};

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Signed: the certificate chain (PEM, leaf first), checked to be for the request's key.
    Issued {
        /// The CSR's name.
        name: String,
        /// The chain.
        cert_pem: String,
    },
    /// Denied, failed, or answered with something unusable: ask again with a new key.
    Refused {
        /// The CSR's name.
        name: String,
        /// What happened, for the log.
        reason: String,
    },
    /// The CSR disappeared before it was answered (deleted, or garbage-collected after a
    /// day pending): submit it again with the same key.
    Vanished {
        /// The CSR's name.
        name: String,
    },
}

/// What a CSR's status says about our request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not answered yet (or approved and not signed yet).
    Pending,
    /// Signed with a certificate for our key.
    Issued(String),
    /// Denied, failed, or signed with something that is not a certificate for our key.
    Refused(String),
}

/// Reads a CSR's status. A certificate is accepted only when it is non-empty, parses, and
/// carries `our_public_key`; anything else is never handed on to be written.
pub(crate) fn judge(csr: &CertificateSigningRequest, our_public_key: &[u8]) -> Verdict {
    let Some(status) = &csr.status else {
        return Verdict::Pending;
    };
    for condition in status.conditions.iter().flatten() {
        let verb = match condition.type_.as_str() {
            "Denied" => "denied",
            "Failed" => "failed",
            _ => continue,
        };
        if condition.status == "False" {
            continue;
        }
        let mut reason = verb.to_string();
        if let Some(why) = condition.reason.as_deref().filter(|r| !r.is_empty()) {
            reason.push_str(&format!(" ({why})"));
        }
        if let Some(message) = condition.message.as_deref().filter(|m| !m.is_empty()) {
            reason.push_str(&format!(": {message}"));
        }
        return Verdict::Refused(reason);
    }
    let Some(certificate) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) else {
        return Verdict::Pending;
    };
    let Ok(pem) = std::str::from_utf8(&certificate.0) else {
        return Verdict::Refused("issued a certificate that is not PEM".into());
    };
    match CertInfo::from_pem(pem) {
        Err(e) => Verdict::Refused(format!("issued an unreadable certificate ({e})")),
        Ok(info) if info.public_key != our_public_key => {
            Verdict::Refused("issued a certificate for another key".into())
        }
        Ok(_) => Verdict::Issued(pem.to_string()),
    }
}

/// Submits the CSR for `key`, or finds the one already submitted for it (the name is a
/// digest of the key, so a second create answers 409), then watches that one name until it
/// is answered. `None` when cancelled. An error is an API failure worth retrying with the
/// same key.
pub(crate) async fn submit_and_wait(
    api: &Api<CertificateSigningRequest>,
    cert: &NodeCertificate,
    key: &KeyPair,
    cancel: &CancellationToken,
) -> Result<Option<Answer>> {
    let object = cert.object(key)?;
    let name = cert.csr_name(key);
    let ours = public_key(key);
    let api_err = |action, source| Error::Api {
        action,
        name: name.clone(),
        source,
    };
    let params = PostParams::default();
    let created = tokio::select! {
        _ = cancel.cancelled() => return Ok(None),
        created = api.create(&params, &object) => created,
    };
    match created {
        Ok(_) => info!(csr = %name, signer = cert.signer(), "submitted a {} request", cert.what()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let existing = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                existing = api.get(&name) => existing.map_err(|e| api_err("failed to read", e))?,
            };
            let same_key = crate::x509::request_public_key(&existing.spec.request.0)
                .is_ok_and(|key| key == ours);
            if !same_key || existing.spec.signer_name != cert.signer() {
                return Ok(Some(Answer::Refused {
                    name,
                    reason: "already taken by a request for another key or signer".into(),
                }));
            }
            info!(csr = %name, "found the {} request submitted earlier for this key; waiting on it", cert.what());
        }
        Err(e) => return Err(api_err("failed to create", e)),
    }
    match cert.kind() {
        Kind::Serving => info!(
            csr = %name,
            "waiting for the serving certificate to be approved; until then the kubelet API \
             presents its self-signed certificate. Approve it with: kubectl certificate approve {name}"
        ),
        Kind::Client => info!(
            csr = %name,
            "waiting for the client certificate to be approved (kube-controller-manager approves \
             it when the bootstrap RBAC is in place; otherwise: kubectl certificate approve {name})"
        ),
    }
    wait_for_answer(api, &name, &ours, cancel).await
}

/// Watches the one CSR `name` until it is answered. The list is a quorum read, so a CSR
/// created just before is always in it: one missing from it is gone.
async fn wait_for_answer(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    ours: &[u8],
    cancel: &CancellationToken,
) -> Result<Option<Answer>> {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .list_semantic(ListSemantic::MostRecent);
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut seen = false;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            event = events.next() => event,
        };
        let csr = match event {
            None => {
                return Ok(Some(Answer::Vanished {
                    name: name.to_string(),
                }));
            }
            Some(Err(e)) => {
                warn!(csr = %name, error = %e, "watching the certificate signing request failed; retrying");
                continue;
            }
            Some(Ok(Event::Init)) => {
                seen = false;
                continue;
            }
            Some(Ok(Event::InitDone)) if !seen => {
                return Ok(Some(Answer::Vanished {
                    name: name.to_string(),
                }));
            }
            Some(Ok(Event::InitDone)) => continue,
            Some(Ok(Event::Delete(_))) => {
                return Ok(Some(Answer::Vanished {
                    name: name.to_string(),
                }));
            }
            Some(Ok(Event::Apply(csr) | Event::InitApply(csr))) => csr,
        };
        seen = true;
        match judge(&csr, ours) {
            Verdict::Pending => {}
            Verdict::Issued(cert_pem) => {
                return Ok(Some(Answer::Issued {
                    name: name.to_string(),
                    cert_pem,
                }));
            }
            Verdict::Refused(reason) => {
                return Ok(Some(Answer::Refused {
                    name: name.to_string(),
                    reason,
                }));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};
    use http::{Method, Request, Response};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };
    use kube::client::Body;
    use kube::core::{ObjectList, ObjectMeta, Status};

    pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    pub(crate) fn mock_client() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    pub(crate) fn respond(code: u16, body: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    pub(crate) fn already_exists(name: &str) -> Response<Body> {
        let status = Status::failure(
            &format!("certificatesigningrequests \"{name}\" already exists"),
            "AlreadyExists",
        )
        .with_code(409);
        respond(409, &status)
    }

    pub(crate) fn list_of(csr: CertificateSigningRequest) -> Response<Body> {
        let list = ObjectList {
            types: kube::core::TypeMeta {
                api_version: "certificates.k8s.io/v1".into(),
                kind: "CertificateSigningRequestList".into(),
            },
            metadata: kube::core::ListMeta {
                resource_version: Some("7".into()),
                ..Default::default()
            },
            items: vec![csr],
        };
        respond(200, &list)
    }

    pub(crate) async fn body_csr(request: Request<Body>) -> CertificateSigningRequest {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// What the signer would put in the CSR's status: a certificate for the requested key.
    pub(crate) fn sign(ca: &Authority, csr: &CertificateSigningRequest) -> String {
        let pem = std::str::from_utf8(&csr.spec.request.0).unwrap();
        let params = rcgen::CertificateSigningRequestParams::from_pem(pem).unwrap();
        ca.sign_request(&params).unwrap()
    }

    pub(crate) fn with_status(
        mut csr: CertificateSigningRequest,
        certificate: Option<String>,
        condition: Option<(&str, &str)>,
    ) -> CertificateSigningRequest {
        csr.metadata.resource_version = Some("7".into());
        csr.status = Some(CertificateSigningRequestStatus {
            certificate: certificate.map(|c| ByteString(c.into_bytes())),
            conditions: condition.map(|(type_, reason)| {
                vec![CertificateSigningRequestCondition {
                    type_: type_.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} by the test")),
                    ..Default::default()
                }]
            }),
        });
        csr
    }

    /// Answers the next request, a create, by echoing the CSR, then the one after it (the
    /// watcher's list) with the CSR as `answer` makes it. Returns the created CSR.
    pub(crate) async fn accept_create_then_list(
        handle: &mut Handle,
        answer: impl FnOnce(CertificateSigningRequest) -> Response<Body>,
    ) -> CertificateSigningRequest {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path(),
            "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        );
        let created = body_csr(request).await;
        send.send_response(respond(201, &created));
        let (request, send) = handle.next_request().await.unwrap();
        let query = request.uri().query().unwrap_or_default().to_string();
        let name = created.metadata.name.clone().unwrap_or_default();
        assert!(
            query.contains(&format!("fieldSelector=metadata.name%3D{name}")),
            "{query}"
        );
        assert!(!query.contains("watch=true"), "a list first: {query}");
        send.send_response(answer(created.clone()));
        created
    }

    async fn answer_of(client: kube::Client, cert: &NodeCertificate, key: &KeyPair) -> Answer {
        submit_and_wait(&Api::all(client), cert, key, &CancellationToken::new())
            .await
            .unwrap()
            .unwrap()
    }

    fn pending(key: &KeyPair) -> CertificateSigningRequest {
        NodeCertificate::client("edge-1").object(key).unwrap()
    }

    #[test]
    fn judge_accepts_only_a_certificate_for_our_key() {
        let ca = Authority::generate("ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let ours = public_key(&key);
        let csr = pending(&key);
        assert_eq!(judge(&csr, &ours), Verdict::Pending);
        let approved_unsigned = with_status(csr.clone(), None, Some(("Approved", "AutoApproved")));
        assert_eq!(judge(&approved_unsigned, &ours), Verdict::Pending);
        let empty = with_status(csr.clone(), Some(String::new()), Some(("Approved", "A")));
        assert_eq!(
            judge(&empty, &ours),
            Verdict::Pending,
            "never an empty cert"
        );
        let garbage = with_status(csr.clone(), Some("garbage".into()), None);
        assert!(matches!(judge(&garbage, &ours), Verdict::Refused(_)));
        let foreign = ca
            .issue(&CertificateSpec::client(
                "system:node:edge-1",
                &["system:nodes"],
            ))
            .unwrap()
            .cert_pem;
        let wrong_key = with_status(csr.clone(), Some(foreign), None);
        assert_eq!(
            judge(&wrong_key, &ours),
            Verdict::Refused("issued a certificate for another key".into())
        );
        let signed = sign(&ca, &csr);
        let issued = with_status(csr.clone(), Some(signed.clone()), None);
        assert_eq!(judge(&issued, &ours), Verdict::Issued(signed));
    }

    #[test]
    fn judge_reports_denial_with_reason_and_message() {
        let key = KeyPair::generate().unwrap();
        let denied = with_status(pending(&key), None, Some(("Denied", "NotOurNode")));
        assert_eq!(
            judge(&denied, &public_key(&key)),
            Verdict::Refused("denied (NotOurNode): NotOurNode by the test".into())
        );
        let failed = with_status(pending(&key), None, Some(("Failed", "SignerError")));
        assert!(
            matches!(judge(&failed, &public_key(&key)), Verdict::Refused(r) if r.starts_with("failed"))
        );
    }

    #[tokio::test]
    async fn created_request_is_watched_until_issued() {
        let ca = Authority::generate("ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = NodeCertificate::client("edge-1");
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            accept_create_then_list(&mut handle, |created| {
                let signed = sign(&ca, &created);
                list_of(with_status(created, Some(signed), None))
            })
            .await;
        });
        let answer = answer_of(client, &cert, &key).await;
        assert!(matches!(answer, Answer::Issued { name: n, .. } if n == cert.csr_name(&key)));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_that_already_exists_is_reused_not_duplicated() {
        let ca = Authority::generate("ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = NodeCertificate::serving("edge-1", &[], &["127.0.0.1".parse().unwrap()]);
        let name = cert.csr_name(&key);
        let existing = cert.object(&key).unwrap();
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::POST);
            send.send_response(already_exists(&name));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            assert!(request.uri().path().ends_with(&format!("/{name}")));
            send.send_response(respond(200, &existing));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                request.method(),
                Method::GET,
                "then it is watched, not re-created"
            );
            let signed = sign(&ca, &existing);
            send.send_response(list_of(with_status(
                existing,
                Some(signed),
                Some(("Approved", "KubectlApprove")),
            )));
        });
        let answer = answer_of(client, &cert, &key).await;
        assert!(matches!(answer, Answer::Issued { .. }), "{answer:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_name_taken_by_another_key_is_refused() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let cert = NodeCertificate::client("edge-1");
        let name = cert.csr_name(&key);
        let mut squatter = cert.object(&other).unwrap();
        squatter.metadata = ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        };
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(already_exists(&name));
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(respond(200, &squatter));
        });
        let answer = answer_of(client, &cert, &key).await;
        assert!(matches!(answer, Answer::Refused { .. }), "{answer:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_missing_from_the_list_has_vanished() {
        let key = KeyPair::generate().unwrap();
        let cert = NodeCertificate::client("edge-1");
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            accept_create_then_list(&mut handle, |_| {
                let mut empty = ObjectList::<CertificateSigningRequest> {
                    types: Default::default(),
                    metadata: Default::default(),
                    items: Vec::new(),
                };
                empty.metadata.resource_version = Some("8".into());
                respond(200, &empty)
            })
            .await;
        });
        let answer = answer_of(client, &cert, &key).await;
        assert!(matches!(answer, Answer::Vanished { .. }), "{answer:?}");
        server.await.unwrap();
    }
}
