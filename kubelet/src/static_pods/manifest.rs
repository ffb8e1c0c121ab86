//! Reading a manifest directory into static pods, normalised as the kubelet's file source
//! does (`pkg/kubelet/config/common.go`), and refusing pods a mirror pod could never stand for.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, Pod, PodSpec, PodStatus, Toleration};
use sha2::{Digest, Sha256};

use crate::names::{is_dns_label, is_dns_subdomain};

use super::{
    CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SEEN_ANNOTATION,
    CONFIG_SOURCE_ANNOTATION,
};

/// A file larger than this is not read: a manifest is a few KiB, and the directory may be
/// writable by something less trusted than the agent.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Documents past this many in one file are ignored (and reported), for the same reason.
const MAX_DOCUMENTS: usize = 100;
/// `config.source` of a pod read from a file (the kubelet's `kubetypes.FileSource`).
const SOURCE_FILE: &str = "file";

/// A pod read from a manifest file, normalised and ready to run on this node.
///
/// The file is kept so that an operator reading a log line or an event can find the
/// manifest that a pod came from.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticPod {
    /// The pod, with `metadata.uid` (the content hash), `<name>-<node>`, the namespace,
    /// `spec.nodeName` and the `kubernetes.io/config.*` annotations set.
    pub pod: Pod,
    /// The manifest file the pod was read from.
    pub file: PathBuf,
}

impl StaticPod {
    /// The pod's UID, which is its content hash: it changes exactly when the manifest does,
    /// so a changed manifest replaces the pod rather than editing it in place.
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
}

/// Why a manifest file, or one document in it, gave no pod.
///
/// The other files and documents are still used: one bad file must not stop the others'
/// pods, as with the kubelet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file (or the directory, when it could not be listed).
    pub file: PathBuf,
    /// The 1-based line the problem is on, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "static pod manifest {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads every manifest in `dir` into the static pods of node `node_name`.
///
/// Every regular file (not recursively; dotfiles and editor leftovers ending in `~` or
/// `.swp` skipped) holds one or more pods as YAML (documents separated by `---`) or JSON.
/// Pods come back sorted by file name, then by their place in the file. A file or document
/// that cannot be used is reported in the second vector; so is a directory that cannot be
/// listed (and then there are no pods).
pub fn read_manifests(dir: &Path, node_name: &str) -> (Vec<StaticPod>, Vec<ManifestError>) {
    match read_dir_manifests(dir, node_name) {
        Ok(read) => read,
        Err(error) => (
            Vec::new(),
            vec![ManifestError {
                file: dir.to_path_buf(),
                line: None,
                message: format!("cannot list the manifest directory: {error}"),
            }],
        ),
    }
}

/// [`read_manifests`], but a directory that cannot be listed is an error of its own, so the
/// watcher can keep the pods it has instead of stopping them all over a transient failure.
pub(super) fn read_dir_manifests(
    dir: &Path,
    node_name: &str,
) -> io::Result<(Vec<StaticPod>, Vec<ManifestError>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_ignored_name(entry.file_name().as_bytes()) {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();

    let mut pods = Vec::new();
    let mut errors = Vec::new();
    // Two manifests may not define the same pod: the first (in file order) wins, as the
    // kubelet keeps the first of duplicate full names.
    let mut defined: HashMap<(String, String), PathBuf> = HashMap::new();
    for file in files {
        let text = match read_manifest_file(&file) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(message) => {
                errors.push(ManifestError {
                    file,
                    line: None,
                    message,
                });
                continue;
            }
        };
        for parsed in parse_documents(&text, &file, node_name) {
            match parsed {
                Ok(pod) => {
                    let key = (
                        pod.metadata.namespace.clone().unwrap_or_default(),
                        pod.metadata.name.clone().unwrap_or_default(),
                    );
                    if let Some(first) = defined.get(&key) {
                        errors.push(ManifestError {
                            file: file.clone(),
                            line: None,
                            message: format!(
                                "pod {}/{} is already defined in {}",
                                key.0,
                                key.1,
                                first.display()
                            ),
                        });
                        continue;
                    }
                    defined.insert(key, file.clone());
                    pods.push(StaticPod {
                        pod,
                        file: file.clone(),
                    });
                }
                Err((line, message)) => errors.push(ManifestError {
                    file: file.clone(),
                    line,
                    message,
                }),
            }
        }
    }
    Ok((pods, errors))
}

