//! A container's environment (`env`, `envFrom`, `valueFrom`) and the pod's pull secrets,
//! read from the API the way the kubelet does. A node may read only the ConfigMaps and
//! Secrets of pods bound to it, which is all this asks for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use tracing::debug;

use super::admission::Capacity;
use super::quantity;
use super::watched::WatchedObjects;
use crate::provider::PullSecret;
use crate::store::{LocalStore, ObjectKey};

/// Why a container's configuration could not be assembled: shown as
/// `CreateContainerConfigError`, and retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// Looks up ConfigMaps and Secrets in the pod's namespace, each at most once. What the API
/// server answers is kept in the local store; while the API server cannot be reached, the
/// stored copy stands in for it, so a pod restarted offline gets the same environment and
/// volumes it had.
pub(crate) struct Sources<'a> {
    reads: ObjectReads<'a>,
    pod_uid: &'a str,
    namespace: &'a str,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

/// Where a pod's ConfigMaps and Secrets come from: the node's watches of them, else the API,
/// else (while it cannot be reached) the local store.
#[derive(Clone, Copy)]
pub struct ObjectReads<'a> {
    /// The API server; None on a standalone node.
    pub client: Option<&'a kube::Client>,
    /// The shared watches; None on a standalone node.
    pub watched: Option<&'a WatchedObjects>,
    /// What the API server last said.
    pub store: &'a LocalStore,
}

impl<'a> Sources<'a> {
    /// Sources for the pod `pod_uid` in `namespace`.
    pub(crate) fn new(reads: ObjectReads<'a>, pod_uid: &'a str, namespace: &'a str) -> Self {
        Self {
            reads,
            pod_uid,
            namespace,
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    pub(crate) async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&ConfigMap>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let key = ObjectKey::config_map(self.namespace, name);
            let watched = match self.reads.watched {
                Some(w) => Some(w.config_map(self.pod_uid, self.namespace, name).await),
                None => None,
            };
            let found = self.read("configmap", name, &key, watched).await?;
            self.config_maps.insert(name.to_string(), found);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    pub(crate) async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let key = ObjectKey::secret(self.namespace, name);
            let watched = match self.reads.watched {
                Some(w) => Some(w.secret(self.pod_uid, self.namespace, name).await),
                None => None,
            };
            let found = self.read("secret", name, &key, watched).await?;
            self.secrets.insert(name.to_string(), found);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }

    /// `kind` `name` as its watch saw it (`watched`), else read from the API; the answer is
    /// kept in the store, and the stored copy stands in when the API server cannot be
    /// reached.
    async fn read<K>(
        &self,
        kind: &str,
        name: &str,
        key: &ObjectKey,
        watched: Option<Result<Option<K>, String>>,
    ) -> Result<Option<K>, ConfigError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        if let Some(Ok(found)) = watched {
            self.remember(key, found.as_ref()).await;
            return Ok(found);
        }
        let Some(client) = self.reads.client else {
            return match self.reads.store.object(key).await {
                Some(object) => Ok(Some(object)),
                None => Err(ConfigError(format!(
                    "cannot read {kind} {name:?}: this node has no API server"
                ))),
            };
        };
        let api: Api<K> = Api::namespaced(client.clone(), self.namespace);
        match api.get_opt(name).await {
            Ok(found) => {
                self.remember(key, found.as_ref()).await;
                Ok(found)
            }
            Err(err) if unreachable(&err) => match self.reads.store.object(key).await {
                Some(object) => {
                    debug!(%kind, %name, %err, "the API server cannot be reached; using the stored copy");
                    Ok(Some(object))
                }
                None => Err(ConfigError(format!("cannot read {kind} {name:?}: {err}"))),
            },
            Err(err) => Err(ConfigError(format!("cannot read {kind} {name:?}: {err}"))),
        }
    }
}

impl Sources<'_> {
    /// Keeps what the API server answered for the object under `key` in the store.
    async fn remember<K: serde::Serialize>(&self, key: &ObjectKey, found: Option<&K>) {
        match found {
            Some(object) => self.reads.store.put_object(self.pod_uid, key, object).await,
            None => self.reads.store.forget_object(self.pod_uid, key).await,
        }
    }
}

