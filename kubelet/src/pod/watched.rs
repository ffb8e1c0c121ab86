//! ConfigMaps and Secrets that pods on the node read, each watched once and shared by every
//! pod that reads it, as the kubelet's `Watch` change-detection strategy does.
//!
//! The first read of an object starts a watch on it alone (`metadata.name=<name>` in its
//! namespace, which the Node authorizer allows for objects that pods bound to the node
//! reference). Later reads answer from what the watch last saw, with no request. Each change
//! tells every pod that read the object, so its volumes are rewritten at once instead of at
//! the next `--sync-frequency` tick. A watch ends when the last pod that read its object
//! ends, so the cache holds only objects some pod on the node references.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long a first read waits for its watch's first answer before falling back to a plain
/// read.
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// Which object.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum ObjectId {
    ConfigMap { namespace: String, name: String },
    Secret { namespace: String, name: String },
}

/// What a watch last saw of its object.
#[derive(Clone, Debug)]
enum Seen {
    /// No answer yet.
    Waiting,
    /// The watch could not list it (refused, or unreachable): readers fall back.
    Failed(String),
    ConfigMap(Option<Arc<ConfigMap>>),
    Secret(Option<Arc<Secret>>),
}

struct Entry {
    seen: watch::Receiver<Seen>,
    readers: HashSet<String>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ObjectId, Entry>,
    /// Each pod's change signal, bumped when an object it read changes.
    signals: HashMap<String, watch::Sender<u64>>,
}

/// The node's watched ConfigMaps and Secrets. Cheap to clone.
#[derive(Clone)]
pub struct WatchedObjects {
    client: kube::Client,
    inner: Arc<Mutex<Inner>>,
}

impl WatchedObjects {
    /// A cache reading through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            inner: Arc::default(),
        }
    }

    /// ConfigMap `namespace/name` for pod `uid`: `Ok(None)` when it does not exist, `Err`
    /// when its watch could not tell (the caller then reads it another way).
    pub async fn config_map(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, String> {
        let id = ObjectId::ConfigMap {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match self.read(uid, id).await? {
            Seen::ConfigMap(found) => Ok(found.map(|c| ConfigMap::clone(&c))),
            other => Err(format!("unexpected answer for a configmap: {other:?}")),
        }
    }

    /// Secret `namespace/name` for pod `uid`, as [`config_map`](Self::config_map).
    pub async fn secret(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Secret>, String> {
        let id = ObjectId::Secret {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match self.read(uid, id).await? {
            Seen::Secret(found) => Ok(found.map(|s| Secret::clone(&s))),
            other => Err(format!("unexpected answer for a secret: {other:?}")),
        }
    }

    /// A signal that pod `uid`'s objects changed: `changed()` resolves after each change.
    pub fn changes(&self, uid: &str) -> watch::Receiver<u64> {
        let mut inner = self.lock();
        inner
            .signals
            .entry(uid.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Pod `uid` has ended: it reads nothing any more, and an object no pod reads is no
    /// longer watched.
    pub fn release(&self, uid: &str) {
        let mut inner = self.lock();
        inner.signals.remove(uid);
        inner.entries.retain(|_, entry| {
            entry.readers.remove(uid);
            let keep = !entry.readers.is_empty();
            if !keep {
                entry.stop.cancel();
            }
            keep
        });
    }

    async fn read(&self, uid: &str, id: ObjectId) -> Result<Seen, String> {
        let mut seen = {
            let mut inner = self.lock();
            match inner.entries.get_mut(&id) {
                Some(entry) => {
                    entry.readers.insert(uid.to_string());
                    entry.seen.clone()
                }
                None => {
                    let stop = CancellationToken::new();
                    let (tx, rx) = watch::channel(Seen::Waiting);
                    tokio::spawn(watch_object(
                        self.client.clone(),
                        id.clone(),
                        tx,
                        self.inner.clone(),
                        stop.clone(),
                    ));
                    inner.entries.insert(
                        id,
                        Entry {
                            seen: rx.clone(),
                            readers: [uid.to_string()].into(),
                            stop,
                        },
                    );
                    rx
                }
            }
        };
        let answered =
            tokio::time::timeout(FIRST_ANSWER, seen.wait_for(|s| !matches!(s, Seen::Waiting)))
                .await;
        match answered {
            Ok(Ok(value)) => match &*value {
                Seen::Failed(why) => Err(why.clone()),
                other => Ok(other.clone()),
            },
            Ok(Err(_)) => Err("the object's watch ended".into()),
            Err(_) => Err("the object's watch has not answered yet".into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Watches one object until `stop`, publishing what it sees and telling its readers of
/// each change. Until the first list succeeds, a failure is published as such so readers
/// fall back; after that, failures keep the last value (the watch retries by itself).
async fn watch_object(
    client: kube::Client,
    id: ObjectId,
    seen: watch::Sender<Seen>,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
) {
    let (namespace, name) = match &id {
        ObjectId::ConfigMap { namespace, name } | ObjectId::Secret { namespace, name } => {
            (namespace.clone(), name.clone())
        }
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = match &id {
        ObjectId::ConfigMap { .. } => {
            watcher::watcher(Api::<ConfigMap>::namespaced(client, &namespace), config)
                .default_backoff()
                .map(|e| e.map(|e| seen_as(e, |c| Seen::ConfigMap(Some(Arc::new(c))))))
                .boxed()
        }
        ObjectId::Secret { .. } => {
            watcher::watcher(Api::<Secret>::namespaced(client, &namespace), config)
                .default_backoff()
                .map(|e| e.map(|e| seen_as(e, |s| Seen::Secret(Some(Arc::new(s))))))
                .boxed()
        }
    };
    let absent = match &id {
        ObjectId::ConfigMap { .. } => Seen::ConfigMap(None),
        ObjectId::Secret { .. } => Seen::Secret(None),
    };
    let mut listed_any = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let now = match event {
            None => return,
            Some(Err(err)) => {
                if matches!(*seen.borrow(), Seen::Waiting) {
                    seen.send_replace(Seen::Failed(err.to_string()));
                }
                debug!(?id, %err, "watch of a pod's object failed; retrying");
                continue;
            }
            Some(Ok(Event::Init)) => {
                listed_any = false;
                continue;
            }
            Some(Ok(Event::InitApply(object))) => {
                listed_any = true;
                object
            }
            Some(Ok(Event::Apply(object))) => object,
            Some(Ok(Event::Delete(_))) => absent.clone(),
            Some(Ok(Event::InitDone)) if !listed_any => absent.clone(),
            Some(Ok(Event::InitDone)) => continue,
        };
        let first = matches!(*seen.borrow(), Seen::Waiting | Seen::Failed(_));
        seen.send_replace(now);
        if !first {
            tell_readers(&inner, &id);
        }
    }
}

/// A watch event about a ConfigMap or Secret, as what the cache keeps of it.
fn seen_as<K>(event: Event<K>, wrap: fn(K) -> Seen) -> Event<Seen> {
    match event {
        Event::Apply(object) => Event::Apply(wrap(object)),
        Event::Delete(object) => Event::Delete(wrap(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(wrap(object)),
        Event::InitDone => Event::InitDone,
    }
}

fn tell_readers(inner: &Mutex<Inner>, id: &ObjectId) {
    let inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    let Some(entry) = inner.entries.get(id) else {
        return;
    };
    for uid in &entry.readers {
        if let Some(signal) = inner.signals.get(uid) {
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}
