//! The kubelet HTTPS API's transport: TLS on `--port`, one task per connection, and the
//! identity of the client certificate attached to each request. The routes are in
//! [`api`](crate::api).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::auth::PeerIdentity;
use crate::{Error, Result};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Serves `router` over TLS on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
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
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
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
