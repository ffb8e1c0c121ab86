//! Who is calling and whether they may, as the kubelet's `Webhook` modes decide it.
//!
//! Authentication: a client certificate that rustls already verified against the cluster CA
//! (its CN is the user, its O entries the groups), else a bearer token the API server vouches
//! for through a TokenReview. Neither: 401. Authorization: a SubjectAccessReview for the
//! `nodes` resource with the subresource the path maps to, as the kubelet asks. Denied: 403.
//! Answers are remembered for the kubelet's default TTLs (see `review_cache`).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use tracing::{debug, warn};

use std::num::NonZeroU32;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::review_cache::TtlCache;
use super::{ApiState, plain_error};

/// How long answers are kept: the kubelet's `--authentication-token-webhook-cache-ttl` (2 m)
/// for accepted tokens, and its authorizer's 5 m for allowed and 30 s for denied requests.
/// A refused token is asked about again after 10 s, so a token minted a moment ago works.
const TOKEN_ACCEPTED_TTL: Duration = Duration::from_secs(120);
const TOKEN_REFUSED_TTL: Duration = Duration::from_secs(10);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Reviews of tokens the node has no answer for: at most this many at once, then
/// [`NEW_TOKEN_REVIEWS_PER_SECOND`]. Anyone who can reach the port can present a new token
/// per request, and each would otherwise cost the API server a TokenReview.
const NEW_TOKEN_REVIEW_BURST: u32 = 20;
const NEW_TOKEN_REVIEWS_PER_SECOND: u32 = 10;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its UID, when the authenticator gave one.
    pub uid: Option<String>,
}

/// The identity in the TLS client certificate of a connection, if it presented one. The
/// server adds it to every request of that connection.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity(pub Option<User>);

impl PeerIdentity {
    /// The user named by a certificate (DER) that the TLS layer has already verified.
    pub fn from_certificate(der: &[u8]) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Self(None);
        };
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_string);
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_string)
            .collect();
        Self(name.filter(|n| !n.is_empty()).map(|name| User {
            name,
            groups,
            uid: None,
        }))
    }
}

/// What a request asks to do, in SubjectAccessReview terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, …
    pub verb: &'static str,
    /// `proxy`, `log`, `stats`, `metrics` or `spec`.
    pub subresource: &'static str,
}

impl Attributes {
    /// The kubelet's mapping from method and path.
    pub fn of(method: &Method, path: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        };
        let under = |prefix: &str| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let subresource = if under("/stats") {
            "stats"
        } else if under("/metrics") {
            "metrics"
        } else if under("/logs") {
            "log"
        } else if under("/spec") {
            "spec"
        } else {
            "proxy"
        };
        Self { verb, subresource }
    }
}

/// Asks the API server about tokens and permissions, with the node's own credentials.
pub struct Gatekeeper {
    client: kube::Client,
    node_name: String,
    /// Answers by the token's SHA-256, so the cache holds no bearer tokens.
    tokens: TtlCache<[u8; 32], Option<User>>,
    decisions: TtlCache<(User, Attributes), bool>,
    new_token_reviews: certs::rate_limit::Bucket,
}

/// Why a caller could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not answer.
    #[error("cannot reach the API server to check the caller: {0}")]
    Unreachable(#[from] kube::Error),
    /// Too many tokens the node had no answer for, too fast.
    #[error("too many new bearer tokens to review; try again shortly")]
    Throttled,
}

