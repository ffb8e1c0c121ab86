//! Pod events (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, …)
//! and node events (`Starting`, `NodeReady`, `NodeHasSufficientMemory`, …), written as core/v1
//! Events: the group the `system:node` role may create, and the one
//! `kubectl describe` shows.
//!
//! Recording never waits for the API server. As with the kubelet's event broadcaster, an
//! event is queued and a background task writes it, so a pod's start is not held up by four
//! round trips (Pulling, Pulled, Created, Started), and an unreachable API server costs
//! events, never progress. Each event carries the time it was recorded; events recorded while
//! the API server is unreachable wait for it (in order, repeats aggregated, bounded).
//!
//! Events are written no faster than their own budget (`--event-qps`, `--event-burst`, the
//! kubelet's `eventRecordQPS` and `eventBurst`), apart from the node's API budget. Each
//! costs the API server and etcd about as much as a status patch, and a start makes three:
//! so the API server's time goes first to the requests that move pods forward. Events give
//! way to pod starts in progress (`give_way`) and follow at their own pace, keeping their
//! recorded times.

mod give_way;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use certs::rate_limit::{ApiRateLimit, Bucket};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

pub(crate) use self::give_way::StartInProgress;
use self::give_way::Starts;

use crate::backoff::Backoff;
use crate::unread_reply;

/// Events waiting to be written; past this, new ones are dropped (and logged), as the
/// kubelet's broadcaster drops them, rather than growing without bound during an outage or
/// a storm of starts.
const QUEUE: usize = 1000;
/// The kubelet's `eventRecordQPS` default (since Kubernetes 1.27). Unlike the API budget it
/// is not scaled up for 1,000 pods: events never hold a pod back, so they can wait.
const DEFAULT_QPS: u32 = 50;
/// The kubelet's `eventBurst` default: a few dozen starts' events go at once.
const DEFAULT_BURST: u32 = 100;

/// The kubelet's event budget: 50 events a second, 100 at once after a quiet spell.
pub fn default_limit() -> ApiRateLimit {
    ApiRateLimit {
        qps: NonZeroU32::new(DEFAULT_QPS).unwrap_or(NonZeroU32::MIN),
        burst: NonZeroU32::new(DEFAULT_BURST).unwrap_or(NonZeroU32::MIN),
    }
}

/// Events written at once. One, as the kubelet's broadcaster writes them: a write takes a
/// few milliseconds, so one at a time keeps well ahead of the budget, and while pods start
/// in a burst the API server has one event to handle beside their tokens and status
/// patches, not eight.
const IN_FLIGHT: usize = 1;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something a person should look at.
    Warning,
}

/// Writes events about pods and the node on behalf of one node.
#[derive(Clone, Debug)]
pub struct EventRecorder {
    /// None on a standalone node: there is no API server to record to.
    queue: Option<mpsc::Sender<Event>>,
    /// The pod starts in progress, which the writer gives way to.
    starts: Starts,
    node_name: String,
}

impl EventRecorder {
    /// A recorder reporting as wasmlet on `node_name`, writing at most `limit`. Spawns the
    /// task that writes the events; it ends when the last recorder is dropped. Without a
    /// client, events are only logged (at debug).
    pub fn new(client: Option<kube::Client>, node_name: &str, limit: ApiRateLimit) -> Self {
        let starts = Starts::default();
        let queue = client.map(|client| {
            let (queue, pending) = mpsc::channel(QUEUE);
            tokio::spawn(write_events(
                client,
                pending,
                limit.bucket(),
                starts.clone(),
            ));
            queue
        });
        Self {
            queue,
            starts,
            node_name: node_name.to_string(),
        }
    }

