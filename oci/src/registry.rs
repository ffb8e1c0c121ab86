//! What a pull asks a registry, over the puller's own HTTP client: a manifest or its digest, a
//! blob, and the token a registry's challenge sends it for.
//!
//! Every body read whole has a cap. The image comes from a pod spec, so the registry, and
//! the token service its challenge names, may be anyone's; oci-client (kept for push) reads
//! manifests, tokens and error bodies whole with no limit, and a registry that streamed
//! one without end would fill the node's memory. A manifest is read to 4 MiB (the
//! distribution spec's and Docker's registry's own limit, and containers/image's), a token
//! answer to 1 MiB (containers/image's), an error's body only to its first 64 KiB.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hashlink::LruCache;
use http_auth::parser::ChallengeParser;
use oci_client::Reference;
use oci_client::errors::{OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{NoAnswer, causes};
use crate::{Error, Result};

/// The largest manifest read.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest token answer read.
const MAX_TOKEN_BYTES: usize = 1 << 20;
/// How much of an error's body is read for its message.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// A token's life when its answer gives none (the token protocol's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// The longest a token is kept, whatever its answer says (as oci-client kept them).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest token kept and sent: tokens are a few KiB, and each kept one is a header.
const MAX_TOKEN_CHARS: usize = 64 << 10;
/// How long before its end a token is no longer sent: it may end on the way.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);
/// Authorizations kept, one per registry, repository and credential: credentials come from
/// pods' pull secrets, and pods come and go.
const MAX_AUTHORIZATIONS: usize = 64;

/// A pull's client for every registry.
pub(crate) struct Registry {
    http: reqwest::Client,
    /// `host:port` of registries spoken to over plain HTTP.
    insecure: Vec<String>,
    /// The token a registry's challenge was last answered with, per registry, repository
    /// and credential.
    authorizations: Mutex<LruCache<String, Authorization>>,
}

/// A token's `Authorization` header, and until when it may be sent.
#[derive(Clone)]
struct Authorization {
    header: HeaderValue,
    until: Instant,
}

/// One challenge of a `WWW-Authenticate` header.
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    }
}

/// A body read whole that did not come.
enum Unread {
    /// Longer than the cap.
    TooLarge,
    /// The connection failed.
    Failed(reqwest::Error),
}

impl Registry {
    /// A registry client over `http`, speaking plain HTTP to the `insecure` hosts.
    pub(crate) fn new(http: reqwest::Client, insecure: Vec<String>) -> Self {
        Self {
            http,
            insecure,
            authorizations: Mutex::new(LruCache::new(MAX_AUTHORIZATIONS)),
        }
    }

