//! The node agent: wires registration, the Lease, status reporting and the API server
//! together, and keeps each of them going through API server outages.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::auth::Gatekeeper;
use crate::api::{self, ApiState};
use crate::backoff::{Backoff, sleep_unless_cancelled};
use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::host::HostFacts;
use crate::node::lease::LeaseKeeper;
use crate::node::status::StatusReporter;
use crate::node::{LEASE_RENEW_INTERVAL, STATUS_UPDATE_INTERVAL, object, registration};
use crate::pod::admission::{Capacity, ExtendedCapacity};
use crate::pod::quantity;
use crate::pod::{PodManager, PodSettings, SharedPodState};
use crate::provider::{GC_PERIOD, NodeContribution, Provider};
use crate::server;

/// Retries against the API server start here and double up to the loop's own period, so an
/// outage costs one request per period at most and recovery is noticed within one period.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// A wasmlet node: one Node object, its Lease and its API.
pub struct Kubelet<P> {
    client: kube::Client,
    config: NodeConfig,
    provider: Arc<P>,
    data_dir: Arc<DataDir>,
}

impl<P: Provider> Kubelet<P> {
    /// An agent for `config`, talking to the cluster through `client`.
    pub fn new(client: kube::Client, config: NodeConfig, provider: P, data_dir: DataDir) -> Self {
        Self {
            client,
            config,
            provider: Arc::new(provider),
            data_dir: Arc::new(data_dir),
        }
    }

    /// Runs until `cancel` fires. It never gives up on the API server: every loop retries
    /// with backoff, so the node recovers by itself when the control plane comes back.
    pub async fn run(
        self,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        cancel: CancellationToken,
    ) {
        let shared = SharedPodState {
            pods_dir: self.data_dir.path().join("pods"),
            ..Default::default()
        };
        let api = api::router(ApiState {
            node_name: self.config.node_name.clone(),
            pods: shared.clone(),
            gate: Arc::new(Gatekeeper::new(self.client.clone(), &self.config.node_name)),
            rates: Default::default(),
        });
        let server = tokio::spawn(server::serve(listener, tls, api, cancel.clone()));
        let mut reporter = StatusReporter::new(
            self.client.clone(),
            self.config.clone(),
            HostFacts::read(),
            self.provider.clone(),
            self.data_dir.clone(),
        );
        let desired = object::new_node(&self.config, reporter.current_status());
        let Some(node) =
            register_until_done(&Api::all(self.client.clone()), &desired, &cancel).await
        else {
            return shutdown(server).await;
        };
        let lease = LeaseKeeper::new(self.client.clone(), &node);
        let host = HostFacts::read();
        let pods = PodManager::new(
            self.client.clone(),
            self.provider.clone(),
            &self.config.node_name,
            &self.config.node_ip.to_string(),
            PodSettings {
                capacity: Capacity {
                    pods: self.config.max_pods as usize,
                    cpu_millis: u64::from(host.cpus) * 1000,
                    memory_bytes: host.memory_bytes,
                },
                extended: extended_capacity(&self.provider.node_contribution()),
                sync_frequency: self.config.sync_frequency,
            },
            &shared,
        );
        let reconnected = Notify::new();
        tokio::join!(
            keep_lease(lease, &reconnected, &cancel),
            keep_status(&mut reporter, &reconnected, &cancel),
            pods.run(cancel.clone()),
            collect_garbage(self.provider.as_ref(), &cancel),
        );
        shutdown(server).await
    }
}

/// The provider's extended resources in whole units; one that does not parse counts as
/// none, so no pod can claim it.
fn extended_capacity(contribution: &NodeContribution) -> ExtendedCapacity {
    contribution
        .extended_resources
        .iter()
        .map(|(name, q)| (name.clone(), quantity::bytes(q).unwrap_or(0)))
        .collect()
}

async fn shutdown(server: tokio::task::JoinHandle<()>) {
    if let Err(err) = server.await {
        warn!(%err, "kubelet API server task failed");
    }
    info!("node agent stopped");
}

async fn register_until_done(
    api: &Api<Node>,
    desired: &Node,
    cancel: &CancellationToken,
) -> Option<Node> {
    let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_secs(7));
    loop {
        match registration::register(api, desired).await {
            Ok(node) => return Some(node),
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in = ?delay, "node registration failed");
                if !sleep_unless_cancelled(delay, cancel).await {
                    return None;
                }
            }
        }
    }
}

async fn collect_garbage<P: Provider>(provider: &P, cancel: &CancellationToken) {
    while sleep_unless_cancelled(GC_PERIOD, cancel).await {
        provider.collect_garbage().await;
    }
}

/// Renews the Lease every 10 s. When a renewal succeeds after failures, `reconnected` is
/// told: while the node could not reach the API server, the node lifecycle controller may
/// have marked it `Unknown`, and only a fresh status puts that right.
async fn keep_lease(mut lease: LeaseKeeper, reconnected: &Notify, cancel: &CancellationToken) {
    let mut backoff = Backoff::new(FIRST_RETRY, LEASE_RENEW_INTERVAL);
    let mut failing = false;
    loop {
        let delay = match lease.renew().await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!("lease renewed after failures; resending node status");
                    reconnected.notify_one();
                }
                backoff.reset();
                LEASE_RENEW_INTERVAL
            }
            Err(err) => {
                failing = true;
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in = ?delay, "lease renewal failed");
                delay
            }
        };
        if !sleep_unless_cancelled(delay, cancel).await {
            return;
        }
    }
}

/// Sends the node status when it changes, at least every 5 minutes, and at once after the
/// link to the API server comes back (the status the API holds may no longer be ours).
async fn keep_status<P: Provider>(
    reporter: &mut StatusReporter<P>,
    reconnected: &Notify,
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, STATUS_UPDATE_INTERVAL);
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
            () = reconnected.notified() => reporter.forget_last_sent(),
        }
    }
}
