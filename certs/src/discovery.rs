//! Token discovery: from `HOST:PORT --token ID.SECRET --discovery-token-ca-cert-hash
//! sha256:HEX` to a bootstrap kubeconfig, as `kubeadm join` finds its cluster.
//!
//! kubeadm publishes a kubeconfig that holds the API server's address and the cluster CA in
//! the `cluster-info` ConfigMap in `kube-public`, which anyone may read. For every token with
//! `usage-bootstrap-signing`, kube-controller-manager's bootstrap signer adds a detached JWS
//! of that kubeconfig (HS256 keyed by the token's secret, `kid` the token's ID) under
//! `jws-kubeconfig-<id>`. A joining node reads the ConfigMap before it can trust the
//! server's certificate, so it trusts what it read only when both checks pass:
//! - the signature for its token ID verifies with its token's secret: the server knows the
//!   secret, so it is the cluster the token came from;
//! - the CA's public key hashes to a pinned `sha256:` value: the CA is the one the operator
//!   copied the hash of, so no one between the two can swap in their own.
//!
//! Then it reads the ConfigMap again over TLS verified with that CA, and the two must agree.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{AuthInfo, Cluster, Kubeconfig};
use tracing::{info, warn};
use x509_parser::prelude::FromDer;

use crate::bootstrap::write_single_kubeconfig;

/// Where kubeadm publishes the cluster's address and CA.
const NAMESPACE: &str = "kube-public";
/// The ConfigMap's name.
const CONFIG_MAP: &str = "cluster-info";
/// The key that holds the kubeconfig.
const KUBECONFIG_KEY: &str = "kubeconfig";
/// The prefix of the keys that hold its signatures, one per signing token.
const SIGNATURE_PREFIX: &str = "jws-kubeconfig-";
/// How long to wait between attempts, as kubeadm does.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long one read may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--token` is not `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[error(
        "--token must be 6 and 16 characters of [a-z0-9] joined by a dot, like abcdef.0123456789abcdef"
    )]
    TokenFormat,
    /// A `--discovery-token-ca-cert-hash` is not `sha256:` and 64 hex digits.
    #[error("--discovery-token-ca-cert-hash {0:?} must be sha256: followed by 64 hex digits")]
    PinFormat(String),
    /// Neither a pin nor the unsafe skip was given.
    #[error(
        "give --discovery-token-ca-cert-hash sha256:HEX (kubeadm token create --print-join-command prints it), or --discovery-token-unsafe-skip-ca-verification to trust the token alone"
    )]
    NoPin,
    /// The ConfigMap holds no signature for the token's ID.
    #[error(
        "cluster-info holds no signature for token ID {0:?}: the token is wrong, has expired, or is not a signing token"
    )]
    NotSigned(String),
    /// The signature for the token's ID does not verify with the token's secret.
    #[error(
        "cluster-info's signature for token ID {0:?} does not verify with the token's secret: the token is wrong, or the server is not the cluster's"
    )]
    BadSignature(String),
    /// The CA's public key hashes to none of the pins.
    #[error(
        "the cluster CA's public key hash is {found}, not the pinned --discovery-token-ca-cert-hash {pinned}: the hash is wrong, or the server is not the cluster's"
    )]
    CaNotPinned {
        /// The hash (or hashes, for a bundle) of what the server sent.
        found: String,
        /// What the operator pinned.
        pinned: String,
    },
    /// The ConfigMap, or the kubeconfig in it, is not what kubeadm writes.
    #[error("cluster-info is malformed: {0}")]
    Malformed(String),
    /// The second read, with the CA verified, differs from the first.
    #[error("cluster-info changed between the first read and the one verified with its CA")]
    Changed,
    /// The node's kubeconfig, from an earlier join, is for a different cluster.
    #[error(
        "kubeconfig {path} is for another cluster ({detail}): remove it, or give this node another --data-dir or --kubeconfig"
    )]
    JoinedElsewhere {
        /// The node's kubeconfig.
        path: std::path::PathBuf,
        /// How it differs.
        detail: String,
    },
    /// No read succeeded before the deadline.
    #[error("could not read cluster-info from {url} within {waited:?}: {last}")]
    Unreachable {
        /// The API server.
        url: String,
        /// How long discovery tried.
        waited: Duration,
        /// The last attempt's error.
        last: String,
    },
}