/// Names that are not manifests: hidden files, and the backups and swap files editors
/// leave beside the file being edited (which would otherwise define the pod twice).
pub(super) fn is_ignored_name(name: &[u8]) -> bool {
    name.starts_with(b".") || name.ends_with(b"~") || name.ends_with(b".swp")
}

/// The text of one manifest; `None` for what is not a regular file (a directory, a FIFO, a
/// dangling symlink), which is not a manifest and not worth a warning.
fn read_manifest_file(path: &Path) -> Result<Option<String>, String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read: {error}")),
    };
    if !metadata.is_file() {
        return Ok(None);
    }
    if metadata.len() > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    // Non-blocking, so a file swapped for a FIFO after the check above cannot hang the read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read: {error}")),
    };
    match file.metadata() {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Ok(None),
        Err(error) => return Err(format!("cannot read: {error}")),
    }
    // The length is checked again while reading: the file may grow after the check.
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read: {error}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "is not UTF-8 text".to_owned())
}

fn too_large() -> String {
    format!("is larger than {MAX_MANIFEST_BYTES} bytes, the most a manifest may be")
}

/// A document's pod, or the line (if known) and message of why there is none.
type Parsed = Result<Pod, (Option<usize>, String)>;

/// Parses and normalises every document of one file, in order.
pub(crate) fn parse_documents(text: &str, file: &Path, node_name: &str) -> Vec<Parsed> {
    let documents = if text.trim_start().starts_with('{') {
        json_documents(text)
    } else {
        yaml_documents(text)
    };
    let numbered = documents.len() > 1;
    documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let pod = document?;
            normalise(pod, file, node_name).map_err(|message| {
                let message = if numbered {
                    format!("document {}: {message}", index + 1)
                } else {
                    message
                };
                (None, message)
            })
        })
        .collect()
}

/// The pods of a YAML stream; empty and `null` documents (a leading or trailing `---`) are
/// no pod and no error. Each document is read on its own (a `---` at the start of a line
/// always begins a new one), so a bad document spoils only itself and its errors carry the
/// line in the file. serde-saphyr is the YAML reader kube already brings.
fn yaml_documents(text: &str) -> Vec<Parsed> {
    let mut documents = Vec::new();
    for (index, (first_line, document)) in split_documents(text).into_iter().enumerate() {
        if index == MAX_DOCUMENTS {
            documents.push(Err((None, too_many_documents())));
            break;
        }
        if is_blank(document) {
            continue;
        }
        match serde_saphyr::from_str::<Option<Pod>>(document) {
            Ok(Some(pod)) => documents.push(Ok(pod)),
            Ok(None) => {}
            Err(error) => documents.push(Err(yaml_error(&error, first_line))),
        }
    }
    documents
}

/// The documents of a YAML stream, each with the number of lines before it.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let marker = line.trim_end();
        let starts_document =
            marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t");
        if starts_document && offset > start {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, number);
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

/// Whether a document holds nothing but markers, comments and blank lines.
fn is_blank(document: &str) -> bool {
    document.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line == "---" || line == "..." || line.starts_with('#')
    })
}

/// The line in the file of a YAML error in a document that starts after `lines_before`
/// lines, and its message.
fn yaml_error(error: &serde_saphyr::Error, lines_before: usize) -> (Option<usize>, String) {
    let message = error.to_string();
    let line = error
        .location()
        .and_then(|at| usize::try_from(at.line()).ok())
        .and_then(|line| line.checked_add(lines_before));
    (line, message.lines().next().unwrap_or_default().to_string())
}

