//! Serving a `wasi:http/proxy` component, as runwasi and Spin serve them: a listener on the
//! node's address at each TCP `containerPort`, and a fresh instance per request from the
//! pre-instantiated component (the pooling allocator makes that cheap).
//!
//! Each instance has the container's memory limit; the container's CPU limit is one quota
//! shared by all of its requests. At most `max_concurrent` requests run at once, and one
//! past that is answered 503 at once rather than queued. Connections are bounded too, and a
//! client that does not send its headers in time is dropped. The guest's output and one
//! access line per request go to the container's log. Stopping the container stops
//! accepting, lets open connections finish the request they are on, and waits for every
//! request in flight (the agent aborts the task if that outlasts the grace period).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use kubelet::logs::LogStream;
use kubelet::usage::ContainerUsage;
use kubelet::{ContainerError, ContainerExit, ContainerStart, Mount};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::guest::{OUTPUT_BUDGET, P2Host, Plan, limits_for, yield_every_tick};
use crate::http::OutboundHttp;
use crate::metering::{ContainerMemory, CpuQuota, SharedQuota, cpu_metered};
use crate::pool::{InstanceNeeds, RequestRoom, RoomTaken};
use crate::response_body::holding_guest;

/// The pod annotation that sets how many requests a container serves at once.
pub const MAX_CONCURRENT_INBOUND: &str = "wasmlet.dev/max-concurrent-inbound-requests";
/// Requests a container serves at once unless its pod says otherwise.
pub const DEFAULT_MAX_CONCURRENT: u32 = 16;
/// The most a pod may ask for: each request is an instance from the node's shared pool.
const MOST_CONCURRENT: u32 = 1024;
/// Open connections per container; one more is closed at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to pause accepting after `accept` fails.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long a handler has to start its response before the request gets a 504.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many requests the pod's annotation allows at once, or why it is malformed.
pub(crate) fn max_concurrent(annotations: &BTreeMap<String, String>) -> Result<u32, String> {
    let Some(text) = annotations.get(MAX_CONCURRENT_INBOUND) else {
        return Ok(DEFAULT_MAX_CONCURRENT);
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MOST_CONCURRENT).contains(n))
        .ok_or_else(|| {
            format!(
                "annotation {MAX_CONCURRENT_INBOUND}: {text:?} is not a number of requests from 1 to {MOST_CONCURRENT}"
            )
        })
}

/// Everything one request's instance is made from.
struct Handler {
    engine: Engine,
    pre: ProxyPre<P2Host>,
    room: RequestRoom,
    /// What one request's instance takes.
    needs: InstanceNeeds,
    plan: Plan,
    root_dir: PathBuf,
    mounts: Vec<Mount>,
    /// The container's memory, shared by its requests' instances: its limit holds for all
    /// of them together.
    memory: Arc<ContainerMemory>,
    usage: Arc<ContainerUsage>,
    quota: Option<SharedQuota>,
    /// The container's stdout and stderr, from which each instance gets writers of its own.
    logs: Mutex<(LogStream, LogStream)>,
    requests: Arc<Semaphore>,
    max_concurrent: u32,
    /// Outbound HTTP's hooks, cloned for each request: its requests share the container's
    /// bounds on requests in flight and open connections.
    outbound: OutboundHttp,
    /// Cancelled when serving ends, drained or killed (the agent drops the serving task when
    /// the grace period runs out): connections and instances still running then end with it
    /// rather than outlive their pod.
    ended: CancellationToken,
}

/// What a served container runs: its pre-linked component, the engine it was compiled for,
/// and the room the node leaves to requests.
pub(crate) struct Served {
    pub(crate) engine: Engine,
    pub(crate) pre: ProxyPre<P2Host>,
    pub(crate) room: RequestRoom,
}