/// Whether `err` means the API server did not answer (or could not serve), so a stored copy
/// may stand in for its answer.
pub(crate) fn unreachable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code >= 500,
        _ => true,
    }
}

fn config_map_value(map: &ConfigMap, key: &str) -> Option<String> {
    map.data
        .as_ref()
        .and_then(|d| d.get(key).cloned())
        .or_else(|| {
            map.binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        })
}

/// The value of `key` from a ConfigMap or Secret: `found` is `None` when the object does not
/// exist and `Some(None)` when it lacks the key. Missing is fine only when `optional`.
fn keyed_value(
    kind: &str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    found: Option<Option<String>>,
) -> Result<Option<String>, ConfigError> {
    match found {
        Some(Some(value)) => Ok(Some(value)),
        _ if optional == Some(true) => Ok(None),
        Some(None) => Err(ConfigError(format!(
            "couldn't find key {key} in {kind} {namespace}/{name}"
        ))),
        None => Err(ConfigError(format!(
            "{} {name:?} not found",
            kind.to_lowercase()
        ))),
    }
}

/// The container's environment: `envFrom` first, then `env`, later entries winning.
pub async fn resolve(
    reads: ObjectReads<'_>,
    pod: &Pod,
    container: &Container,
    host_ip: &str,
    allocatable: Capacity,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut sources = Sources::new(reads, uid, namespace);
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map(&r.name).await? {
                Some(map) => {
                    for (k, v) in map.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name).await? {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(var.value.clone().unwrap_or_default()),
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let found = sources
                        .config_map(&r.name)
                        .await?
                        .map(|m| config_map_value(m, &r.key));
                    keyed_value("ConfigMap", namespace, &r.name, &r.key, r.optional, found)?
                } else if let Some(r) = &from.secret_key_ref {
                    let found = sources
                        .secret(&r.name)
                        .await?
                        .map(|s| secret_value(s, &r.key));
                    keyed_value("Secret", namespace, &r.name, &r.key, r.optional, found)?
                } else if let Some(r) = &from.field_ref {
                    Some(field_value(pod, &r.field_path, host_ip).ok_or_else(|| {
                        ConfigError(format!(
                            "unsupported fieldRef {:?} in env {}",
                            r.field_path, var.name
                        ))
                    })?)
                } else if let Some(r) = &from.resource_field_ref {
                    // In env the container may be left out: it is the one being started.
                    let selector = ResourceFieldSelector {
                        container_name: r
                            .container_name
                            .clone()
                            .filter(|n| !n.is_empty())
                            .or_else(|| Some(container.name.clone())),
                        ..r.clone()
                    };
                    Some(
                        resource_field_value(pod, &selector, allocatable)
                            .map_err(|e| ConfigError(format!("env {}: {e}", var.name)))?,
                    )
                } else {
                    return Err(ConfigError(format!(
                        "env {} has an empty valueFrom",
                        var.name
                    )));
                }
            }
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// The downward API's field paths.
pub fn field_value(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<Option<String>> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.and_then(|m| m.get(key).cloned())
                .or(Some(String::new())),
        )
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return v;
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return v;
    }
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.podIPs" | "status.hostIPs" => {
            host_ip.to_string()
        }
        _ => return None,
    })
}

