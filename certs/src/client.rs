//! The node's API client with a client certificate that rotates while it runs.
//!
//! The client is kube's documented custom stack (`Client::new` over base-URI, auth and
//! extra-header layers) on a hyper-rustls connector whose rustls configuration asks a
//! [`RotatingCert`] for the client certificate at every handshake. Swapping the certificate
//! is not enough on its own: the API server authenticates a connection by the certificate of
//! its handshake, and pooled keep-alive connections (and long watches) would go on using the
//! old one until it expires. So, as client-go's `connrotation` dialer does, every connection
//! is tied to the certificate generation it was made with, and a rotation closes them all;
//! requests in flight fail once and are retried by their loops on fresh connections that
//! present the new certificate. TLS session resumption is off for the same reason: a resumed
//! session keeps the identity of the handshake it resumes.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{BoxError, ServiceBuilder};

use crate::csr::NodeCertificate;
use crate::manager::CertificateManager;
use crate::rate_limit::{ApiRateLimit, RateLimitLayer};
use crate::rotating::RotatingCert;
use crate::store::CertStore;
use crate::{Error, Result};

/// The node's client for the cluster in `config`. When the kubeconfig's client certificate
/// is the one wasmlet keeps in `pki_dir` (it wrote that kubeconfig during TLS bootstrap), the
/// client presents whatever that certificate currently is, and a manager is returned that
/// renews it before it expires using the node's own identity. Any other kubeconfig gives the
/// ordinary client and no manager: wasmlet does not rotate credentials it did not issue.
/// Either way, the client sends no faster than `limit`.
pub fn node_client(
    config: kube::Config,
    pki_dir: &Path,
    node_name: &str,
    limit: ApiRateLimit,
) -> Result<(kube::Client, Option<CertificateManager>)> {
    let store = CertStore::client(pki_dir);
    if !uses_store(&config, &store) {
        return Ok((api_client(&config, limit)?, None));
    }
    let stored = store.load_current().ok_or_else(|| Error::Pem {
        what: store.current_path().display().to_string(),
        reason: "it does not hold a client certificate and its key".into(),
    })?;
    let rotating = Arc::new(RotatingCert::new(&stored.cert_pem, &stored.key_pem)?);
    let connections = Arc::new(Connections::default());
    let client = rotating_client(&config, rotating.clone(), connections.clone(), limit)?;
    let manager = CertificateManager::new(
        client.clone(),
        NodeCertificate::client(node_name),
        store,
        rotating,
        Some(stored),
    )
    .on_rotate(Box::new(move || connections.close_all()));
    Ok((client, Some(manager)))
}

/// Whether the kubeconfig's client certificate and key are the store's current file.
fn uses_store(config: &kube::Config, store: &CertStore) -> bool {
    let managed = std::path::absolute(store.current_path()).ok();
    let same = |path: &Option<String>| {
        path.as_deref()
            .and_then(|p| std::path::absolute(p).ok())
            .is_some_and(|p| Some(p) == managed)
    };
    same(&config.auth_info.client_certificate) && same(&config.auth_info.client_key)
}

/// A kube client for `config` with the credentials it names, over the API connector (see
/// [`API_TCP_TIMEOUT`]), sending no faster than `limit`: for a kubeconfig wasmlet did not
/// issue, and for the bootstrap kubeconfig.
pub fn api_client(config: &kube::Config, limit: ApiRateLimit) -> Result<kube::Client> {
    // Nothing closes these connections: the credentials never rotate.
    client_over(config, tls_of(config)?, Arc::default(), limit)
}

/// The rustls configuration `config` asks for (its CA, its client certificate if any).
fn tls_of(config: &kube::Config) -> Result<tokio_rustls::rustls::ClientConfig> {
    config
        .rustls_client_config()
        .map_err(|source| Error::Client {
            server: config.cluster_url.to_string(),
            source,
        })
}

/// A kube client for `config` whose TLS client certificate comes from `certificates` at each
/// handshake, whose connections all close when `connections` is told to, and which sends no
/// faster than `limit`.
pub(crate) fn rotating_client(
    config: &kube::Config,
    certificates: Arc<RotatingCert>,
    connections: Arc<Connections>,
    limit: ApiRateLimit,
) -> Result<kube::Client> {
    let mut tls = tls_of(config)?;
    tls.client_auth_cert_resolver = certificates;
    // A resumed TLS session carries the identity of the handshake it resumes: the server
    // would go on seeing the old certificate on new connections. client-go does not resume
    // either.
    tls.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    client_over(config, tls, connections, limit)
}

/// kube's documented custom stack for `config` over `tls` and the API connector, its
/// connections closed when `connections` is told to. Without kube's retry layer: every loop
/// that talks to the API server retries on its own terms (and reports to the node's link),
/// and the rate limit paces them. A proxy (the kubeconfig's `proxy-url`, or `HTTPS_PROXY`)
/// is not used: the connection goes direct, as the rotating client's always has, and a
/// warning says so.
fn client_over(
    config: &kube::Config,
    tls: tokio_rustls::rustls::ClientConfig,
    connections: Arc<Connections>,
    limit: ApiRateLimit,
) -> Result<kube::Client> {
    if let Some(proxy) = &config.proxy_url {
        tracing::warn!(server = %config.cluster_url, %proxy, "a proxy is configured for the API server (proxy-url or HTTPS_PROXY); wasmlet connects to it directly");
    }
    let client_err = |source| Error::Client {
        server: config.cluster_url.to_string(),
        source,
    };
    let closing = ClosingConnector {
        inner: api_connector(),
        connections,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| Error::Pem {
                    what: "tls-server-name".into(),
                    reason: e.to_string(),
                })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let mut connector =
        hyper_timeout::TimeoutConnector::new(builder.enable_http1().wrap_connector(closing));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limit))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(client_err)?)
        .layer(config.extra_headers_layer().map_err(client_err)?)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// How long a connection to the API server may hold data the server has not acknowledged,