    /// The manifest `reference` names, as the registry sent it, and the digest the registry
    /// gave for it (`Docker-Content-Digest`), if any.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Bytes, Option<String>)> {
        let response = self.ask_manifest(Method::GET, reference, auth).await?;
        let response = check_status(reference, response).await?;
        let digest = content_digest(&response);
        let body = read_capped(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|unread| {
                too_large_or_failed(reference, unread, "manifest", MAX_MANIFEST_BYTES)
            })?;
        Ok((body, digest))
    }

    /// The digest of the manifest `reference` names: from a HEAD request's
    /// `Docker-Content-Digest`, or else the manifest's own. A HEAD refused for another reason
    /// than a missing manifest or credentials (a registry that does not answer HEAD for
    /// manifests: 405, 501) is asked again with a GET, as oci-client did.
    pub(crate) async fn manifest_digest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<String> {
        let head = self.ask_manifest(Method::HEAD, reference, auth).await?;
        let status = head.status();
        if status.is_success()
            && let Some(digest) = content_digest(&head)
        {
            return Ok(digest);
        }
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) {
            check_status(reference, head).await?;
        }
        let (body, _) = self.manifest(reference, auth).await?;
        Ok(crate::store::digest_of(&body))
    }

    /// Streams blob `digest` of `reference`'s repository into `out`. What arrives is not
    /// checked here: the caller bounds its size and the store verifies its digest.
    pub(crate) async fn copy_blob(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        digest: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<()> {
        // The digest comes from the manifest and goes into the request's path.
        crate::store::parse_digest(digest)?;
        let url = self.url(reference, "blobs", digest);
        let response = self.send(Method::GET, reference, auth, &url, None).await?;
        let mut response = check_status(reference, response).await?;
        let write_failed = |e: std::io::Error| Error::Registry {
            reference: reference.whole(),
            message: format!("blob {digest} could not be written: {e}"),
        };
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_failed(reference, e))?
        {
            out.write_all(&chunk).await.map_err(write_failed)?;
        }
        out.flush().await.map_err(write_failed)
    }

    /// `method` on `reference`'s manifest, accepting every manifest a pull reads. A manifest
    /// is asked for by digest when the reference pins one (an image index's entry does, with
    /// a digest the registry gave).
    async fn ask_manifest(
        &self,
        method: Method,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<reqwest::Response> {
        let target = match reference.digest() {
            Some(digest) => crate::store::parse_digest(digest).map(|_| digest)?,
            None => reference.tag().unwrap_or("latest"),
        };
        let url = self.url(reference, "manifests", target);
        let accept = crate::media::ACCEPTED_MANIFESTS.join(", ");
        self.send(method, reference, auth, &url, Some(&accept))
            .await
    }

    /// `method` on `url` with the token held for `reference` and `auth`, or else `auth`'s own
    /// credentials (a registry may hide a private repository from anonymous requests behind
    /// a 404 with no challenge). A 401 with a Bearer challenge is answered once with a token
    /// from the service it names, kept for the next request, and the request sent again; any
    /// other 401 stands, and the token held, if any, is dropped.
    async fn send(
        &self,
        method: Method,
        reference: &Reference,
        auth: &RegistryAuth,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response> {
        let key = authorization_key(reference, auth);
        let held = match (self.held(&key), auth) {
            (Some(held), _) => Some(held),
            (None, RegistryAuth::Anonymous) => None,
            (None, RegistryAuth::Basic(user, password)) => Some(basic(reference, user, password)?),
            (None, RegistryAuth::Bearer(token)) => Some(bearer(reference, token)?),
        };
        let method = &method;
        let request = |authorization: Option<HeaderValue>| {
            send_again_if_stale(move || {
                let mut request = self.http.request(method.clone(), url);
                if let Some(accept) = accept {
                    request = request.header(ACCEPT, accept);
                }
                if let Some(authorization) = &authorization {
                    request = request.header(AUTHORIZATION, authorization.clone());
                }
                request
            })
        };
        let response = request(held.clone())
            .await
            .map_err(|e| request_failed(reference, e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenges = challenges(&response);
        let Some(answer) = self.answer(reference, auth, &challenges).await? else {
            self.authorizations().remove(&key);
            return Ok(response);
        };
        // The same credentials again would be refused again.
        if held.as_ref() == Some(&answer.header) {
            return Ok(response);
        }
        self.keep(key, answer.clone());
        request(Some(answer.header))
            .await
            .map_err(|e| request_failed(reference, e))
    }

    /// A token from the service the Bearer challenge among `challenges` names, asked with
    /// `auth`'s credentials; none without such a challenge (a Basic one refused the
    /// credentials already sent), or when `auth` is a token of its own.
    async fn answer(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        challenges: &[Challenge],
    ) -> Result<Option<Authorization>> {
        let bearer = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
        let (Some(challenge), false) = (bearer, matches!(auth, RegistryAuth::Bearer(_))) else {
            return Ok(None);
        };
        let Some(realm) = challenge.param("realm") else {
            return Err(Error::Registry {
                reference: reference.whole(),
                message: "the registry asks for a token and names no service for it".into(),
            });
        };
        let scope = challenge
            .param("scope")
            .unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
        let token = self
            .token(reference, auth, &realm, challenge.param("service"), &scope)
            .await?;
        Ok(Some(token))
    }

    /// A token for `scope` from the token service at `realm`, asked with `auth`'s
    /// credentials if it has some.
    async fn token(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        realm: &str,
        service: Option<String>,
        scope: &str,
    ) -> Result<Authorization> {
        let failed = |message: String| Error::Registry {
            reference: reference.whole(),
            message: format!("the token service {realm} {message}"),
        };
        let mut query = vec![("scope", scope.to_string())];
        query.extend(service.map(|s| ("service", s)));
        let request = || {
            let request = self.http.get(realm).query(&query);
            match auth {
                RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
                _ => request,
            }
        };
        let response = send_again_if_stale(request).await.map_err(|e| {
            failed(match NoAnswer::of(&e) {
                NoAnswer::Certificate(why) => {
                    format!("presented a certificate that is refused: {why}")
                }
                NoAnswer::Unreachable(why) => format!("cannot be reached: {why}"),
            })
        })?;
        match response.status() {
            status if status.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Error::Unauthorized {
                    reference: reference.whole(),
                    registry: reference.resolve_registry().to_string(),
                });
            }
            status => return Err(failed(format!("answered HTTP {status}"))),
        }
        let body = read_capped(response, MAX_TOKEN_BYTES)
            .await
            .map_err(|unread| {
                too_large_or_failed(reference, unread, "token answer", MAX_TOKEN_BYTES)
            })?;
        /// The token protocol's answer. A field of another type than the protocol's is
        /// passed over, as oci-client passed over what it did not read.
        #[derive(Deserialize)]
        struct Answer {
            token: Option<serde_json::Value>,
            access_token: Option<serde_json::Value>,
            expires_in: Option<serde_json::Value>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("sent an unreadable answer: {e}")))?;
        let token = [answer.token, answer.access_token]
            .into_iter()
            .flatten()
            .find_map(|t| t.as_str().filter(|t| !t.is_empty()).map(str::to_string))
            .ok_or_else(|| failed("sent an answer without a token".into()))?;
        if token.len() > MAX_TOKEN_CHARS {
            return Err(failed(format!(
                "sent a token longer than {} KiB",
                MAX_TOKEN_CHARS / 1024
            )));
        }
        let now = Instant::now();
        Ok(Authorization {
            header: bearer(reference, &token)?,
            until: now
                .checked_add(token_life(answer.expires_in.as_ref()))
                .unwrap_or(now),
        })
    }

    fn held(&self, key: &str) -> Option<HeaderValue> {
        let mut held = self.authorizations();
        let authorization = held.get(key)?;
        if authorization.until <= Instant::now() {
            held.remove(key);
            return None;
        }
        Some(authorization.header.clone())
    }

    fn keep(&self, key: String, authorization: Authorization) {
        self.authorizations().insert(key, authorization);
    }

    fn authorizations(&self) -> std::sync::MutexGuard<'_, LruCache<String, Authorization>> {
        self.authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `…/v2/<repository>/<kind>/<target>`, over HTTP for an insecure registry.
    fn url(&self, reference: &Reference, kind: &str, target: &str) -> String {
        let registry = reference.resolve_registry();
        let scheme = if self.insecure.iter().any(|host| host == registry) {
            "http"
        } else {
            "https"
        };
        let namespace = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{scheme}://{registry}/v2/{}/{kind}/{target}{namespace}",
            reference.repository()
        )
    }
}