/// A container's CPU or memory request or limit, in units of the selector's divisor and
/// rounded up, as the kubelet reports it. An unset limit is the node's allocatable.
pub fn resource_field_value(
    pod: &Pod,
    selector: &ResourceFieldSelector,
    allocatable: Capacity,
) -> Result<String, String> {
    let name = selector.container_name.as_deref().unwrap_or_default();
    let container = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == name)
        .ok_or_else(|| format!("resourceFieldRef names unknown container {name:?}"))?;
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", selector.resource))?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource {:?}", selector.resource)),
    };
    let read = |what: &str, q: &Quantity| {
        quantity::parse(q).map_err(|err| format!("resourceFieldRef {what} {:?} {err}", q.0))
    };
    let divisor = match &selector.divisor {
        Some(q) => Some(read("divisor", q)?).filter(|d| d.is_sign_positive() && !d.is_zero()),
        None => None,
    }
    .unwrap_or(Decimal::ONE);
    let value = match (set.and_then(|s| s.get(resource)), kind, resource) {
        (Some(q), _, _) => read(&selector.resource, q)?,
        (None, "limits", "cpu") => {
            Decimal::new(i64::try_from(allocatable.cpu_millis).unwrap_or(i64::MAX), 3)
        }
        (None, "limits", "memory") => Decimal::from(allocatable.memory_bytes),
        (None, "limits", "ephemeral-storage") => Decimal::from(allocatable.ephemeral_storage_bytes),
        (None, _, "cpu" | "memory" | "ephemeral-storage") => Decimal::ZERO,
        _ => return Err(format!("unsupported resource {:?}", selector.resource)),
    };
    value
        .checked_div(divisor)
        .and_then(|v| v.ceil().to_i64())
        .map(|v| v.to_string())
        .ok_or_else(|| format!("resourceFieldRef {:?} is out of range", selector.resource))
}

/// The pod's `imagePullSecrets`: those that could be read, and the names of the rest. A
/// missing one is skipped, as the kubelet does, and the pull then says whether credentials
/// were needed.
pub async fn pull_secrets(reads: ObjectReads<'_>, pod: &Pod) -> PullSecrets {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut sources = Sources::new(reads, uid, namespace);
    let mut secrets = PullSecrets::default();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default();
    for reference in names {
        match sources.secret(&reference.name).await {
            Ok(Some(secret)) => secrets.found.push(PullSecret {
                type_: secret.type_.clone().unwrap_or_default(),
                data: secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            }),
            Ok(None) => {
                tracing::warn!(secret = %reference.name, "image pull secret not found; pulling without it");
                secrets.unavailable.push(reference.name);
            }
            Err(err) => {
                tracing::warn!(secret = %reference.name, err = %err.0, "cannot read image pull secret");
                secrets.unavailable.push(reference.name);
            }
        }
    }
    secrets
}

/// A pod's `imagePullSecrets` as read for one pull attempt.
#[derive(Debug, Default)]
pub struct PullSecrets {
    /// Those read.
    pub found: Vec<PullSecret>,
    /// The names of those missing or unreadable: the pull goes on without them.
    pub unavailable: Vec<String>,
}

impl PullSecrets {
    /// The kubelet's `FailedToRetrieveImagePullSecret` warning, when some are unavailable.
    pub fn unavailable_warning(&self) -> Option<String> {
        (!self.unavailable.is_empty()).then(|| {
            format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                self.unavailable.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn downward_api_fields_resolve() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some([("app".to_string(), "demo".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("edge-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            field_value(&pod, "metadata.name", "h").as_deref(),
            Some("p")
        );
        assert_eq!(
            field_value(&pod, "metadata.namespace", "h").as_deref(),
            Some("ns")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", "h").as_deref(),
            Some("demo")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['none']", "h").as_deref(),
            Some("")
        );
        assert_eq!(
            field_value(&pod, "spec.nodeName", "h").as_deref(),
            Some("edge-1")
        );
        assert_eq!(
            field_value(&pod, "status.podIP", "10.0.0.9").as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(field_value(&pod, "spec.bogus", "h"), None);
    }

    #[test]
    fn resource_fields_divide_round_up_and_default_limits_to_allocatable() {
        use k8s_openapi::api::core::v1::{Container, ResourceRequirements};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some([("memory".to_string(), Quantity("129Mi".into()))].into()),
                        requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = Capacity {
            pods: 10,
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 1 << 40,
        };
        let field = |resource: &str, divisor: Option<&str>| {
            resource_field_value(
                &pod,
                &ResourceFieldSelector {
                    container_name: Some("app".into()),
                    resource: resource.into(),
                    divisor: divisor.map(|d| Quantity(d.into())),
                },
                node,
            )
        };
        assert_eq!(field("limits.memory", Some("64Mi")).unwrap(), "3");
        assert_eq!(field("requests.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(field("requests.cpu", None).unwrap(), "1");
        assert_eq!(field("limits.cpu", None).unwrap(), "2");
        assert!(field("limits.gpu", None).is_err());
    }
}