/// A bootstrap token, `ID.SECRET`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
}

impl JoinToken {
    /// The public half, which names the token's Secret and its signature.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for JoinToken {
    // The secret must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.<secret>)", self.id)
    }
}

impl FromStr for JoinToken {
    type Err = DiscoveryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let part = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match text.split_once('.') {
            Some((id, secret)) if part(id, 6) && part(secret, 16) => Ok(Self {
                id: id.into(),
                secret: secret.into(),
            }),
            _ => Err(DiscoveryError::TokenFormat),
        }
    }
}

/// The SHA-256 of a CA certificate's SubjectPublicKeyInfo, as kubeadm pins it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl FromStr for CaPin {
    type Err = DiscoveryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || DiscoveryError::PinFormat(text.into());
        let hex = text.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut pin = [0u8; 32];
        for (byte, pair) in pin.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(pin))
    }
}

impl std::fmt::Display for CaPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for CaPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How the cluster CA found in cluster-info is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaVerification {
    /// It must hash to one of these (kubeadm accepts any of several).
    Pinned(Vec<CaPin>),
    /// `--discovery-token-unsafe-skip-ca-verification`: trust the token's signature alone,
    /// which anyone who knows the token could forge.
    SkipUnsafe,
}

impl CaVerification {
    /// From the flags: the pins, or the explicit skip; neither is an error, as in kubeadm.
    pub fn from_flags(pins: Vec<CaPin>, skip: bool) -> Result<Self, DiscoveryError> {
        match (pins.is_empty(), skip) {
            (false, _) => Ok(Self::Pinned(pins)),
            (true, true) => Ok(Self::SkipUnsafe),
            (true, false) => Err(DiscoveryError::NoPin),
        }
    }
}

/// What discovery learns: the API server to bootstrap against and the CA it trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server's URL, from the signed kubeconfig.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: Vec<u8>,
}

/// Checks a `cluster-info` ConfigMap for `token` and `ca` and returns what it holds.
pub fn verify(
    config_map: &ConfigMap,
    token: &JoinToken,
    ca: &CaVerification,
) -> Result<ClusterInfo, DiscoveryError> {
    let data = config_map
        .data
        .as_ref()
        .ok_or_else(|| DiscoveryError::Malformed("it has no data".into()))?;
    let kubeconfig = data
        .get(KUBECONFIG_KEY)
        .ok_or_else(|| DiscoveryError::Malformed(format!("it has no {KUBECONFIG_KEY} key")))?;
    let signature = data
        .get(&format!("{SIGNATURE_PREFIX}{}", token.id))
        .ok_or_else(|| DiscoveryError::NotSigned(token.id.clone()))?;
    if !detached_signature_verifies(signature, kubeconfig.as_bytes(), &token.id, &token.secret) {
        return Err(DiscoveryError::BadSignature(token.id.clone()));
    }
    let info = cluster_info(kubeconfig)?;
    if let CaVerification::Pinned(pins) = ca {
        let found = public_key_pins(&info.ca_pem)?;
        if !found.iter().any(|f| pins.contains(f)) {
            let list = |pins: &[CaPin]| {
                pins.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(DiscoveryError::CaNotPinned {
                found: list(&found),
                pinned: list(pins),
            });
        }
    }
    Ok(info)
}

/// Whether `jws` (`HEADER..SIGNATURE`, the payload left out) is an HS256 signature of
/// `payload` by the token `id`/`secret`. The header is checked as sent rather than
/// rebuilt, so a signer that orders its fields differently still verifies.
fn detached_signature_verifies(jws: &str, payload: &[u8], id: &str, secret: &str) -> bool {
    let Some((header, rest)) = jws.split_once('.') else {
        return false;
    };
    let Some(("", signature)) = rest.split_once('.') else {
        return false;
    };
    let header_ok = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h["alg"] == "HS256" && h["kid"] == id);
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    // `verify` compares in constant time.
    header_ok && ring::hmac::verify(&key, signing_input.as_bytes(), &signature).is_ok()
}