/// and how soon an idle one is probed (then every 10 s, three times). A link that drops
/// without a reset (a cellular or VPN uplink) would otherwise hold a request for as long as
/// TCP retransmits, about 15 minutes on Linux, and a pod worker waits on its status patch
/// all that while; client-go's HTTP/2 health check gives up after 30 + 15 s.
const API_TCP_TIMEOUT: Duration = Duration::from_secs(30);

/// The TCP side of every connection to the API server: see [`API_TCP_TIMEOUT`].
fn api_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(API_TCP_TIMEOUT));
    http.set_keepalive_interval(Some(Duration::from_secs(10)));
    http.set_keepalive_retries(Some(3));
    http.set_tcp_user_timeout(Some(API_TCP_TIMEOUT));
    http
}

/// The generation of connections made with the current client certificate.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    current: Mutex<CancellationToken>,
}

impl Connections {
    fn token(&self) -> CancellationToken {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ends every connection made so far; later ones belong to a new generation.
    pub(crate) fn close_all(&self) {
        let old = std::mem::take(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()));
        old.cancel();
    }
}

/// Wraps a connector so each connection it makes can be closed from outside.
#[derive(Clone)]
struct ClosingConnector<C> {
    inner: C,
    connections: Arc<Connections>,
}

impl<C> tower::Service<http::Uri> for ClosingConnector<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
{
    type Response = Closable<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let closed = self.connections.token().cancelled_owned();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            Ok(Closable {
                io: connecting.await?,
                closed: Box::pin(closed),
            })
        })
    }
}

/// A connection that fails every read and write once its generation is closed.
struct Closable<T> {
    io: T,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Closable<T> {
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed after the client certificate was rotated",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: Read + Unpin> Read for Closable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Closable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Closable<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};

    #[tokio::test]
    async fn connections_to_the_api_server_are_probed_and_give_up_on_unacknowledged_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();

        let stream = tower::ServiceExt::oneshot(api_connector(), uri)
            .await
            .unwrap();

        let socket = socket2::SockRef::from(stream.inner());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(API_TCP_TIMEOUT));
    }
    use std::net::{IpAddr, Ipv4Addr};
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::server::WebPkiClientVerifier;

    /// An HTTPS server that requires a client certificate from `ca` and answers every
    /// request with the common name of the certificate its connection was made with.
    async fn whoami_server(ca: &Authority) -> std::net::SocketAddr {
        let serving = ca
            .issue(&CertificateSpec::server(
                "server",
                &[],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ))
            .unwrap();
        let (chain, key) = crate::tls::parse_pair(&serving.cert_pem, &serving.key_pem).unwrap();
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        crate::testing::tls_server(Arc::new(config), |tls| async move {
            let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            let name = crate::x509::CertInfo::from_der(&peer).unwrap().common_name;
            let service = hyper::service::service_fn(move |_req| {
                let name = name.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from(name)),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        })
        .await
    }

    fn kube_config(addr: std::net::SocketAddr, ca: &Authority) -> kube::Config {
        let mut config = kube::Config::new(format!("https://{addr}").parse().unwrap());
        let der = crate::x509::first_certificate_der(ca.cert_pem()).unwrap();
        config.root_cert = Some(vec![der]);
        config
    }

    async fn whoami(client: &kube::Client) -> Result<String, kube::Error> {
        client
            .request_text(http::Request::get("/whoami").body(Vec::new()).unwrap())
            .await
    }

    #[tokio::test]
    async fn rotation_reaches_the_server_on_the_next_request() {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let ca = Authority::generate("ca").unwrap();
        let addr = whoami_server(&ca).await;
        let old = ca
            .issue(&CertificateSpec::client(
                "system:node:old",
                &["system:nodes"],
            ))
            .unwrap();
        let new = ca
            .issue(&CertificateSpec::client(
                "system:node:new",
                &["system:nodes"],
            ))
            .unwrap();
        let rotating = Arc::new(RotatingCert::new(&old.cert_pem, &old.key_pem).unwrap());
        let connections = Arc::new(Connections::default());
        let client = rotating_client(
            &kube_config(addr, &ca),
            rotating.clone(),
            connections.clone(),
            ApiRateLimit::default(),
        )
        .unwrap();
        assert_eq!(whoami(&client).await.unwrap(), "system:node:old");
        assert_eq!(
            whoami(&client).await.unwrap(),
            "system:node:old",
            "the pooled connection keeps its handshake"
        );

        rotating.set(&new.cert_pem, &new.key_pem).unwrap();
        connections.close_all();

        // A request racing the close may fail once; the next one must carry the new cert.
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(whoami(&client).await.map_err(|e| e.to_string()));
            if answers
                .last()
                .is_some_and(|a| a.as_deref() == Ok("system:node:new"))
            {
                break;
            }
        }
        assert_eq!(
            answers.last().unwrap().as_deref(),
            Ok("system:node:new"),
            "{answers:?}"
        );
    }

    #[test]
    fn only_the_stores_own_file_is_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        assert!(!uses_store(&config, &store));
        let path = store.current_path().display().to_string();
        config.auth_info.client_certificate = Some(path.clone());
        assert!(
            !uses_store(&config, &store),
            "the key must be the same file"
        );
        config.auth_info.client_key = Some(path);
        assert!(uses_store(&config, &store));
    }
}
