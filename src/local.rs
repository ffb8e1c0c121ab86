//! `wasmlet ps` and `wasmlet logs`: the node's pods and their logs, read from the data dir,
//! for an operator on the device when the link to the cluster is down (crictl is the model).
//! They read the local store and the log files and never take the data dir's lock, so they
//! work while the agent runs and while it is stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kubelet::logs::query::LogQuery;
use kubelet::logs::reader;
use kubelet::store::{STORE_FILE, StoredPod, read_pods};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::{LogsArgs, PsArgs};
use crate::{print_out, stdout_written};

/// How often `wasmlet logs -f` looks for new lines: the agent's in-process wake-ups do not
/// reach another process.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// How often `wasmlet logs -f` reads the store to learn whether the container still runs:
/// each read parses every stored pod, so not at the pace of [`FOLLOW_POLL`].
const STATUS_POLL: Duration = Duration::from_secs(1);

/// Waiting reasons of an instance that has not started yet (its log file is opened just
/// before it starts). Any other reason at the same restart count means it failed to start.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// Prints one line per container of every pod the node holds.
pub fn ps(data_dir: &Path, args: &PsArgs) -> anyhow::Result<()> {
    check_store(data_dir)?;
    let pods = read_pods(data_dir).context("cannot read the node's pods")?;
    let now = Timestamp::now();
    let mut rows = vec![
        [
            "NAMESPACE",
            "POD",
            "STATUS",
            "CONTAINER",
            "STATE",
            "RESTARTS",
            "AGE",
            "SOURCE",
        ]
        .map(String::from),
    ];
    for stored in pods.iter().filter(|p| args.all || !finished(p)) {
        rows.extend(rows_of(stored, now));
    }
    print_out(|out| print_table(out, &rows))
}

/// Fails, naming the data dir, unless it holds a store: `read_pods` reads a missing store as
/// no pods, which for a mistyped or wrong data dir would be an empty answer that looks true.
fn check_store(data_dir: &Path) -> anyhow::Result<()> {
    let missing = |path: &Path| match std::fs::metadata(path) {
        Ok(_) => Ok(false),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let hint = "pass the agent's --data-dir or its --config";
    if missing(data_dir)? {
        bail!("data dir {} does not exist; {hint}", data_dir.display());
    }
    let store = data_dir.join(STORE_FILE);
    if missing(&store)? {
        bail!(
            "data dir {} has no local store ({STORE_FILE}): no agent has run with it; {hint}",
            data_dir.display()
        );
    }
    Ok(())
}

/// The stored pods, read on the blocking pool: an SQLite read, which can wait on the
/// agent's checkpoint for seconds, must not hold a runtime thread.
async fn stored_pods(data_dir: &Path) -> anyhow::Result<Vec<StoredPod>> {
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || read_pods(&data_dir))
        .await
        .context("the store read did not finish")?
        .context("cannot read the node's pods")
}

fn finished(stored: &StoredPod) -> bool {
    matches!(phase(stored), "Succeeded" | "Failed")
}

