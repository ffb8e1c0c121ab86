//! A container instance's directories on the node: its writable root (with an empty
//! directory at each mount point), where its file mounts are staged, and its log.
//!
//! The first instance of every container is laid out while the pod's volumes are set up,
//! which mostly waits on the API server (a token request). Directories are the slow part of
//! a start on a disk that has just freed many inodes: ext4 without a journal scans past each
//! recently freed one on every `mkdir`, and a default pod's instance makes nine.

use std::collections::HashSet;
use std::path::Path;

use super::*;

/// Where one container instance keeps its files.
pub(super) struct InstanceDirs {
    /// The writable root the guest sees at `/`.
    pub(super) root: PathBuf,
    /// File mounts are staged beside the root, never inside it, where the guest could reach
    /// them another way.
    pub(super) staging: PathBuf,
    /// The instance's log file.
    pub(super) log: PathBuf,
}

/// An instance to lay out before its start.
pub(super) struct Plan {
    instance: Instance,
    dirs: InstanceDirs,
    /// The guest paths of its directory mounts.
    mount_points: Vec<String>,
}

/// A container instance: its kind, its index among its kind, and its restart count.
pub(super) type Instance = (Kind, usize, i32);

impl<P: Provider> Worker<P> {
    /// Where instance `restart` of container `name` keeps its files.
    pub(super) fn instance_dirs(&self, name: &str, restart: i32) -> InstanceDirs {
        let root = self
            .ctx
            .pods_dir
            .join(&self.key.uid)
            .join("rootfs")
            .join(format!("{name}-{restart}"));
        InstanceDirs {
            staging: root.with_extension("mounts"),
            log: reader::instance_path(
                &reader::container_dir(&self.ctx.pods_dir, &self.key.uid, name),
                restart,
            ),
            root,
        }
    }

    /// The next instance of every container of `pod`, to lay out.
    pub(super) fn layout_plans(&self, pod: &Pod) -> Vec<Plan> {
        let mut plans = Vec::new();
        for kind in [Kind::Init, Kind::App] {
            for (index, container) in containers(pod, kind).iter().enumerate() {
                let Some(record) = self.records(kind).get(index) else {
                    continue;
                };
                plans.push(Plan {
                    instance: (kind, index, record.restart_count),
                    dirs: self.instance_dirs(&container.name, record.restart_count),
                    mount_points: mount_points(pod, container),
                });
            }
        }
        plans
    }
}