/// How long a token whose answer says `expires_in` is sent: the answer's life (60 s when it
/// gives none, or none that is a whole number of seconds), 24 h at most, less the margin.
fn token_life(expires_in: Option<&serde_json::Value>) -> Duration {
    expires_in
        .and_then(serde_json::Value::as_u64)
        .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs)
        .min(MAX_TOKEN_LIFE)
        .saturating_sub(TOKEN_MARGIN)
}

/// Sends the request `build` makes, and once more if the connection closed before its
/// answer came: a registry that went away leaves its idle connections in the pool, and the
/// first request on one fails so, where a new connection tells a refused one (unreachable)
/// apart. Every request a pull makes is a GET or HEAD, safe to send twice.
async fn send_again_if_stale(
    build: impl Fn() -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    match build().send().await {
        Err(err) if closed_before_answer(&err) => build().send().await,
        answer => answer,
    }
}

/// Whether hyper, under `err`, says the connection closed before the answer came.
fn closed_before_answer(err: &reqwest::Error) -> bool {
    std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<hyper::Error>())
        .any(|e| e.is_incomplete_message() || e.is_canceled())
}

/// Every challenge of every `WWW-Authenticate` header of `response`.
fn challenges(response: &reqwest::Response) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    for header in response.headers().get_all(WWW_AUTHENTICATE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for parsed in ChallengeParser::new(text) {
            let Ok(parsed) = parsed else {
                break;
            };
            challenges.push(Challenge {
                scheme: parsed.scheme.to_string(),
                params: parsed
                    .params
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_unescaped()))
                    .collect(),
            });
        }
    }
    challenges
}

/// The cache key for `auth`'s authorization at `reference`'s repository; a password is
/// kept only as its digest.
fn authorization_key(reference: &Reference, auth: &RegistryAuth) -> String {
    let credential = match auth {
        RegistryAuth::Anonymous => "anonymous".to_string(),
        RegistryAuth::Basic(user, password) => format!(
            "basic:{user}:{}",
            crate::store::digest_of(password.as_bytes())
        ),
        RegistryAuth::Bearer(token) => {
            format!("bearer:{}", crate::store::digest_of(token.as_bytes()))
        }
    };
    format!(
        "{}/{} {credential}",
        reference.resolve_registry(),
        reference.repository()
    )
}

