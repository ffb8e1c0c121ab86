//! `wasmlet join`: kubeadm's token discovery, then the agent, which does TLS bootstrap with
//! the bootstrap kubeconfig discovery wrote.

use anyhow::Context;
use certs::discovery::{CaVerification, Discovery, write_bootstrap_kubeconfig};
use tracing::info;

use crate::cli::{AgentArgs, JoinArgs};

/// Finds and checks the cluster, writes the bootstrap kubeconfig, and returns the agent's
/// settings with it (`None` for `--write-only`). A node whose kubeconfig is already usable
/// has joined this cluster before: discovery is skipped, so a restart does not need a token
/// that may have expired since. One that is for another cluster is refused.
pub async fn prepare(join: JoinArgs) -> anyhow::Result<Option<AgentArgs>> {
    let ca = CaVerification::from_flags(
        join.discovery_token_ca_cert_hash,
        join.discovery_token_unsafe_skip_ca_verification,
    )?;
    let mut agent = join.agent;
    let node = agent.node_config()?;
    let data_dir = kubelet::data_dir::DataDir::open(&node.data_dir)?;
    let kubeconfig = agent
        .kubeconfig
        .clone()
        .unwrap_or_else(|| data_dir.path().join("kubeconfig"));
    let bootstrap = agent
        .bootstrap_kubeconfig
        .clone()
        .unwrap_or_else(|| data_dir.path().join("bootstrap-kubeconfig"));
    agent.kubeconfig = Some(kubeconfig.clone());
    if certs::bootstrap::kubeconfig_unusable(&kubeconfig).is_none() {
        certs::discovery::check_joined_cluster(&kubeconfig, &ca, &join.endpoint)?;
        info!(kubeconfig = %kubeconfig.display(), "this node has joined before: its kubeconfig is usable, so discovery is skipped");
        agent.bootstrap_kubeconfig = bootstrap.exists().then_some(bootstrap);
        return Ok((!join.write_only).then_some(agent));
    }
    let discovery = Discovery {
        endpoint: join.endpoint,
        token: join.token,
        ca,
        timeout: join.discovery_timeout,
    };
    let info = discovery.run().await?;
    write_bootstrap_kubeconfig(&bootstrap, &info, &discovery.token)
        .with_context(|| format!("cannot write {}", bootstrap.display()))?;
    info!(bootstrap_kubeconfig = %bootstrap.display(), server = %info.server, "wrote the bootstrap kubeconfig");
    agent.bootstrap_kubeconfig = Some(bootstrap);
    Ok((!join.write_only).then_some(agent))
}