/// Lays out every planned instance, in one blocking task; returns the instances laid out.
/// One that could not be is left to its start, which makes its directories again and says
/// what failed.
pub(super) async fn lay_out(plans: Vec<Plan>) -> HashSet<Instance> {
    tokio::task::spawn_blocking(move || {
        plans
            .into_iter()
            .filter(|plan| fresh_instance(&plan.dirs, &plan.mount_points).is_ok())
            .map(|plan| plan.instance)
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Makes an instance's fresh root (see [`fresh_root`]), an empty directory at each mount
/// point (so that listing `/` shows it), and its log's directory.
fn fresh_instance(dirs: &InstanceDirs, mount_points: &[String]) -> std::io::Result<()> {
    fresh_root(&dirs.root, &dirs.staging)?;
    for point in mount_points {
        std::fs::create_dir_all(dirs.root.join(point.trim_start_matches('/')))?;
    }
    if let Some(dir) = dirs.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Readies instance `restart` for its start, in one blocking step. A restarted container
/// starts from a clean writable layer, as a new container does, so the previous instance's
/// root and staging go; only the current and the previous instance's logs are kept
/// (`--previous`), as the kubelet does, since older ones would grow without bound in a crash
/// loop. The instance's own fresh root is made unless it was laid out ahead (`laid_out`).
pub(super) fn ready_instance(
    dirs: &InstanceDirs,
    previous: Option<&InstanceDirs>,
    restart: i32,
    laid_out: bool,
) -> std::io::Result<()> {
    if let Some(previous) = previous {
        let _ = std::fs::remove_dir_all(&previous.staging);
        let _ = std::fs::remove_dir_all(&previous.root);
    }
    if restart >= 2 {
        remove_instance_logs(&dirs.log, restart - 2);
    }
    if laid_out {
        return Ok(());
    }
    fresh_root(&dirs.root, &dirs.staging)
}

/// Removes instance `restart`'s log and its rotations, beside `current` (another instance's log).
fn remove_instance_logs(current: &Path, restart: i32) {
    let Some(dir) = current.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let name = format!("{restart}.log");
    let rotation = format!("{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file == name || file.starts_with(&rotation) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Makes an instance's root and staging directory fresh: whatever an earlier attempt left
/// there is removed (a removal that fails shows when the root is made or used), and the
/// root is made.
fn fresh_root(root: &Path, staging: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)
}

/// The guest paths of `container`'s mounts that are directories whatever the volume holds:
/// whole volumes other than hostPaths (a hostPath may be a file, mounted into its
/// directory). The provider makes the others when it mounts them.
fn mount_points(pod: &Pod, container: &Container) -> Vec<String> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let whole_directory = |name: &str| {
        volumes
            .into_iter()
            .flatten()
            .any(|v| v.name == name && v.host_path.is_none())
    };
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            m.sub_path.as_deref().unwrap_or_default().is_empty()
                && m.sub_path_expr.as_deref().unwrap_or_default().is_empty()
        })
        .filter(|m| whole_directory(&m.name))
        .filter_map(|m| crate::volumes::guest_path(&m.mount_path).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(base: &Path) -> InstanceDirs {
        instance(base, 0)
    }

    fn instance(base: &Path, restart: i32) -> InstanceDirs {
        let root = base.join(format!("rootfs/app-{restart}"));
        InstanceDirs {
            staging: root.with_extension("mounts"),
            log: base.join(format!("logs/app/{restart}.log")),
            root,
        }
    }

    #[test]
    fn a_restart_clears_the_previous_root_and_all_but_the_previous_log() {
        let base = tempfile::tempdir().unwrap();
        let (older, previous, next) = (
            instance(base.path(), 1),
            instance(base.path(), 2),
            instance(base.path(), 3),
        );
        for dirs in [&older, &previous] {
            std::fs::create_dir_all(dirs.root.join("written")).unwrap();
            std::fs::create_dir_all(&dirs.staging).unwrap();
            std::fs::create_dir_all(dirs.log.parent().unwrap()).unwrap();
            std::fs::write(&dirs.log, "line\n").unwrap();
        }
        let rotated = base.path().join("logs/app/1.log.1");
        std::fs::write(&rotated, "line\n").unwrap();
        let unrelated = base.path().join("logs/app/11.log");
        std::fs::write(&unrelated, "line\n").unwrap();

        ready_instance(&next, Some(&previous), 3, false).unwrap();

        assert!(next.root.is_dir());
        assert!(!previous.root.exists() && !previous.staging.exists());
        assert!(
            previous.log.exists(),
            "the previous log stays for --previous"
        );
        assert!(!older.log.exists() && !rotated.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn a_fresh_instance_has_its_mount_points_and_log_directory_and_nothing_older() {
        let base = tempfile::tempdir().unwrap();
        let dirs = dirs(base.path());
        std::fs::create_dir_all(dirs.root.join("left")).unwrap();
        std::fs::create_dir_all(&dirs.staging).unwrap();

        fresh_instance(
            &dirs,
            &["/var/run/secrets/kubernetes.io/serviceaccount".into()],
        )
        .unwrap();

        assert!(
            dirs.root
                .join("var/run/secrets/kubernetes.io/serviceaccount")
                .is_dir()
        );
        assert!(dirs.log.parent().unwrap().is_dir());
        assert!(!dirs.root.join("left").exists());
        assert!(!dirs.staging.exists());
    }

    #[test]
    fn only_whole_directory_volumes_get_mount_points_ahead() {
        use k8s_openapi::api::core::v1::{
            ConfigMapVolumeSource, HostPathVolumeSource, PodSpec, Volume, VolumeMount,
        };
        let mount = |name: &str, path: &str, sub_path: Option<&str>| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            sub_path: sub_path.map(Into::into),
            ..Default::default()
        };
        let container = Container {
            name: "app".into(),
            volume_mounts: Some(vec![
                mount("config", "/etc/app/", None),
                mount("config", "/etc/one.conf", Some("one.conf")),
                mount("host", "/etc/hostname", None),
                mount("config", "/../escape", None),
            ]),
            ..Default::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![
                    Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "c".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "host".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/etc/hostname".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                containers: vec![container.clone()],
                ..Default::default()
            }),
            ..Default::default()
        };

        assert_eq!(mount_points(&pod, &container), ["/etc/app"]);
    }
}
