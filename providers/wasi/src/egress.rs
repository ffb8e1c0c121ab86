//! The sender of pods' outbound HTTP: wasmtime-wasi-http's default one in all but the connect
//! step (the same timeouts, TLS with the web PKI's roots and the host name as the server name,
//! HTTP/1.1), which connects only to an address the node's [`EgressPolicy`] allows. The check
//! is made on the address actually dialled, after name resolution: a host name that resolves
//! to an allowed address when checked and a forbidden one when connected (DNS rebinding)
//! cannot get through, because the address checked is the address connected to.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use wasi_policy::EgressPolicy;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// wasmtime-wasi-http's default for each timeout a request does not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the hooks' `send_request` returns.
pub(crate) type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

/// Sends `request`, connecting only to an address `policy` allows.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: Arc<EgressPolicy>,
) -> SendResult {
    let timeout = |set: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(set).unwrap_or(DEFAULT_TIMEOUT)
    };
    let connect_timeout = timeout(|o| o.connect_timeout);
    let first_byte_timeout = timeout(|o| o.first_byte_timeout);
    let between_bytes_timeout = timeout(|o| o.between_bytes_timeout).max(Duration::from_nanos(1));

    let uri = request.uri();
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let use_tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if use_tls { 443 } else { 80 });

    let tcp = tokio::time::timeout(connect_timeout, connect(&policy, &host, port))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let (mut sender, connection) = tokio::time::timeout(connect_timeout, async {
        let stream: Box<dyn Stream> = if use_tls {
            Box::new(tls_connect(&host, tcp).await?)
        } else {
            Box::new(tcp)
        };
        handshake(stream).await
    })
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries only the path: scheme and authority are for proxies.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut connection = Some(connection);
    let mut response = std::pin::pin!(tokio::time::timeout(
        first_byte_timeout,
        sender.send_request(request)
    ));
    // Wait for the response head while driving the connection's I/O.
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(|_| Error::ConnectionReadTimeout));
        }
        if let Some(driving) = connection.as_mut()
            && let Poll::Ready(done) = Pin::new(driving).poll(cx)
        {
            connection = None;
            if let Err(err) = done {
                return Poll::Ready(Ok(Err(err)));
            }
        }
        Poll::Pending
    })
    .await?
    .map_err(Error::from)?;
    let response = response.map(|incoming| {
        BetweenBytes {
            incoming,
            timeout: Box::pin(tokio::time::sleep(between_bytes_timeout)),
            period: between_bytes_timeout,
        }
        .boxed_unsync()
    });
    Ok((
        response,
        Box::new(async move {
            match connection {
                Some(connection) => connection.await.map_err(|err| {
                    if err.is_timeout() {
                        Error::HttpResponseTimeout
                    } else {
                        Error::from(err)
                    }
                }),
                None => Ok(()),
            }
        }),
    ))
}

/// A TCP connection to `host:port` at an address `policy` allows: the literal address, or
/// each address the name resolves to in turn.
async fn connect(policy: &EgressPolicy, host: &str, port: u16) -> Result<TcpStream, Error> {
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Error::DnsError {
                rcode: None,
                info_code: None,
            })?
            .collect(),
    };
    let mut failed = None;
    let mut refused = None;
    for address in addresses {
        if let Some(why) = policy.refuses(address.ip()).await {
            refused = Some((address.ip(), why));
            continue;
        }
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(err) => failed = Some(err),
        }
    }
    if let Some(err) = failed {
        return Err(Error::Connect(err));
    }
    match refused {
        Some((ip, why)) => {
            tracing::warn!(%host, %ip, "outbound HTTP refused by the node: {why}; --outbound-http-allow-networks opens it");
            Err(Error::DestinationIpProhibited)
        }
        None => Err(Error::DestinationNotFound),
    }
}

async fn tls_connect(
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => tokio_rustls::rustls::pki_types::ServerName::from(ip),
        Err(_) => tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(Error::InvalidDnsNameError)?,
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)
}

/// A connection's byte stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

type Connection =
    hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<Box<dyn Stream>>, WasiBody>;

async fn handshake(
    stream: Box<dyn Stream>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<WasiBody>,
        Connection,
    ),
    Error,
> {
    hyper::client::conn::http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(Error::from)
}

/// A response body that fails if no frame arrives for `period`.
struct BetweenBytes {
    incoming: hyper::body::Incoming,
    timeout: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
}

impl http_body::Body for BetweenBytes {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.period;
                self.timeout.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(if err.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(err)
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.timeout.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1 answering every request with `ok`; its port.
    async fn loopback_server() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        port
    }

    async fn get(url: &str, policy: EgressPolicy) -> Result<(u16, Bytes), Error> {
        let request = http::Request::get(url).body(WasiBody::default()).unwrap();
        let (response, _io) = send(request, None, Arc::new(policy)).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    #[tokio::test]
    async fn the_sender_connects_only_where_the_policy_allows() {
        let port = loopback_server().await;
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("http://{host}:{port}/");
            let refused = get(&url, EgressPolicy::default()).await;
            assert!(
                matches!(refused, Err(Error::DestinationIpProhibited)),
                "{host}: {refused:?}"
            );
            let opened = EgressPolicy::parse("127.0.0.0/8").unwrap();
            let (status, body) = get(&url, opened).await.unwrap();
            assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{host}");
        }
    }
}
