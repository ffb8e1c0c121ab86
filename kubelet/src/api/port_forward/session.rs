//! One `portforward.k8s.io` connection: the client opens an error and a data stream per
//! forwarded connection, matched by their `requestID`; when both are open the node connects
//! to the pod's port and copies bytes both ways until the pod's side ends, then closes both
//! streams. What went wrong is written on the error stream, which `kubectl` prints.
//!
//! One task reads frames and owns every stream's state; one task writes frames (and owns the
//! header compressor, whose output depends on the order of writing); one task per forward
//! copies bytes. Backpressure: the reader waits while a forward's pod side is slow, as
//! spdystream's frame workers do, since the protocol has no flow control in Kubernetes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tracing::debug;

use super::frame::{Frame, FrameError, SpdyCodec, status};
use super::headers::{self, HeaderDeflater, HeaderInflater};
use crate::pod::table::PodTable;

/// Frames waiting for the writer.
const OUTGOING_QUEUE: usize = 64;
/// Pieces of the client's bytes waiting for one forward's pod side: with frames of at most
/// `frame::MAX_PAYLOAD`, at most 1 MiB per forward, 128 MiB for a session's forwards.
const INBOUND_QUEUE: usize = 4;
/// The most read from the pod per data frame: what kubectl writes per frame.
const CHUNK: usize = 32 * 1024;
/// GOAWAY status codes (SPDY/3 section 2.6.6).
const GOAWAY_OK: u32 = 0;
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Where a connection forwards to: the pod's address and the TCP ports it declares. A Wasm
/// pod shares the node's network, so only its declared ports are its own: any other port
/// on that address belongs to the node or another pod and is never dialled.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// `namespace/name`, for messages.
    pub pod: String,
    pub uid: String,
    pub ip: IpAddr,
    pub ports: Vec<u16>,
    /// The node's pods: a connection outlives its pod, and the pod's ports may be another
    /// pod's by the next dial, so each dial first asks whether the pod still runs.
    pub pods: Arc<PodTable>,
}

impl Target {
    /// Whether the pod is still on the node and running (the kubelet's forwards end with
    /// the pod's network namespace; here the address is shared).
    fn still_running(&self) -> bool {
        self.pods
            .status(&self.uid)
            .is_some_and(|status| status.phase.as_deref() == Some("Running"))
    }
}

/// The bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Forwards open at once, each a pair of streams.
    pub max_forwards: usize,
    /// How long the first stream of a pair waits for the second (the kubelet's stream
    /// creation timeout).
    pub pair_timeout: Duration,
    /// A connection without a frame for this long is closed (the kubelet's streaming
    /// connection idle timeout).
    pub idle_timeout: Duration,
    /// How long connecting to the pod's port may take.
    pub dial_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_forwards: 128,
            pair_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            dial_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves one upgraded connection until the client closes it.
pub(super) async fn serve<T>(io: T, target: Target, limits: Limits)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sink, mut frames) = Framed::new(io, SpdyCodec).split();
    let (out, queue) = mpsc::channel(OUTGOING_QUEUE);
    let writer = tokio::spawn(write_frames(sink, queue));
    let mut session = Session {
        target,
        limits,
        out,
        inflater: HeaderInflater::new(),
        streams: HashMap::new(),
        pairs: HashMap::new(),
        next_deadline: None,
        forwards: JoinSet::new(),
        last_stream: 0,
        going_away: false,
    };
    session.run(&mut frames).await;
    // Dropping the session aborts its forwards and lets the writer drain and close.
    drop(session);
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        debug!("port-forward connection: the client stopped reading");
    }
}

enum Outgoing {
    /// A SYN_REPLY with no headers; compressed by the writer, in writing order.
    Reply(u32),
    Frame(Frame),
}

