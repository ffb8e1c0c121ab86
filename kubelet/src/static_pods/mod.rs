//! Static pods: pods that a node runs from manifest files in a directory (the kubelet's
//! `--pod-manifest-path`), with no API server involved, so a node can start the pods it
//! needs before (or without) a control plane.
//!
//! - [`manifest`] reads the directory into [`StaticPod`]s, normalised as the kubelet
//!   normalises file pods: `<name>-<node>`, `spec.nodeName`, a UID that is the hash of the
//!   manifest, the `kubernetes.io/config.*` annotations. Pods that name API objects
//!   (secrets, config maps, claims, service accounts) are refused, as the API would refuse
//!   their mirror pods.
//! - [`watch()`] keeps a `tokio::sync::watch` channel holding the directory's current set,
//!   re-read after every inotify event (debounced) and every 20 s.
//! - [`mirror`] builds the mirror pod that makes a static pod visible in the API.
//!
//! Nothing here talks to the API server: the caller creates and deletes mirror pods, and
//! runs the static pods through the same pod workers as any other pod, keyed by UID.

pub mod manifest;
pub mod mirror;
pub mod watch;

pub use manifest::{ManifestError, StaticPod, read_manifests};
pub use mirror::{is_mirror, mirror_hash, mirror_pod};
pub use watch::{WatchError, watch};

/// The annotation holding a static pod's content hash (its UID); the kubelet's
/// `kubetypes.ConfigHashAnnotationKey`, so tools that know static pods recognise ours.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The annotation naming where a pod came from (`file` for static pods), so a pod from a
/// manifest is never mistaken for one from the API.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// The annotation holding when the node first read the pod (RFC 3339), as the kubelet
/// records it.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The annotation that marks a pod in the API as the mirror of a static pod, holding the
/// static pod's config hash; the API server and NodeRestriction treat such pods specially,
/// and the node must not run them.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
