//! The node's link to the cloud: a TCP relay between a wasmlet node and its API server that a
//! test can cut and restore, so the node is partitioned while the control plane (and its node
//! lifecycle controller) keeps running, as at the edge when an uplink drops.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A relay on 127.0.0.1 to one upstream address. It runs on a thread of its own, so the
/// test's runtime (blocked while kubectl runs) never stalls the node's traffic. Dropping it
/// closes every connection and stops the thread.
pub struct CloudLink {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl CloudLink {
    /// Relays connections made to the returned link's [`url`](Self::url) to `upstream`.
    pub fn to(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the link")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (up, up_rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the link's runtime")?;
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cloud-link".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = relay(listener, upstream, up_rx) => {}
                        () = thread_stop.cancelled() => {}
                    }
                });
            })
            .context("start the link's thread")?;
        Ok(Self {
            addr,
            up,
            stop,
            thread: Some(thread),
        })
    }

    /// The `https://` URL a node uses to reach its API server through the link.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Drops every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for CloudLink {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn relay(listener: TcpListener, upstream: SocketAddr, up: watch::Receiver<bool>) {
    while let Ok((client, _)) = listener.accept().await {
        if !*up.borrow() {
            // A cut link: the connection is closed at once, as a dead route resets it.
            continue;
        }
        tokio::spawn(carry(client, upstream, up.clone()));
    }
}

/// Carries one connection until either side closes it or the link is cut.
async fn carry(mut client: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}