impl Gatekeeper {
    /// A gatekeeper for node `node_name`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self {
            client,
            node_name: node_name.to_string(),
            tokens: TtlCache::new(),
            decisions: TtlCache::new(),
            new_token_reviews: certs::rate_limit::ApiRateLimit {
                qps: NonZeroU32::new(NEW_TOKEN_REVIEWS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
                burst: NonZeroU32::new(NEW_TOKEN_REVIEW_BURST).unwrap_or(NonZeroU32::MIN),
            }
            .bucket(),
        }
    }

    /// The user a bearer token belongs to, or `None` if the API server does not accept it.
    pub async fn review_token(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.tokens.get(&key) {
            return Ok(known);
        }
        if self.new_token_reviews.check().is_err() {
            return Err(ReviewError::Throttled);
        }
        let user = self.ask_about_token(token).await?;
        let ttl = if user.is_some() {
            TOKEN_ACCEPTED_TTL
        } else {
            TOKEN_REFUSED_TTL
        };
        self.tokens.put(key, user.clone(), ttl);
        Ok(user)
    }

    async fn ask_about_token(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(None);
        };
        Ok(status.user.and_then(|u| {
            Some(User {
                name: u.username.filter(|n| !n.is_empty())?,
                groups: u.groups.unwrap_or_default(),
                uid: u.uid,
            })
        }))
    }

    /// Whether `user` may do `attributes` on this node.
    pub async fn allowed(&self, user: &User, attributes: &Attributes) -> Result<bool, ReviewError> {
        let key = (user.clone(), attributes.clone());
        if let Some(known) = self.decisions.get(&key) {
            return Ok(known);
        }
        let allowed = self.ask_about_access(user, attributes).await?;
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.put(key, allowed, ttl);
        Ok(allowed)
    }

    async fn ask_about_access(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<bool, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                uid: user.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attributes.verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(attributes.subresource.into()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(reviewed.status.is_some_and(|s| s.allowed))
    }
}

/// The middleware in front of every route.
pub(super) async fn authorize(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let from_cert = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let user = match (from_cert, bearer_token(&request)) {
        (Some(user), _) => user,
        (None, Some(token)) => match state.gate.review_token(&token).await {
            Ok(Some(user)) => user,
            Ok(None) => return plain_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Err(err) => return unavailable(err),
        },
        (None, None) => return plain_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
    };
    let attributes = Attributes::of(request.method(), request.uri().path());
    match state.gate.allowed(&user, &attributes).await {
        Ok(true) => next.run(request).await,
        Ok(false) => {
            debug!(user = %user.name, ?attributes, path = %request.uri().path(), "forbidden");
            plain_error(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
                    user.name, attributes.verb, attributes.subresource
                ),
            )
        }
        Err(err) => unavailable(err),
    }
}

fn unavailable(err: ReviewError) -> Response {
    match err {
        ReviewError::Throttled => {
            debug!(%err, "kubelet API caller refused");
            plain_error(StatusCode::TOO_MANY_REQUESTS, err.to_string())
        }
        ReviewError::Unreachable(_) => {
            warn!(%err, "could not check a kubelet API caller");
            plain_error(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        }
    }
}

fn bearer_token(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let get = |p| Attributes::of(&Method::GET, p).subresource;
        assert_eq!(get("/stats/summary"), "stats");
        assert_eq!(get("/metrics"), "metrics");
        assert_eq!(get("/metrics/resource"), "metrics");
        assert_eq!(get("/containerLogs/ns/p/c"), "proxy");
        assert_eq!(get("/pods"), "proxy");
        assert_eq!(get("/statsx"), "proxy");
        assert_eq!(Attributes::of(&Method::POST, "/exec/a/b/c").verb, "create");
    }

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let pair = certs::self_signed(&certs::CertificateSpec::client(
            "system:node:edge-1".to_string(),
            &["system:nodes"],
        ))
        .unwrap();
        let (der, _) = certs::tls::parse_pair(&pair.cert_pem, &pair.key_pem).unwrap();
        let identity = PeerIdentity::from_certificate(&der[0]);
        assert_eq!(
            identity.0,
            Some(User {
                name: "system:node:edge-1".into(),
                groups: vec!["system:nodes".into()],
                uid: None,
            })
        );
        assert_eq!(PeerIdentity::from_certificate(b"junk").0, None);
    }
}
