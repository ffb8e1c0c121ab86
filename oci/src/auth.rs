//! Registry credentials from `imagePullSecrets`.
//!
//! The kubelet reads the Secrets; this module turns their data into per-registry credentials
//! and picks the right ones for an image, as Docker's config lookup does.

use std::collections::BTreeMap;

use base64::Engine;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::{Error, Result};

/// Secret type for `~/.docker/config.json`-shaped secrets.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Secret type for the legacy `~/.dockercfg` shape.
pub const DOCKERCFG: &str = "kubernetes.io/dockercfg";

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
}

/// Username/password pairs by registry host.
#[derive(Clone, Debug, Default)]
pub struct RegistryCredentials {
    by_host: BTreeMap<String, (String, String)>,
}

impl RegistryCredentials {
    /// Adds the credentials in one pull secret, given its `type` and its data map (keys
    /// `.dockerconfigjson` or `.dockercfg`, values already base64-decoded by the API).
    pub fn add_secret(
        &mut self,
        secret_type: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<()> {
        let entries = match secret_type {
            DOCKER_CONFIG_JSON => {
                let bytes = data
                    .get(".dockerconfigjson")
                    .ok_or_else(|| Error::InvalidPullSecret("no .dockerconfigjson key".into()))?;
                serde_json::from_slice::<DockerConfigJson>(bytes)
                    .map_err(|e| Error::InvalidPullSecret(format!(".dockerconfigjson: {e}")))?
                    .auths
            }
            DOCKERCFG => {
                let bytes = data
                    .get(".dockercfg")
                    .ok_or_else(|| Error::InvalidPullSecret("no .dockercfg key".into()))?;
                serde_json::from_slice::<BTreeMap<String, DockerAuth>>(bytes)
                    .map_err(|e| Error::InvalidPullSecret(format!(".dockercfg: {e}")))?
            }
            other => {
                return Err(Error::InvalidPullSecret(format!(
                    "type {other:?} is neither {DOCKER_CONFIG_JSON} nor {DOCKERCFG}"
                )));
            }
        };
        for (server, auth) in entries {
            let pair = credentials(&server, auth)?;
            self.by_host.insert(normalize_host(&server), pair);
        }
        Ok(())
    }

    /// The auth to use for pulling `image`: its registry's credentials (Docker Hub's for a
    /// name without a registry, as `nginx` or `user/app`), else anonymous.
    pub fn for_image(&self, image: &str) -> RegistryAuth {
        match image.parse::<Reference>() {
            Ok(reference) => self.for_registry(reference.resolve_registry()),
            // The pull itself says what is wrong with the name.
            Err(_) => RegistryAuth::Anonymous,
        }
    }

    /// The auth to use for `registry` (`host[:port]`): its credentials, else anonymous.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.by_host.get(&normalize_host(registry)) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

fn credentials(server: &str, auth: DockerAuth) -> Result<(String, String)> {
    if let (Some(user), Some(password)) = (auth.username, auth.password) {
        return Ok((user, password));
    }
    let encoded = auth.auth.ok_or_else(|| {
        Error::InvalidPullSecret(format!("{server}: neither username/password nor auth"))
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| Error::InvalidPullSecret(format!("{server}: auth is not base64: {e}")))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Error::InvalidPullSecret(format!("{server}: auth is not UTF-8")))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| Error::InvalidPullSecret(format!("{server}: auth is not user:password")))?;
    Ok((user.to_string(), password.to_string()))
}

/// `https://host:5000/v1/` and `host:5000` name the same registry; so do Docker Hub's
/// names, as the kubelet's keyring takes them.
fn normalize_host(server: &str) -> String {
    let without_scheme = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

/// The host Docker Hub's credentials are kept under.
const DOCKER_HUB: &str = "index.docker.io";

#[cfg(test)]
mod tests {
    use super::*;

    fn data(key: &str, json: &str) -> BTreeMap<String, Vec<u8>> {
        [(key.to_string(), json.as_bytes().to_vec())].into()
    }

    #[test]
    fn dockerconfigjson_with_auth_field_is_decoded() {
        let mut creds = RegistryCredentials::default();
        // "alice:s3cret"
        let json = r#"{"auths":{"https://127.0.0.1:5001/v1/":{"auth":"YWxpY2U6czNjcmV0"}}}"#;
        creds
            .add_secret(DOCKER_CONFIG_JSON, &data(".dockerconfigjson", json))
            .unwrap();
        assert_eq!(
            creds.for_registry("127.0.0.1:5001"),
            RegistryAuth::Basic("alice".into(), "s3cret".into())
        );
        assert_eq!(creds.for_registry("other:5000"), RegistryAuth::Anonymous);
    }

    /// An image named without a registry is Docker Hub's, whichever of its names the secret
    /// uses; a path's first part is not a registry unless it looks like a host.
    #[test]
    fn images_find_their_registrys_credentials() {
        for server in ["https://index.docker.io/v1/", "docker.io"] {
            let mut creds = RegistryCredentials::default();
            let json =
                format!(r#"{{"auths":{{"{server}":{{"username":"hub","password":"pw"}}}}}}"#);
            creds
                .add_secret(DOCKER_CONFIG_JSON, &data(".dockerconfigjson", &json))
                .unwrap();
            let hub = RegistryAuth::Basic("hub".into(), "pw".into());
            for image in [
                "nginx",
                "user/app:1",
                "docker.io/user/app",
                "index.docker.io/app",
            ] {
                assert_eq!(creds.for_image(image), hub, "{server} for {image}");
            }
            assert_eq!(
                creds.for_image("reg.example:5000/app"),
                RegistryAuth::Anonymous
            );
        }
        let mut creds = RegistryCredentials::default();
        let json = r#"{"auths":{"user":{"username":"u","password":"pw"}}}"#;
        creds
            .add_secret(DOCKER_CONFIG_JSON, &data(".dockerconfigjson", json))
            .unwrap();
        assert_eq!(
            creds.for_image("user/app"),
            RegistryAuth::Anonymous,
            "a secret for host `user` is not sent to Docker Hub"
        );
    }

    #[test]
    fn legacy_dockercfg_with_username_and_password() {
        let mut creds = RegistryCredentials::default();
        let json = r#"{"reg.example:5000":{"username":"bob","password":"pw"}}"#;
        creds
            .add_secret(DOCKERCFG, &data(".dockercfg", json))
            .unwrap();
        assert_eq!(
            creds.for_registry("reg.example:5000"),
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong() {
        let mut creds = RegistryCredentials::default();
        let cases = [
            (
                DOCKER_CONFIG_JSON,
                data(".dockercfg", "{}"),
                "no .dockerconfigjson",
            ),
            (
                DOCKER_CONFIG_JSON,
                data(".dockerconfigjson", "nope"),
                ".dockerconfigjson",
            ),
            (
                DOCKERCFG,
                data(".dockercfg", r#"{"h":{"auth":"!!"}}"#),
                "not base64",
            ),
            ("Opaque", data("x", "{}"), "neither"),
        ];
        for (ty, d, expected) in cases {
            let err = creds.add_secret(ty, &d).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
