//! Outbound HTTP for components: wasmtime-wasi-http's hooks for one container instance, which
//! let a request through only where the pod's [`HttpPolicy`] and the node's egress policy
//! allow, and bound what a guest can hold on the node.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use kubelet::PodKey;
use tokio::sync::Semaphore;
use wasi_policy::HttpPolicy;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::egress::SendResult;

/// Distinct denied authorities warned about per instance; later denials log at debug, so a
/// guest retrying in a loop cannot flood the node's log.
const WARNED_AUTHORITIES: usize = 64;
/// Connections a container instance may hold open: from the connect until its response body
/// is read or dropped. Each is a socket and hyper's buffers on the node, and a guest that
/// never reads its responses would otherwise hold as many as its resource table has handles.
/// Past it a request fails at once with `connection-limit-reached`.
const OPEN_CONNECTIONS: usize = 128;
/// The largest write a guest may make to an outgoing body; one more is buffered while hyper
/// sends. wasmtime-wasi-http's default is 1 MiB, which lets a guest that fills bodies it never
/// sends hold 2 MiB of node memory per body; at 16 KiB, every body a full resource table can
/// hold (a third of its 16,384 handles) comes to at most 171 MiB.
const OUTGOING_BODY_CHUNK: usize = 16 * 1024;

/// The `wasi:http` hooks of one container instance: the policy's gate in front of
/// wasmtime-wasi-http's default sender. A clone shares the bounds (its permits): a served
/// component's requests, each an instance of its own, are bound together, as one container.
#[derive(Clone)]
pub(crate) struct OutboundHttp {
    policy: HttpPolicy,
    /// One per container instance (shared by a served component's requests), so a
    /// restarted container starts with every permit free.
    in_flight: Option<Arc<Semaphore>>,
    /// [`OPEN_CONNECTIONS`] permits, one held by each open connection.
    open: Arc<Semaphore>,
    pod: String,
    container: String,
    warned: HashSet<String>,
}

impl OutboundHttp {
    pub(crate) fn new(policy: HttpPolicy, pod: &PodKey, container: &str) -> Self {
        Self {
            // A bound above what a semaphore can count is no bound in practice.
            in_flight: policy
                .max_concurrent()
                .map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
            open: Arc::new(Semaphore::new(OPEN_CONNECTIONS)),
            policy,
            pod: format!("{}/{}", pod.namespace, pod.name),
            container: container.to_string(),
            warned: HashSet::new(),
        }
    }

    fn log_denial(&mut self, uri: &::http::Uri) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let why = if self.policy.is_annotated() {
            "the host is not in the pod's allowed-domains annotation"
        } else {
            "the pod has no allowed-domains annotation"
        };
        if self.warned.len() < WARNED_AUTHORITIES && self.warned.insert(authority.to_string()) {
            tracing::warn!(pod = %self.pod, container = %self.container, %authority, "outbound HTTP request denied: {why}");
        } else {
            tracing::debug!(pod = %self.pod, container = %self.container, %authority, "outbound HTTP request denied: {why}");
        }
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: ::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.policy.allows(request.uri()) {
            self.log_denial(request.uri());
            // The guest sees `error-code.HTTP-request-denied` from the response future.
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let Ok(open) = self.open.clone().try_acquire_owned() else {
            tracing::debug!(pod = %self.pod, container = %self.container, "outbound HTTP request refused: {OPEN_CONNECTIONS} connections are open");
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        };
        // `fut` reports a request body's failure to whoever built it; the sender, like the
        // default one, has no use for it.
        drop(fut);
        // The sender does nothing until polled, so it only starts (connects) once a permit is
        // held.
        let send = crate::egress::send(request, options, self.policy.egress().clone());
        let in_flight = self.in_flight.clone();
        Box::new(async move {
            // A permit is held from before the connection is opened until the response head
            // arrives: the part a slow upstream stretches. The body then streams outside the
            // count, at the guest's pace; counting it would let a guest that never finishes
            // reading a body hold a permit for ever. Requests over the bound wait here.
            let _permit = match in_flight {
                Some(permits) => Some(permits.acquire_owned().await.map_err(|_| {
                    wasmtime_wasi_http::Error::InternalError(Some(
                        "the request limiter was closed".into(),
                    ))
                })?),
                None => None,
            };
            let (response, io) = send.await?;
            // wasmtime-wasi-http keeps the connection's task alive with the response body
            // and aborts it when the body is dropped: the connection's permit goes with it.
            let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async move {
                    let _open = open;
                    Box::into_pin(io).await
                });
            Ok((response, io))
        })
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::pin::Pin;

    use wasi_policy::{ALLOWED_DOMAINS, EgressPolicy, MAX_CONCURRENT_REQUESTS};

    use super::*;