fn phase(stored: &StoredPod) -> &str {
    stored
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The pod's reason when it has one (why it was refused or failed: `OutOfcpu`,
/// `DeadlineExceeded`), else its phase, as kubectl's STATUS column shows it.
fn pod_status(stored: &StoredPod) -> &str {
    stored
        .status
        .as_ref()
        .and_then(|s| s.reason.as_deref())
        .unwrap_or_else(|| phase(stored))
}

fn rows_of(stored: &StoredPod, now: Timestamp) -> Vec<[String; 8]> {
    let meta = &stored.pod.metadata;
    let statuses: Vec<&ContainerStatus> = stored
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .collect();
    let names: Vec<String> = stored
        .pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    names
        .into_iter()
        .map(|name| {
            let status = statuses.iter().find(|s| s.name == name);
            let (state, since) = status.map_or(("Waiting".to_string(), None), |s| state_of(s));
            let started = since.or_else(|| meta.creation_timestamp.as_ref().map(|t| t.0));
            [
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone().unwrap_or_default(),
                pod_status(stored).to_string(),
                name,
                state,
                status.map_or(0, |s| s.restart_count).to_string(),
                started.map_or_else(|| "-".into(), |t| age(now, t)),
                format!("{:?}", stored.source).to_lowercase(),
            ]
        })
        .collect()
}

/// The container's state as `kubectl get pods` words it, and since when it holds.
fn state_of(status: &ContainerStatus) -> (String, Option<Timestamp>) {
    let state = status.state.as_ref();
    if let Some(running) = state.and_then(|s| s.running.as_ref()) {
        return ("Running".into(), running.started_at.as_ref().map(|t| t.0));
    }
    if let Some(done) = state.and_then(|s| s.terminated.as_ref()) {
        let reason = done.reason.clone().unwrap_or_else(|| "Terminated".into());
        return (
            format!("{reason} ({})", done.exit_code),
            done.finished_at.as_ref().map(|t| t.0),
        );
    }
    let waiting = state
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
        .unwrap_or_else(|| "Waiting".into());
    (waiting, None)
}

/// An age as kubectl prints it: `45s`, `12m`, `3h`, `2d`.
fn age(now: Timestamp, since: Timestamp) -> String {
    let seconds = now.duration_since(since).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_table(out: &mut impl Write, rows: &[[String; 8]]) -> std::io::Result<()> {
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

/// Prints a container's log, as `kubectl logs` would, from the files on the node.
pub async fn logs(data_dir: &Path, args: &LogsArgs) -> anyhow::Result<()> {
    check_store(data_dir)?;
    let pods = stored_pods(data_dir).await?;
    let stored = pods
        .iter()
        .find(|p| {
            p.pod.metadata.name.as_deref() == Some(args.pod.as_str())
                && p.pod.metadata.namespace.as_deref().unwrap_or("default") == args.namespace
        })
        .with_context(|| {
            format!(
                "pod {}/{} is not on this node (wasmlet ps lists them)",
                args.namespace, args.pod
            )
        })?;
    let container = container_of(&stored.pod, args.container.as_deref())?;
    let dir = reader::container_dir(&data_dir.join("pods"), &stored.uid, &container);
    let instances = reader::instances(&dir)
        .await
        .with_context(|| format!("cannot list the logs in {}", dir.display()))?;
    let pick = if args.previous {
        instances.iter().rev().nth(1)
    } else {
        instances.last()
    };
    let Some(&restart) = pick else {
        bail!(
            "container {container} of pod {} has no {}log yet",
            args.pod,
            if args.previous { "previous " } else { "" }
        );
    };
    let current = reader::instance_path(&dir, restart);
    let query = LogQuery {
        follow: args.follow,
        tail_lines: args.tail,
        ..Default::default()
    };
    let followed = Followed {
        data_dir: data_dir.to_path_buf(),
        uid: stored.uid.clone(),
        container,
        dir,
        instance: restart,
        agent_absent: 0,
    };
    // An instance that has already ended is printed to its end, as `kubectl logs -f` does
    // for a terminated container; `--previous` always names one.
    let ended = followed.newer_instance(&instances) || followed.ended_in(Some(stored));
    let live = (args.follow && !ended).then(|| followed.watch(current.clone()));
    let stream = reader::stream(current, query, live);
    futures::pin_mut!(stream);
    let mut out = tokio::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("cannot read the log")?;
        let written = async {
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
            tokio::io::AsyncWriteExt::flush(&mut out).await
        }
        .await;
        if written
            .as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::BrokenPipe)
        {
            // Whoever read the log has gone (`| grep -m1`): nothing is left to follow for.
            return Ok(());
        }
        stdout_written(written)?;
    }
    Ok(())
}

/// The container to read: the one named, or the pod's only one.
fn container_of(pod: &Pod, named: Option<&str>) -> anyhow::Result<String> {
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .map(|c| c.name.as_str())
        .collect();
    match (named, names.as_slice()) {
        (Some(name), _) if names.contains(&name) => Ok(name.to_string()),
        (Some(name), _) => bail!("pod has no container {name:?}; it has {}", names.join(", ")),
        (None, [only]) => Ok((*only).to_string()),
        (None, _) => bail!(
            "pod has several containers; choose one with -c: {}",
            names.join(", ")
        ),
    }
}

/// The container instance `wasmlet logs -f` follows.
struct Followed {
    data_dir: PathBuf,
    uid: String,
    container: String,
    /// The container's log directory.
    dir: PathBuf,
    /// Its number: the restart count it was started at, as its log file is named.
    instance: i32,
    /// Store reads in a row that found no agent holding the data dir.
    agent_absent: u8,
}

impl Followed {
    /// Whether a later instance of the container has a log: the followed one has ended
    /// (restarted), since the agent opens an instance's log only as it starts it.
    fn newer_instance(&self, instances: &[i32]) -> bool {
        instances.last().is_some_and(|&last| last > self.instance)
    }

    /// Whether the pod as stored (`None`: no longer stored, so deleted) says the followed
    /// instance has ended.
    fn ended_in(&self, stored: Option<&StoredPod>) -> bool {
        let Some(stored) = stored else { return true };
        // Succeeded and Failed are final: nothing of the pod runs any more.
        if finished(stored) {
            return true;
        }
        let status = stored
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .find(|s| s.name == self.container);
        // Not reported yet: it is being started.
        let Some(status) = status else { return false };
        match status.restart_count.cmp(&self.instance) {
            // Restarted since (or the agent restarted, which counts the instance as ended).
            std::cmp::Ordering::Greater => true,
            // The agent opened this instance's log before the store heard of its restart.
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                let state = status.state.as_ref();
                if state.is_some_and(|s| s.running.is_some()) {
                    return false;
                }
                if state.is_some_and(|s| s.terminated.is_some()) {
                    return true;
                }
                let waiting = state
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref());
                !waiting.is_some_and(|reason| STARTING.contains(&reason))
            }
        }
    }

    /// Whether the node's agent is known not to run (its data dir's lock is free), in two
    /// reads a second apart, since a lock table read while other locks come and go may miss
    /// a line: then nothing of the pod runs, whatever the store last said, and the
    /// instance's log has ended (`kubectl logs -f` ends too when the kubelet goes).
    async fn agent_stopped(&mut self) -> bool {
        let data_dir = self.data_dir.clone();
        let absent = tokio::task::spawn_blocking(move || {
            kubelet::data_dir::agent_holds(&data_dir) == Some(false)
        })
        .await
        .unwrap_or(false);
        self.agent_absent = if absent {
            self.agent_absent.saturating_add(1)
        } else {
            0
        };
        self.agent_absent >= 2
    }

    /// Whether the followed instance has ended, by its log directory, the agent and the
    /// store. A store that cannot be read now (busy, being replaced) says nothing: the next
    /// poll asks again.
    async fn has_ended(&mut self, read_store: bool) -> bool {
        if let Ok(instances) = reader::instances(&self.dir).await
            && self.newer_instance(&instances)
        {
            return true;
        }
        if !read_store {
            return false;
        }
        if self.agent_stopped().await {
            return true;
        }
        match stored_pods(&self.data_dir).await {
            Ok(pods) => self.ended_in(pods.iter().find(|p| p.uid == self.uid)),
            Err(_) => false,
        }
    }

    /// The reader's follow channel for the instance's file `path`: bumped whenever the file
    /// changes size or is replaced (a rotation), and closed once the instance has ended and
    /// the file has then held still for one more poll, so that lines the agent was still
    /// writing as the instance ended are read before the stream ends.
    fn watch(mut self, path: PathBuf) -> watch::Receiver<u64> {
        use std::os::unix::fs::MetadataExt;
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut last = None;
            let mut ended = false;
            // `logs` has just read the store.
            let mut next_store_read = Instant::now() + STATUS_POLL;
            loop {
                let now = tokio::fs::metadata(&path)
                    .await
                    .ok()
                    .map(|m| (m.ino(), m.len()));
                if now != last {
                    last = now;
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                } else if ended {
                    // Dropping `tx` ends the reader after one last read to the end.
                    return;
                }
                // The reader stopped first (its output's reader went away).
                if tx.is_closed() {
                    return;
                }
                if !ended {
                    let read_store = Instant::now() >= next_store_read;
                    if read_store {
                        next_store_read = Instant::now() + STATUS_POLL;
                    }
                    ended = self.has_ended(read_store).await;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use kubelet::store::PodSource;

    #[test]
    fn a_pods_reason_stands_in_its_status_column_as_kubectl_shows_it() {
        let stored = |phase: &str, reason: Option<&str>| StoredPod {
            uid: "u".into(),
            source: PodSource::File,
            pod: Pod {
                metadata: kube::api::ObjectMeta {
                    name: Some("p".into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                reason: reason.map(str::to_string),
                ..Default::default()
            }),
        };
        let now = Timestamp::now();
        let refused = stored("Failed", Some("InvalidResourceQuantity"));
        assert_eq!(rows_of(&refused, now)[0][2], "InvalidResourceQuantity");
        assert!(
            finished(&refused),
            "a refused pod is listed with --all only"
        );
        assert_eq!(rows_of(&stored("Running", None), now)[0][2], "Running");
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        assert_eq!(age(now, ago(5)), "5s");
        assert_eq!(age(now, ago(600)), "10m");
        assert_eq!(age(now, ago(3 * 3600)), "3h");
        assert_eq!(age(now, ago(3 * 86_400)), "3d");
    }
}