/// Binds every port of `start` on `address`, then serves until `start.stop`. A port that
/// cannot be bound fails the start, which the kubelet retries with back-off.
pub(crate) async fn listen(
    served: Served,
    plan: Plan,
    start: ContainerStart,
    address: IpAddr,
    max_concurrent: u32,
    memory: Arc<ContainerMemory>,
) -> Result<impl Future<Output = ContainerExit> + Send + 'static, ContainerError> {
    if start.ports.is_empty() {
        return Err(ContainerError {
            reason: "ContainerCannotRun".into(),
            message: format!(
                "container {:?} is a wasi:http/proxy component but declares no TCP containerPort to serve it on",
                start.container
            ),
            fatal: true,
        });
    }
    let mut listeners = Vec::with_capacity(start.ports.len());
    for port in &start.ports {
        let at = SocketAddr::new(address, *port);
        let listener = TcpListener::bind(at).await.map_err(|e| ContainerError {
            reason: "ContainerCannotRun".into(),
            message: format!("cannot listen on {at}: {e}"),
            fatal: false,
        })?;
        listeners.push(listener);
    }
    let stop = start.stop.clone();
    let quota = start
        .cpu_limit_millis
        .and_then(|millicores| CpuQuota::shared(millicores, tokio::time::Instant::now()));
    let outbound = OutboundHttp::new(plan.outbound().clone(), &start.pod, &start.container);
    let Served { engine, pre, room } = served;
    let needs = InstanceNeeds::of(pre.instance_pre().component());
    let handler = Arc::new(Handler {
        engine,
        pre,
        room,
        needs,
        plan,
        root_dir: start.root_dir,
        mounts: start.mounts,
        memory,
        usage: start.usage,
        quota,
        logs: Mutex::new((start.stdout, start.stderr)),
        requests: Arc::new(Semaphore::new(max_concurrent as usize)),
        max_concurrent,
        ended: CancellationToken::new(),
        outbound,
    });
    let ports: Vec<String> = start.ports.iter().map(ToString::to_string).collect();
    handler
        .note(&format!(
            "wasmlet: serving wasi:http on {address} port {} (at most {max_concurrent} requests at once)",
            ports.join(", ")
        ))
        .await;
    Ok(serve(handler, listeners, stop))
}

/// Accepts connections on every listener until `stop`, then drains.
async fn serve(
    handler: Arc<Handler>,
    listeners: Vec<TcpListener>,
    stop: CancellationToken,
) -> ContainerExit {
    let _end_with_serving = handler.ended.clone().drop_guard();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(
            listener,
            handler.clone(),
            connections.clone(),
            stop.clone(),
        ));
    }
    while accepting.join_next().await.is_some() {}
    // Every connection holds a permit until it closes; after a graceful shutdown that is
    // once its request in flight has been answered.
    let _ = connections.acquire_many(MAX_CONNECTIONS as u32).await;
    let _ = handler.requests.acquire_many(handler.max_concurrent).await;
    handler
        .note("wasmlet: stopped serving; every request in flight was answered")
        .await;
    ContainerExit {
        exit_code: 0,
        reason: "Completed".into(),
        message: None,
    }
}

/// One listener's accept loop.
async fn accept(
    listener: TcpListener,
    handler: Arc<Handler>,
    connections: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: pause rather than spin on the error.
                Err(_) => {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // Past the bound the connection is closed at once (dropped), not queued.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        // A response's head and body go out as separate writes; with Nagle's algorithm the
        // body waits for the client's delayed ACK of the head, 40 ms on Linux.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        let ended = handler.ended.clone();
        tokio::spawn(ended.run_until_cancelled_owned(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler.handle(request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        }));
    }
}