fn bearer(reference: &Reference, token: &str) -> Result<HeaderValue> {
    header_value(reference, format!("Bearer {token}"))
}

fn basic(reference: &Reference, user: &str, password: &str) -> Result<HeaderValue> {
    use base64::Engine;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    header_value(reference, format!("Basic {pair}"))
}

fn header_value(reference: &Reference, value: String) -> Result<HeaderValue> {
    let mut header = HeaderValue::from_str(&value).map_err(|_| Error::Registry {
        reference: reference.whole(),
        message: "the credentials hold characters an HTTP header cannot".into(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// `Docker-Content-Digest`, if the registry sent one.
fn content_digest(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `response` if it succeeded; otherwise what its status and error body say: a 404 is a
/// missing image, a 401 refused credentials; anything else as its error envelope's codes
/// say, else (a 403 aside, refused credentials) its status and the start of its body.
async fn check_status(
    reference: &Reference,
    response: reqwest::Response,
) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let not_found = || Error::NotFound {
        reference: reference.whole(),
    };
    let unauthorized = || Error::Unauthorized {
        reference: reference.whole(),
        registry: reference.resolve_registry().to_string(),
    };
    match status {
        StatusCode::NOT_FOUND => return Err(not_found()),
        StatusCode::UNAUTHORIZED => return Err(unauthorized()),
        _ => {}
    }
    let body = read_prefix(response, MAX_ERROR_BYTES).await;
    let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(&body) else {
        if status == StatusCode::FORBIDDEN {
            return Err(unauthorized());
        }
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        let message = match text.is_empty() {
            true => format!("HTTP {status}"),
            false => format!("HTTP {status}: {text}"),
        };
        return Err(Error::Registry {
            reference: reference.whole(),
            message,
        });
    };
    let has = |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
    if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
        Err(unauthorized())
    } else if has(&[
        OciErrorCode::ManifestUnknown,
        OciErrorCode::NameUnknown,
        OciErrorCode::NotFound,
        OciErrorCode::BlobUnknown,
    ]) {
        Err(not_found())
    } else {
        Err(Error::Registry {
            reference: reference.whole(),
            message: envelope.to_string(),
        })
    }
}

/// `response`'s body, unless it is longer than `limit`: refused on its `Content-Length`
/// when it gives one, else as soon as more has come.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Bytes, Unread> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(Unread::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(Unread::Failed)? {
        if chunk.len() > limit.saturating_sub(body.len()) {
            return Err(Unread::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The first `limit` bytes of `response`'s body, or what came of them before the
/// connection failed.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Bytes {
    let mut body = BytesMut::new();
    while body.len() < limit {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
    }
    body.freeze()
}

fn too_large_or_failed(reference: &Reference, unread: Unread, what: &str, limit: usize) -> Error {
    match unread {
        Unread::TooLarge => Error::Registry {
            reference: reference.whole(),
            message: format!(
                "the {what} is larger than {} KiB; the pull was abandoned",
                limit / 1024
            ),
        },
        Unread::Failed(err) => request_failed(reference, err),
    }
}

/// A request that got no answer: the registry is unreachable if it could not be connected
/// to or did not answer in time.
fn request_failed(reference: &Reference, err: reqwest::Error) -> Error {
    if err.is_connect() || err.is_timeout() {
        return crate::client::no_answer(reference.resolve_registry(), &err);
    }
    Error::Registry {
        reference: reference.whole(),
        message: causes(&err),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    use super::*;

    const MANIFEST: &str = r#"{"schemaVersion":2}"#;
    const CHUNK: usize = 64 << 10;

    /// What a test registry saw: token requests, and bytes of endless bodies sent.
    #[derive(Clone, Default)]
    struct Seen {
        tokens: Arc<AtomicUsize>,
        endless_bytes: Arc<AtomicUsize>,
    }

    /// A body of `byte` that never ends, counting what it sent in `seen`.
    fn endless_of(seen: &Seen, byte: u8) -> Body {
        let sent = seen.endless_bytes.clone();
        Body::from_stream(futures::stream::repeat_with(move || {
            sent.fetch_add(CHUNK, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![byte; CHUNK]))
        }))
    }

    /// Spaces that never end: JSON whitespace, so a reader must stop at its cap.
    fn endless(seen: &Seen) -> Body {
        endless_of(seen, b' ')
    }

    /// Serves `routes` on 127.0.0.1 and returns a client for it and its `host:port`.
    async fn serve(routes: Router<(Seen, String)>, seen: &Seen) -> (Registry, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let app = routes.with_state((seen.clone(), host.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = crate::client::new_http().unwrap();
        (Registry::new(http, vec![host.clone()]), host)
    }

    fn reference(host: &str) -> Reference {
        format!("{host}/app:1").parse().unwrap()
    }

    /// A manifest that must be asked for with `Authorization: <wanted>`, else a 401 with
    /// `challenge` (`{host}` in it replaced).
    fn guarded(wanted: &'static str, challenge: &'static str) -> Router<(Seen, String)> {
        Router::new().route(
            "/v2/app/manifests/1",
            get(
                move |State((_, host)): State<(Seen, String)>, headers: HeaderMap| async move {
                    if headers
                        .get(header::AUTHORIZATION)
                        .is_some_and(|v| v == wanted)
                    {
                        return MANIFEST.into_response();
                    }
                    let challenge = challenge.replace("{host}", &host);
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, challenge)],
                    )
                        .into_response()
                },
            ),
        )
    }

    const BEARER_CHALLENGE: &str =
        r#"Bearer realm="http://{host}/token",service="test",scope="repository:app:pull""#;

    /// A token service that gives `t0k` for the scope the challenge names, to `user:pw`
    /// (`dXNlcjpwdw==`) or to anyone, and counts what it gave.
    async fn token(
        State((seen, _)): State<(Seen, String)>,
        Query(query): Query<std::collections::HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        seen.tokens.fetch_add(1, Ordering::Relaxed);
        let credentials = headers.get(header::AUTHORIZATION);
        let scope_and_service = query.get("scope").map(String::as_str)
            == Some("repository:app:pull")
            && query.get("service").map(String::as_str) == Some("test");
        if !scope_and_service || credentials.is_some_and(|c| c != "Basic dXNlcjpwdw==") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        r#"{"token":"t0k","expires_in":300}"#.into_response()
    }

    #[tokio::test]
    async fn a_bearer_challenge_is_answered_with_a_token_that_is_kept_for_the_next_request() {
        let seen = Seen::default();
        let routes = guarded("Bearer t0k", BEARER_CHALLENGE).route("/token", get(token));
        let (registry, host) = serve(routes, &seen).await;
        for auth in [
            RegistryAuth::Anonymous,
            RegistryAuth::Basic("user".into(), "pw".into()),
        ] {
            for _ in 0..2 {
                let (body, _) = registry.manifest(&reference(&host), &auth).await.unwrap();
                assert_eq!(body, MANIFEST.as_bytes());
            }
        }
        assert_eq!(
            seen.tokens.load(Ordering::Relaxed),
            2,
            "one token per credential, kept"
        );
        let refused = registry
            .manifest(
                &reference(&host),
                &RegistryAuth::Basic("user".into(), "no".into()),
            )
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::Unauthorized { .. }), "{refused}");
    }

    #[tokio::test]
    async fn credentials_refused_or_missing_are_unauthorized() {
        let seen = Seen::default();
        let routes = guarded("Basic dXNlcjpwdw==", r#"Basic realm="test""#);
        let (registry, host) = serve(routes, &seen).await;
        let right = RegistryAuth::Basic("user".into(), "pw".into());
        let (body, _) = registry.manifest(&reference(&host), &right).await.unwrap();
        assert_eq!(body, MANIFEST.as_bytes());
        for wrong in [
            RegistryAuth::Anonymous,
            RegistryAuth::Basic("user".into(), "no".into()),
        ] {
            let err = registry
                .manifest(&reference(&host), &wrong)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        }
    }

    /// What a registry with `routes` answers to a manifest request, and how many bytes of
    /// endless bodies it sent before the client hung up.
    async fn manifest_from(routes: Router<(Seen, String)>) -> (Result<Bytes>, usize) {
        let seen = Seen::default();
        let (registry, host) = serve(routes, &seen).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            registry.manifest(&reference(&host), &RegistryAuth::Anonymous),
        )
        .await
        .expect("the request ends");
        (
            answer.map(|(body, _)| body),
            seen.endless_bytes.load(Ordering::Relaxed),
        )
    }

    /// Endless bodies are read only to their cap; what the registry got out before the
    /// client hung up is the cap and what the sockets between them buffer.
    const SENT_AT_MOST: usize = 64 << 20;

    #[tokio::test]
    async fn a_manifest_that_never_ends_is_refused_at_4_mib() {
        let routes = Router::new().route(
            "/v2/app/manifests/1",
            get(|State((seen, _)): State<(Seen, String)>| async move { endless(&seen) }),
        );
        let (answer, sent) = manifest_from(routes).await;
        let err = answer.unwrap_err();
        assert!(
            err.to_string()
                .contains("the manifest is larger than 4096 KiB; the pull was abandoned"),
            "{err}"
        );
        assert!(
            (MAX_MANIFEST_BYTES..SENT_AT_MOST).contains(&sent),
            "{sent} bytes sent"
        );
    }

    #[tokio::test]
    async fn a_manifest_whose_length_is_over_4_mib_is_refused_unread() {
        // The body never comes: only its length can end the request.
        let routes = Router::new().route(
            "/v2/app/manifests/1",
            get(|| async {
                (
                    [(header::CONTENT_LENGTH, (MAX_MANIFEST_BYTES + 1).to_string())],
                    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>()),
                )
            }),
        );
        let err = manifest_from(routes).await.0.unwrap_err();
        assert!(err.to_string().contains("larger than 4096 KiB"), "{err}");
        let at_the_cap = Router::new().route(
            "/v2/app/manifests/1",
            get(|| async { vec![b' '; MAX_MANIFEST_BYTES] }),
        );
        let body = manifest_from(at_the_cap).await.0.unwrap();
        assert_eq!(body.len(), MAX_MANIFEST_BYTES);
    }

    #[tokio::test]
    async fn a_token_answer_that_never_ends_is_refused_at_1_mib() {
        let routes = guarded("Bearer t0k", BEARER_CHALLENGE).route(
            "/token",
            get(|State((seen, _)): State<(Seen, String)>| async move { endless(&seen) }),
        );
        let (answer, sent) = manifest_from(routes).await;
        let err = answer.unwrap_err();
        assert!(
            err.to_string()
                .contains("the token answer is larger than 1024 KiB"),
            "{err}"
        );
        assert!(sent < SENT_AT_MOST, "{sent} bytes sent");
    }

    #[tokio::test]
    async fn an_error_whose_body_never_ends_says_its_status() {
        let routes = Router::new().route(
            "/v2/app/manifests/1",
            get(|State((seen, _)): State<(Seen, String)>| async move {
                (StatusCode::BAD_GATEWAY, endless_of(&seen, b'x'))
            }),
        );
        let (answer, sent) = manifest_from(routes).await;
        let err = answer.unwrap_err();
        let start = format!("HTTP 502 Bad Gateway: {}", "x".repeat(200));
        assert!(
            matches!(&err, Error::Registry { message, .. } if *message == start),
            "{err}"
        );
        assert!(sent < SENT_AT_MOST, "{sent} bytes sent");
    }

    #[tokio::test]
    async fn an_error_envelope_is_mapped_by_its_codes() {
        let envelope = |code: &'static str| {
            Router::new().route(
                "/v2/app/manifests/1",
                get(move || async move {
                    (
                        StatusCode::BAD_REQUEST,
                        format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#),
                    )
                }),
            )
        };
        let err = manifest_from(envelope("MANIFEST_UNKNOWN"))
            .await
            .0
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        let err = manifest_from(envelope("DENIED")).await.0.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        let err = manifest_from(envelope("SIZE_INVALID")).await.0.unwrap_err();
        assert!(matches!(err, Error::Registry { .. }), "{err}");
        // A 403 is read for its codes (a rate limit is not refused credentials), and is
        // refused credentials only without any.
        let forbidden = |body: &'static str| {
            Router::new().route(
                "/v2/app/manifests/1",
                get(move || async move { (StatusCode::FORBIDDEN, body) }),
            )
        };
        let err = manifest_from(forbidden(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
        ))
        .await
        .0
        .unwrap_err();
        assert!(
            matches!(&err, Error::Registry { message, .. } if message.contains("slow down")),
            "{err}"
        );
        let err = manifest_from(forbidden("no")).await.0.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    }

    /// Counts the requests it is given, and answers each with `answer`.
    fn counting(
        path: &'static str,
        answer: fn(&HeaderMap) -> Response,
    ) -> (Router<(Seen, String)>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let routes = Router::new().route(
            path,
            get(move |headers: HeaderMap| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move { answer(&headers) }
            }),
        );
        (routes, count)
    }

    #[tokio::test]
    async fn credentials_go_with_the_first_request_to_a_registry_that_hides_what_it_holds() {
        let (routes, _) = counting("/v2/app/manifests/1", |headers| {
            match headers.get(header::AUTHORIZATION) {
                Some(v) if v == "Basic dXNlcjpwdw==" => MANIFEST.into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        });
        let seen = Seen::default();
        let (registry, host) = serve(routes, &seen).await;
        let right = RegistryAuth::Basic("user".into(), "pw".into());
        let (body, _) = registry.manifest(&reference(&host), &right).await.unwrap();
        assert_eq!(body, MANIFEST.as_bytes());
        let err = registry
            .manifest(&reference(&host), &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_manifest_digest_comes_from_head_or_else_from_the_manifest() {
        const GIVEN: &str =
            "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let head_answers = |status: StatusCode, digest: Option<&'static str>| {
            Router::new().route(
                "/v2/app/manifests/1",
                get(|| async { MANIFEST }).head(move || async move {
                    let mut response = status.into_response();
                    if let Some(digest) = digest {
                        response
                            .headers_mut()
                            .insert("docker-content-digest", digest.parse().unwrap());
                    }
                    response
                }),
            )
        };
        let digest_from = |routes: Router<(Seen, String)>| async move {
            let seen = Seen::default();
            let (registry, host) = serve(routes, &seen).await;
            registry
                .manifest_digest(&reference(&host), &RegistryAuth::Anonymous)
                .await
        };
        let body_digest = crate::store::digest_of(MANIFEST.as_bytes());
        let from_head = digest_from(head_answers(StatusCode::OK, Some(GIVEN))).await;
        assert_eq!(from_head.unwrap(), GIVEN);
        for refused_head in [
            head_answers(StatusCode::OK, None),
            head_answers(StatusCode::METHOD_NOT_ALLOWED, None),
        ] {
            assert_eq!(digest_from(refused_head).await.unwrap(), body_digest);
        }
        let missing = digest_from(head_answers(StatusCode::NOT_FOUND, None)).await;
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn a_token_is_taken_from_either_field_and_kept_only_for_its_life() {
        // An empty `token` and a float `expires_in` are passed over; a 5 s life is all
        // margin, so every request asks again.
        let seen = Seen::default();
        let routes = guarded("Bearer t0k", BEARER_CHALLENGE).route(
            "/token",
            get(|State((seen, _)): State<(Seen, String)>| async move {
                seen.tokens.fetch_add(1, Ordering::Relaxed);
                r#"{"token":"","access_token":"t0k","expires_in":5.0,"issued_at":"now"}"#
            }),
        );
        let (registry, host) = serve(routes, &seen).await;
        for _ in 0..2 {
            let (body, _) = registry
                .manifest(&reference(&host), &RegistryAuth::Anonymous)
                .await
                .unwrap();
            assert_eq!(body, MANIFEST.as_bytes());
        }
        assert_eq!(seen.tokens.load(Ordering::Relaxed), 1, "a default life");

        let routes = guarded("Bearer t0k", BEARER_CHALLENGE).route(
            "/token",
            get(|State((seen, _)): State<(Seen, String)>| async move {
                seen.tokens.fetch_add(1, Ordering::Relaxed);
                r#"{"token":"t0k","expires_in":5}"#
            }),
        );
        let seen = Seen::default();
        let (registry, host) = serve(routes, &seen).await;
        for _ in 0..2 {
            registry
                .manifest(&reference(&host), &RegistryAuth::Anonymous)
                .await
                .unwrap();
        }
        assert_eq!(
            seen.tokens.load(Ordering::Relaxed),
            2,
            "not kept past its life"
        );
    }

    #[tokio::test]
    async fn a_token_service_that_fails_is_named_with_its_answer() {
        let routes = guarded("Bearer t0k", BEARER_CHALLENGE)
            .route("/token", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
        let err = manifest_from(routes).await.0.unwrap_err();
        assert!(
            matches!(&err, Error::Registry { message, .. }
                if message.starts_with("the token service http://")
                    && message.ends_with("/token answered HTTP 503 Service Unavailable")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_token_service_whose_certificate_is_refused_is_named_with_the_reason() {
        let tls = crate::client::tests::self_signed_server().await;
        // `guarded` wants a challenge that lives for the test's routes.
        let challenge = format!(r#"Bearer realm="https://{tls}/token",service="test""#).leak();
        let err = manifest_from(guarded("Bearer t0k", challenge))
            .await
            .0
            .unwrap_err();
        let expected = format!(
            "the token service https://{tls}/token presented a certificate that is refused: {}",
            crate::client::tests::UNKNOWN_CA
        );
        assert!(
            matches!(&err, Error::Registry { message, .. } if *message == expected),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_blob_is_asked_for_only_by_a_well_formed_digest() {
        let (routes, asked) = counting("/v2/app/blobs/{digest}", |_| "blob".into_response());
        let seen = Seen::default();
        let (registry, host) = serve(routes, &seen).await;
        let mut out = Vec::new();
        for digest in ["sha256:../../manifests/1", "sha256:ab?x=1", "md5:00"] {
            let err = registry
                .copy_blob(
                    &reference(&host),
                    &RegistryAuth::Anonymous,
                    digest,
                    &mut out,
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidDigest(_)), "{err}");
        }
        assert_eq!(asked.load(Ordering::Relaxed), 0);
        let digest = crate::store::digest_of(b"blob");
        registry
            .copy_blob(
                &reference(&host),
                &RegistryAuth::Anonymous,
                &digest,
                &mut out,
            )
            .await
            .unwrap();
        assert_eq!(
            (out.as_slice(), asked.load(Ordering::Relaxed)),
            (&b"blob"[..], 1)
        );
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_under_it_is_sent_once_more() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::Relaxed) == 0;
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                // The first connection goes as a registry that went away leaves it.
                if !first {
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{MANIFEST}",
                        MANIFEST.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                }
            }
        });
        let registry = Registry::new(crate::client::new_http().unwrap(), vec![host.clone()]);
        let (body, _) = registry
            .manifest(&reference(&host), &RegistryAuth::Anonymous)
            .await
            .unwrap();
        assert_eq!(body, MANIFEST.as_bytes());
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_token_lives_as_its_answer_says_within_a_day_less_the_margin() {
        use serde_json::json;
        let life = |v: serde_json::Value| token_life(Some(&v));
        assert_eq!(token_life(None), DEFAULT_TOKEN_LIFE - TOKEN_MARGIN);
        assert_eq!(life(json!(300)), Duration::from_secs(295));
        assert_eq!(life(json!(3)), Duration::ZERO);
        for unreadable in [json!(30.5), json!(-1), json!("300")] {
            assert_eq!(life(unreadable), DEFAULT_TOKEN_LIFE - TOKEN_MARGIN);
        }
        assert_eq!(life(json!(u64::MAX)), MAX_TOKEN_LIFE - TOKEN_MARGIN);
    }

    #[tokio::test]
    async fn a_bearer_challenge_is_taken_before_a_basic_one_in_any_header() {
        let seen = Seen::default();
        let routes = Router::new()
            .route(
                "/v2/app/manifests/1",
                get(
                    |State((_, host)): State<(Seen, String)>, headers: HeaderMap| async move {
                        if headers
                            .get(header::AUTHORIZATION)
                            .is_some_and(|v| v == "Bearer t0k")
                        {
                            return MANIFEST.into_response();
                        }
                        let bearer = BEARER_CHALLENGE.replace("{host}", &host);
                        let mut refused = StatusCode::UNAUTHORIZED.into_response();
                        let headers = refused.headers_mut();
                        headers.append(
                            header::WWW_AUTHENTICATE,
                            r#"Basic realm="test""#.parse().unwrap(),
                        );
                        headers.append(header::WWW_AUTHENTICATE, bearer.parse().unwrap());
                        refused
                    },
                ),
            )
            .route("/token", get(token));
        let (registry, host) = serve(routes, &seen).await;
        let (body, _) = registry
            .manifest(&reference(&host), &RegistryAuth::Anonymous)
            .await
            .unwrap();
        assert_eq!(body, MANIFEST.as_bytes());
    }

    #[tokio::test]
    async fn a_token_longer_than_64_kib_is_refused() {
        let routes = guarded("Bearer t0k", BEARER_CHALLENGE).route(
            "/token",
            get(|| async { format!(r#"{{"token":"{}"}}"#, "t".repeat(MAX_TOKEN_CHARS + 1)) }),
        );
        let err = manifest_from(routes).await.0.unwrap_err();
        assert!(
            err.to_string().contains("sent a token longer than 64 KiB"),
            "{err}"
        );
    }
}
