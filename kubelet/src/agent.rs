//! The node agent: wires the pods, registration, the Lease, status reporting and the API
//! server together, and keeps each of them going through API server outages.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::auth::Gatekeeper;
use crate::api::{self, ApiState};
use crate::backoff::{Backoff, sleep_unless_cancelled};
use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::events::{EventRecorder, EventType};
use crate::host::{DiskUsage, HostFacts};
use crate::link::Link;
use crate::node::allocatable::{self, Allocatable};
use crate::node::events as node_events;
use crate::node::lease::LeaseKeeper;
use crate::node::status::StatusReporter;
use crate::node::{LEASE_RENEW_INTERVAL, STATUS_UPDATE_INTERVAL, object, registration};
use crate::pod::admission::Capacity;
use crate::pod::mirror::MirrorKeeper;
use crate::pod::table::PodTable;
use crate::pod::{PodManager, PodSettings, PodSources, SharedPodState};
use crate::provider::{GC_PERIOD, Provider};
use crate::server;
use crate::static_pods::StaticPod;
use crate::store::LocalStore;

/// Retries against the API server start here and double up to the loop's own period, so an
/// outage costs one request per period at most and recovery is noticed within one period.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// A wasmlet node: its pods, and (when it has an API server) one Node object, its Lease and
/// its API.
pub struct Kubelet<P> {
    client: Option<kube::Client>,
    config: NodeConfig,
    provider: Arc<P>,
    data_dir: Arc<DataDir>,
    store: LocalStore,
    static_pods: Option<watch::Receiver<Vec<StaticPod>>>,
}

/// Where the kubelet HTTPS API listens, and with what TLS.
pub struct ApiServing {
    /// The bound listener.
    pub listener: TcpListener,
    /// Its TLS configuration (serving certificate, client CA).
    pub tls: Arc<ServerConfig>,
}

impl<P: Provider> Kubelet<P> {
    /// An agent for `config`, talking to the cluster through `client` (None for a standalone
    /// node that runs only static pods), keeping its desired state in `store`.
    pub fn new(
        client: Option<kube::Client>,
        config: NodeConfig,
        provider: P,
        data_dir: DataDir,
        store: LocalStore,
    ) -> Self {
        Self {
            client,
            config,
            provider: Arc::new(provider),
            data_dir: Arc::new(data_dir),
            store,
            static_pods: None,
        }
    }

    /// Also runs the static pods that `manifests` describes.
    pub fn with_static_pods(mut self, manifests: watch::Receiver<Vec<StaticPod>>) -> Self {
        self.static_pods = Some(manifests);
        self
    }

    /// Runs until `cancel` fires. Pods held in the local store start at once, before any
    /// request to the API server; the node's own loops never give up on the API server, so
    /// the node recovers by itself when the control plane comes back.
    pub async fn run(self, api: Option<ApiServing>, cancel: CancellationToken) {
        let shared = SharedPodState {
            pods_dir: self.data_dir.path().join("pods"),
            ..Default::default()
        };
        let link = Link::default();
        let server = match (api, &self.client) {
            (Some(api), Some(client)) => {
                let router = api::router(ApiState {
                    node_name: self.config.node_name.clone(),
                    pods: shared.clone(),
                    gate: Arc::new(Gatekeeper::new(client.clone(), &self.config.node_name)),
                    rates: Default::default(),
                    port_forwards: Default::default(),
                });
                Some(tokio::spawn(server::serve(
                    api.listener,
                    api.tls,
                    router,
                    server::ConnectionLimits::default(),
                    cancel.clone(),
                )))
            }
            _ => None,
        };
        let host = HostFacts::read();
        let allocatable =
            Allocatable::of(&host, self.config.system_reserved, &self.config.pressure);
        // One writer for the node's and the pods' events, so both share one budget.
        let events = EventRecorder::new(
            self.client.clone(),
            &self.config.node_name,
            self.config.event_limit,
        );
        let pods = PodManager::new(
            PodSources {
                client: self.client.clone(),
                static_pods: self.static_pods.clone(),
                events: events.clone(),
            },
            self.provider.clone(),
            PodSettings {
                node_name: self.config.node_name.clone(),
                host_ip: self.config.node_ip.to_string(),
                capacity: Capacity {
                    pods: self.config.max_pods as usize,
                    cpu_millis: allocatable.cpu_millis,
                    memory_bytes: allocatable.memory_bytes,
                    // As the node's status reports it, in whole KiB.
                    ephemeral_storage_bytes: allocatable::ephemeral_storage_bytes(
                        DiskUsage::of(self.data_dir.path()).map_or(0, |d| d.total_bytes),
                        self.config.system_reserved,
                        &self.config.pressure,
                    ) / 1024
                        * 1024,
                },
                sync_frequency: self.config.sync_frequency,
                secrets_in_memory: self.config.secrets_in_memory,
            },
            &shared,
            self.store.clone(),
            link.clone(),
        );
        self.provider.attach_events(events.clone());
        let mirrors = self.client.clone().map(|client| {
            MirrorKeeper::new(
                client,
                &self.config.node_name,
                &pods.mirrors(),
                shared.table.clone(),
            )
        });
        let node = async {
            if let Some(client) = &self.client {
                tokio::join!(self.keep_node(client, events, &link, &cancel), async {
                    if let Some(mirrors) = mirrors {
                        mirrors.run(cancel.clone()).await;
                    }
                },);
            }
        };
        tokio::join!(
            node,
            pods.run(cancel.clone()),
            collect_garbage(self.provider.as_ref(), &shared.table, &cancel),
        );
        if let Some(server) = server
            && let Err(err) = server.await
        {
            warn!(%err, "kubelet API server task failed");
        }
        info!("node agent stopped");
    }

