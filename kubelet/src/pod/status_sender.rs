//! Pods' status to the API server, sent by one task for the whole node, as the kubelet's
//! status manager sends them. A pod worker hands over its pod's newest status and goes on:
//! its probes, its containers' exits and its deletion never wait on the API server, however
//! slow or silent that is. The sender patches each pod's newest status, one request per pod
//! at a time (a status that changes while one is in flight goes next, and only the newest),
//! at most [`IN_FLIGHT`] requests at once across the node; a status the API server did not
//! accept goes again after a jittered delay (or at once if it changes), and every pod's goes
//! again when the link to the API server is restored, since the node lifecycle controller
//! may have rewritten what the API holds while the node was cut off.
//!
//! What it holds grows only with the pods on the node: one entry per pod worker, removed
//! when the worker's [`PodStatusHandle`] goes, and each pod at most once in the queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::link::Link;
use crate::metrics::AgentMetrics;
use crate::node::registration::FIELD_MANAGER;
use crate::unread_reply;

use super::sleep_until;

/// Status patches in flight at once, across the node's pods.
pub(crate) const IN_FLIGHT: usize = 64;
/// A status the API server did not accept is sent again after this long, plus up to
/// [`RETRY_JITTER_MS`], so pods whose patches failed together do not retry in lockstep.
const RETRY: Duration = Duration::from_secs(5);
const RETRY_JITTER_MS: u64 = 1000;

/// Where a pod's status goes.
#[derive(Clone)]
pub(crate) struct Target {
    /// The pod's namespace.
    pub(crate) api: Api<Pod>,
    /// The pod's name (a static pod's mirror pod has its name).
    pub(crate) name: String,
    /// The UID the patch names: an API pod's own. A static pod's mirror pod has a UID of the
    /// API server's making, so its patch goes by name alone.
    pub(crate) uid: Option<String>,
}

/// How far the API server has come with one pod's statuses, by the version
/// [`PodStatusHandle::offer`] gave them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Settled {
    /// The newest version a request was answered (or failed) for.
    attempted: u64,
    /// The newest version the API server accepted.
    accepted: u64,
}

/// The node's status sender. Cheap to clone; [`StatusSender::run`] is its one task.
#[derive(Clone, Default)]
pub(crate) struct StatusSender {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sender's task: a status is ready to go.
    wake: Notify,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, Entry>,
    /// Pods whose newest status is ready to go, each at most once, in the order they became
    /// ready.
    ready: VecDeque<String>,
    /// Pods with a request in flight (at most [`IN_FLIGHT`]), by UID, not by entry: a pod
    /// taken on again while its old worker's last request is out waits for that request,
    /// so a stale status never lands after a newer one.
    in_flight: HashSet<String>,
    registrations: u64,
}

struct Entry {
    /// Which worker's entry this is: a pod's UID may be taken on again (a static pod's
    /// manifest came back) while its old worker's handle is still going.
    registration: u64,
    target: Target,
    status: PodStatus,
    version: u64,
    /// `status` is to be sent: it changed, or must go again, since the last request.
    dirty: bool,
    queued: bool,
    /// A failed status waits until then (unless it changes first).
    retry_at: Option<Instant>,
    settled: watch::Sender<Settled>,
}

/// One request, as it leaves.
struct Job {
    uid: String,
    registration: u64,
    version: u64,
    target: Target,
    status: PodStatus,
}

/// One request, as it came back.
struct Done {
    uid: String,
    registration: u64,
    version: u64,
    static_pod: bool,
    name: String,
    result: Result<(), kube::Error>,
    took: Duration,
}

impl State {
    /// Queues `uid` if its status is to go and nothing holds it back.
    fn enqueue(&mut self, uid: &str) {
        let Some(entry) = self.pods.get_mut(uid) else {
            return;
        };
        if entry.dirty
            && entry.version > 0
            && !entry.queued
            && entry.retry_at.is_none()
            && !self.in_flight.contains(uid)
        {
            entry.queued = true;
            self.ready.push_back(uid.to_owned());
        }
    }

