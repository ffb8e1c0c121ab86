//! The kubelet HTTPS API's transport: TLS on `--port`, one task per connection, and the
//! identity of the client certificate attached to each request. The routes are in
//! [`api`](crate::api).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::auth::PeerIdentity;
use crate::{Error, Result};

/// One connection being served, whichever protocol it speaks.
type ServedConnection =
    std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

/// Bounds on the API's connections: anyone who can reach the port can open them.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A client that has not sent a whole request head by then (on a new connection, or
    /// between requests on a kept-alive one) is dropped.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds the API's listener, turning "address in use" into a message an operator can act on.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Listen {
            address,
            hint: match source.kind() {
                std::io::ErrorKind::AddrInUse => " (the port is already in use)",
                std::io::ErrorKind::PermissionDenied => " (permission denied)",
                _ => "",
            },
            source,
        })
}

/// Serves `router` over TLS on `listener` until `cancel` fires, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: ConnectionLimits,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A connection is accepted only when it can be served.
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Interactive streams (port-forward, followed logs) must not wait on Nagle's
        // algorithm for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            // rustls verified the chain against the client CA during the handshake; what is
            // left is reading who it names.
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| PeerIdentity::from_certificate(leaf))
                .unwrap_or_default();
            let service = TowerToHyperService::new(router.layer(Extension(identity)));
            // The protocol is the one ALPN chose, so no bytes are read to guess it: a client
            // that sends nothing meets the header timeout, not an unbounded sniff.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let connection: ServedConnection = if h2 {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                // An HTTP/2 connection that stops answering pings is closed.
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(limits.header_timeout)
                    .keep_alive_timeout(limits.header_timeout);
                Box::pin(builder.serve_connection(io, service))
            } else {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                // With upgrades: `kubectl port-forward` turns its request into SPDY.
                Box::pin(builder.serve_connection(io, service).with_upgrades())
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = connection => if let Err(err) = result {
                    debug!(%peer, %err, "connection ended with an error");
                },
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    /// A server on 127.0.0.1 within `limits`, and a TLS connector that trusts it.
    async fn server(limits: ConnectionLimits) -> (SocketAddr, tokio_rustls::TlsConnector) {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let cert = certs::self_signed(&certs::CertificateSpec::server("api", &[], &[ip])).unwrap();
        let tls = certs::tls::server_config(&cert.cert_pem, &cert.key_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            tls,
            router,
            limits,
            CancellationToken::new(),
        ));
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (address, tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    async fn handshake(
        address: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        connector.connect(ServerName::from(address.ip()), tcp).await
    }

    #[tokio::test]
    async fn a_client_that_sends_no_request_is_dropped_at_the_header_timeout() {
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let (address, connector) = server(limits).await;
        let mut idle = handshake(address, &connector).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
            .await
            .expect("the idle connection was never closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn connections_past_the_bound_wait_until_one_is_free() {
        let limits = ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        };
        let (address, connector) = server(limits).await;
        let first = handshake(address, &connector).await.unwrap();
        let _second = handshake(address, &connector).await.unwrap();
        let third = handshake(address, &connector);
        tokio::pin!(third);
        let early = tokio::time::timeout(Duration::from_millis(500), third.as_mut()).await;
        assert!(
            early.is_err(),
            "a third connection was served past the bound"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("the third connection was not served once a slot was free")
            .unwrap();
    }

    #[tokio::test]
    async fn binding_a_taken_port_says_it_is_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = bind(taken.local_addr().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already in use"), "{err}");
    }
}
