//! Service account tokens for projected volumes, bound to the pod and renewed before they
//! expire, as the kubelet's token manager does.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

use super::VolumeContext;
use crate::pod::env::unreachable;
use crate::store::ObjectKey;

/// The kubelet's default for `expirationSeconds` (the API server refuses less than ten
/// minutes).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token is renewed after 80% of its life, or after a day, whichever is first.
const RENEW_AFTER_FRACTION: f64 = 0.8;
const RENEW_AFTER_AT_MOST: Duration = Duration::from_secs(24 * 3600);

/// A token the API server issued.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct IssuedToken {
    pub(crate) token: String,
    #[serde(with = "seconds")]
    issued: Timestamp,
    #[serde(with = "seconds")]
    expires: Timestamp,
}

/// Timestamps as Unix seconds in the store.
mod seconds {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.as_second())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let seconds = i64::deserialize(d)?;
        Timestamp::from_second(seconds).map_err(serde::de::Error::custom)
    }
}

impl IssuedToken {
    /// Whether it has expired: the API server would refuse it.
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }

    /// Whether it is time to ask for a new one.
    pub(crate) fn due(&self, now: Timestamp) -> bool {
        let life = self
            .expires
            .duration_since(self.issued)
            .as_secs_f64()
            .max(0.0);
        let renew_after =
            Duration::from_secs_f64(life * RENEW_AFTER_FRACTION).min(RENEW_AFTER_AT_MOST);
        now.duration_since(self.issued).as_secs_f64() >= renew_after.as_secs_f64()
    }
}

/// A token for the pod's volume path `key`: a fresh one from the API server, kept in the
/// store; while the API server cannot be reached, the stored one if it has not expired, so a
/// pod restarted offline keeps its identity until the link returns.
pub(crate) async fn obtain(
    ctx: &VolumeContext<'_>,
    pod: &Pod,
    key: &str,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<IssuedToken, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let stored_key = ObjectKey::token(uid, key, audience);
    let stored = || async {
        ctx.reads
            .store
            .object::<IssuedToken>(&stored_key)
            .await
            .filter(|token| !token.expired(Timestamp::now()))
    };
    let Some(client) = ctx.reads.client else {
        return stored().await.ok_or_else(|| {
            "cannot get a service account token: this node has no API server".into()
        });
    };
    match request_when_caught_up(ctx, client, pod, audience, expiration_seconds).await {
        Ok(token) => {
            ctx.reads.store.put_object(uid, &stored_key, &token).await;
            Ok(token)
        }
        Err(err) if unreachable(&err) => match stored().await {
            Some(token) => Ok(token),
            None => Err(describe(pod, &err)),
        },
        Err(err) => Err(describe(pod, &err)),
    }
}

/// A token request right after the pod was bound can reach an API server whose view of the
/// node's pods lags by a few milliseconds: it answers that the pod does not exist (404) or
/// that the node has no relationship with it (403). Those two answers are asked again at
/// once, doubling from 2 ms with jitter up to 100 ms, for at most 3 s; anything else is
/// returned as it is, for the volume's usual back-off.
async fn request_when_caught_up(
    ctx: &VolumeContext<'_>,
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<IssuedToken, kube::Error> {
    let first = std::time::Instant::now();
    let deadline = first + CATCH_UP_BUDGET;
    let mut delay = CATCH_UP_FIRST;
    loop {
        let answer = request(client, pod, audience, expiration_seconds).await;
        match answer {
            Err(err) if not_caught_up(&err) && std::time::Instant::now() + delay < deadline => {
                ctx.metrics.count_token_retry();
                tracing::debug!(
                    pod = pod.metadata.name.as_deref().unwrap_or_default(),
                    error = %err,
                    since_first_ms = first.elapsed().as_secs_f64() * 1e3,
                    "the API server has not caught up with the pod's binding; asking again"
                );
                let jitter = Duration::from_micros(fastrand::u64(0..=delay.as_micros() as u64 / 2));
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(CATCH_UP_MAX);
            }
            answer => return answer,
        }
    }
}

const CATCH_UP_FIRST: Duration = Duration::from_millis(2);
const CATCH_UP_MAX: Duration = Duration::from_millis(100);
const CATCH_UP_BUDGET: Duration = Duration::from_secs(3);

/// Whether `err` is the API server not yet knowing that the pod is bound to this node.
fn not_caught_up(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            // The API's own "not found" says `pods`; NodeRestriction's, from its informer
            // cache (what a 1.20 API server answers), says `pod`.
            let pod_missing = status.code == 404
                && status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "pods" || d.kind == "pod");
            let no_relationship =
                status.code == 403 && status.message.contains("no relationship found");
            pod_missing || no_relationship
        }
        _ => false,
    }
}

fn describe(pod: &Pod, err: &kube::Error) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    format!(
        "cannot get a token for service account {namespace}/{}: {err}",
        account(pod)
    )
}

fn account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Asks for a token of the pod's service account, bound to the pod (so it dies with it).
async fn request(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<IssuedToken, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = account(pod);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let issued = Timestamp::now();
    let answer = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await?;
    let status = answer.status.ok_or_else(|| {
        kube::Error::Service(
            format!("the token request for {namespace}/{account} returned no token").into(),
        )
    })?;
    Ok(IssuedToken {
        token: status.token,
        issued,
        expires: status.expiration_timestamp.0,
    })
}

#[cfg(test)]
impl IssuedToken {
    /// The same token, issued `age` earlier: for tests of renewal.
    pub(crate) fn aged(token: &Self, age: jiff::SignedDuration) -> Self {
        Self {
            token: token.token.clone(),
            issued: token.issued - age,
            expires: token.expires - age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_life() {
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let token = IssuedToken {
            token: "t".into(),
            issued,
            expires: issued + jiff::SignedDuration::from_secs(3600),
        };
        assert!(!token.due(issued + jiff::SignedDuration::from_secs(2879)));
        assert!(token.due(issued + jiff::SignedDuration::from_secs(2880)));
        let long = IssuedToken {
            expires: issued + jiff::SignedDuration::from_hours(24 * 30),
            ..token
        };
        assert!(long.due(issued + jiff::SignedDuration::from_hours(24)));
    }
}