    /// The next request to send, if any pod's status is ready.
    fn next_job(&mut self) -> Option<Job> {
        while let Some(uid) = self.ready.pop_front() {
            let Some(entry) = self.pods.get_mut(&uid) else {
                continue;
            };
            entry.queued = false;
            if !entry.dirty || entry.retry_at.is_some() || self.in_flight.contains(&uid) {
                continue;
            }
            entry.dirty = false;
            self.in_flight.insert(uid.clone());
            return Some(Job {
                registration: entry.registration,
                version: entry.version,
                target: entry.target.clone(),
                status: entry.status.clone(),
                uid,
            });
        }
        None
    }

    /// Marks every pod's status to go again, at once (a pod that has none yet, none).
    fn send_all_again(&mut self) {
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            if let Some(entry) = self.pods.get_mut(&uid) {
                entry.dirty = true;
                entry.retry_at = None;
            }
            self.enqueue(&uid);
        }
    }
}

impl StatusSender {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// A handle for one pod worker to hand its pod's statuses to; the pod is forgotten when
    /// the handle goes.
    pub(crate) fn register(&self, uid: &str, target: Target) -> PodStatusHandle {
        let (settled, receiver) = watch::channel(Settled::default());
        let mut state = self.state();
        state.registrations = state.registrations.wrapping_add(1);
        let registration = state.registrations;
        state.pods.insert(
            uid.to_owned(),
            Entry {
                registration,
                target,
                status: PodStatus::default(),
                version: 0,
                dirty: false,
                queued: false,
                retry_at: None,
                settled,
            },
        );
        PodStatusHandle {
            shared: self.shared.clone(),
            uid: uid.to_owned(),
            registration,
            settled: receiver,
            offered: 0,
        }
    }

    /// Sends the statuses handed over until the task is dropped, reporting each answer to
    /// `link` and each accepted patch's time to `metrics`.
    pub(crate) async fn run(self, link: Link, metrics: Arc<AgentMetrics>) {
        let mut restorations = link.watch();
        let mut in_flight = FuturesUnordered::new();
        let mut retries = BinaryHeap::new();
        loop {
            while in_flight.len() < IN_FLIGHT {
                let Some(job) = self.state().next_job() else {
                    break;
                };
                in_flight.push(send(job));
            }
            let next_retry = retries
                .peek()
                .map(|Reverse((at, _)): &Reverse<(Instant, String)>| at.into_std());
            tokio::select! {
                () = self.shared.wake.notified() => {}
                Some(done) = in_flight.next() => self.finish(done, &link, &metrics, &mut retries),
                () = sleep_until(next_retry) => self.retry_due(&mut retries),
                () = restorations.restored() => self.state().send_all_again(),
            }
        }
    }

    /// Takes in one request's answer.
    fn finish(
        &self,
        done: Done,
        link: &Link,
        metrics: &AgentMetrics,
        retries: &mut BinaryHeap<Reverse<(Instant, String)>>,
    ) {
        match &done.result {
            Ok(()) => {
                link.succeeded();
                metrics.observe_status_patch(done.took);
            }
            Err(err) => report_failure(&done, err, link),
        }
        let mut state = self.state();
        state.in_flight.remove(&done.uid);
        let Some(entry) = state
            .pods
            .get_mut(&done.uid)
            .filter(|entry| entry.registration == done.registration)
        else {
            // The pod's worker is gone; a new one's status may have waited for this.
            state.enqueue(&done.uid);
            return;
        };
        entry.settled.send_modify(|settled| {
            settled.attempted = settled.attempted.max(done.version);
            if done.result.is_ok() {
                settled.accepted = settled.accepted.max(done.version);
            }
        });
        if done.result.is_err() && !entry.dirty {
            // Not changed since: it goes again after the retry delay. A status that changed
            // meanwhile goes at once.
            let jitter = Duration::from_millis(fastrand::u64(0..=RETRY_JITTER_MS));
            let at = Instant::now() + RETRY + jitter;
            entry.dirty = true;
            entry.retry_at = Some(at);
            retries.push(Reverse((at, done.uid)));
            // A retry superseded (the status changed, the link came back) stays in the heap
            // until its time; past this many, the heap keeps only the current ones.
            if retries.len() > state.pods.len().saturating_mul(2).saturating_add(IN_FLIGHT) {
                retries.retain(|Reverse((at, uid))| {
                    state.pods.get(uid).is_some_and(|e| e.retry_at == Some(*at))
                });
            }
            return;
        }
        state.enqueue(&done.uid);
    }