async fn write_frames<S>(mut sink: S, mut queue: mpsc::Receiver<Outgoing>)
where
    S: Sink<Frame, Error = FrameError> + Unpin,
{
    let mut deflater = match HeaderDeflater::new() {
        Ok(deflater) => deflater,
        Err(err) => return debug!(%err, "port-forward: no header compressor"),
    };
    while let Some(next) = queue.recv().await {
        let frame = match next {
            Outgoing::Reply(stream) => match deflater.block(&[]) {
                Ok(block) => Frame::SynReply {
                    stream,
                    block: block.into(),
                },
                Err(err) => return debug!(%err, "port-forward: header compression failed"),
            },
            Outgoing::Frame(frame) => frame,
        };
        // Frames queued behind this one go out in the same flush.
        let written = if queue.is_empty() {
            sink.send(frame).await
        } else {
            sink.feed(frame).await
        };
        if let Err(err) = written {
            return debug!(%err, "port-forward: writing to the client failed");
        }
    }
    let _ = sink.close().await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// What a SYN_STREAM asks for.
pub(super) struct Opening {
    kind: Kind,
    port: u16,
    request: String,
}

impl Opening {
    /// Read as the kubelet reads it; older clients without `requestID` pair a data stream
    /// with the error stream opened just before it.
    pub(super) fn parse(pairs: &[(String, String)], stream: u32) -> Result<Self, String> {
        let port = headers::value(pairs, "port").ok_or("\"port\" header is required")?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("unable to parse {port:?} as a port"))?;
        let kind = match headers::value(pairs, "streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            Some(other) => return Err(format!("invalid stream type {other:?}")),
            None => return Err("\"streamType\" header is required".into()),
        };
        let request = match headers::value(pairs, "requestid") {
            Some(id) => id.to_owned(),
            None if kind == Kind::Error => stream.to_string(),
            None => stream.saturating_sub(2).to_string(),
        };
        Ok(Self {
            kind,
            port,
            request,
        })
    }
}

struct StreamEntry {
    request: String,
    /// Where the client's bytes go, until it half-closes (data streams only).
    inbound: Option<mpsc::Sender<Bytes>>,
    /// Its pair's forward is running: the pod's side drains `inbound`.
    started: bool,
}

struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// The data stream's bytes, until the forward takes them.
    inbound: Option<mpsc::Receiver<Bytes>>,
    deadline: Instant,
    forward: Option<AbortHandle>,
}

struct Session {
    target: Target,
    limits: Limits,
    out: mpsc::Sender<Outgoing>,
    inflater: HeaderInflater,
    streams: HashMap<u32, StreamEntry>,
    pairs: HashMap<String, Pair>,
    /// The earliest deadline of a pair still waiting for its second stream; kept as pairs
    /// open, start and go, so a data frame costs no scan of the pairs.
    next_deadline: Option<Instant>,
    forwards: JoinSet<String>,
    last_stream: u32,
    going_away: bool,
}

impl Session {
    async fn run<S>(&mut self, frames: &mut S)
    where
        S: futures::Stream<Item = Result<Frame, FrameError>> + Unpin,
    {
        loop {
            if self.going_away && self.pairs.is_empty() {
                return;
            }
            let waiting = self.next_deadline;
            tokio::select! {
                next = tokio::time::timeout(self.limits.idle_timeout, frames.next()) => {
                    match next {
                        Err(_) => {
                            debug!("port-forward connection idle; closing it");
                            return self.go_away(GOAWAY_OK).await;
                        }
                        Ok(None) => return,
                        Ok(Some(Err(err))) => {
                            debug!(%err, "port-forward: unreadable frame");
                            return self.go_away(GOAWAY_PROTOCOL_ERROR).await;
                        }
                        Ok(Some(Ok(frame))) => {
                            if !self.on_frame(frame).await {
                                return self.go_away(GOAWAY_PROTOCOL_ERROR).await;
                            }
                        }
                    }
                }
                Some(done) = self.forwards.join_next(), if !self.forwards.is_empty() => {
                    // An aborted forward was forgotten when it was aborted.
                    if let Ok(request) = done {
                        self.forget(&request);
                    }
                }
                () = tokio::time::sleep_until(waiting.unwrap_or_else(Instant::now)), if waiting.is_some() => {
                    self.expire_waiting().await;
                }
            }
        }
    }

    /// Handles one frame; false when the connection cannot go on.
    async fn on_frame(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::SynStream { stream, fin, block } => return self.open(stream, fin, &block).await,
            Frame::Data { stream, fin, data } => self.data(stream, fin, data).await,
            Frame::RstStream { stream, .. } => {
                if let Some(request) = self.streams.get(&stream).map(|s| s.request.clone()) {
                    self.forget(&request);
                }
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            // The client opens no new streams; those open finish.
            Frame::GoAway { .. } => self.going_away = true,
            // The server opens no streams, so there is nothing for the client to answer.
            Frame::SynReply { stream, .. } => self.reset(stream, status::PROTOCOL_ERROR).await,
            Frame::Ignored { .. } => {}
        }
        true
    }