/// The server and CA of the kubeconfig that cluster-info holds (kubeadm writes one cluster
/// and no contexts).
fn cluster_info(kubeconfig: &str) -> Result<ClusterInfo, DiscoveryError> {
    let malformed = |what: String| DiscoveryError::Malformed(what);
    let parsed = Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| malformed(format!("its kubeconfig does not parse ({e})")))?;
    let cluster = parsed
        .clusters
        .into_iter()
        .find_map(|c| c.cluster)
        .ok_or_else(|| malformed("its kubeconfig names no cluster".into()))?;
    let server = cluster
        .server
        .filter(|s| s.starts_with("https://"))
        .ok_or_else(|| malformed("its kubeconfig's cluster has no https:// server".into()))?;
    let ca_pem = cluster
        .certificate_authority_data
        .ok_or_else(|| {
            malformed("its kubeconfig's cluster has no certificate-authority-data".into())
        })
        .and_then(|data| {
            STANDARD.decode(data.trim()).map_err(|e| {
                malformed(format!(
                    "its certificate-authority-data is not base64 ({e})"
                ))
            })
        })?;
    Ok(ClusterInfo { server, ca_pem })
}

/// The pin of every certificate in a PEM bundle.
pub fn public_key_pins(ca_pem: &[u8]) -> Result<Vec<CaPin>, DiscoveryError> {
    let malformed = |e: String| DiscoveryError::Malformed(format!("its CA: {e}"));
    let mut pins = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(ca_pem) {
        let pem = pem.map_err(|e| malformed(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
            .map_err(|e| malformed(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        pins.push(CaPin(pin));
    }
    if pins.is_empty() {
        return Err(malformed("no certificate in it".into()));
    }
    Ok(pins)
}

/// Checks that the usable kubeconfig at `path`, written by an earlier join, is for the
/// cluster the join flags name, as kubeadm refuses to join over another cluster's
/// kubeconfig: its CA must match a pin or, with the CA check skipped, its server must be
/// `https://endpoint`.
pub fn check_joined_cluster(
    path: &Path,
    ca: &CaVerification,
    endpoint: &str,
) -> Result<(), DiscoveryError> {
    let elsewhere = |detail: String| DiscoveryError::JoinedElsewhere {
        path: path.to_path_buf(),
        detail,
    };
    let cluster = Kubeconfig::read_from(path)
        .ok()
        .as_ref()
        .and_then(crate::bootstrap::current_cluster)
        .ok_or_else(|| elsewhere("it names no cluster".into()))?;
    match ca {
        CaVerification::Pinned(pins) => {
            let pem = match (
                &cluster.certificate_authority_data,
                &cluster.certificate_authority,
            ) {
                (Some(data), _) => STANDARD.decode(data.trim()).ok(),
                (None, Some(file)) => std::fs::read(file).ok(),
                (None, None) => None,
            }
            .ok_or_else(|| elsewhere("it has no readable cluster CA".into()))?;
            let found = public_key_pins(&pem).map_err(|e| elsewhere(e.to_string()))?;
            if found.iter().any(|f| pins.contains(f)) {
                Ok(())
            } else {
                Err(elsewhere(format!(
                    "its CA's public key hash is {}",
                    found
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
        CaVerification::SkipUnsafe => {
            let server = cluster.server.unwrap_or_default();
            if server.trim_end_matches('/') == format!("https://{endpoint}") {
                Ok(())
            } else {
                Err(elsewhere(format!("its server is {server}")))
            }
        }
    }
}

/// Token discovery against one API server endpoint.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// `HOST:PORT` of the API server, as `kubeadm join` takes it.
    pub endpoint: String,
    /// The bootstrap token.
    pub token: JoinToken,
    /// How the CA is checked.
    pub ca: CaVerification,
    /// How long to keep trying to read cluster-info.
    pub timeout: Duration,
}

impl Discovery {
    /// Reads and checks cluster-info. An API server that cannot be reached, or whose
    /// cluster-info the bootstrap signer has not yet signed for this token (it does so a
    /// moment after the token is created), is tried again every 5 s until the timeout, as
    /// kubeadm does; any other failed check ends discovery at once.
    pub async fn run(&self) -> Result<ClusterInfo, DiscoveryError> {
        let url = format!("https://{}", self.endpoint);
        let started = Instant::now();
        let deadline = started + self.timeout;
        let (config_map, info) = loop {
            let failure = match read_cluster_info(&url, None).await {
                Ok(config_map) => match verify(&config_map, &self.token, &self.ca) {
                    Ok(info) => break (config_map, info),
                    Err(unsigned @ DiscoveryError::NotSigned(_)) => unsigned,
                    Err(other) => return Err(other),
                },
                Err(last) => DiscoveryError::Unreachable {
                    url: url.clone(),
                    waited: self.timeout,
                    last,
                },
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(failure);
            }
            let wait = RETRY_INTERVAL.min(deadline - now);
            let again = format!("trying again in {:.0} s", wait.as_secs_f64().ceil());
            match &failure {
                DiscoveryError::Unreachable { last, .. } => {
                    warn!("cannot read cluster-info from {url}, {again}: {last}")
                }
                other => warn!("{other}; {again}"),
            }
            tokio::time::sleep(wait).await;
        };
        if self.ca == CaVerification::SkipUnsafe {
            warn!(
                "the cluster CA was not checked (--discovery-token-unsafe-skip-ca-verification): anyone who knows the token could have answered"
            );
        } else {
            let verified = read_cluster_info(&url, Some(&info.ca_pem))
                .await
                .map_err(|last| DiscoveryError::Unreachable {
                    url: url.clone(),
                    waited: started.elapsed(),
                    last: format!("with the cluster CA verified: {last}"),
                })?;
            if verified.data.as_ref().and_then(|d| d.get(KUBECONFIG_KEY))
                != config_map.data.as_ref().and_then(|d| d.get(KUBECONFIG_KEY))
            {
                return Err(DiscoveryError::Changed);
            }
        }
        info!(server = %info.server, token_id = %self.token.id, "cluster-info verified");
        Ok(info)
    }
}

/// One anonymous GET of cluster-info: with `ca_pem`, the server's certificate must chain to
/// it; without, it is not checked (the signature and pin are, afterwards).
async fn read_cluster_info(url: &str, ca_pem: Option<&[u8]>) -> Result<ConfigMap, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad address {url}: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    match ca_pem {
        Some(pem) => {
            config.root_cert = Some(
                x509_parser::pem::Pem::iter_from_buffer(pem)
                    .filter_map(Result::ok)
                    .map(|p| p.contents)
                    .collect(),
            );
        }
        None => config.accept_invalid_certs = true,
    }
    let client = kube::Client::try_from(config).map_err(|e| with_causes(&e))?;
    kube::Api::<ConfigMap>::namespaced(client, NAMESPACE)
        .get(CONFIG_MAP)
        .await
        .map_err(|e| with_causes(&e))
}

/// An error and its causes on one line: kube's own message ("client error (Connect)") leaves
/// out what an operator needs ("Connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

/// Writes the bootstrap kubeconfig (owner-only): the discovered server and CA, and the token.
pub fn write_bootstrap_kubeconfig(
    path: &Path,
    info: &ClusterInfo,
    token: &JoinToken,
) -> crate::Result<()> {
    let cluster = Cluster {
        server: Some(info.server.clone()),
        certificate_authority_data: Some(STANDARD.encode(&info.ca_pem)),
        ..Cluster::default()
    };
    let user = AuthInfo {
        token: Some(format!("{}.{}", token.id, token.secret).into()),
        ..AuthInfo::default()
    };
    write_single_kubeconfig(path, cluster, user)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Authority;

    // cluster-bootstrap's own test vector (token/jws/jws_test.go).
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const VECTOR: &str =
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";

    #[test]
    fn the_cluster_bootstrap_signature_vector_verifies_and_nothing_else_does() {
        let secret = "my voice is my passcode";
        assert!(detached_signature_verifies(
            VECTOR,
            CONTENT.as_bytes(),
            "joshua",
            secret
        ));
        assert!(!detached_signature_verifies(
            VECTOR, b"other", "joshua", secret
        ));
        assert!(!detached_signature_verifies(
            VECTOR,
            CONTENT.as_bytes(),
            "joshua",
            "guess"
        ));
        assert!(!detached_signature_verifies(
            VECTOR,
            CONTENT.as_bytes(),
            "other",
            secret
        ));
        for broken in [
            "",
            "..",
            "abc",
            &VECTOR.replace("..", "."),
            &format!("{VECTOR}x"),
        ] {
            assert!(
                !detached_signature_verifies(broken, CONTENT.as_bytes(), "joshua", secret),
                "{broken}"
            );
        }
    }

    fn sign(payload: &str, id: &str, secret: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    struct Fixture {
        ca: Authority,
        token: JoinToken,
        config_map: ConfigMap,
    }

    fn fixture() -> Fixture {
        let ca = Authority::generate("kubernetes").unwrap();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.0.0.1:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nusers: null\n",
            STANDARD.encode(ca.cert_pem())
        );
        let token: JoinToken = "abcdef.0123456789abcdef".parse().unwrap();
        let config_map = ConfigMap {
            data: Some(BTreeMap::from([
                (
                    "jws-kubeconfig-abcdef".to_string(),
                    sign(&kubeconfig, "abcdef", "0123456789abcdef"),
                ),
                ("kubeconfig".to_string(), kubeconfig),
            ])),
            ..ConfigMap::default()
        };
        Fixture {
            ca,
            token,
            config_map,
        }
    }

    fn pin_of(ca: &Authority) -> CaPin {
        public_key_pins(ca.cert_pem().as_bytes()).unwrap()[0]
    }

    #[test]
    fn a_signed_cluster_info_with_the_pinned_ca_gives_its_server_and_ca() {
        let f = fixture();
        let info = verify(
            &f.config_map,
            &f.token,
            &CaVerification::Pinned(vec![pin_of(&f.ca)]),
        )
        .unwrap();
        assert_eq!(info.server, "https://10.0.0.1:6443");
        assert_eq!(info.ca_pem, f.ca.cert_pem().as_bytes());
    }

    #[test]
    fn a_wrong_token_is_refused_saying_which_check_failed() {
        let f = fixture();
        let pinned = CaVerification::Pinned(vec![pin_of(&f.ca)]);
        let other_id: JoinToken = "zzzzzz.0123456789abcdef".parse().unwrap();
        assert!(matches!(
            verify(&f.config_map, &other_id, &pinned),
            Err(DiscoveryError::NotSigned(id)) if id == "zzzzzz"
        ));
        let other_secret: JoinToken = "abcdef.aaaaaaaaaaaaaaaa".parse().unwrap();
        let err = verify(&f.config_map, &other_secret, &pinned).unwrap_err();
        assert!(matches!(err, DiscoveryError::BadSignature(_)), "{err}");
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn a_changed_kubeconfig_no_longer_verifies() {
        let mut f = fixture();
        let data = f.config_map.data.as_mut().unwrap();
        let swapped = data["kubeconfig"].replace("10.0.0.1", "10.6.6.6");
        data.insert("kubeconfig".into(), swapped);
        assert!(matches!(
            verify(&f.config_map, &f.token, &CaVerification::SkipUnsafe),
            Err(DiscoveryError::BadSignature(_))
        ));
    }

    #[test]
    fn a_ca_that_is_not_pinned_is_refused_with_both_hashes() {
        let f = fixture();
        let other = pin_of(&Authority::generate("other").unwrap());
        let err = verify(
            &f.config_map,
            &f.token,
            &CaVerification::Pinned(vec![other]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&pin_of(&f.ca).to_string()), "{err}");
        assert!(err.contains(&other.to_string()), "{err}");
        // Any one of several pins will do, and skipping the check takes the signature alone.
        let both = CaVerification::Pinned(vec![other, pin_of(&f.ca)]);
        assert!(verify(&f.config_map, &f.token, &both).is_ok());
        assert!(verify(&f.config_map, &f.token, &CaVerification::SkipUnsafe).is_ok());
    }

    #[test]
    fn tokens_and_pins_parse_as_kubeadm_prints_them_and_nothing_else() {
        assert_eq!(
            "abcdef.0123456789abcdef".parse::<JoinToken>().unwrap().id(),
            "abcdef"
        );
        for bad in [
            "",
            "abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcdeg!",
            "abcdef:0123456789abcdef",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
        let hex = "345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";
        let pin: CaPin = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{hex}"));
        for bad in [
            hex.to_string(),
            format!("sha1:{hex}"),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{}zz", &hex[2..]),
        ] {
            assert!(bad.parse::<CaPin>().is_err(), "{bad}");
        }
        assert!(matches!(
            CaVerification::from_flags(vec![], false),
            Err(DiscoveryError::NoPin)
        ));
        assert_eq!(
            CaVerification::from_flags(vec![], true).unwrap(),
            CaVerification::SkipUnsafe
        );
        assert_eq!(
            CaVerification::from_flags(vec![pin], true).unwrap(),
            CaVerification::Pinned(vec![pin])
        );
        assert!(
            format!(
                "{:?}",
                "abcdef.0123456789abcdef".parse::<JoinToken>().unwrap()
            )
            .contains("<secret>")
        );
    }

    #[test]
    fn an_earlier_join_counts_only_for_the_same_cluster() {
        let f = fixture();
        let info = verify(&f.config_map, &f.token, &CaVerification::SkipUnsafe).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write_bootstrap_kubeconfig(&path, &info, &f.token).unwrap();
        let same = CaVerification::Pinned(vec![pin_of(&f.ca)]);
        check_joined_cluster(&path, &same, "anything:6443").unwrap();
        check_joined_cluster(&path, &CaVerification::SkipUnsafe, "10.0.0.1:6443").unwrap();
        let other = CaVerification::Pinned(vec![pin_of(&Authority::generate("b").unwrap())]);
        let err = check_joined_cluster(&path, &other, "10.0.0.1:6443").unwrap_err();
        assert!(
            err.to_string().contains(&pin_of(&f.ca).to_string()),
            "{err}"
        );
        let err = check_joined_cluster(&path, &CaVerification::SkipUnsafe, "10.0.0.2:6443")
            .unwrap_err()
            .to_string();
        assert!(err.contains("its server is https://10.0.0.1:6443"), "{err}");
    }

    #[test]
    fn the_bootstrap_kubeconfig_carries_the_server_ca_and_token_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture();
        let info = verify(&f.config_map, &f.token, &CaVerification::SkipUnsafe).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap-kubeconfig");
        write_bootstrap_kubeconfig(&path, &info, &f.token).unwrap();
        crate::bootstrap::Bootstrap::read(&path).unwrap();
        let written = Kubeconfig::read_from(&path).unwrap();
        let cluster = written.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("abcdef.0123456789abcdef"), "{text}");
        assert!(text.contains(&STANDARD.encode(f.ca.cert_pem())), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