    /// Queues the statuses whose retry is due.
    fn retry_due(&self, retries: &mut BinaryHeap<Reverse<(Instant, String)>>) {
        let now = Instant::now();
        let mut state = self.state();
        while let Some(Reverse((at, _))) = retries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, uid))) = retries.pop() else {
                break;
            };
            if let Some(entry) = state.pods.get_mut(&uid)
                && entry.retry_at == Some(at)
            {
                entry.retry_at = None;
                state.enqueue(&uid);
            }
        }
    }
}

/// What a pod worker hands its pod's statuses to.
pub(crate) struct PodStatusHandle {
    shared: Arc<Shared>,
    uid: String,
    registration: u64,
    settled: watch::Receiver<Settled>,
    offered: u64,
}

impl PodStatusHandle {
    /// Hands over the pod's newest status: it goes as soon as the pod has no request in
    /// flight and a permit is free. Returns its version.
    pub(crate) fn offer(&mut self, status: PodStatus) -> u64 {
        self.offered = self.offered.wrapping_add(1);
        self.update(|entry, version| {
            entry.status = status;
            entry.version = version;
        });
        self.offered
    }

    /// Sends the newest status again though it did not change (another writer overwrote
    /// it). It takes a version of its own, so the pod is not up to date until the API server
    /// accepts it.
    pub(crate) fn send_again(&mut self) {
        self.offered = self.offered.wrapping_add(1);
        self.update(|entry, version| entry.version = version);
    }

    /// Whether the API server accepted the newest status handed over.
    pub(crate) fn up_to_date(&self) -> bool {
        self.settled.borrow().accepted == self.offered
    }

    /// The version of the newest status handed over.
    pub(crate) fn offered(&self) -> u64 {
        self.offered
    }

    /// Resolves once a request for `version` (or a newer one) was answered or failed, or
    /// the pod's entry is gone (nothing more will be sent for this handle). Cancel-safe.
    pub(crate) async fn attempted(&mut self, version: u64) {
        // An error means the entry is gone: nothing will be sent.
        let _ = self.settled.wait_for(|s| s.attempted >= version).await;
    }