    /// Registers the Node, then keeps its Lease and status current until cancelled.
    async fn keep_node(
        &self,
        client: &kube::Client,
        events: EventRecorder,
        link: &Link,
        cancel: &CancellationToken,
    ) {
        let host = HostFacts::read();
        events.record_node(EventType::Normal, "Starting", "Starting wasmlet.");
        let name = &self.config.node_name;
        if let Some(message) =
            node_events::rebooted(self.data_dir.path(), name, &host.boot_id).await
        {
            events.record_node(EventType::Warning, "Rebooted", &message);
        }
        let mut reporter = StatusReporter::new(
            client.clone(),
            self.config.clone(),
            host,
            self.provider.clone(),
            self.data_dir.clone(),
            events,
        );
        let desired = object::new_node(&self.config, reporter.current_status().await);
        let Some(node) =
            register_until_done(&Api::all(client.clone()), &desired, link, cancel).await
        else {
            return;
        };
        let lease = LeaseKeeper::new(client.clone(), &node);
        tokio::join!(
            keep_lease(lease, link, cancel),
            keep_status(&mut reporter, link, cancel),
        );
    }
}

async fn register_until_done(
    api: &Api<Node>,
    desired: &Node,
    link: &Link,
    cancel: &CancellationToken,
) -> Option<Node> {
    let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_secs(7));
    loop {
        match registration::register(api, desired).await {
            Ok(node) => {
                link.succeeded();
                return Some(node);
            }
            Err(err) => {
                link.failed_with(&err);
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in = ?delay, "node registration failed");
                if !sleep_unless_cancelled(delay, cancel).await {
                    return None;
                }
            }
        }
    }
}

async fn collect_garbage<P: Provider>(provider: &P, table: &PodTable, cancel: &CancellationToken) {
    while sleep_unless_cancelled(GC_PERIOD, cancel).await {
        provider.collect_garbage(&table.images()).await;
    }
}

/// Renews the Lease every 10 s, and at once when the link to the API server comes back (the
/// node lifecycle controller reads the Lease first).
async fn keep_lease(mut lease: LeaseKeeper, link: &Link, cancel: &CancellationToken) {
    let mut backoff = Backoff::new(FIRST_RETRY, LEASE_RENEW_INTERVAL);
    let mut restored = link.watch();
    loop {
        let delay = match lease.renew().await {
            Ok(()) => {
                link.succeeded();
                backoff.reset();
                LEASE_RENEW_INTERVAL
            }
            Err(err) => {
                link.failed_with(&err);
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in = ?delay, "lease renewal failed");
                delay
            }
        };
        tokio::select! {
            awake = sleep_unless_cancelled(delay, cancel) => if !awake { return },
            () = restored.restored() => {}
        }
    }
}

/// Sends the node status when it changes, at least every 5 minutes, and at once after the
/// link to the API server comes back (the status the API holds may no longer be ours).
async fn keep_status<P: Provider>(
    reporter: &mut StatusReporter<P>,
    link: &Link,
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, STATUS_UPDATE_INTERVAL);
    let mut restored = link.watch();
    loop {
        let delay = match reporter.report().await {
            Ok(_) => {
                backoff.reset();
                STATUS_UPDATE_INTERVAL
            }
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in = ?delay, "node status update failed");
                delay
            }
        };
        tokio::select! {
            awake = sleep_unless_cancelled(delay, cancel) => if !awake { return },
            () = restored.restored() => reporter.forget_last_sent(),
        }
    }
}