/// The pods of a JSON file: one object, or several one after another.
fn json_documents(text: &str) -> Vec<Parsed> {
    let mut documents = Vec::new();
    for (index, document) in serde_json::Deserializer::from_str(text)
        .into_iter::<Pod>()
        .enumerate()
    {
        if index == MAX_DOCUMENTS {
            documents.push(Err((None, too_many_documents())));
            break;
        }
        match document {
            Ok(pod) => documents.push(Ok(pod)),
            Err(error) => {
                let line = (error.line() > 0).then_some(error.line());
                let message = format!("{} (column {})", json_message(&error, line), error.column());
                documents.push(Err((line, message)));
                // A JSON stream cannot be picked up again after an error.
                break;
            }
        }
    }
    documents
}

fn json_message(error: &serde_json::Error, line: Option<usize>) -> String {
    let message = error.to_string();
    match line {
        Some(line) => {
            let suffix = format!(" at line {line} column {}", error.column());
            message
                .strip_suffix(&suffix)
                .map(str::to_owned)
                .unwrap_or(message)
        }
        None => message,
    }
}

fn too_many_documents() -> String {
    format!("holds more than {MAX_DOCUMENTS} documents; the rest are ignored")
}

/// Makes a pod read from `file` into this node's static pod, or says why it cannot be one.
///
/// `kind` and `apiVersion`, when set, were already checked by the typed deserializer
/// (`Pod` accepts only `v1`/`Pod`).
fn normalise(mut pod: Pod, file: &Path, node_name: &str) -> Result<Pod, String> {
    let Some(name) = pod.metadata.name.clone().filter(|name| !name.is_empty()) else {
        return Err("metadata.name is not set".to_owned());
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Err("spec is not set".to_owned());
    };
    if let Some(reference) = api_object_reference(spec) {
        return Err(format!(
            "static pods cannot reference API objects: {reference}"
        ));
    }
    check_names(spec)?;
    // A manifest says what should run, never what has happened: a pod pasted from
    // `kubectl get -o yaml` while it was terminating would otherwise be stopped the moment
    // it is taken on, and taken on again, without end.
    pod.metadata.deletion_timestamp = None;
    pod.metadata.deletion_grace_period_seconds = None;
    pod.metadata.resource_version = None;
    // Hashed before anything below is added, so the UID depends on the manifest alone.
    let uid = content_hash(node_name, file, &pod)?;

    let name = format!("{name}-{}", node_name.to_lowercase());
    if !is_dns_subdomain(&name) {
        return Err(format!(
            "the pod's name on this node, {name:?}, is not a valid DNS subdomain \
             (lower-case letters, digits, '-' and '.', at most 253 characters)"
        ));
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    if !is_dns_label(&namespace) {
        return Err(format!(
            "metadata.namespace {namespace:?} is not a valid DNS label"
        ));
    }

    pod.metadata.name = Some(name);
    pod.metadata.namespace = Some(namespace);
    pod.metadata.uid = Some(uid.clone());
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    // A file-sourced pod is never a mirror pod, whatever its manifest claims; otherwise it
    // would be mistaken for the API's copy of itself.
    annotations.remove(CONFIG_MIRROR_ANNOTATION);
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), uid);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.to_owned(), SOURCE_FILE.to_owned());
    annotations.insert(
        CONFIG_SEEN_ANNOTATION.to_owned(),
        jiff::Timestamp::now().to_string(),
    );

    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node_name.to_owned());
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    spec.termination_grace_period_seconds.get_or_insert(30);
    // There is no service account to mount a token for (see `api_object_reference`).
    spec.automount_service_account_token = Some(false);
    // As the kubelet does for file pods: a node problem must not evict the pods that may be
    // the node's own control plane.
    let tolerate_no_execute = Toleration {
        operator: Some("Exists".to_owned()),
        effect: Some("NoExecute".to_owned()),
        ..Toleration::default()
    };
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    if !tolerations.contains(&tolerate_no_execute) {
        tolerations.push(tolerate_no_execute);
    }
    // A manifest says what should run, never what has happened.
    pod.status = Some(PodStatus {
        phase: Some("Pending".to_owned()),
        ..PodStatus::default()
    });
    Ok(pod)
}