    fn update(&self, change: impl FnOnce(&mut Entry, u64)) {
        let mut state = lock(&self.shared);
        let Some(entry) = state
            .pods
            .get_mut(&self.uid)
            .filter(|entry| entry.registration == self.registration)
        else {
            return;
        };
        change(entry, self.offered);
        entry.dirty = true;
        entry.retry_at = None;
        state.enqueue(&self.uid);
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl Drop for PodStatusHandle {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        if state
            .pods
            .get(&self.uid)
            .is_some_and(|entry| entry.registration == self.registration)
        {
            state.pods.remove(&self.uid);
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Nothing panics while holding it; a poisoned lock's state is still consistent.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The body of a status patch. An API pod's carries its UID, as the kubelet's does: the API
/// server refuses the patch if the pod of that name is now another one (the pod was deleted
/// and made again, elsewhere perhaps, while this node was cut off), instead of writing this
/// node's truth over it.
fn status_patch(status: PodStatus, uid: Option<String>) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            uid,
            ..Default::default()
        },
        status: Some(status),
        ..Default::default()
    }
}

async fn send(job: Job) -> Done {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let static_pod = job.target.uid.is_none();
    let patch = status_patch(job.status, job.target.uid);
    let started = Instant::now();
    let result = unread_reply::patch_status(
        &job.target.api,
        &job.target.name,
        &params,
        &Patch::Strategic(&patch),
    )
    .await;
    Done {
        uid: job.uid,
        registration: job.registration,
        version: job.version,
        static_pod,
        name: job.target.name,
        result,
        took: started.elapsed(),
    }
}

fn report_failure(done: &Done, err: &kube::Error, link: &Link) {
    let reachable = crate::link::answered(err);
    let outage_begins = link.failed_with(err);
    let no_mirror_yet =
        done.static_pod && matches!(err, kube::Error::Api(status) if status.is_not_found());
    if no_mirror_yet {
        debug!(pod = %done.name, "the static pod has no mirror pod yet; its status waits");
    } else if reachable {
        warn!(pod = %done.name, %err, "pod status update failed; retrying");
    } else if outage_begins {
        warn!(pod = %done.name, %err, "the API server cannot be reached; pods run on and their status is sent when it answers");
    } else {
        debug!(pod = %done.name, %err, "pod status update failed; retrying");
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    type Reply = tower_test::mock::SendResponse<Response<Body>>;

    /// A sender talking to a mock API server, its task running.
    fn sender() -> (StatusSender, Api<Pod>, Handle, Link) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::namespaced(kube::Client::new(service, "default"), "default");
        let sender = StatusSender::default();
        let link = Link::default();
        tokio::spawn(sender.clone().run(link.clone(), Arc::default()));
        (sender, api, handle, link)
    }

    fn target(api: &Api<Pod>, name: &str, uid: Option<&str>) -> Target {
        Target {
            api: api.clone(),
            name: name.into(),
            uid: uid.map(str::to_owned),
        }
    }

    fn phase(phase: &str) -> PodStatus {
        PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }
    }

