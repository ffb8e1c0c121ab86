//! A registry token service, as Docker Hub's, GHCR's and Harbor's are: the other half of
//! Docker's token authentication (`docker-registry`'s `auth: token`), which Debian does not
//! package. It serves `GET /token?service=…&scope=…` over HTTPS on 127.0.0.1, and answers
//! with a JWT signed by a key whose certificate the registry trusts (its `rootcertbundle`),
//! so it is the real registry that checks every token a client sends.
//!
//! As those services do: a request with the right Basic credentials gets the actions it asks
//! for; one with none gets a token granting nothing (the registry then refuses it); one with
//! wrong credentials gets a 401. Each token it issues is noted, so a test can tell that a
//! client went through the token flow and what it asked for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certs::{Authority, CertificateSpec, KeyedCertificate};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::registry::{REGISTRY_PASSWORD, REGISTRY_USER};

/// The `issuer` the registry is told to expect.
pub(crate) const ISSUER: &str = "wasmlet-e2e-token-service";
/// The `service` the registry names in its challenge, and the tokens' audience.
pub(crate) const SERVICE: &str = "wasmlet-e2e-registry";
/// How long a token lasts, in seconds.
const TOKEN_LIFE_S: i64 = 300;

/// A token it issued: to whom (`None`: an anonymous request) and the scopes it granted,
/// each `type:name:actions` with only the actions granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub user: Option<String>,
    pub granted: Vec<String>,
}

/// The running service. Dropping it stops it.
pub struct TokenService {
    addr: SocketAddr,
    issued: Arc<Mutex<Vec<IssuedToken>>>,
    ca_path: PathBuf,
    registry_certificate: (PathBuf, PathBuf),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the handler needs.
struct Issuer {
    key: EcdsaKeyPair,
    /// The signing certificate, DER, for the tokens' `x5c` header.
    certificate: Vec<u8>,
    rng: SystemRandom,
    issued: Arc<Mutex<Vec<IssuedToken>>>,
}

impl TokenService {
    /// Starts it, with a fresh CA in `dir` that issues its serving certificate, the
    /// registry's and its token signing certificate: the registry trusts tokens signed under
    /// it (its `rootcertbundle`). It runs on its own thread: tests block their own on `wasmlet push`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let ca = Authority::generate("wasmlet-e2e-registry-ca")?;
        let ca_path = dir.join("registry-ca.crt");
        std::fs::write(&ca_path, ca.cert_pem())?;
        let signer = ca.issue(&CertificateSpec::client(ISSUER, &[]))?;
        let (serving, _) = issue_server_certificate(&ca, dir, "token-service")?;
        let (_, registry_certificate) = issue_server_certificate(&ca, dir, "registry")?;
        let issued = Arc::new(Mutex::new(Vec::new()));
        let issuer = Arc::new(Issuer {
            key: ecdsa_key(&signer.key_pem)?,
            certificate: first_certificate(&signer.cert_pem)?,
            rng: SystemRandom::new(),
            issued: issued.clone(),
        });
        let acceptor = tls_acceptor(&serving)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("token-service".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = serve(listener, acceptor, issuer) => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            issued,
            ca_path,
            registry_certificate,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The URL the registry sends clients to (its challenge's `realm`).
    pub fn realm(&self) -> String {
        format!("https://{}/token", self.addr)
    }

    /// The CA that issued its serving certificate and the registry's: what a client must
    /// trust (`SSL_CERT_FILE`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The registry's serving certificate and key, from the same CA.
    pub(crate) fn registry_certificate(&self) -> (&Path, &Path) {
        (&self.registry_certificate.0, &self.registry_certificate.1)
    }

    /// The tokens issued so far.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A serving certificate for 127.0.0.1 from `ca`, and where it was written: `<name>.crt`
/// and `<name>.key` in `dir`.
fn issue_server_certificate(
    ca: &Authority,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(KeyedCertificate, (PathBuf, PathBuf))> {
    let spec = CertificateSpec::server(name, &["localhost"], &["127.0.0.1".parse()?]);
    let issued = ca.issue(&spec)?;
    let paths = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&paths.0, &issued.cert_pem)?;
    std::fs::write(&paths.1, &issued.key_pem)?;
    Ok((issued, paths))
}

async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, issuer: Arc<Issuer>) {
    let router = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(issuer);
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// `GET /token`: the token protocol's answer, or 401 for wrong credentials.
async fn token(
    State(issuer): State<Arc<Issuer>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let user = match basic_credentials(&headers) {
        None => None,
        Some((user, password)) if user == REGISTRY_USER && password == REGISTRY_PASSWORD => {
            Some(user)
        }
        Some(_) => return (StatusCode::UNAUTHORIZED, "wrong credentials").into_response(),
    };
    let service = query.iter().find(|(k, _)| k == "service").map(|(_, v)| v);
    if service.map(String::as_str) != Some(SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let scopes = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '));
    let access: Vec<Access> = scopes
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(Access {
                kind: kind.to_string(),
                name: name.to_string(),
                // Anonymous requests are granted nothing, as for a private repository.
                actions: match user {
                    Some(_) => actions.split(',').map(str::to_string).collect(),
                    None => Vec::new(),
                },
            })
        })
        .collect();
    let now = jiff::Timestamp::now().as_second();
    let granted = access
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect();
    let serial = {
        let mut issued = issuer.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.push(IssuedToken {
            user: user.clone(),
            granted,
        });
        issued.len()
    };
    let claims = Claims {
        iss: ISSUER,
        sub: user.unwrap_or_default(),
        aud: SERVICE,
        exp: now + TOKEN_LIFE_S,
        nbf: now - 10,
        iat: now,
        jti: format!("{now}-{serial}"),
        access,
    };
    match issuer.sign(&claims) {
        Ok(token) => axum::Json(Answer {
            token,
            expires_in: TOKEN_LIFE_S,
        })
        .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot sign").into_response(),
    }
}

/// A token's claims, as distribution's `token.ClaimSet`.
#[derive(serde::Serialize)]
struct Claims {
    iss: &'static str,
    sub: String,
    aud: &'static str,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    access: Vec<Access>,
}

/// What a token grants on one resource, as distribution's `token.ResourceActions`.
#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// A JWS header naming the signing certificate.
#[derive(serde::Serialize)]
struct JwsHeader {
    typ: &'static str,
    alg: &'static str,
    x5c: [String; 1],
}

/// The token protocol's answer.
#[derive(serde::Serialize)]
struct Answer {
    token: String,
    expires_in: i64,
}

impl Issuer {
    /// `claims` as a compact JWS, ES256, with the signing certificate in `x5c`.
    fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let header = JwsHeader {
            typ: "JWT",
            alg: "ES256",
            x5c: [STANDARD.encode(&self.certificate)],
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The user and password of a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn ecdsa_key(key_pem: &str) -> anyhow::Result<EcdsaKeyPair> {
    let der = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in the signing key's PEM")?;
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_der(),
        &SystemRandom::new(),
    )
    .map_err(|e| anyhow::anyhow!("the signing key is not a P-256 PKCS#8 key: {e}"))
}

fn first_certificate(cert_pem: &str) -> anyhow::Result<Vec<u8>> {
    let cert = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .context("no certificate in the PEM")??;
    Ok(cert.to_vec())
}

fn tls_acceptor(serving: &KeyedCertificate) -> anyhow::Result<TlsAcceptor> {
    let chain =
        rustls_pemfile::certs(&mut serving.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())?
        .context("no private key in the serving key's PEM")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
