//! What a pull asks a registry, over the puller's own HTTP client: a manifest or its digest, a
//! blob, and the token a registry's challenge sends it for.
//!
//! Every body read whole has a cap. The image comes from a pod spec, so the registry, and
//! the token service its challenge names, may be anyone's; oci-client (kept for push) reads
//! manifests, tokens and error bodies whole with no limit, and a registry that streamed
//! one without end would fill the node's memory. The caps are containers/image's: a
//! manifest 4 MiB (the distribution spec's and Docker's registry's own limit), a token
//! answer 1 MiB; of an error's body only enough for its message is read.

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

use crate::{Error, Result};

/// The largest manifest read.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest token answer read.
const MAX_TOKEN_BYTES: usize = 1 << 20;
/// How much of an error's body is read for its message.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// A token's life when its answer gives none (the token protocol's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
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
    /// What the last challenge for a registry, repository and credential was answered with.
    authorizations: Mutex<LruCache<String, Authorization>>,
}

/// An `Authorization` header, and until when it may be sent.
#[derive(Clone)]
struct Authorization {
    header: HeaderValue,
    until: Option<Instant>,
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
        let url = self.url(reference, "manifests", manifest_target(reference));
        let response = self
            .get_manifest(Method::GET, reference, auth, &url)
            .await?;
        let digest = content_digest(&response);
        let body = read_capped(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|unread| {
                too_large_or_failed(reference, unread, "manifest", MAX_MANIFEST_BYTES)
            })?;
        Ok((body, digest))
    }

    /// The digest of the manifest `reference` names: from a HEAD request's
    /// `Docker-Content-Digest`, or, for a registry that gives none, the manifest's own.
    pub(crate) async fn manifest_digest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<String> {
        let url = self.url(reference, "manifests", manifest_target(reference));
        let head = self
            .get_manifest(Method::HEAD, reference, auth, &url)
            .await?;
        if let Some(digest) = content_digest(&head) {
            return Ok(digest);
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

    async fn get_manifest(
        &self,
        method: Method,
        reference: &Reference,
        auth: &RegistryAuth,
        url: &str,
    ) -> Result<reqwest::Response> {
        let accept = crate::media::ACCEPTED_MANIFESTS.join(", ");
        let response = self
            .send(method, reference, auth, url, Some(&accept))
            .await?;
        check_status(reference, response).await
    }

    /// `method` on `url` with the authorization held for `reference` and `auth`. A 401 that
    /// carries a challenge is answered once (a token fetched, or the credentials sent) and
    /// the request sent again; the answer is kept for the next request.
    async fn send(
        &self,
        method: Method,
        reference: &Reference,
        auth: &RegistryAuth,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response> {
        let key = authorization_key(reference, auth);
        let held = match auth {
            RegistryAuth::Bearer(token) => Some(bearer(reference, token)?),
            _ => self.held(&key),
        };
        let request = |authorization: Option<&HeaderValue>| {
            let mut request = self.http.request(method.clone(), url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            request.send()
        };
        let response = request(held.as_ref())
            .await
            .map_err(|e| request_failed(reference, e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(response);
        };
        let Some(answer) = self.answer(reference, auth, challenge).await? else {
            return Ok(response);
        };
        // The same credentials again would be refused again.
        if held.as_ref() == Some(&answer.header) {
            return Ok(response);
        }
        self.keep(key, answer.clone());
        request(Some(&answer.header))
            .await
            .map_err(|e| request_failed(reference, e))
    }

    /// What answers `challenge` with `auth`: a token from the service a Bearer challenge
    /// names, or `auth`'s own credentials for a Basic one; none for a scheme not spoken or
    /// without credentials to give.
    async fn answer(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        challenge: &str,
    ) -> Result<Option<Authorization>> {
        for challenge in ChallengeParser::new(challenge) {
            let Ok(challenge) = challenge else {
                break;
            };
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.to_unescaped())
            };
            if challenge.scheme.eq_ignore_ascii_case("bearer") {
                let Some(realm) = param("realm") else {
                    return Err(Error::Registry {
                        reference: reference.whole(),
                        message: "the registry asks for a token and names no service for it".into(),
                    });
                };
                let scope = param("scope")
                    .unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
                let token = self
                    .token(reference, auth, &realm, param("service"), &scope)
                    .await?;
                return Ok(Some(token));
            }
            if challenge.scheme.eq_ignore_ascii_case("basic") {
                return Ok(match auth {
                    RegistryAuth::Basic(user, password) => Some(Authorization {
                        header: basic(reference, user, password)?,
                        until: None,
                    }),
                    _ => None,
                });
            }
        }
        Ok(None)
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
        let mut query = vec![("scope", scope.to_string())];
        query.extend(service.map(|s| ("service", s)));
        let mut request = self.http.get(realm).query(&query);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_failed(reference, e))?;
        if !response.status().is_success() {
            return Err(Error::Unauthorized {
                reference: reference.whole(),
                registry: reference.resolve_registry().to_string(),
            });
        }
        let body = read_capped(response, MAX_TOKEN_BYTES)
            .await
            .map_err(|unread| {
                too_large_or_failed(reference, unread, "token answer", MAX_TOKEN_BYTES)
            })?;
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let unreadable = |detail: String| Error::Registry {
            reference: reference.whole(),
            message: format!("unreadable token answer from {realm}: {detail}"),
        };
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| unreadable(e.to_string()))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| unreadable("it holds no token".into()))?;
        let life = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs)
            .saturating_sub(TOKEN_MARGIN);
        Ok(Authorization {
            header: bearer(reference, &token)?,
            until: Instant::now().checked_add(life),
        })
    }

    fn held(&self, key: &str) -> Option<HeaderValue> {
        let mut held = self.authorizations();
        let authorization = held.get(key)?;
        if authorization
            .until
            .is_some_and(|until| until <= Instant::now())
        {
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

/// A manifest is asked for by digest when the reference pins one.
fn manifest_target(reference: &Reference) -> &str {
    reference
        .digest()
        .or_else(|| reference.tag())
        .unwrap_or("latest")
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

/// `response` if it succeeded; otherwise what its status and error body say.
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
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(unauthorized()),
        _ => {}
    }
    let body = read_capped(response, MAX_ERROR_BYTES).await.ok();
    let envelope = body
        .as_deref()
        .and_then(|body| serde_json::from_slice::<OciEnvelope>(body).ok());
    let Some(envelope) = envelope else {
        let text = body
            .map(|body| String::from_utf8_lossy(&body).trim().to_string())
            .filter(|text| !text.is_empty())
            .map(|text| format!(": {}", text.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        return Err(Error::Registry {
            reference: reference.whole(),
            message: format!("HTTP {status}{text}"),
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
        return Error::RegistryUnreachable {
            registry: reference.resolve_registry().to_string(),
            source: Box::new(err),
        };
    }
    let causes: Vec<String> =
        std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect();
    Error::Registry {
        reference: reference.whole(),
        message: causes.join(": "),
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

    /// A body that never ends, counting what it sent in `seen`.
    fn endless(seen: &Seen) -> Body {
        let sent = seen.endless_bytes.clone();
        Body::from_stream(futures::stream::repeat_with(move || {
            sent.fetch_add(CHUNK, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b' '; CHUNK]))
        }))
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
    async fn a_basic_challenge_is_answered_with_the_credentials_and_refused_without() {
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
        let routes = Router::new().route(
            "/v2/app/manifests/1",
            get(|| async { vec![b' '; MAX_MANIFEST_BYTES + 1] }),
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
                (StatusCode::BAD_GATEWAY, endless(&seen))
            }),
        );
        let (answer, sent) = manifest_from(routes).await;
        let err = answer.unwrap_err();
        assert!(
            matches!(&err, Error::Registry { message, .. } if message.starts_with("HTTP 502 Bad Gateway")),
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
    }
}