    /// The next status patch: the pod it names (from the path), the body, and its reply.
    async fn next_patch(handle: &mut Handle) -> (String, serde_json::Value, Reply) {
        let (request, reply) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::PATCH);
        let path = request.uri().path().to_owned();
        let pod = path
            .strip_prefix("/api/v1/namespaces/default/pods/")
            .and_then(|rest| rest.strip_suffix("/status"))
            .unwrap_or_else(|| panic!("not a pod status patch: {path}"))
            .to_owned();
        let body = request.into_body().collect_bytes().await.unwrap();
        (pod, serde_json::from_slice(&body).unwrap(), reply)
    }

    /// Fails with `what` if a request comes within `within`.
    async fn assert_quiet(handle: &mut Handle, within: Duration, what: &str) {
        let request = tokio::time::timeout(within, handle.next_request()).await;
        assert!(request.is_err(), "{what}");
    }

    fn ok() -> Response<Body> {
        Response::builder()
            .status(200)
            .body(Body::from(b"{}".to_vec()))
            .unwrap()
    }

    /// What a proxy says when it cannot reach the API server: no answer from it.
    fn unavailable() -> Response<Body> {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "no"});
        Response::builder()
            .status(503)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap()
    }

    /// A worker's statuses never wait on the API server: while one request is in flight the
    /// worker goes on handing over newer ones, and only the newest goes next, after it.
    #[tokio::test(start_paused = true)]
    async fn a_pod_has_one_request_in_flight_and_the_newest_status_goes_next() {
        let (sender, api, mut handle, _link) = sender();
        let mut pod = sender.register("uid-1", target(&api, "p", Some("uid-1")));

        let first = pod.offer(phase("Pending"));
        let (name, body, reply) = next_patch(&mut handle).await;
        assert_eq!(name, "p");
        assert_eq!(
            body["metadata"]["uid"], "uid-1",
            "an API pod's patch names its UID"
        );
        assert_eq!(body["status"]["phase"], "Pending");

        // The API server has not answered; the worker goes on.
        pod.offer(phase("Running"));
        tokio::task::yield_now().await;
        let newest = pod.offer(phase("Succeeded"));
        assert!(!pod.up_to_date());
        assert_quiet(
            &mut handle,
            RETRY,
            "a second request for the pod went out while the first was in flight",
        )
        .await;
        reply.send_response(ok());
        pod.attempted(first).await;

        let (_, body, reply) = next_patch(&mut handle).await;
        assert_eq!(
            body["status"]["phase"], "Succeeded",
            "Running was overtaken while Pending was in flight"
        );
        reply.send_response(ok());
        pod.attempted(newest).await;
        assert!(pod.up_to_date());
    }

    /// A status the API server did not take goes again after the retry delay, and the link
    /// is down meanwhile; when a request gets through the link is restored, and every pod's
    /// status goes again.
    #[tokio::test(start_paused = true)]
    async fn a_status_that_failed_goes_again_after_the_delay_and_a_restored_link_resends_all() {
        let (sender, api, mut handle, _link) = sender();
        let mut a = sender.register("uid-a", target(&api, "a", Some("uid-a")));
        let mut b = sender.register("uid-b", target(&api, "b", Some("uid-b")));
        // A pod that has handed over no status yet has none to send again.
        let _c = sender.register("uid-c", target(&api, "c", Some("uid-c")));
        let version = b.offer(phase("Running"));
        let (name, _, reply) = next_patch(&mut handle).await;
        assert_eq!(name, "b");
        reply.send_response(ok());
        b.attempted(version).await;

        let version = a.offer(phase("Running"));
        let (name, _, reply) = next_patch(&mut handle).await;
        assert_eq!(name, "a");
        let failed_at = tokio::time::Instant::now();
        reply.send_response(unavailable());
        a.attempted(version).await;
        assert!(!a.up_to_date());

        let (name, body, reply) = next_patch(&mut handle).await;
        let waited = failed_at.elapsed();
        assert_eq!(name, "a");
        assert_eq!(body["status"]["phase"], "Running");
        assert!(
            (RETRY..=RETRY + Duration::from_millis(RETRY_JITTER_MS)).contains(&waited),
            "retried after {waited:?}"
        );
        reply.send_response(ok());
        // (It was attempted once already: wait for this answer, the acceptance.)
        a.settled.wait_for(|s| s.accepted >= version).await.unwrap();

        // The link came back with that answer (the 503 had marked it down): both pods'
        // statuses go again, and nothing for the pod that has none.
        let mut names = Vec::new();
        for _ in 0..2 {
            let (name, body, reply) = next_patch(&mut handle).await;
            assert_eq!(body["status"]["phase"], "Running");
            names.push(name);
            reply.send_response(ok());
        }
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_quiet(&mut handle, RETRY * 2, "an empty status was sent").await;
    }

    /// A status that changes while the last one waits for its retry goes at once.
    #[tokio::test(start_paused = true)]
    async fn a_changed_status_does_not_wait_for_the_last_one_s_retry() {
        let (sender, api, mut handle, _link) = sender();
        let mut pod = sender.register("uid-1", target(&api, "p", None));
        let version = pod.offer(phase("Pending"));
        let (_, body, reply) = next_patch(&mut handle).await;
        assert!(
            body["metadata"].get("uid").is_none(),
            "a mirror pod's patch goes by name: {body}"
        );
        reply.send_response(unavailable());
        pod.attempted(version).await;

        let changed_at = tokio::time::Instant::now();
        pod.offer(phase("Running"));
        let (_, body, _reply) = next_patch(&mut handle).await;
        assert_eq!(body["status"]["phase"], "Running");
        assert!(changed_at.elapsed() < RETRY, "it waited for the retry");
    }

    /// A status sent again because another writer overwrote it is not up to date until
    /// the API server takes it: a refused resend is retried, and the worker, which resends
    /// only an up-to-date status, does not take it for accepted meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_status_sent_again_is_up_to_date_only_once_accepted() {
        let (sender, api, mut handle, _link) = sender();
        let mut pod = sender.register("uid-1", target(&api, "p", Some("uid-1")));
        let version = pod.offer(phase("Running"));
        let (_, _, reply) = next_patch(&mut handle).await;
        reply.send_response(ok());
        pod.attempted(version).await;
        assert!(pod.up_to_date());

        pod.send_again();
        let again = pod.offered();
        assert!(!pod.up_to_date(), "a resend in flight counted as accepted");
        let (_, body, reply) = next_patch(&mut handle).await;
        assert_eq!(body["status"]["phase"], "Running");
        reply.send_response(unavailable());
        pod.attempted(again).await;
        assert!(!pod.up_to_date(), "a refused resend counted as accepted");

        let (_, body, reply) = next_patch(&mut handle).await;
        assert_eq!(body["status"]["phase"], "Running");
        reply.send_response(ok());
        pod.settled.wait_for(|s| s.accepted >= again).await.unwrap();
        assert!(pod.up_to_date());
    }

    /// A pod whose worker ended is forgotten: an answer for it that comes later changes
    /// nothing, and its refused status is not sent again.
    #[tokio::test(start_paused = true)]
    async fn a_pod_is_forgotten_when_its_worker_s_handle_goes() {
        let (sender, api, mut handle, _link) = sender();
        let mut gone = sender.register("uid-gone", target(&api, "gone", Some("uid-gone")));
        gone.offer(phase("Running"));
        let (_, _, reply) = next_patch(&mut handle).await;
        drop(gone);
        assert!(sender.state().pods.is_empty());
        let refused = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "InternalError", "code": 500, "message": "no"});
        reply.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&refused).unwrap()))
                .unwrap(),
        );

        let mut other = sender.register("uid-2", target(&api, "other", Some("uid-2")));
        let version = other.offer(phase("Running"));
        let (name, _, reply) = next_patch(&mut handle).await;
        assert_eq!(name, "other");
        reply.send_response(ok());
        other.attempted(version).await;
        let retry_window = RETRY + Duration::from_millis(RETRY_JITTER_MS);
        assert_quiet(
            &mut handle,
            retry_window * 2,
            "the forgotten pod's refused status was sent again",
        )
        .await;
        assert_eq!(sender.state().pods.len(), 1);
    }

    /// A pod taken on again (a static pod's manifest came back) while its old worker's last
    /// request is out: the new worker's status waits for that request, so the old status
    /// never lands after the new one, and the old handle learns it has nothing more to wait
    /// for.
    #[tokio::test(start_paused = true)]
    async fn a_pod_taken_on_again_waits_for_its_old_worker_s_request() {
        let (sender, api, mut handle, _link) = sender();
        let mut old = sender.register("hash-1", target(&api, "web", None));
        let stale = old.offer(phase("Failed"));
        let (_, body, old_reply) = next_patch(&mut handle).await;
        assert_eq!(body["status"]["phase"], "Failed");

        let mut new = sender.register("hash-1", target(&api, "web", None));
        old.attempted(stale).await;
        let version = new.offer(phase("Pending"));
        assert_quiet(
            &mut handle,
            RETRY,
            "the new status went out while the old one was in flight",
        )
        .await;
        old_reply.send_response(ok());
        let (_, body, reply) = next_patch(&mut handle).await;
        assert_eq!(body["status"]["phase"], "Pending");
        reply.send_response(ok());
        new.attempted(version).await;
        assert!(new.up_to_date());
        drop(old);
        assert_eq!(
            sender.state().pods.len(),
            1,
            "the old handle took the new entry"
        );
    }
}