    async fn open(&mut self, stream: u32, fin: bool, block: &[u8]) -> bool {
        // Inflated even for a stream that is refused: the header stream must stay in step.
        let pairs = match self.inflater.pairs(block) {
            Ok(pairs) => pairs,
            Err(err) => {
                debug!(%err, "port-forward: unreadable header block");
                return false;
            }
        };
        // Client streams are odd and increasing (SPDY/3 section 2.3.2).
        if stream.is_multiple_of(2) || stream <= self.last_stream {
            self.reset(stream, status::PROTOCOL_ERROR).await;
            return true;
        }
        self.last_stream = stream;
        if self.going_away {
            self.reset(stream, status::REFUSED_STREAM).await;
            return true;
        }
        let opening = match Opening::parse(&pairs, stream) {
            Ok(opening) => opening,
            Err(why) => {
                debug!(stream, %why, "port-forward: stream refused");
                self.reset(stream, status::CANCEL).await;
                return true;
            }
        };
        if !self.pairs.contains_key(&opening.request)
            && self.pairs.len() >= self.limits.max_forwards
        {
            self.reset(stream, status::REFUSED_STREAM).await;
            return true;
        }
        let deadline = Instant::now() + self.limits.pair_timeout;
        let pair = self
            .pairs
            .entry(opening.request.clone())
            .or_insert_with(|| Pair {
                port: opening.port,
                error: None,
                data: None,
                inbound: None,
                deadline,
                forward: None,
            });
        let slot = match opening.kind {
            Kind::Error => &mut pair.error,
            Kind::Data => &mut pair.data,
        };
        if slot.is_some() || pair.forward.is_some() {
            debug!(stream, request = %opening.request, "port-forward: a stream of this kind is already assigned");
            self.reset(stream, status::PROTOCOL_ERROR).await;
            return true;
        }
        *slot = Some(stream);
        let mut inbound = None;
        if opening.kind == Kind::Data {
            // The data stream's port is the one forwarded, as the kubelet's.
            pair.port = opening.port;
            let (sender, receiver) = mpsc::channel(INBOUND_QUEUE);
            pair.inbound = Some(receiver);
            inbound = (!fin).then_some(sender);
        }
        self.streams.insert(
            stream,
            StreamEntry {
                request: opening.request.clone(),
                inbound,
                started: false,
            },
        );
        self.queue(Outgoing::Reply(stream)).await;
        self.start(&opening.request);
        self.refresh_deadline();
        true
    }

    /// Starts the forward of a pair whose two streams are open.
    fn start(&mut self, request: &str) {
        let Some(pair) = self.pairs.get_mut(request) else {
            return;
        };
        let (Some(error), Some(data)) = (pair.error, pair.data) else {
            return;
        };
        let Some(inbound) = pair.inbound.take() else {
            return;
        };
        let forward = Forward {
            target: self.target.clone(),
            port: pair.port,
            error,
            data,
            out: self.out.clone(),
            dial_timeout: self.limits.dial_timeout,
        };
        for stream in [error, data] {
            if let Some(entry) = self.streams.get_mut(&stream) {
                entry.started = true;
            }
        }
        let request = request.to_owned();
        pair.forward = Some(self.forwards.spawn(async move {
            forward.run(inbound).await;
            request
        }));
    }

    fn refresh_deadline(&mut self) {
        self.next_deadline = self
            .pairs
            .values()
            .filter(|pair| pair.forward.is_none())
            .map(|pair| pair.deadline)
            .min();
    }

    async fn data(&mut self, stream: u32, fin: bool, data: Bytes) {
        // Data on a stream that is gone (reset or finished) is dropped, as spdystream does.
        let Some(entry) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut overflow = false;
        if let Some(inbound) = &entry.inbound
            && !data.is_empty()
        {
            if entry.started {
                // The forward may have ended; its bytes then have nowhere to go. A pod side
                // that takes nothing for the idle timeout would hold the whole connection
                // (this reader waits, and sees no other frame): its stream is reset.
                let sent = tokio::time::timeout(self.limits.idle_timeout, inbound.send(data));
                overflow = sent.await.is_err();
            } else {
                // Before the pair is complete nothing drains the queue: a client that fills
                // it is not waited for.
                overflow = inbound.try_send(data).is_err();
            }
        }
        if fin {
            entry.inbound = None;
        }
        if overflow {
            let request = entry.request.clone();
            self.forget(&request);
            self.reset(stream, status::PROTOCOL_ERROR).await;
        }
    }

