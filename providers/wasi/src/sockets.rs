//! `wasi:sockets` for guests: a container may listen on the TCP containerPorts it declares
//! (admission gave them to its pod alone), on the node's address or all addresses, and
//! accept clients there; nothing else. Any other bind, an outbound TCP connection (outbound
//! traffic is `wasi:http`, under the pod's HTTP policy) and UDP fail in the guest with
//! `access-denied`.

use std::net::{IpAddr, SocketAddr};

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

/// Where a container may listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listen {
    /// Its TCP containerPorts.
    pub(crate) ports: Vec<u16>,
    /// The node's address (the pod's IP).
    pub(crate) node_ip: IpAddr,
}

impl Listen {
    /// Gives `builder` exactly this: TCP on, UDP and name lookups off, and every address
    /// checked by [`permits`](Self::permits).
    pub(crate) fn apply(&self, builder: &mut WasiCtxBuilder) {
        let listen = self.clone();
        builder
            .allow_tcp(!self.ports.is_empty())
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(move |address, use_| {
                let permitted = listen.permits(address, use_);
                Box::pin(async move { permitted })
            });
    }

    /// Whether a guest may use `address` for `use_`.
    fn permits(&self, address: SocketAddr, use_: SocketAddrUse) -> bool {
        match use_ {
            SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => {
                self.ports.contains(&address.port())
                    && (address.ip().is_unspecified() || address.ip() == self.node_ip)
            }
            // A client of a listener it was allowed to open.
            SocketAddrUse::TcpAccept => true,
            SocketAddrUse::TcpConnect
            | SocketAddrUse::UdpBind
            | SocketAddrUse::UdpSend
            | SocketAddrUse::UdpReceive => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_ports_on_the_nodes_address_may_be_listened_on() {
        let listen = Listen {
            ports: vec![8080],
            node_ip: IpAddr::from([10, 0, 0, 7]),
        };
        let at = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        assert!(listen.permits(at([0, 0, 0, 0], 8080), SocketAddrUse::TcpBind));
        assert!(listen.permits(at([10, 0, 0, 7], 8080), SocketAddrUse::TcpListen));
        assert!(listen.permits(at([192, 0, 2, 1], 50000), SocketAddrUse::TcpAccept));
        for (address, use_) in [
            (at([0, 0, 0, 0], 8081), SocketAddrUse::TcpBind),
            (at([0, 0, 0, 0], 0), SocketAddrUse::TcpBind),
            (at([127, 0, 0, 1], 8080), SocketAddrUse::TcpBind),
            (at([10, 0, 0, 7], 8080), SocketAddrUse::TcpConnect),
            (at([0, 0, 0, 0], 8080), SocketAddrUse::UdpBind),
            (at([10, 0, 0, 7], 53), SocketAddrUse::UdpSend),
        ] {
            assert!(!listen.permits(address, use_), "{address} {use_:?}");
        }
    }
}
