//! What a configMap, secret, downwardAPI or projected volume holds: the files the kubelet
//! writes, computed from the API objects without touching the disk.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret};

use crate::pod::admission::Capacity;
use crate::pod::env;

/// The mode of a volume's files when the pod names none (0644), as the kubelet's.
pub(crate) const DEFAULT_MODE: i32 = 0o644;

/// One file of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileContent {
    pub(crate) data: Vec<u8>,
    pub(crate) mode: u32,
}

/// A volume's files by relative path.
pub(crate) type Payload = BTreeMap<String, FileContent>;

/// A path inside a volume: relative, not empty, and with no `..` element, as the API server
/// validates it; checked again because the node must not trust that alone.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a volume path must not be empty".into());
    }
    if path.starts_with('/') {
        return Err(format!("volume path {path:?} must be relative"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("volume path {path:?} must not contain '..'"));
    }
    // `..data` and the versions beside it are the writer's own names.
    if path.starts_with("..") {
        return Err(format!("volume path {path:?} must not start with '..'"));
    }
    Ok(())
}

fn mode_of(mode: Option<i32>, default_mode: Option<i32>) -> u32 {
    // The API server bounds modes to 0..=0777; the mask keeps a bad value harmless.
    (mode.or(default_mode).unwrap_or(DEFAULT_MODE) & 0o777) as u32
}

/// The files of a ConfigMap or Secret's `entries`: every key, or only `items` when given.
fn keyed(
    what: &str,
    entries: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    match items {
        None => {
            for (key, data) in entries {
                check_relative(&key)?;
                let mode = mode_of(None, default_mode);
                payload.insert(key, FileContent { data, mode });
            }
        }
        Some(items) => {
            for item in items {
                check_relative(&item.path)?;
                match entries.get(&item.key) {
                    Some(data) => {
                        payload.insert(
                            item.path.clone(),
                            FileContent {
                                data: data.clone(),
                                mode: mode_of(item.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(format!("{what} references non-existent key: {}", item.key));
                    }
                }
            }
        }
    }
    Ok(payload)
}

/// A configMap volume (or projection) of `map`; `None` when the object does not exist.
pub(crate) fn config_map(
    name: &str,
    map: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, String> {
    let Some(map) = map else {
        return absent("configmap", name, optional);
    };
    let entries = merged(map.data.as_ref(), map.binary_data.as_ref());
    keyed("configmap", entries, items, default_mode, optional)
}

/// A secret volume (or projection) of `secret`; `None` when the object does not exist.
pub(crate) fn secret(
    name: &str,
    secret: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, String> {
    let Some(secret) = secret else {
        return absent("secret", name, optional);
    };
    let entries = merged(secret.string_data.as_ref(), secret.data.as_ref());
    keyed("secret", entries, items, default_mode, optional)
}

/// An object's text and binary entries as bytes; a binary entry wins over a text one.
fn merged(
    text: Option<&BTreeMap<String, String>>,
    binary: Option<&BTreeMap<String, ByteString>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> = text
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in binary.into_iter().flatten() {
        entries.insert(k.clone(), v.0.clone());
    }
    entries
}

fn absent(kind: &str, name: &str, optional: bool) -> Result<Payload, String> {
    if optional {
        Ok(Payload::new())
    } else {
        Err(format!("{kind} {name:?} not found"))
    }
}

/// A downwardAPI volume (or projection): pod fields and container resources as files.
pub(crate) fn downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    allocatable: Capacity,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    for item in items {
        check_relative(&item.path)?;
        let text = if let Some(field) = &item.field_ref {
            field_file(pod, &field.field_path)?
        } else if let Some(resource) = &item.resource_field_ref {
            env::resource_field_value(pod, resource, allocatable)?
        } else {
            return Err(format!(
                "downwardAPI item {} has neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        payload.insert(
            item.path.clone(),
            FileContent {
                data: text.into_bytes(),
                mode: mode_of(item.mode, default_mode),
            },
        );
    }
    Ok(payload)
}

/// A field as a downwardAPI file shows it: whole label and annotation maps are `key="value"`
/// lines in key order, as the kubelet formats them.
fn field_file(pod: &Pod, path: &str) -> Result<String, String> {
    let map = match path {
        "metadata.labels" => Some(&pod.metadata.labels),
        "metadata.annotations" => Some(&pod.metadata.annotations),
        _ => None,
    };
    if let Some(map) = map {
        let lines: Vec<String> = map
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        return Ok(lines.join("\n"));
    }
    // Volumes may not show status fields (the API server refuses them), so no host IP.
    env::field_value(pod, path, "")
        .ok_or_else(|| format!("unsupported fieldRef {path:?} in a downwardAPI volume"))
}

/// A double-quoted string with escapes, as Go's `%q` writes label values.
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectFieldSelector;

    fn map() -> ConfigMap {
        ConfigMap {
            data: Some([("app.conf".to_string(), "debug=true".to_string())].into()),
            binary_data: Some([("logo".to_string(), ByteString(vec![0, 159, 146]))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn every_key_becomes_a_file_with_the_default_mode() {
        let payload = config_map("c", Some(&map()), None, None, false).unwrap();
        assert_eq!(payload["app.conf"].data, b"debug=true");
        assert_eq!(payload["app.conf"].mode, 0o644);
        assert_eq!(payload["logo"].data, vec![0, 159, 146]);
    }

    #[test]
    fn items_pick_keys_rename_them_and_set_modes() {
        let items = [KeyToPath {
            key: "app.conf".into(),
            path: "conf/app.ini".into(),
            mode: Some(0o400),
        }];
        let payload = config_map("c", Some(&map()), Some(&items), Some(0o600), false).unwrap();
        assert_eq!(payload.len(), 1);
        assert_eq!(payload["conf/app.ini"].mode, 0o400);
    }

    #[test]
    fn a_missing_key_or_object_fails_unless_optional() {
        let items = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        let err = config_map("c", Some(&map()), Some(&items), None, false).unwrap_err();
        assert!(err.contains("non-existent key: nope"), "{err}");
        assert!(
            config_map("c", Some(&map()), Some(&items), None, true)
                .unwrap()
                .is_empty()
        );
        let err = secret("s", None, None, None, false).unwrap_err();
        assert_eq!(err, "secret \"s\" not found");
        assert!(secret("s", None, None, None, true).unwrap().is_empty());
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "..data"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
        assert!(check_relative("a/..b/c").is_ok());
    }

    #[test]
    fn labels_are_written_as_quoted_lines_in_key_order() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                labels: Some(
                    [
                        ("b".to_string(), "two \"2\"".to_string()),
                        ("a".to_string(), "one".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let item = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let payload = downward(
            &pod,
            &[
                item("labels", "metadata.labels"),
                item("name", "metadata.name"),
            ],
            None,
            Capacity::default(),
        )
        .unwrap();
        assert_eq!(payload["labels"].data, b"a=\"one\"\nb=\"two \\\"2\\\"\"");
        assert_eq!(payload["name"].data, b"p");
    }
}