    fn pod_key() -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
        }
    }

    fn policy(domains: &str) -> HttpPolicy {
        let annotations = BTreeMap::from([(ALLOWED_DOMAINS.to_string(), domains.to_string())]);
        HttpPolicy::from_annotations(&annotations).unwrap()
    }

    #[tokio::test]
    async fn a_denied_request_is_http_request_denied_without_a_connection() {
        let pod = pod_key();
        let mut hooks = OutboundHttp::new(policy("[]"), &pod, "app");
        let request = ::http::Request::get("http://127.0.0.1:1/")
            .body(WasiBody::default())
            .unwrap();
        let sent = Pin::from(hooks.send_request(request, None, Box::new(async { Ok(()) }))).await;
        assert!(matches!(
            sent,
            Err(wasmtime_wasi_http::Error::HttpRequestDenied)
        ));
    }

    #[tokio::test]
    async fn requests_over_the_bound_wait_for_a_response_head_before_connecting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let tx = accepted_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let (reply_tx, reply) = tokio::sync::oneshot::channel::<()>();
                    let _ = tx.send(reply_tx);
                    let _ = reply.await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let pod = pod_key();
        let annotations = BTreeMap::from([
            (
                ALLOWED_DOMAINS.to_string(),
                format!(r#"["http://127.0.0.1:{port}"]"#),
            ),
            (MAX_CONCURRENT_REQUESTS.to_string(), "1".to_string()),
        ]);
        let p = HttpPolicy::from_annotations(&annotations)
            .unwrap()
            .under(Arc::new(EgressPolicy::parse("127.0.0.1").unwrap()));
        let mut hooks = OutboundHttp::new(p, &pod, "app");
        let mut send = || {
            let request = ::http::Request::get(format!("http://127.0.0.1:{port}/"))
                .body(WasiBody::default())
                .unwrap();
            let fut = hooks.send_request(request, None, Box::new(async { Ok(()) }));
            tokio::spawn(Pin::from(fut))
        };
        let first = send();
        let second = send();
        let reply_first = tokio::time::timeout(std::time::Duration::from_secs(10), accepted.recv())
            .await
            .unwrap()
            .unwrap();
        // With one permit, the second request must not reach the server while the first
        // waits for its response head.
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(300), accepted.recv()).await;
        assert!(early.is_err(), "second request sent past the bound");
        reply_first.send(()).unwrap();
        let (response, _io) = first.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let reply_second =
            tokio::time::timeout(std::time::Duration::from_secs(10), accepted.recv())
                .await
                .unwrap()
                .unwrap();
        reply_second.send(()).unwrap();
        let (response, _io) = second.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn a_container_holds_at_most_its_open_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    // A body the guest has not read yet: the connection stays open.
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                        .await;
                    let _ = socket.read(&mut buf).await;
                });
            }
        });
        let pod = pod_key();
        let p = policy(&format!(r#"["http://127.0.0.1:{port}"]"#))
            .under(Arc::new(EgressPolicy::parse("127.0.0.1").unwrap()));
        let mut hooks = OutboundHttp::new(p, &pod, "app");
        // A served component's next request: an instance of its own, with the same bound.
        let mut sibling = hooks.clone();
        let request = || {
            ::http::Request::get(format!("http://127.0.0.1:{port}/"))
                .body(WasiBody::default())
                .unwrap()
        };
        let mut send =
            || Pin::from(hooks.send_request(request(), None, Box::new(async { Ok(()) })));
        // Each response is kept with its connection's task, as wasmtime-wasi-http keeps them
        // while the guest holds the body.
        let mut open = Vec::new();
        for _ in 0..OPEN_CONNECTIONS {
            open.push(send().await.expect("a connection under the bound"));
        }
        let refused = send().await;
        assert!(
            matches!(
                refused,
                Err(wasmtime_wasi_http::Error::ConnectionLimitReached)
            ),
            "{:?}",
            refused.map(|(r, _)| r.status())
        );
        let refused =
            Pin::from(sibling.send_request(request(), None, Box::new(async { Ok(()) }))).await;
        assert!(
            matches!(
                refused,
                Err(wasmtime_wasi_http::Error::ConnectionLimitReached)
            ),
            "another instance of the container got past its bound"
        );
        // The guest drops one body: its connection's permit is free again.
        drop(open.pop());
        let (response, _io) = send().await.expect("a permit was released");
        assert_eq!(response.status(), 200);
    }

    #[test]
    fn outgoing_bodies_buffer_small_chunks() {
        let pod = pod_key();
        let mut hooks = OutboundHttp::new(policy("[]"), &pod, "app");
        assert_eq!(hooks.p2_outgoing_body_chunk_size(), 16 * 1024);
        assert_eq!(hooks.p2_outgoing_body_buffer_chunks(), 1);
    }
}
