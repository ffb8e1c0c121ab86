//! Garbage collection of artifacts no pod uses, with the kubelet's image-GC thresholds: when
//! the filesystem is fuller than `high_percent`, free least-recently-used artifacts until it
//! is at most `low_percent` full.

use std::collections::HashSet;

use crate::{Puller, Result};

/// When to collect and how far.
#[derive(Clone, Copy, Debug)]
pub struct GcPolicy {
    /// Start collecting at this disk usage.
    pub high_percent: u64,
    /// Stop once usage is at or below this.
    pub low_percent: u64,
}

impl Default for GcPolicy {
    /// The kubelet's defaults.
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
        }
    }
}

/// The filesystem holding the store.
#[derive(Clone, Copy, Debug)]
pub struct DiskUsage {
    /// Total bytes.
    pub capacity_bytes: u64,
    /// Free bytes.
    pub available_bytes: u64,
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    /// The references whose artifacts were removed, oldest use first.
    pub removed: Vec<String>,
    /// Bytes of blobs deleted.
    pub freed_bytes: u64,
    /// Pulls were under way, so nothing was collected; the next collection tries again.
    pub deferred: bool,
}

impl Puller {
    /// Frees unused artifacts if `usage` is over the policy's high mark. `in_use` holds the
    /// Wasm digests that running pods use, and `pinned` the image references that the node's
    /// pods name, running or not (a pod in back-off, or waiting to start again after a
    /// restart while offline, must find its image); those and everything they need are kept.
    pub async fn collect_garbage(
        &self,
        in_use: &HashSet<String>,
        pinned: &HashSet<String>,
        usage: DiskUsage,
        policy: GcPolicy,
    ) -> Result<GcReport> {
        let capacity = usage.capacity_bytes.max(1);
        let used_percent = 100 - usage.available_bytes.min(capacity) * 100 / capacity;
        if used_percent < policy.high_percent {
            return Ok(GcReport::default());
        }
        let target_free = capacity * (100 - policy.low_percent.min(100)) / 100;
        let to_free = target_free.saturating_sub(usage.available_bytes);

        // Never waited for: a waiting collection would hold up every pull behind one slow
        // download, cached starts included.
        let Some(_exclusive) = self.exclusive() else {
            return Ok(GcReport {
                deferred: true,
                ..GcReport::default()
            });
        };
        let store = self.store();
        let mut records = store.records().await?;
        records.sort_by_key(|r| r.last_used);
        let mut report = GcReport::default();
        // Orphans (blobs of a pull that failed halfway) go first: nothing needs them.
        report.freed_bytes += sweep(self, &records, in_use).await?;
        let mut remaining = records.clone();
        for record in records.iter().filter(|r| {
            !in_use.contains(&r.artifact.wasm_digest) && !pinned.contains(reference_of(&r.key))
        }) {
            if report.freed_bytes >= to_free {
                break;
            }
            store.remove_record(&record.key).await?;
            remaining.retain(|r| r.key != record.key);
            report.removed.push(record.key.clone());
            report.freed_bytes += sweep(self, &remaining, in_use).await?;
        }
        Ok(report)
    }
}

/// The image reference a record's key names: the key is the reference, plus `#<entry>` for
/// compat images.
fn reference_of(key: &str) -> &str {
    key.split_once('#').map_or(key, |(reference, _)| reference)
}

