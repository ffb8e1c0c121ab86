//! Keeping one certificate current: request it, store it, present it, renew it before it
//! expires. The same loop serves the kubelet API's serving certificate and the node's
//! client certificate; they differ in what they ask for and in what a new one replaces.

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::csr::{Kind, NodeCertificate};
use crate::request::{Answer, submit_and_wait};
use crate::rotating::RotatingCert;
use crate::rotation::{deadline_for, retry_delay, sleep_before};
use crate::store::{CertStore, StoredCert};

/// Called after a new certificate is presented (e.g. to close connections made with the old
/// one).
pub(crate) type OnRotate = Box<dyn Fn() + Send + Sync>;

/// Requests, stores and renews one node certificate, presenting each new one through a
/// [`RotatingCert`].
pub struct CertificateManager {
    api: Api<CertificateSigningRequest>,
    /// The bootstrap kubeconfig's, for a client certificate that expired before it was
    /// renewed.
    bootstrap: Option<Api<CertificateSigningRequest>>,
    cert: NodeCertificate,
    store: CertStore,
    rotating: Arc<RotatingCert>,
    current: Option<StoredCert>,
    on_rotate: Option<OnRotate>,
}

impl CertificateManager {
    pub(crate) fn new(
        client: kube::Client,
        cert: NodeCertificate,
        store: CertStore,
        rotating: Arc<RotatingCert>,
        current: Option<StoredCert>,
    ) -> Self {
        Self {
            api: Api::all(client),
            bootstrap: None,
            cert,
            store,
            rotating,
            current,
            on_rotate: None,
        }
    }

    /// Requests the node's client certificate with the bootstrap kubeconfig's credentials
    /// once the current one has expired: a node cut off past its certificate's end cannot
    /// renew it with its own identity, which the API server no longer accepts. The kubelet
    /// exits then, to bootstrap again when restarted; wasmlet carries on, its pods with it.
    pub fn with_bootstrap(mut self, client: kube::Client) -> Self {
        self.bootstrap = Some(Api::all(client));
        self
    }

    pub(crate) fn on_rotate(mut self, hook: OnRotate) -> Self {
        self.on_rotate = Some(hook);
        self
    }

    /// What is presented now.
    pub fn certificates(&self) -> Arc<RotatingCert> {
        self.rotating.clone()
    }

    /// Runs until `cancel` fires: waits for the rotation deadline of the current certificate
    /// (at once when there is none), obtains a new one, presents it, and starts over. It never
    /// returns early: refusals and API failures are retried with backoff.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Renewals that produced a certificate already due again (a lifetime too short for
        // the deadline rule, or a skewed clock) are spaced out instead of looping.
        let mut early_renewals = 0;
        loop {
            if let Some(current) = &self.current {
                let deadline = deadline_for(&current.info);
                loop {
                    let pause = sleep_before(deadline, SystemTime::now());
                    if pause.is_zero() {
                        break;
                    }
                    if !sleep_unless_cancelled(pause, &cancel).await {
                        return;
                    }
                }
                info!(
                    not_after = %jiff_time(current.info.not_after),
                    "the {} is due for renewal; requesting a new one",
                    self.cert.what()
                );
            }
            let requester = Requester {
                own: &self.api,
                // Only the client certificate is what the node's own requests present.
                own_until: (self.cert.kind() == Kind::Client)
                    .then(|| self.current.as_ref().map(|c| c.info.not_after))
                    .flatten(),
                bootstrap: self.bootstrap.as_ref(),
            };
            let Some(issued) = obtain(&requester, &self.cert, &self.store, &cancel).await else {
                return;
            };
            if let Err(e) = self.rotating.set(&issued.cert_pem, &issued.key_pem) {
                // Verified before it was stored, so this is not expected; keep the old one.
                warn!(error = %e, "cannot present the new {}", self.cert.what());
            } else {
                info!(
                    not_after = %jiff_time(issued.info.not_after),
                    path = %self.store.current_path().display(),
                    "now presenting the {} issued by the cluster",
                    self.cert.what()
                );
                if let Some(hook) = &self.on_rotate {
                    hook();
                }
            }
            if deadline_for(&issued.info) <= SystemTime::now() {
                let pause = retry_delay(early_renewals);
                early_renewals = early_renewals.saturating_add(1);
                warn!(
                    not_before = %jiff_time(issued.info.not_before),
                    not_after = %jiff_time(issued.info.not_after),
                    retry_in = ?pause,
                    "the new {} is already due for renewal (short lifetime or clock skew)",
                    self.cert.what()
                );
                if !sleep_unless_cancelled(pause, &cancel).await {
                    return;
                }
            } else {
                early_renewals = 0;
            }
            self.current = Some(issued);
        }
    }
}