    /// Pairs still missing a stream after the timeout: the error goes on the error stream
    /// if there is one, as the kubelet's.
    async fn expire_waiting(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, pair)| pair.forward.is_none() && pair.deadline <= now)
            .map(|(request, _)| request.clone())
            .collect();
        for request in expired {
            let Some(pair) = self.pairs.get(&request) else {
                continue;
            };
            let (error, data) = (pair.error, pair.data);
            if let Some(error) = error {
                let message = format!("timed out waiting for the streams of request {request}");
                self.queue(data_frame(error, message.into_bytes().into(), false))
                    .await;
                self.queue(data_frame(error, Bytes::new(), true)).await;
            }
            if let Some(data) = data {
                self.reset(data, status::CANCEL).await;
            }
            self.forget(&request);
        }
    }

    /// Drops a pair and its streams, stopping its forward.
    fn forget(&mut self, request: &str) {
        if let Some(pair) = self.pairs.remove(request) {
            for stream in [pair.error, pair.data].into_iter().flatten() {
                self.streams.remove(&stream);
            }
            match pair.forward {
                Some(forward) => forward.abort(),
                None => self.refresh_deadline(),
            }
        }
    }

    async fn reset(&mut self, stream: u32, status: u32) {
        self.send(Frame::RstStream { stream, status }).await;
    }

    async fn go_away(&mut self, status: u32) {
        let last_good = self.last_stream;
        self.send(Frame::GoAway { last_good, status }).await;
    }

    async fn send(&mut self, frame: Frame) {
        self.queue(Outgoing::Frame(frame)).await;
    }

    async fn queue(&mut self, outgoing: Outgoing) {
        // The writer is gone only when the client is; the reader sees that next.
        let _ = self.out.send(outgoing).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forwards.abort_all();
    }
}

fn data_frame(stream: u32, data: Bytes, fin: bool) -> Outgoing {
    Outgoing::Frame(Frame::Data { stream, fin, data })
}

/// One forwarded connection: a pair of streams and a TCP connection to the pod.
struct Forward {
    target: Target,
    port: u16,
    error: u32,
    data: u32,
    out: mpsc::Sender<Outgoing>,
    dial_timeout: Duration,
}

impl Forward {
    async fn run(self, inbound: mpsc::Receiver<Bytes>) {
        if let Err(why) = self.copy(inbound).await {
            let message = format!(
                "error forwarding port {} to pod {}, uid {}: {why}",
                self.port, self.target.pod, self.target.uid
            );
            debug!(%message, "port-forward");
            let _ = self
                .out
                .send(data_frame(self.error, message.into_bytes().into(), false))
                .await;
        }
        for stream in [self.data, self.error] {
            let _ = self.out.send(data_frame(stream, Bytes::new(), true)).await;
        }
    }

    /// Copies until the pod's side ends; the client's half-close only ends what is sent to
    /// the pod, as a TCP peer expects.
    async fn copy(&self, mut inbound: mpsc::Receiver<Bytes>) -> Result<(), String> {
        if !self.target.ports.contains(&self.port) {
            return Err(format!(
                "the pod declares no TCP containerPort {}",
                self.port
            ));
        }
        if !self.target.still_running() {
            return Err("the pod is no longer running".into());
        }
        let address = SocketAddr::new(self.target.ip, self.port);
        let connection =
            match tokio::time::timeout(self.dial_timeout, TcpStream::connect(address)).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(err)) => return Err(format!("cannot connect to {address}: {err}")),
                Err(_) => return Err(format!("connecting to {address} timed out")),
            };
        let _ = connection.set_nodelay(true);
        let (mut from_pod, mut to_pod) = connection.into_split();
        let upstream = async move {
            while let Some(piece) = inbound.recv().await {
                if to_pod.write_all(&piece).await.is_err() {
                    return;
                }
            }
            let _ = to_pod.shutdown().await;
        };
        let downstream = async {
            let mut buffer = vec![0; CHUNK];
            loop {
                let read = from_pod
                    .read(&mut buffer)
                    .await
                    .map_err(|err| format!("reading from {address}: {err}"))?;
                let Some(piece) = buffer.get(..read).filter(|piece| !piece.is_empty()) else {
                    return Ok(());
                };
                self.out
                    .send(data_frame(self.data, Bytes::copy_from_slice(piece), false))
                    .await
                    .map_err(|_| "the client went away".to_string())?;
            }
        };
        tokio::pin!(upstream, downstream);
        let mut upstream_done = false;
        loop {
            tokio::select! {
                result = &mut downstream => return result,
                () = &mut upstream, if !upstream_done => upstream_done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests;
