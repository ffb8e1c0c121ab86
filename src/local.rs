//! `wasmlet ps` and `wasmlet logs`: the node's pods and their logs, read from the data dir,
//! for an operator on the device when the link to the cluster is down (crictl is the model).
//! They read the local store and the log files and never take the data dir's lock, so they
//! work while the agent runs and while it is stopped.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kubelet::logs::query::LogQuery;
use kubelet::logs::reader;
use kubelet::store::{StoredPod, read_pods};
use tokio::sync::watch;

use crate::cli::{LogsArgs, PsArgs};

/// How often `wasmlet logs -f` looks for new lines: the agent's in-process wake-ups do not
/// reach another process.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Prints one line per container of every pod the node holds.
pub fn ps(data_dir: &Path, args: &PsArgs) -> anyhow::Result<()> {
    let pods = read_pods(data_dir).context("cannot read the node's pods")?;
    let now = Timestamp::now();
    let mut rows = vec![
        [
            "NAMESPACE",
            "POD",
            "PHASE",
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
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &rows)?;
    Ok(())
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
                phase(stored).to_string(),
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
    let pods = read_pods(data_dir).context("cannot read the node's pods")?;
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
    let live = args.follow.then(|| watch_growth(current.clone()));
    let stream = reader::stream(current, query, live);
    futures::pin_mut!(stream);
    let mut out = tokio::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("cannot read the log")?;
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
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

/// Bumps a counter whenever `path` changes size or is replaced (a rotation), for the reader's
/// follow loop.
fn watch_growth(path: std::path::PathBuf) -> watch::Receiver<u64> {
    use std::os::unix::fs::MetadataExt;
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = tokio::fs::metadata(&path)
                .await
                .ok()
                .map(|m| (m.ino(), m.len()));
            if now != last {
                last = now;
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

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