/// Deletes blobs no record needs and no running pod uses; returns the bytes freed.
async fn sweep(
    puller: &Puller,
    records: &[crate::store::ArtifactRecord],
    in_use: &HashSet<String>,
) -> Result<u64> {
    let needed: HashSet<&String> = records
        .iter()
        .flat_map(|r| r.blobs.iter())
        .chain(in_use.iter())
        .collect();
    let mut freed = 0;
    for (digest, size) in puller.store().blobs().await? {
        if !needed.contains(&digest) {
            puller.store().remove_blob(&digest).await?;
            freed += size;
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PullerConfig;
    use crate::store::Store;
    use crate::store::testing::artifact;
    use std::sync::Arc;

    #[tokio::test]
    async fn below_the_high_mark_nothing_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        artifact(&store, "a", 1, 100).await;
        let puller = Puller::new(store.clone(), PullerConfig::default());
        let usage = DiskUsage {
            capacity_bytes: 1000,
            available_bytes: 500,
        };
        let report = puller
            .collect_garbage(&HashSet::new(), &HashSet::new(), usage, GcPolicy::default())
            .await
            .unwrap();
        assert_eq!(report, GcReport::default());
        assert!(store.record("a").await.is_some());
    }

    #[tokio::test]
    async fn over_the_high_mark_unused_artifacts_go_oldest_first_until_the_low_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let old = artifact(&store, "old", 1, 100).await;
        let used = artifact(&store, "used", 0, 100).await;
        let newer = artifact(&store, "newer", 2, 100).await;
        let recent = artifact(&store, "recent", 3, 100).await;
        let puller = Puller::new(store.clone(), PullerConfig::default());
        // 90% full; reaching 80% needs 100 bytes freed.
        let usage = DiskUsage {
            capacity_bytes: 1000,
            available_bytes: 100,
        };
        let in_use: HashSet<String> = [used.clone()].into();
        let report = puller
            .collect_garbage(&in_use, &HashSet::new(), usage, GcPolicy::default())
            .await
            .unwrap();
        assert_eq!(report.removed, vec!["old".to_string()]);
        assert_eq!(report.freed_bytes, 100);
        assert!(!store.has_blob(&old));
        assert!(store.has_blob(&used) && store.has_blob(&newer) && store.has_blob(&recent));
        assert!(store.record("newer").await.is_some());
    }

    /// A pull under way (one slow download, say) defers the collection rather than have it
    /// wait, which would hold up every pull after it.
    #[tokio::test]
    async fn a_collection_while_a_pull_is_under_way_is_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let old = artifact(&store, "old", 1, 100).await;
        let puller = Puller::new(store.clone(), PullerConfig::default());
        let full = DiskUsage {
            capacity_bytes: 1000,
            available_bytes: 50,
        };
        let pulling = puller.pulling();
        let report = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            puller.collect_garbage(&HashSet::new(), &HashSet::new(), full, GcPolicy::default()),
        )
        .await
        .expect("the collection did not wait for the pull")
        .unwrap();
        assert!(report.deferred && report.removed.is_empty());
        assert!(store.has_blob(&old));
        drop(pulling);
        let report = puller
            .collect_garbage(&HashSet::new(), &HashSet::new(), full, GcPolicy::default())
            .await
            .unwrap();
        assert_eq!(report.removed, vec!["old".to_string()]);
    }

    #[tokio::test]
    async fn an_image_a_pod_of_the_node_names_is_kept_though_nothing_runs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // Each artifact's blob is its name's first byte repeated: the names differ there.
        let pinned_plain = artifact(&store, "pinned.example/app:v1", 1, 100).await;
        let pinned_compat = artifact(&store, "compat.example/app:v1#app.wasm", 2, 100).await;
        let unused = artifact(&store, "unused.example/app:v1", 3, 100).await;
        let puller = Puller::new(store.clone(), PullerConfig::default());
        // 95% full: everything unpinned must go.
        let usage = DiskUsage {
            capacity_bytes: 1000,
            available_bytes: 50,
        };
        let pinned: HashSet<String> = [
            "pinned.example/app:v1".to_string(),
            "compat.example/app:v1".to_string(),
        ]
        .into();
        let report = puller
            .collect_garbage(&HashSet::new(), &pinned, usage, GcPolicy::default())
            .await
            .unwrap();
        assert_eq!(report.removed, vec!["unused.example/app:v1".to_string()]);
        assert!(store.has_blob(&pinned_plain) && store.has_blob(&pinned_compat));
        assert!(!store.has_blob(&unused));
    }
}