/// Whose credentials a certificate is requested with.
pub(crate) struct Requester<'a> {
    /// The node's, or the bootstrap kubeconfig's during TLS bootstrap.
    pub(crate) own: &'a Api<CertificateSigningRequest>,
    /// When the client certificate `own` presents ends, if that is the certificate sought.
    pub(crate) own_until: Option<SystemTime>,
    /// The bootstrap kubeconfig's, for when `own` has expired.
    pub(crate) bootstrap: Option<&'a Api<CertificateSigningRequest>>,
}

impl<'a> Requester<'a> {
    /// Requests with `api`'s credentials, whatever happens.
    pub(crate) fn only(api: &'a Api<CertificateSigningRequest>) -> Self {
        Self {
            own: api,
            own_until: None,
            bootstrap: None,
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.own_until.is_some_and(|until| now >= until)
    }

    /// The API to ask through at `now`, the usual credentials having been refused (401)
    /// last time or not.
    fn api(&self, now: SystemTime, own_refused: bool) -> &'a Api<CertificateSigningRequest> {
        match self.bootstrap {
            Some(bootstrap) if own_refused || self.expired(now) => bootstrap,
            _ => self.own,
        }
    }
}

/// Obtains a certificate for `cert` through `requester` and stores it: submits a request
/// for the pending key (or finds it), waits for the answer, and on a refusal starts over
/// with a new key after a pause. `None` only when cancelled.
pub(crate) async fn obtain(
    requester: &Requester<'_>,
    cert: &NodeCertificate,
    store: &CertStore,
    cancel: &CancellationToken,
) -> Option<StoredCert> {
    let mut failures = 0;
    let mut told = false;
    // The API server answered the usual credentials 401 (its clock past the certificate's
    // end before the node's, say): the next request goes with the bootstrap ones.
    let mut own_refused = false;
    loop {
        let now = SystemTime::now();
        let api = requester.api(now, own_refused);
        let by_bootstrap = !std::ptr::eq(api, requester.own);
        let until = requester.own_until.map(jiff_time).unwrap_or_default();
        if by_bootstrap && !told {
            told = true;
            // Other credentials, a fresh start: not the back-off the old ones built up, and
            // a new key, so the request is the bootstrap identity's own (one the node made
            // for the old key may wait on an approval renewals never get).
            failures = 0;
            discard(store);
            warn!(not_after = %until, "the {} expired before it could be renewed (the API server was out of reach), or the API server refused it; requesting a new one with the bootstrap credentials", cert.what());
        } else if requester.bootstrap.is_none() && requester.expired(now) && !told {
            told = true;
            error!(not_after = %until, "the {} expired before it could be renewed, and the API server no longer accepts it; without --bootstrap-kubeconfig the node cannot request another: give it a new kubeconfig and restart it", cert.what());
        }
        let credentials = if by_bootstrap { "bootstrap" } else { "usual" };
        // A request made with the usual credentials is given up when they end, to be made
        // again with the bootstrap ones: waiting on its answer with a certificate the API
        // server no longer accepts would wait for ever.
        let own_end = requester
            .bootstrap
            .and(requester.own_until)
            .filter(|_| !by_bootstrap)
            .map(|until| until.duration_since(now).unwrap_or_default());
        let pause = retry_delay(failures);
        failures = failures.saturating_add(1);
        let key = match store.pending_key() {
            Ok(key) => key,
            Err(e) => {
                warn!(error = %e, retry_in = ?pause, "cannot make a key for the {}", cert.what());
                if !sleep_unless_cancelled(pause, cancel).await {
                    return None;
                }
                continue;
            }
        };
        let answer = match own_end {
            Some(left) => tokio::select! {
                answer = submit_and_wait(api, cert, &key, cancel) => answer,
                () = tokio::time::sleep(left) => continue,
            },
            None => submit_and_wait(api, cert, &key, cancel).await,
        };
        match answer {
            Ok(None) => return None,
            Ok(Some(Answer::Issued { name, cert_pem })) => {
                match store.save_current(&cert_pem, &key.serialize_pem()) {
                    Ok(stored) => {
                        info!(csr = %name, "the {} was issued", cert.what());
                        return Some(stored);
                    }
                    Err(e) => warn!(
                        csr = %name, error = %e, retry_in = ?pause,
                        "the issued {} cannot be used; requesting again with a new key",
                        cert.what()
                    ),
                }
                discard(store);
            }
            Ok(Some(Answer::Refused { name, reason })) => {
                warn!(
                    csr = %name, retry_in = ?pause,
                    "the {} request was {reason}; requesting again with a new key",
                    cert.what()
                );
                discard(store);
            }
            Ok(Some(Answer::Vanished { name })) => warn!(
                csr = %name, retry_in = ?pause,
                "the {} request disappeared before it was answered; submitting it again",
                cert.what()
            ),
            Err(e) => {
                // While the usual credentials have not ended, the two take turns: one stray
                // 401 must not leave the renewal to a bootstrap token that may have expired.
                own_refused = if by_bootstrap {
                    requester.expired(SystemTime::now()) && own_refused
                } else {
                    requester.bootstrap.is_some() && unauthorized(&e)
                };
                warn!(
                    error = %e, retry_in = ?pause, credentials,
                    "cannot request the {}", cert.what()
                );
            }
        }
        if !sleep_unless_cancelled(pause, cancel).await {
            return None;
        }
    }
}

