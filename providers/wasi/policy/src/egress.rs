//! Where a pod's outbound HTTP may connect, as the node decides it.
//!
//! A pod's allowed-domains list is written by the pod's author, so on its own it would let
//! any pod reach the node's loopback services, the cloud's metadata address (169.254.169.254)
//! or the kubelet API on the node's own address. The node's [`EgressPolicy`] refuses those
//! whatever the list says, unless the operator opens a network for them
//! (`--outbound-http-allow-networks`). The check is made on the address actually dialled,
//! after name resolution, in the connector: a host name that resolves to an allowed address
//! when checked and a forbidden one when connected (DNS rebinding) cannot get through,
//! because the address checked is the address connected to.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The node's rule for which addresses outbound HTTP may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Networks the operator opened, exempt from the node's refusals.
    pub allowed_networks: Vec<IpNet>,
}

impl EgressPolicy {
    /// Reads `--outbound-http-allow-networks`: CIDRs (`127.0.0.0/8`) or single addresses,
    /// comma-separated.
    pub fn parse(text: &str) -> Result<Self, String> {
        let allowed_networks = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not a network like 10.0.0.0/8 or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed_networks })
    }

    /// Why the node refuses `ip`, or `None` if outbound HTTP may connect to it.
    pub async fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is the IPv4 address.
        let ip = ip.to_canonical();
        if self.allowed_networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        if ip.is_loopback() {
            return Some("a loopback address");
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("not a unicast address");
        }
        if is_link_local(ip) {
            return Some("a link-local address (cloud metadata services live there)");
        }
        if is_own(ip).await {
            return Some("one of the node's own addresses");
        }
        None
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Whether `ip` is assigned to one of this machine's interfaces, asked of the kernel at the
/// moment of connecting (so an address added since start-up counts): binding a socket to an
/// address works only for a local one. Where the kernel lets any address be bound
/// (`ip_nonlocal_bind`), every address looks local and is refused: the check fails closed.
async fn is_own(ip: IpAddr) -> bool {
    tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn the_node_refuses_loopback_link_local_and_its_own_addresses_by_default() {
        let policy = EgressPolicy::default();
        for (address, why) in [
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unicast"),
            ("224.0.0.1", "unicast"),
        ] {
            let refused = policy.refuses(ip(address)).await;
            assert!(
                refused.is_some_and(|r| r.contains(why)),
                "{address}: {refused:?}"
            );
        }
        // Documentation addresses are assigned to no interface here.
        assert_eq!(policy.refuses(ip("192.0.2.10")).await, None);
        assert_eq!(policy.refuses(ip("2001:db8::10")).await, None);
    }

    #[tokio::test]
    async fn an_address_of_this_machine_counts_as_the_nodes_own() {
        assert!(is_own(ip("127.0.0.1")).await);
        assert!(!is_own(ip("192.0.2.10")).await);
    }

    #[tokio::test]
    async fn networks_the_operator_opens_are_exempt() {
        let policy = EgressPolicy::parse("127.0.0.0/8, 169.254.169.254").unwrap();
        assert_eq!(policy.refuses(ip("127.0.0.1")).await, None);
        assert_eq!(policy.refuses(ip("::ffff:127.0.0.1")).await, None);
        assert_eq!(policy.refuses(ip("169.254.169.254")).await, None);
        assert!(policy.refuses(ip("169.254.0.1")).await.is_some());
        assert!(
            policy.refuses(ip("::1")).await.is_some(),
            "IPv6 loopback stays shut"
        );
    }

    #[test]
    fn malformed_networks_are_named() {
        assert_eq!(EgressPolicy::parse(""), Ok(EgressPolicy::default()));
        let err = EgressPolicy::parse("10.0.0.0/8,lots").unwrap_err();
        assert!(err.contains("\"lots\" is not a network"), "{err}");
        assert!(EgressPolicy::parse("10.0.0.0/33").is_err());
    }
}