    /// A pod start beginning now: events wait while it is in progress (for a second at
    /// most) and a moment after, so that the API server answers its token request and
    /// status patch first.
    pub(crate) fn start_in_progress(&self) -> StartInProgress {
        match self.queue {
            Some(_) => self.starts.begin(),
            None => StartInProgress::untracked(),
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
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.metadata.name.clone().unwrap_or_default()),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        };
        self.emit(involved, kind, reason, message);
    }

    /// Records an event about the pod `key` names, for a provider that learns something
    /// about a pod on its own (a device it was granted failed).
    pub fn record_for(&self, key: &crate::PodKey, kind: EventType, reason: &str, message: &str) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: Some(key.uid.clone()),
            ..Default::default()
        };
        self.emit(involved, kind, reason, message);
    }

    /// Records an event about the node itself (`Starting`, `NodeReady`, …), as the kubelet
    /// does: in the `default` namespace, naming the node with its name as UID, where
    /// `kubectl describe node` finds it.
    pub fn record_node(&self, kind: EventType, reason: &str, message: &str) {
        let involved = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.node_name.clone()),
            uid: Some(self.node_name.clone()),
            ..Default::default()
        };
        self.emit(involved, kind, reason, message);
    }

    fn emit(&self, involved: ObjectReference, kind: EventType, reason: &str, message: &str) {
        let name = involved.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        // The API server takes an event about a cluster-scoped object (the node) only in the
        // legacy form, without `eventTime`, as the kubelet writes its node events.
        let event_time = involved.namespace.is_some().then_some(MicroTime(now));
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(
                    involved
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(crate::message::capped(message)),
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
            event_time,
            action: Some(reason.to_string()),
            count: Some(1),
            ..Default::default()
        };
        let Some(queue) = &self.queue else {
            debug!(object = %name, reason, message, "event (standalone node: not recorded)");
            return;
        };
        if let Err(err) = queue.try_send(event) {
            warn!(object = %name, reason, %err, "event dropped");
        }
    }
}

/// Whether a failed write may succeed later: the API server was unreachable, overloaded or
/// failing. A refusal (forbidden, a namespace that is gone) never will.
fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

/// An event waiting to be written, and since when.
#[derive(Debug)]
struct Queued {
    event: Event,
    at: Instant,
}

/// Adds `event` to `pending`, or counts it into an event already waiting there for the same
/// object, reason and message, as the kubelet's event correlator aggregates repeats.
fn queue_or_aggregate(pending: &mut VecDeque<Queued>, event: Event) -> bool {
    let same = |e: &Event| {
        e.involved_object == event.involved_object
            && e.reason == event.reason
            && e.message == event.message
            && e.type_ == event.type_
    };
    if let Some(Queued { event: waiting, .. }) = pending.iter_mut().find(|q| same(&q.event)) {
        waiting.count = Some(
            waiting
                .count
                .unwrap_or(1)
                .saturating_add(event.count.unwrap_or(1)),
        );
        waiting.last_timestamp = event.last_timestamp;
        return true;
    }
    if pending.len() >= QUEUE {
        return false;
    }
    pending.push_back(Queued {
        event,
        at: Instant::now(),
    });
    true
}