/// Whether the API server refused the credentials (401).
fn unauthorized(err: &crate::Error) -> bool {
    matches!(err, crate::Error::Api { source: kube::Error::Api(status), .. } if status.code == 401)
}

fn discard(store: &CertStore) {
    if let Err(e) = store.discard_pending_key() {
        warn!(error = %e, "cannot remove the refused key");
    }
}

/// Sleeps for `pause` unless `cancel` fires first; false when cancelled.
async fn sleep_unless_cancelled(pause: std::time::Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

fn jiff_time(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{time:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Authority;
    use crate::request::tests::{accept_create_then_list, list_of, mock_client, sign, with_status};
    use crate::x509::CertInfo;

    /// The CSR approved and signed by `ca`, as the watcher's list.
    fn approved(
        ca: &Authority,
        csr: k8s_openapi::api::certificates::v1::CertificateSigningRequest,
    ) -> http::Response<kube::client::Body> {
        let signed = sign(ca, &csr);
        list_of(with_status(
            csr,
            Some(signed),
            Some(("Approved", "KubectlApprove")),
        ))
    }

    /// A denied request is logged, its key dropped, and a new request with a new key (and so
    /// a new name) follows; its certificate is stored and the pending key removed.
    #[tokio::test(start_paused = true)]
    async fn a_denied_request_is_retried_with_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::serving(dir.path());
        let cert = NodeCertificate::serving("edge-1", &[], &["127.0.0.1".parse().unwrap()]);
        let ca = Authority::generate("ca").unwrap();
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            // First request: created, then seen denied.
            let first = accept_create_then_list(&mut handle, |csr| {
                list_of(with_status(csr, None, Some(("Denied", "NotTrusted"))))
            })
            .await;
            // Second request, after the pause: another key, another name; approved.
            let second = accept_create_then_list(&mut handle, |csr| approved(&ca, csr)).await;
            assert_ne!(second.metadata.name, first.metadata.name);
            assert_ne!(second.spec.request, first.spec.request);
        });
        let api = Api::all(client);
        let stored = obtain(
            &Requester::only(&api),
            &cert,
            &store,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        server.await.unwrap();
        assert_eq!(stored.info.common_name, "system:node:edge-1");
        assert!(store.current_path().exists());
        assert!(!store.pending_key_path().exists());
        assert_eq!(store.load_current().unwrap().cert_pem, stored.cert_pem);
    }

    /// A certificate past its rotation deadline is renewed at once; the new one is stored,
    /// presented, and the rotation hook runs (the client closes its old connections there).
    #[tokio::test]
    async fn a_certificate_past_its_deadline_is_renewed_and_swapped_in() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let (old_stored, rotating) = expired(
            &ca,
            &crate::CertificateSpec::client("system:node:edge-1", &["system:nodes"]),
        );
        let (client, mut handle) = mock_client();
        let rotated = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let manager = CertificateManager::new(
            client,
            NodeCertificate::client("edge-1"),
            store.clone(),
            rotating.clone(),
            Some(old_stored),
        )
        .on_rotate({
            let rotated = rotated.clone();
            let cancel = cancel.clone();
            Box::new(move || {
                rotated.store(true, Ordering::SeqCst);
                cancel.cancel();
            })
        });
        let server = tokio::spawn(async move {
            accept_create_then_list(&mut handle, |csr| approved(&ca, csr)).await;
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), manager.run(cancel))
            .await
            .expect("renews without waiting");
        server.await.unwrap();
        assert!(rotated.load(Ordering::SeqCst));
        let presented = rotating.current();
        let info = CertInfo::from_der(presented.end_entity_cert().unwrap()).unwrap();
        assert!(
            info.is_valid_at(SystemTime::now()),
            "the new one is presented"
        );
        assert_eq!(store.load_current().unwrap().info, info, "and stored");
    }

    /// `issued` as stored and as presented.
    fn held(issued: &crate::KeyedCertificate) -> (StoredCert, Arc<RotatingCert>) {
        let stored = StoredCert::verify(&issued.cert_pem, &issued.key_pem).unwrap();
        let rotating = Arc::new(RotatingCert::new(&issued.cert_pem, &issued.key_pem).unwrap());
        (stored, rotating)
    }

    /// A certificate for `spec` that expired long ago, as stored and as presented.
    fn expired(ca: &Authority, spec: &crate::CertificateSpec) -> (StoredCert, Arc<RotatingCert>) {
        held(&ca.issue_expired(spec).unwrap())
    }

    /// A manager for `cert` holding `current`, with the node's own client and the bootstrap
    /// one, that stops after its first rotation.
    fn manager_with_bootstrap(
        own: kube::Client,
        bootstrap: kube::Client,
        cert: NodeCertificate,
        store: &CertStore,
        (current, rotating): (StoredCert, Arc<RotatingCert>),
    ) -> (CertificateManager, CancellationToken) {
        let cancel = CancellationToken::new();
        let manager = CertificateManager::new(own, cert, store.clone(), rotating, Some(current))
            .with_bootstrap(bootstrap)
            .on_rotate({
                let cancel = cancel.clone();
                Box::new(move || cancel.cancel())
            });
        (manager, cancel)
    }

    /// Renews `cert`, expired long ago (issued for `spec`), with a manager that has both the
    /// node's own client and the bootstrap one; only the client `through_bootstrap` names is
    /// answered (a request through the other never is, and the renewal times out). Returns
    /// what was stored.
    async fn renew_expired(
        cert: NodeCertificate,
        spec: crate::CertificateSpec,
        store: CertStore,
        through_bootstrap: bool,
    ) -> CertInfo {
        let ca = Authority::generate("ca").unwrap();
        let (own, own_handle) = mock_client();
        let (bootstrap, bootstrap_handle) = mock_client();
        let (mut answered, _silent) = if through_bootstrap {
            (bootstrap_handle, own_handle)
        } else {
            (own_handle, bootstrap_handle)
        };
        let (manager, cancel) =
            manager_with_bootstrap(own, bootstrap, cert, &store, expired(&ca, &spec));
        let server = tokio::spawn(async move {
            accept_create_then_list(&mut answered, |csr| approved(&ca, csr)).await;
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), manager.run(cancel))
            .await
            .expect("renewed through the expected client");
        server.await.unwrap();
        store.load_current().unwrap().info
    }

    /// A client certificate that expired before it could be renewed is requested with the
    /// bootstrap credentials: the API server would refuse the node's own.
    #[tokio::test]
    async fn an_expired_client_certificate_is_renewed_with_the_bootstrap_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::CertificateSpec::client("system:node:edge-1", &["system:nodes"]);
        let store = CertStore::client(dir.path());
        let info = renew_expired(NodeCertificate::client("edge-1"), spec, store, true).await;
        assert!(info.is_valid_at(SystemTime::now()));
        assert_eq!(info.common_name, "system:node:edge-1");
    }

    /// An expired serving certificate is renewed with the node's own client even when the
    /// bootstrap credentials are at hand: the client certificate is what they stand in for.
    #[tokio::test]
    async fn an_expired_serving_certificate_is_renewed_with_the_node_s_own_client() {
        let dir = tempfile::tempdir().unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let spec = crate::CertificateSpec::server("system:node:edge-1", &[], &[ip]);
        let cert = NodeCertificate::serving("edge-1", &[], &[ip]);
        let info = renew_expired(cert, spec, CertStore::serving(dir.path()), false).await;
        assert!(info.is_valid_at(SystemTime::now()));
    }

    /// A renewal still waiting with the usual credentials when the certificate ends is
    /// made again with the bootstrap ones: no answer would come to a certificate the API
    /// server no longer accepts.
    #[tokio::test]
    async fn a_renewal_waiting_when_the_certificate_ends_goes_again_with_the_bootstrap_credentials()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let spec = crate::CertificateSpec::client("system:node:edge-1", &["system:nodes"]);
        let short = ca
            .issue_valid_for(&spec, std::time::Duration::from_secs(2))
            .unwrap();
        let (own, mut own_handle) = mock_client();
        let (bootstrap, mut handle) = mock_client();
        // The usual credentials get the request in, then the watch on it never answers.
        let own_server = tokio::spawn(async move {
            accept_create_then_list(&mut own_handle, |csr| list_of(with_status(csr, None, None)))
                .await;
            let (_watch, _never_answered) = own_handle.next_request().await.unwrap();
            std::future::pending::<()>().await;
        });
        let cert = NodeCertificate::client("edge-1");
        let (manager, cancel) = manager_with_bootstrap(own, bootstrap, cert, &store, held(&short));
        let server = tokio::spawn(async move {
            accept_create_then_list(&mut handle, |csr| approved(&ca, csr)).await;
        });
        tokio::time::timeout(std::time::Duration::from_secs(20), manager.run(cancel))
            .await
            .expect("renewed through the bootstrap credentials after the certificate ended");
        server.await.unwrap();
        own_server.abort();
        assert!(
            store
                .load_current()
                .unwrap()
                .info
                .is_valid_at(SystemTime::now())
        );
    }

    /// A 401 to the usual credentials (the API server's clock past the certificate's end
    /// before the node's, say) sends the request with the bootstrap ones at once; while the
    /// usual ones have not ended, a 401 to the bootstrap ones (a token that expired) sends it
    /// with the usual ones again: the two take turns.
    #[tokio::test(start_paused = true)]
    async fn a_401_sends_the_request_with_the_other_credentials_until_one_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let unauthorized = || {
            let status = kube::core::Status::failure("Unauthorized", "Unauthorized").with_code(401);
            crate::request::tests::respond(401, &status)
        };
        let (own, mut own_handle) = mock_client();
        let (bootstrap, mut bootstrap_handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = own_handle.next_request().await.unwrap();
            send.send_response(unauthorized());
            let (_, send) = bootstrap_handle.next_request().await.unwrap();
            send.send_response(unauthorized());
            accept_create_then_list(&mut own_handle, |csr| approved(&ca, csr)).await;
        });
        let (own, bootstrap) = (Api::all(own), Api::all(bootstrap));
        let requester = Requester {
            own: &own,
            own_until: Some(SystemTime::now() + std::time::Duration::from_secs(3600)),
            bootstrap: Some(&bootstrap),
        };
        let cert = NodeCertificate::client("edge-1");
        let stored = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            obtain(&requester, &cert, &store, &CancellationToken::new()),
        )
        .await
        .expect("obtained through the usual credentials in the end")
        .unwrap();
        server.await.unwrap();
        assert_eq!(stored.info.common_name, "system:node:edge-1");
    }

    /// The bootstrap credentials are for an expired client certificate only: not for one
    /// still valid, nor for the serving certificate (which the node's client requests).
    #[tokio::test]
    async fn the_bootstrap_credentials_stand_in_only_once_the_client_certificate_has_expired() {
        let (own, _h1) = mock_client();
        let (bootstrap, _h2) = mock_client();
        let (own, bootstrap) = (Api::all(own), Api::all(bootstrap));
        let until = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let requester = Requester {
            own: &own,
            own_until: Some(until),
            bootstrap: Some(&bootstrap),
        };
        let second = std::time::Duration::from_secs(1);
        assert!(std::ptr::eq(requester.api(until - second, false), &own));
        assert!(std::ptr::eq(
            requester.api(until - second, true),
            &bootstrap
        ));
        assert!(std::ptr::eq(requester.api(until, false), &bootstrap));
        assert!(std::ptr::eq(
            requester.api(until + second, false),
            &bootstrap
        ));
        let serving = Requester {
            own_until: None,
            ..requester
        };
        assert!(std::ptr::eq(serving.api(until + second, false), &own));
        assert!(std::ptr::eq(
            Requester::only(&own).api(until + second, true),
            &own
        ));
    }

    /// An approved request whose certificate is empty is still pending; nothing is written
    /// until a real certificate arrives.
    #[tokio::test]
    async fn an_empty_certificate_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let cert = NodeCertificate::client("edge-1");
        let (client, mut handle) = mock_client();
        let cancel = CancellationToken::new();
        let current_path = store.current_path();
        let server = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                accept_create_then_list(&mut handle, |csr| {
                    list_of(with_status(
                        csr,
                        Some(String::new()),
                        Some(("Approved", "AutoApproved")),
                    ))
                })
                .await;
                // The watch that follows stays open: still waiting.
                let (request, _send) = handle.next_request().await.unwrap();
                assert!(
                    request
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .contains("watch=true")
                );
                assert!(!current_path.exists(), "nothing written for an empty cert");
                cancel.cancel();
            })
        };
        let api = Api::all(client);
        let result = obtain(&Requester::only(&api), &cert, &store, &cancel).await;
        server.await.unwrap();
        assert!(result.is_none(), "cancelled while waiting");
        assert!(!store.current_path().exists());
        assert!(
            store.pending_key_path().exists(),
            "the key waits for the next run"
        );
    }
}