impl Handler {
    /// Answers one request and writes its access line.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let began = Instant::now();
        let line = format!("{} {}", request.method(), request.uri());
        let response = match self.requests.clone().try_acquire_owned() {
            Ok(permit) => match self.respond(request, permit).await {
                Ok(response) => response,
                Err((status, why)) => {
                    self.note(&format!("wasmlet: {line}: {why}")).await;
                    plain(status, &why)
                }
            },
            Err(_) => plain(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "this pod is serving {} requests already; try again",
                    self.max_concurrent
                ),
            ),
        };
        self.note(&format!(
            "{line} {} {:.1}ms",
            response.status().as_u16(),
            began.elapsed().as_secs_f64() * 1e3
        ))
        .await;
        response
    }

    /// Runs a fresh instance's handler for `request`; `permit` is held until the instance
    /// is done, streaming its body included.
    async fn respond(
        &self,
        request: hyper::Request<Incoming>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<hyper::Response<HyperOutgoingBody>, (hyper::StatusCode, String)> {
        let failed = |why: String| (hyper::StatusCode::INTERNAL_SERVER_ERROR, why);
        let mut builder = WasiCtxBuilder::new();
        self.plan
            .configure(&mut builder, &self.root_dir, &self.mounts)
            .await
            .map_err(failed)?;
        let (stdout, stderr) = {
            let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            (logs.0.duplicate(), logs.1.duplicate())
        };
        builder
            .stdout(AsyncStdoutStream::new(OUTPUT_BUDGET, stdout))
            .stderr(AsyncStdoutStream::new(OUTPUT_BUDGET, stderr));
        let outbound = self.outbound.clone();
        let limits = limits_for(&self.memory);
        let host = P2Host::new(builder.build(), outbound, limits, &self.plan.extensions);
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        yield_every_tick(&mut store);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let method = request.method().clone();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| failed(format!("cannot take the request: {e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| failed(format!("cannot take the request: {e:#}")))?;
        // The node's instances are shared with its pods: when their room for requests is
        // taken, or the pool is full, say so as a busy server. Taken just before
        // instantiating, so that requests between the two are as few as can be.
        let room = self
            .room
            .take(&self.engine, self.needs)
            .map_err(|why| (hyper::StatusCode::SERVICE_UNAVAILABLE, why))?;
        let proxy = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            (
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot start an instance: {e:#}"),
            )
        })?;
        let usage = self.usage.clone();
        let quota = self.quota.clone();
        let ended = self.ended.clone();
        // The instance goes if the request does: a client that hangs up drops this future
        // (hyper drops the service's), and a guest left running would keep its permit and
        // its CPU until it ended on its own. An answered request's instance goes with its
        // body ([`holding_guest`]).
        let mut guest = AbortOnDropHandle::new(tokio::spawn(async move {
            let _permit = permit;
            let _room: RoomTaken = room;
            let handling = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out);
            // An instance still streaming its body when serving ends goes with it.
            ended
                .run_until_cancelled(cpu_metered(handling, &usage, quota))
                .await
                .unwrap_or_else(|| Err(wasmtime::format_err!("the container was stopped")))
        }));
        match tokio::time::timeout(RESPONSE_TIMEOUT, receiver).await {
            Ok(Ok(Ok(response))) => {
                Ok(holding_guest(response, &method, guest).map(HyperOutgoingBody::new))
            }
            Ok(Ok(Err(code))) => Err(failed(format!("the handler answered with error {code:?}"))),
            // The instance ended without answering: say how.
            Ok(Err(_)) => Err(failed(match (&mut guest).await {
                Ok(Ok(())) => "the handler returned without a response".into(),
                Ok(Err(e)) => format!("the handler failed: {e:#}"),
                Err(e) => format!("the handler failed: {e}"),
            })),
            Err(_) => Err((
                hyper::StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the handler did not answer within {} s",
                    RESPONSE_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// One line from wasmlet in the container's log (stdout).
    async fn note(&self, line: &str) {
        let mut out = {
            let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            logs.0.duplicate()
        };
        let _ = out.write_all(format!("{line}\n").as_bytes()).await;
    }
}

/// A short plain-text response from wasmlet itself.
fn plain(status: hyper::StatusCode, text: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_concurrency_annotation_is_a_bounded_count() {
        let with = |value: &str| {
            max_concurrent(&BTreeMap::from([(
                MAX_CONCURRENT_INBOUND.to_string(),
                value.to_string(),
            )]))
        };
        assert_eq!(max_concurrent(&BTreeMap::new()), Ok(DEFAULT_MAX_CONCURRENT));
        assert_eq!(with("1"), Ok(1));
        assert_eq!(with(" 64 "), Ok(64));
        for bad in ["0", "-1", "lots", "1025", ""] {
            let err = with(bad).unwrap_err();
            assert!(err.contains(MAX_CONCURRENT_INBOUND), "{err}");
        }
    }
}