/// Writes queued events, one at a time and each with a token from `budget`, giving way to
/// `starts`. While the API server cannot be reached, events wait in order (aggregated, at
/// most [`QUEUE`]) and are written with their original times when it answers again; the
/// first failure pauses writing, retried with backoff up to 10 s.
async fn write_events(
    client: kube::Client,
    mut queue: mpsc::Receiver<Event>,
    budget: Bucket,
    starts: Starts,
) {
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut paused_until: Option<Instant> = None;
    let mut token_at: Option<Instant> = None;
    let mut held_until: Option<Instant> = None;
    let mut endings = starts.endings();
    let mut dropped = 0u64;
    // Every recorder is gone: what is pending is written, then the task ends. (`recv` would
    // answer at once from then on, and the loop spin while a write waits out a pause.)
    let mut closed = false;
    loop {
        if closed && pending.is_empty() && in_flight.is_empty() {
            return;
        }
        while paused_until.is_none()
            && token_at.is_none()
            && held_until.is_none()
            && in_flight.len() < IN_FLIGHT
            && let Some(next) = pending.front()
        {
            // A start that ends from here on wakes the loop.
            endings.mark_unchanged();
            held_until = starts.hold(next.at, Instant::now());
            if held_until.is_some() {
                break;
            }
            if let Err(wait) = certs::rate_limit::take(&budget) {
                token_at = Some(Instant::now() + wait);
                break;
            }
            let Some(Queued { event, at }) = pending.pop_front() else {
                break;
            };
            let client = client.clone();
            in_flight.push(async move {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client, &namespace);
                let result = unread_reply::create(&api, &PostParams::default(), &event).await;
                (Queued { event, at }, result)
            });
        }
        tokio::select! {
            received = queue.recv(), if !closed => match received {
                Some(event) => {
                    let queued = queue_or_aggregate(&mut pending, event);
                    dropped += u64::from(!queued);
                    if !queued && dropped.is_power_of_two() {
                        warn!(dropped, "event queue full (the API server is unreachable, or events come faster than --event-qps); dropping events");
                    }
                }
                None => closed = true,
            },
            Some((queued, result)) = in_flight.next() => {
                let event = &queued.event;
                let object = event.involved_object.name.clone().unwrap_or_default();
                let reason = event.reason.clone().unwrap_or_default();
                match result {
                    Ok(()) => {
                        backoff.reset();
                        debug!(%object, %reason, message = ?event.message, "event");
                    }
                    Err(err) if is_transient(&err) => {
                        if paused_until.is_none() {
                            let delay = backoff.next_delay();
                            debug!(%err, retry_in = ?delay, "cannot write events now; keeping them");
                            paused_until = Some(Instant::now() + delay);
                        }
                        // Back at the front, so events keep their order.
                        pending.push_front(queued);
                    }
                    Err(err) => warn!(%object, %reason, %err, "could not record event"),
                }
            }
            () = sleep_until(paused_until) => paused_until = None,
            () = sleep_until(token_at) => token_at = None,
            () = sleep_until(held_until) => held_until = None,
            Ok(()) = endings.changed(), if held_until.is_some() => held_until = None,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use kube::client::Body;

    use super::*;

    fn event(reason: &str, at: i64) -> Event {
        let time = Time(jiff::Timestamp::from_second(at).unwrap());
        Event {
            involved_object: ObjectReference {
                uid: Some("u1".into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some("m".into()),
            first_timestamp: Some(time.clone()),
            last_timestamp: Some(time),
            count: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_waiting_for_the_link_are_counted_into_one_event_with_both_times() {
        let mut pending = VecDeque::new();
        assert!(queue_or_aggregate(&mut pending, event("BackOff", 10)));
        assert!(queue_or_aggregate(&mut pending, event("Started", 11)));
        assert!(queue_or_aggregate(&mut pending, event("BackOff", 20)));
        assert_eq!(pending.len(), 2);
        let backoff = &pending[0].event;
        assert_eq!(backoff.count, Some(2));
        assert_eq!(backoff.first_timestamp.as_ref().unwrap().0.as_second(), 10);
        assert_eq!(backoff.last_timestamp.as_ref().unwrap().0.as_second(), 20);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut pending = VecDeque::new();
        for i in 0..QUEUE {
            let mut e = event("Pulled", 1);
            e.message = Some(format!("m{i}"));
            assert!(queue_or_aggregate(&mut pending, e));
        }
        let mut extra = event("Pulled", 1);
        extra.message = Some("one too many".into());
        assert!(!queue_or_aggregate(&mut pending, extra));
        assert_eq!(pending.len(), QUEUE);
        let mut repeat = event("Pulled", 2);
        repeat.message = Some("m0".into());
        assert!(
            queue_or_aggregate(&mut pending, repeat),
            "a repeat still counts when full"
        );
        assert_eq!(pending[0].event.count, Some(2));
    }

    type Handle = tower_test::mock::Handle<http::Request<Body>, http::Response<Body>>;

    /// Pod `default/p`, which the events are about.
    fn test_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A recorder for node `n` writing within `limit` to the API server `Handle` answers for.
    fn recorder(limit: ApiRateLimit) -> (EventRecorder, Handle) {
        let (service, handle) = tower_test::mock::pair();
        let recorder = EventRecorder::new(Some(kube::Client::new(service, "default")), "n", limit);
        (recorder, handle)
    }

    /// Answers the next event POST with the event it carried; returns its reason.
    async fn answer(handle: &mut Handle) -> String {
        let (request, send) = handle.next_request().await.expect("an event POST");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let event: Event = serde_json::from_slice(&bytes).unwrap();
        send.send_response(
            http::Response::builder()
                .status(201)
                .body(Body::from(bytes.to_vec()))
                .unwrap(),
        );
        event.reason.unwrap_or_default()
    }

    /// Events past the budget's burst wait for its refill, in order, and none is lost.
    #[tokio::test]
    async fn events_past_the_burst_wait_for_the_budget() {
        let (recorder, mut handle) = recorder(ApiRateLimit {
            qps: NonZeroU32::MIN,
            burst: NonZeroU32::new(2).unwrap(),
        });
        let pod = test_pod();
        for reason in ["Pulled", "Created", "Started"] {
            recorder.record(&pod, Some("app"), EventType::Normal, reason, "m");
        }
        let soon = Duration::from_secs(5);
        let first = tokio::time::timeout(soon, answer(&mut handle)).await;
        assert_eq!(first.unwrap(), "Pulled");
        let second = tokio::time::timeout(soon, answer(&mut handle)).await;
        assert_eq!(second.unwrap(), "Created");
        // One token a second: the third waits for most of one.
        let early = tokio::time::timeout(Duration::from_millis(500), answer(&mut handle)).await;
        assert!(
            early.is_err(),
            "the third event went before the budget had a token"
        );
        let third = tokio::time::timeout(soon, answer(&mut handle)).await;
        assert_eq!(third.unwrap(), "Started");
    }

    /// The next event is sent only once the one before it is answered, as the kubelet's
    /// broadcaster sends them: a burst of starts leaves the API server one event at a time.
    #[tokio::test]
    async fn one_event_is_written_at_a_time() {
        let (recorder, mut handle) = recorder(default_limit());
        let pod = test_pod();
        for reason in ["Pulled", "Created"] {
            recorder.record(&pod, Some("app"), EventType::Normal, reason, "m");
        }
        let soon = Duration::from_secs(5);
        let (first, respond) = tokio::time::timeout(soon, handle.next_request())
            .await
            .unwrap()
            .expect("the first event's POST");
        let second_early =
            tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(
            second_early.is_err(),
            "the second event was sent while the first was unanswered"
        );
        let bytes = first.into_body().collect_bytes().await.unwrap();
        respond.send_response(
            http::Response::builder()
                .status(201)
                .body(Body::from(bytes.to_vec()))
                .unwrap(),
        );
        let second = tokio::time::timeout(soon, answer(&mut handle)).await;
        assert_eq!(second.unwrap(), "Created");
    }

    /// An event recorded while a pod starts waits for the start to end, and a moment more
    /// for the next start to arrive.
    #[tokio::test(start_paused = true)]
    async fn events_wait_for_a_start_in_progress() {
        let (recorder, mut handle) = recorder(default_limit());
        let start = recorder.start_in_progress();
        recorder.record(&test_pod(), Some("app"), EventType::Normal, "Pulled", "m");
        let early = tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await;
        assert!(early.is_err(), "the event was written during the start");
        drop(start);
        let ended = Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(5), answer(&mut handle)).await;
        assert_eq!(reason.unwrap(), "Pulled");
        let waited = ended.elapsed();
        assert!(
            (Duration::from_millis(50)..Duration::from_millis(60)).contains(&waited),
            "the event waited {waited:?} after the start ended"
        );
    }

    /// A start that goes on (a large pull, a back-off) holds events back for a second, no
    /// more.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_start_holds_events_back_for_a_second() {
        let (recorder, mut handle) = recorder(default_limit());
        let _stalled = recorder.start_in_progress();
        let recorded = Instant::now();
        recorder.record(&test_pod(), Some("app"), EventType::Normal, "Pulling", "m");
        let reason = tokio::time::timeout(Duration::from_secs(5), answer(&mut handle)).await;
        assert_eq!(reason.unwrap(), "Pulling");
        let waited = recorded.elapsed();
        assert!(
            (Duration::from_secs(1)..Duration::from_millis(1100)).contains(&waited),
            "waited {waited:?}"
        );
    }

    /// The recorders gone (the agent stopping), an event held back is still written once
    /// its hold is over, and then the writer ends.
    #[tokio::test(start_paused = true)]
    async fn a_held_event_is_written_after_the_recorders_are_gone() {
        let (recorder, mut handle) = recorder(default_limit());
        let _stalled = recorder.start_in_progress();
        recorder.record(&test_pod(), Some("app"), EventType::Normal, "Killing", "m");
        drop(recorder);
        let reason = tokio::time::timeout(Duration::from_secs(5), answer(&mut handle)).await;
        assert_eq!(reason.unwrap(), "Killing");
        let after = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        assert!(
            after.expect("the writer ended").is_none(),
            "a request after the last event"
        );
    }

    /// A guest chooses part of some messages (a trap's backtrace): however long, the
    /// event written holds its start, within the cap.
    #[tokio::test]
    async fn a_message_of_any_length_is_written_capped() {
        let (recorder, mut handle) = recorder(default_limit());
        let long = format!("Error: wasm trap\n{}", "  0: f\n".repeat(100_000));
        recorder.record(
            &test_pod(),
            Some("app"),
            EventType::Warning,
            "Failed",
            &long,
        );
        let (request, _respond) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .unwrap()
                .expect("the event's POST");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let event: Event = serde_json::from_slice(&bytes).unwrap();
        let message = event.message.unwrap();
        assert!(message.len() <= crate::message::MAX_MESSAGE_BYTES);
        assert!(message.starts_with("Error: wasm trap"));
    }

    #[test]
    fn only_unreachable_or_failing_servers_are_retried() {
        let status = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(403)));
        assert!(!is_transient(&status(404)));
    }
}