/// The kubelet's MD5 of the pod and its source, with SHA-256 in its place: the first 128
/// bits, as 32 hex digits. Each part is length-prefixed so that no two sources run together.
fn content_hash(node_name: &str, file: &Path, pod: &Pod) -> Result<String, String> {
    let json = serde_json::to_vec(pod).map_err(|error| format!("cannot hash the pod: {error}"))?;
    let mut hasher = Sha256::new();
    for part in [
        node_name.as_bytes(),
        file.as_os_str().as_bytes(),
        json.as_slice(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    Ok(digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// The first thing in `spec` that names an API object, in words; `None` when nothing does.
///
/// A mirror pod must pass the NodeRestriction admission plugin, which refuses pods that
/// name secrets, config maps, claims or service accounts: a node may read only the objects
/// of pods the scheduler gave it, and a static pod would otherwise be a way to read any.
fn api_object_reference(spec: &PodSpec) -> Option<String> {
    for (field, value) in [
        ("spec.serviceAccountName", &spec.service_account_name),
        ("spec.serviceAccount", &spec.service_account),
    ] {
        if let Some(account) = value.as_deref().filter(|account| !account.is_empty()) {
            return Some(format!("{field} names the service account {account:?}"));
        }
    }
    if let Some(secret) = spec.image_pull_secrets.iter().flatten().next() {
        return Some(format!(
            "spec.imagePullSecrets names the secret {:?}",
            secret.name
        ));
    }
    if let Some(claim) = spec.resource_claims.iter().flatten().next() {
        return Some(format!(
            "spec.resourceClaims names the claim {:?}",
            claim.name
        ));
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(uses) = volume_reference(volume) {
            return Some(format!("volume {:?} uses {uses}", volume.name));
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| (&c.name, &c.env, &c.env_from));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (&c.name, &c.env, &c.env_from));
    for (name, env, env_from) in containers.chain(ephemeral) {
        if let Some(uses) = env_reference(env.as_deref(), env_from.as_deref()) {
            return Some(format!("container {name:?} {uses}"));
        }
    }
    None
}

fn volume_reference(volume: &k8s_openapi::api::core::v1::Volume) -> Option<String> {
    if volume.secret.is_some() {
        return Some("a secret".to_owned());
    }
    if volume.config_map.is_some() {
        return Some("a configMap".to_owned());
    }
    if volume.persistent_volume_claim.is_some() {
        return Some("a persistentVolumeClaim".to_owned());
    }
    if volume.ephemeral.is_some() {
        return Some("an ephemeral volume, which creates a persistentVolumeClaim".to_owned());
    }
    for source in volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
    {
        let projects = if source.secret.is_some() {
            "a secret"
        } else if source.config_map.is_some() {
            "a configMap"
        } else if source.service_account_token.is_some() {
            "a serviceAccountToken"
        } else if source.cluster_trust_bundle.is_some() {
            "a clusterTrustBundle"
        } else {
            continue;
        };
        return Some(format!("a projected {projects}"));
    }
    let secret_ref = volume.azure_file.is_some()
        || volume.scale_io.is_some()
        || volume
            .cephfs
            .as_ref()
            .is_some_and(|v| v.secret_ref.is_some())
        || volume
            .cinder
            .as_ref()
            .is_some_and(|v| v.secret_ref.is_some())
        || volume
            .flex_volume
            .as_ref()
            .is_some_and(|v| v.secret_ref.is_some())
        || volume
            .iscsi
            .as_ref()
            .is_some_and(|v| v.secret_ref.is_some())
        || volume.rbd.as_ref().is_some_and(|v| v.secret_ref.is_some())
        || volume
            .storageos
            .as_ref()
            .is_some_and(|v| v.secret_ref.is_some())
        || volume
            .csi
            .as_ref()
            .is_some_and(|v| v.node_publish_secret_ref.is_some());
    secret_ref.then(|| "a secret reference".to_owned())
}

fn env_reference(env: Option<&[EnvVar]>, env_from: Option<&[EnvFromSource]>) -> Option<String> {
    for var in env.into_iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(key) = &from.config_map_key_ref {
            return Some(format!(
                "env {:?} uses a configMapKeyRef to {:?}",
                var.name, key.name
            ));
        }
        if let Some(key) = &from.secret_key_ref {
            return Some(format!(
                "env {:?} uses a secretKeyRef to {:?}",
                var.name, key.name
            ));
        }
    }
    for source in env_from.into_iter().flatten() {
        if let Some(config_map) = &source.config_map_ref {
            return Some(format!(
                "envFrom uses a configMapRef to {:?}",
                config_map.name
            ));
        }
        if let Some(secret) = &source.secret_ref {
            return Some(format!("envFrom uses a secretRef to {:?}", secret.name));
        }
    }
    None
}

/// Container and volume names, checked as the API server checks an API pod's: each a DNS
/// label, none used twice. They name directories under the data dir (a volume named `..`
/// would be the pod's own directory), so a manifest is refused before any is made.
fn check_names(spec: &PodSpec) -> Result<(), String> {
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| ("container", c.name.as_str()));
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| ("volume", v.name.as_str()));
    let mut seen = std::collections::HashSet::new();
    for (kind, name) in containers.chain(volumes) {
        if !is_dns_label(name) {
            return Err(format!(
                "{kind} name {name:?} is not a valid DNS label \
                 (lower-case letters, digits and '-', at most 63 characters)"
            ));
        }
        if !seen.insert((kind, name)) {
            return Err(format!("{kind} name {name:?} is used twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const NODE: &str = "node-a";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn names(pods: &[StaticPod]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.pod.metadata.name.as_deref().unwrap())
            .collect()
    }

    /// A minimal valid manifest, shared with the watcher's tests.
    pub(in crate::static_pods) const WEB: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: registry.example/app:1
";

    fn one_error(errors: &[ManifestError]) -> &ManifestError {
        assert_eq!(errors.len(), 1, "{errors:#?}");
        &errors[0]
    }

    #[test]
    fn a_manifest_with_two_documents_gives_two_pods_with_node_suffixed_names() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("---\n{WEB}---\n{}\n---\n", WEB.replace("web", "db"));
        write(dir.path(), "pods.yaml", &text);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(errors, []);
        assert_eq!(names(&pods), ["web-node-a", "db-node-a"]);
        assert_ne!(pods[0].uid(), pods[1].uid());
    }

    #[test]
    fn an_accepted_pod_is_normalised_as_the_kubelet_does_for_file_pods() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "web.yaml", WEB);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(errors, []);
        let StaticPod { pod, file: from } = &pods[0];
        assert_eq!(from, &file);
        let uid = pod.metadata.uid.as_deref().unwrap();
        assert_eq!(uid.len(), 32);
        assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], uid);
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "file");
        assert!(
            annotations[CONFIG_SEEN_ANNOTATION]
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoExecute"));
    }

    #[test]
    fn values_the_manifest_sets_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let text = WEB.replace("  name: web\n", "  name: web\n  namespace: kube-system\n")
            + "  restartPolicy: Never\n  terminationGracePeriodSeconds: 5\n";
        write(dir.path(), "web.yaml", &text);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(errors, []);
        let pod = &pods[0].pod;
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(5));
    }

    #[test]
    fn a_json_manifest_gives_its_pod() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"api"},
            "spec":{"containers":[{"name":"app","image":"registry.example/api:1"}]}}"#;
        write(dir.path(), "api.json", json);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(errors, []);
        assert_eq!(names(&pods), ["api-node-a"]);
    }

    #[test]
    fn invalid_yaml_is_reported_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n",
        );

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods, []);
        let error = one_error(&errors);
        assert_eq!(error.file, file);
        let line = error.line.expect("a line number");
        assert!((4..=5).contains(&line), "line {line}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("static pod manifest {}:{line}: ", file.display())),
            "{error}"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_reported_on_its_line_in_a_later_document() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{WEB}---\nkind: Pod\nmetadata:\n  name: db\nspec:\n  containers: 3\n");
        write(dir.path(), "pods.yaml", &text);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(names(&pods), ["web-node-a"]);
        assert_eq!(one_error(&errors).line, Some(14));
    }

    #[test]
    fn a_bad_file_does_not_affect_another() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a-bad.yaml", "{{{{ not yaml");
        write(dir.path(), "b-web.yaml", WEB);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(names(&pods), ["web-node-a"]);
        assert_eq!(one_error(&errors).file, dir.path().join("a-bad.yaml"));
    }

    #[test]
    fn a_document_of_another_kind_or_api_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
        );
        write(
            dir.path(),
            "svc.yaml",
            "kind: Service\nmetadata:\n  name: s\n",
        );

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods, []);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].message.contains("apps/v1"), "{}", errors[0]);
        assert!(errors[1].message.contains("Service"), "{}", errors[1]);
    }

    #[test]
    fn empty_and_null_documents_are_skipped_without_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "empty.yaml", "");
        write(
            dir.path(),
            "null.yaml",
            "---\nnull\n---\n# only a comment\n",
        );
        write(dir.path(), "web.yaml", &format!("---\n---\n{WEB}---\n"));

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(errors, []);
        assert_eq!(names(&pods), ["web-node-a"]);
    }

    #[test]
    fn a_pod_without_a_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", &WEB.replace("  name: web\n", ""));

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods, []);
        assert_eq!(one_error(&errors).message, "metadata.name is not set");
    }

    #[test]
    fn hidden_files_editor_leftovers_and_subdirectories_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".web.yaml", "web.yaml~", ".web.yaml.swp", "web.yaml.swp"] {
            write(dir.path(), name, WEB);
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(&dir.path().join("sub"), "web.yaml", WEB);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!((pods, errors), (vec![], vec![]));
    }

    #[test]
    fn a_file_larger_than_one_mebibyte_is_skipped_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let padding = format!("# {}\n", "x".repeat(1024 * 1024));
        write(dir.path(), "big.yaml", &format!("{WEB}{padding}"));

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods, []);
        assert!(one_error(&errors).message.contains("larger than"));
    }

    #[test]
    fn documents_past_the_hundredth_are_ignored_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..101)
            .map(|i| {
                format!(
                    "---\n{}",
                    WEB.replace("name: web", &format!("name: web{i}"))
                )
            })
            .collect();
        write(dir.path(), "many.yaml", &text);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods.len(), 100);
        assert!(
            one_error(&errors)
                .message
                .contains("more than 100 documents")
        );
    }

    #[test]
    fn a_pod_defined_twice_is_kept_from_the_first_file_only() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", WEB);
        write(dir.path(), "b.yaml", WEB);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].file, dir.path().join("a.yaml"));
        assert!(one_error(&errors).message.contains("already defined"));
    }

    fn refusal(spec_tail: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", &format!("{WEB}{spec_tail}"));
        let (pods, errors) = read_manifests(dir.path(), NODE);
        assert_eq!(pods, []);
        one_error(&errors).message.clone()
    }

    /// A volume's name is a directory under the pod's: `..` would be the pod's own, whose
    /// entries a downwardAPI volume's writer removes.
    #[test]
    fn volume_and_container_names_must_be_dns_labels_used_once() {
        let downward = "  volumes:\n  - name: \"..\"\n    downwardAPI:\n      items: []\n";
        assert_eq!(
            refusal(downward),
            "volume name \"..\" is not a valid DNS label \
             (lower-case letters, digits and '-', at most 63 characters)"
        );
        let twice = "  volumes:\n  - name: a\n    emptyDir: {}\n  - name: a\n    emptyDir: {}\n";
        assert_eq!(refusal(twice), "volume name \"a\" is used twice");
        let container = WEB.replace("name: app", "name: app/x");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", &container);
        let (pods, errors) = read_manifests(dir.path(), NODE);
        assert_eq!(pods, []);
        assert!(
            one_error(&errors)
                .message
                .starts_with("container name \"app/x\"")
        );
        // A volume may share a container's name.
        let shared = "  volumes:\n  - name: app\n    emptyDir: {}\n";
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", &format!("{WEB}{shared}"));
        assert_eq!(read_manifests(dir.path(), NODE).1, []);
    }

    #[test]
    fn a_secret_volume_is_refused() {
        let message = refusal("  volumes:\n  - name: creds\n    secret:\n      secretName: s\n");
        assert_eq!(
            message,
            "static pods cannot reference API objects: volume \"creds\" uses a secret"
        );
    }

    #[test]
    fn a_config_map_key_ref_in_env_is_refused() {
        let tail = WEB.to_owned()
            + "    env:\n    - name: MODE\n      valueFrom:\n        configMapKeyRef:\n          \
               name: settings\n          key: mode\n";
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", &tail);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert_eq!(pods, []);
        assert_eq!(
            one_error(&errors).message,
            "static pods cannot reference API objects: container \"app\" env \"MODE\" uses a \
             configMapKeyRef to \"settings\""
        );
    }

    #[test]
    fn a_service_account_name_is_refused() {
        let message = refusal("  serviceAccountName: builder\n");
        assert_eq!(
            message,
            "static pods cannot reference API objects: spec.serviceAccountName names the \
             service account \"builder\""
        );
    }

    #[test]
    fn image_pull_secrets_claims_and_projected_tokens_are_refused() {
        assert!(refusal("  imagePullSecrets:\n  - name: regcred\n").contains("imagePullSecrets"));
        assert!(
            refusal("  volumes:\n  - name: data\n    persistentVolumeClaim:\n      claimName: c\n")
                .contains("persistentVolumeClaim")
        );
        assert!(
            refusal(
                "  volumes:\n  - name: t\n    projected:\n      sources:\n      - \
                 serviceAccountToken:\n          path: token\n"
            )
            .contains("projected a serviceAccountToken")
        );
    }

    #[test]
    fn an_empty_directory_and_a_missing_one_give_no_pods() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_manifests(dir.path(), NODE), (vec![], vec![]));

        let (pods, errors) = read_manifests(&dir.path().join("missing"), NODE);
        assert_eq!(pods, []);
        assert!(one_error(&errors).message.contains("cannot list"));
    }

    #[test]
    fn the_uid_is_stable_while_the_manifest_is_unchanged_and_changes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        let uid = |dir: &Path| read_manifests(dir, NODE).0[0].uid().to_owned();

        let first = uid(dir.path());
        assert_eq!(uid(dir.path()), first);

        write(dir.path(), "web.yaml", &WEB.replace("app:1", "app:2"));
        let changed = uid(dir.path());
        assert_ne!(changed, first);

        write(dir.path(), "web.yaml", WEB);
        assert_eq!(uid(dir.path()), first);
    }

    #[test]
    fn the_same_manifest_has_another_uid_on_another_node_or_in_another_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        let here = read_manifests(dir.path(), NODE).0[0].uid().to_owned();
        let there = read_manifests(dir.path(), "node-b").0[0].uid().to_owned();
        std::fs::rename(dir.path().join("web.yaml"), dir.path().join("web2.yaml")).unwrap();
        let moved = read_manifests(dir.path(), NODE).0[0].uid().to_owned();

        assert_ne!(here, there);
        assert_ne!(here, moved);
    }

    #[test]
    fn a_manifest_cannot_make_its_pod_look_like_a_mirror_pod() {
        let dir = tempfile::tempdir().unwrap();
        let text = WEB.replace(
            "  name: web\n",
            "  name: web\n  annotations:\n    kubernetes.io/config.mirror: x\n",
        );
        write(dir.path(), "web.yaml", &text);

        let (pods, _) = read_manifests(dir.path(), NODE);

        let annotations = pods[0].pod.metadata.annotations.as_ref().unwrap();
        assert!(!annotations.contains_key(CONFIG_MIRROR_ANNOTATION));
    }

    #[test]
    fn a_manifest_cannot_make_its_pod_look_deleted() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        let plain_uid = read_manifests(dir.path(), NODE).0[0].uid().to_owned();
        let text = WEB.replace(
            "  name: web\n",
            "  name: web\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n  deletionGracePeriodSeconds: 0\n  resourceVersion: \"42\"\n",
        );
        write(dir.path(), "web.yaml", &text);

        let (pods, errors) = read_manifests(dir.path(), NODE);

        assert!(errors.is_empty(), "{errors:?}");
        let metadata = &pods[0].pod.metadata;
        assert_eq!(metadata.deletion_timestamp, None);
        assert_eq!(metadata.deletion_grace_period_seconds, None);
        assert_eq!(metadata.resource_version, None);
        assert_eq!(
            pods[0].uid(),
            plain_uid,
            "what happened to a pod is not part of what should run"
        );
    }
}
