//! Local ephemeral storage: what a pod's containers write (their writable roots and their
//! logs) and its emptyDirs, measured against the pod's `ephemeral-storage` limits as the
//! kubelet's eviction manager measures them, with the kubelet's eviction messages.
//!
//! The order is the kubelet's: an emptyDir over its `sizeLimit` first (see
//! [`PodVolumes::over_size_limit`](crate::volumes::PodVolumes::over_size_limit)), then the
//! pod's total over the sum of its containers' limits, then each container over its own.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity;
use crate::logs::reader;

/// The `ephemeral-storage` limits of a pod's containers, in bytes and as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageLimits {
    containers: BTreeMap<String, (u64, String)>,
    /// The pod's limit, as the kubelet sums it: app containers add up, an init container
    /// that asks for more raises it. None when no container sets one.
    pod: Option<u64>,
}

impl StorageLimits {
    /// Reads the limits of `pod`'s containers. A limit too large to count is no limit:
    /// admission has already refused one that does not parse.
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else {
            return Self::default();
        };
        let limit = |c: &Container| {
            let q = c
                .resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("ephemeral-storage")?;
            Some((quantity::bytes(q).ok()?, q.0.clone()))
        };
        let mut limits = Self::default();
        let mut app_sum: Option<u64> = None;
        for container in &spec.containers {
            if let Some((bytes, text)) = limit(container) {
                app_sum = Some(app_sum.unwrap_or(0).saturating_add(bytes));
                limits
                    .containers
                    .insert(container.name.clone(), (bytes, text));
            }
        }
        let mut pod_limit = app_sum;
        for container in spec.init_containers.iter().flatten() {
            if let Some((bytes, text)) = limit(container) {
                pod_limit = Some(pod_limit.map_or(bytes, |sum| sum.max(bytes)));
                limits
                    .containers
                    .insert(container.name.clone(), (bytes, text));
            }
        }
        limits.pod = pod_limit;
        limits
    }

    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.pod.is_none()
    }
}

/// Bytes a pod holds on the node's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageUsage {
    /// Each container's writable root and logs, by container name.
    pub containers: BTreeMap<String, u64>,
    /// Its emptyDirs together.
    pub empty_dirs: u64,
}

impl StorageUsage {
    /// Measures the writable roots and logs of `containers` of the pod whose files are under
    /// `pods_dir/uid`, and the emptyDirs at `empty_dirs`. Blocking: it walks directories.
    pub fn measure<'a>(
        pods_dir: &Path,
        uid: &str,
        containers: impl Iterator<Item = &'a str>,
        empty_dirs: &[&Path],
    ) -> Self {
        let rootfs = pods_dir.join(uid).join("rootfs");
        let roots: Vec<(String, u64)> = std::fs::read_dir(&rootfs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                // `<container>-<restart>`; the `.mounts` beside it are links to volume files,
                // which their volumes count.
                let (container, restart) = name.rsplit_once('-')?;
                restart.parse::<u32>().ok()?;
                Some((container.to_string(), disk_usage(&entry.path())))
            })
            .collect();
        let containers = containers
            .map(|name| {
                let root: u64 = roots
                    .iter()
                    .filter(|(container, _)| container == name)
                    .map(|(_, bytes)| *bytes)
                    .fold(0, u64::saturating_add);
                let logs = disk_usage(&reader::container_dir(pods_dir, uid, name));
                (name.to_string(), root.saturating_add(logs))
            })
            .collect();
        Self {
            containers,
            empty_dirs: empty_dirs
                .iter()
                .map(|dir| disk_usage(dir))
                .fold(0, u64::saturating_add),
        }
    }

    fn total(&self) -> u64 {
        self.containers
            .values()
            .fold(self.empty_dirs, |sum, bytes| sum.saturating_add(*bytes))
    }
}

/// The kubelet's eviction message if `usage` is over `limits`: the pod's total first, then
/// each container's own.
pub fn exceeded(limits: &StorageLimits, usage: &StorageUsage) -> Option<String> {
    if let Some(limit) = limits.pod
        && usage.total() > limit
    {
        return Some(format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {limit}. "
        ));
    }
    limits
        .containers
        .iter()
        .find(|(name, (limit, _))| usage.containers.get(*name).is_some_and(|used| used > limit))
        .map(|(name, (_, text))| {
            format!("Container {name} exceeded its local ephemeral storage limit {text:?}. ")
        })
}

/// Bytes of files under `dir`, not following symlinks.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(name: &str, limit: Option<&str>) -> Container {
        Container {
            name: name.into(),
            resources: limit.map(|l| ResourceRequirements {
                limits: Some([("ephemeral-storage".to_string(), Quantity(l.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(app: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: app,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn usage(containers: &[(&str, u64)], empty_dirs: u64) -> StorageUsage {
        StorageUsage {
            containers: containers
                .iter()
                .map(|(n, b)| (n.to_string(), *b))
                .collect(),
            empty_dirs,
        }
    }

    #[test]
    fn no_limit_checks_nothing() {
        let limits = StorageLimits::of(&pod(vec![container("a", None)], vec![]));
        assert!(limits.is_empty());
        assert_eq!(
            exceeded(&limits, &usage(&[("a", u64::MAX)], u64::MAX)),
            None
        );
    }

    #[test]
    fn the_pod_limit_sums_app_containers_and_counts_every_byte() {
        let limits = StorageLimits::of(&pod(
            vec![container("a", Some("1Ki")), container("b", Some("1Ki"))],
            vec![container("init", Some("1Ki"))],
        ));
        assert_eq!(
            exceeded(&limits, &usage(&[("a", 1024), ("b", 1024)], 0)),
            None
        );
        // Each container is within its own limit, but with an emptyDir the pod is not.
        assert_eq!(
            exceeded(&limits, &usage(&[("a", 1024), ("b", 1024)], 1)).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 2048. ")
        );
    }

    #[test]
    fn an_init_container_that_asks_for_more_raises_the_pod_limit() {
        let limits = StorageLimits::of(&pod(
            vec![container("a", Some("1Ki"))],
            vec![container("init", Some("4Ki"))],
        ));
        assert_eq!(limits.pod, Some(4096));
    }

    #[test]
    fn a_container_over_its_own_limit_is_named_with_the_limit_as_written() {
        let limits = StorageLimits::of(&pod(
            vec![container("a", Some("1Ki")), container("b", Some("8Ki"))],
            vec![],
        ));
        assert_eq!(
            exceeded(&limits, &usage(&[("a", 1025), ("b", 0)], 0)).as_deref(),
            Some("Container a exceeded its local ephemeral storage limit \"1Ki\". ")
        );
    }

    #[test]
    fn measuring_counts_the_writable_root_and_logs_but_not_staged_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("uid");
        let write = |path: &Path, bytes: usize| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![0u8; bytes]).unwrap();
        };
        write(&pod_dir.join("rootfs/app-3/data/file"), 1000);
        write(&pod_dir.join("rootfs/app-3.mounts/0/linked"), 5000);
        write(&pod_dir.join("rootfs/other-0/file"), 7);
        write(
            &reader::container_dir(dir.path(), "uid", "app").join("3.log"),
            200,
        );
        write(&pod_dir.join("volumes/scratch/x"), 30);
        let scratch = pod_dir.join("volumes/scratch");
        let measured = StorageUsage::measure(
            dir.path(),
            "uid",
            ["app", "other"].into_iter(),
            &[scratch.as_path()],
        );
        assert_eq!(measured, usage(&[("app", 1200), ("other", 7)], 30));
    }
}
