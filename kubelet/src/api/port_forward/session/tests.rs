//! A SPDY client, written as kubectl's spdystream behaves, against a session and a real TCP
//! echo server standing in for the pod.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// An echo server on loopback that counts the connections it accepted.
async fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut from, mut to) = connection.into_split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            });
        }
    });
    (port, accepted)
}

/// Pod `default/web` (uid-1), running on the node and declaring `ports`.
fn target(ports: &[u16]) -> Target {
    let pods = Arc::new(PodTable::default());
    pods.put("uid-1", Pod::default());
    pods.set_status("uid-1", phase("Running"));
    Target {
        pod: "default/web".into(),
        uid: "uid-1".into(),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports: ports.to_vec(),
        pods,
    }
}

fn phase(phase: &str) -> PodStatus {
    PodStatus {
        phase: Some(phase.into()),
        ..Default::default()
    }
}

struct Client {
    frames: Framed<DuplexStream, SpdyCodec>,
    deflater: HeaderDeflater,
    inflater: HeaderInflater,
    next_stream: u32,
}

/// What one stream received: its bytes, and whether the server half-closed it.
#[derive(Default, Debug)]
struct Received {
    bytes: Vec<u8>,
    fin: bool,
}

impl Client {
    fn connect(target: Target, limits: Limits) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(theirs, target, limits));
        Self {
            frames: Framed::new(ours, SpdyCodec),
            deflater: HeaderDeflater::new().unwrap(),
            inflater: HeaderInflater::new(),
            next_stream: 1,
        }
    }

    async fn open_with(&mut self, headers: &[(&str, &str)]) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        let block = self.deflater.block(headers).unwrap().into();
        self.send(Frame::SynStream {
            stream,
            fin: false,
            block,
        })
        .await;
        stream
    }

    async fn open(&mut self, kind: &str, port: u16, request: &str) -> u32 {
        let port = port.to_string();
        self.open_with(&[
            ("streamType", kind),
            ("port", &port),
            ("requestID", request),
        ])
        .await
    }

    async fn send(&mut self, frame: Frame) {
        self.frames.send(frame).await.unwrap();
    }

    async fn write(&mut self, stream: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// The next frame other than a stream's reply, whose header block must hold nothing.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.frames.next())
                .await
                .expect("no frame within the deadline")?
                .unwrap();
            match frame {
                Frame::SynReply { block, .. } => {
                    assert_eq!(self.inflater.pairs(&block).unwrap(), vec![]);
                }
                frame => return Some(frame),
            }
        }
    }

    async fn expect_reset(&mut self, stream: u32, status: u32) {
        assert_eq!(self.next().await, Some(Frame::RstStream { stream, status }));
    }

    /// Reads until every stream in `streams` is half-closed by the server.
    async fn until_closed(&mut self, streams: &[u32]) -> HashMap<u32, Received> {
        let mut received: HashMap<u32, Received> = HashMap::new();
        while !streams
            .iter()
            .all(|s| received.get(s).is_some_and(|r| r.fin))
        {
            match self.next().await.expect("the connection ended") {
                Frame::Data { stream, fin, data } => {
                    let entry = received.entry(stream).or_default();
                    assert!(!entry.fin, "data after FIN on stream {stream}");
                    entry.bytes.extend_from_slice(&data);
                    entry.fin |= fin;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        received
    }
}

#[tokio::test]
async fn a_pair_of_streams_forwards_one_connection_both_ways() {
    let (port, accepted) = echo_server().await;
    let mut client = Client::connect(target(&[port]), Limits::default());
    let error = client.open("error", port, "0").await;
    client.write(error, b"", true).await;
    let data = client.open("data", port, "0").await;
    client.write(data, b"hello, ", false).await;
    client.write(data, b"pod", true).await;
    let received = client.until_closed(&[data, error]).await;
    assert_eq!(received[&data].bytes, b"hello, pod");
    assert!(
        received.get(&error).is_none_or(|r| r.bytes.is_empty()),
        "error stream: {:?}",
        received[&error]
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn many_forwards_share_one_connection() {
    let (port, accepted) = echo_server().await;
    let mut client = Client::connect(target(&[port]), Limits::default());
    let mut expected = HashMap::new();
    let mut all = Vec::new();
    for request in 0..20 {
        let id = request.to_string();
        let error = client.open("error", port, &id).await;
        let data = client.open("data", port, &id).await;
        let payload = format!("request {request} ").repeat(request + 1);
        client.write(data, payload.as_bytes(), false).await;
        expected.insert(data, payload);
        all.extend([error, data]);
    }
    for &data in expected.keys() {
        client.write(data, b"", true).await;
    }
    let received = client.until_closed(&all).await;
    for (data, payload) in expected {
        assert_eq!(received[&data].bytes, payload.as_bytes());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_port_the_pod_does_not_declare_is_never_dialled() {
    let (port, accepted) = echo_server().await;
    let declared = port.wrapping_add(1);
    let mut client = Client::connect(target(&[declared]), Limits::default());
    let error = client.open("error", port, "0").await;
    let data = client.open("data", port, "0").await;
    let received = client.until_closed(&[error, data]).await;
    let message = String::from_utf8_lossy(&received[&error].bytes).into_owned();
    assert_eq!(
        message,
        format!(
            "error forwarding port {port} to pod default/web, uid uid-1: the pod declares no TCP containerPort {port}"
        )
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// A connection outlives its pod: once the pod has ended (its port may be another pod's
/// now), the next forward is refused, not dialled.
#[tokio::test]
async fn a_pod_that_ended_is_not_dialled_again() {
    let (port, accepted) = echo_server().await;
    let target = target(&[port]);
    let pods = target.pods.clone();
    let mut client = Client::connect(target, Limits::default());
    let error = client.open("error", port, "0").await;
    let data = client.open("data", port, "0").await;
    client.write(data, b"ping", true).await;
    let received = client.until_closed(&[error, data]).await;
    assert_eq!(received[&data].bytes, b"ping");

    pods.set_status("uid-1", phase("Succeeded"));
    let error = client.open("error", port, "1").await;
    let data = client.open("data", port, "1").await;
    let received = client.until_closed(&[error, data]).await;
    let message = String::from_utf8_lossy(&received[&error].bytes).into_owned();
    assert_eq!(
        message,
        format!(
            "error forwarding port {port} to pod default/web, uid uid-1: the pod is no longer running"
        )
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_declared_port_nobody_serves_is_reported_on_the_error_stream() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut client = Client::connect(target(&[port]), Limits::default());
    let error = client.open("error", port, "7").await;
    let data = client.open("data", port, "7").await;
    let received = client.until_closed(&[error, data]).await;
    let message = String::from_utf8_lossy(&received[&error].bytes).into_owned();
    assert!(
        message.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{message}"
    );
}

#[tokio::test]
async fn streams_without_a_request_id_pair_as_older_clients_open_them() {
    let (port, _) = echo_server().await;
    let mut client = Client::connect(target(&[port]), Limits::default());
    let port_text = port.to_string();
    let error = client
        .open_with(&[("streamtype", "error"), ("port", &port_text)])
        .await;
    let data = client
        .open_with(&[("streamtype", "data"), ("port", &port_text)])
        .await;
    client.write(data, b"old", true).await;
    let received = client.until_closed(&[error, data]).await;
    assert_eq!(received[&data].bytes, b"old");
}

#[tokio::test]
async fn bad_streams_are_reset_and_pings_answered() {
    let (port, _) = echo_server().await;
    let mut client = Client::connect(target(&[port]), Limits::default());
    let no_port = client.open_with(&[("streamtype", "data")]).await;
    client.expect_reset(no_port, status::CANCEL).await;
    let bad_kind = client.open("stdin", port, "1").await;
    client.expect_reset(bad_kind, status::CANCEL).await;
    // A second data stream for one request.
    let _error = client.open("error", port, "2").await;
    let _data = client.open("data", port, "2").await;
    let twice = client.open("data", port, "2").await;
    client.expect_reset(twice, status::PROTOCOL_ERROR).await;
    client.send(Frame::Ping { id: 41 }).await;
    assert_eq!(client.next().await, Some(Frame::Ping { id: 41 }));
}

#[tokio::test]
async fn a_stream_whose_partner_never_comes_is_closed_with_a_message() {
    let limits = Limits {
        pair_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut client = Client::connect(target(&[80]), limits);
    let error = client.open("error", 80, "3").await;
    let received = client.until_closed(&[error]).await;
    assert_eq!(
        received[&error].bytes,
        b"timed out waiting for the streams of request 3"
    );
}

#[tokio::test]
async fn forwards_past_the_bound_are_refused() {
    let limits = Limits {
        max_forwards: 1,
        ..Limits::default()
    };
    let mut client = Client::connect(target(&[80]), limits);
    let _first = client.open("error", 80, "1").await;
    let second = client.open("error", 80, "2").await;
    client.expect_reset(second, status::REFUSED_STREAM).await;
}

#[tokio::test]
async fn an_unreadable_frame_ends_the_connection_with_goaway() {
    let mut client = Client::connect(target(&[80]), Limits::default());
    let _ = client.open("error", 80, "1").await;
    // A SPDY/2 control frame.
    let raw = client.frames.get_mut();
    raw.write_all(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        client.next().await,
        Some(Frame::GoAway {
            last_good: 1,
            status: GOAWAY_PROTOCOL_ERROR
        })
    );
    assert_eq!(client.next().await, None);
}
