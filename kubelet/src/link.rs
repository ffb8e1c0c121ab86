//! Whether the node can reach the API server, as its own requests find out.
//!
//! Every loop that talks to the API server reports here. When a request succeeds after
//! failures, the link is *restored*: every pod worker sends its status again at once and the
//! node status and Lease go out, because while the node was cut off the node lifecycle
//! controller may have rewritten what the API holds, and because nothing should wait for its
//! own retry timer once the API answers.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

/// The node's view of its link to the API server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Link {
    state: Arc<watch::Sender<LinkState>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct LinkState {
    down: bool,
    /// How many times the link came back.
    restored: u64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(LinkState::default())),
        }
    }
}

impl Link {
    /// A request reached the API server.
    pub fn succeeded(&self) {
        let restored = self.state.send_if_modified(|state| {
            if state.down {
                state.down = false;
                state.restored = state.restored.wrapping_add(1);
                true
            } else {
                false
            }
        });
        if restored {
            info!("the API server answers again; sending the node's and its pods' status");
        }
    }

    /// A request could not reach the API server. Returns whether the link was thought up
    /// until now, so that only the first failure of an outage is logged loudly.
    pub fn failed(&self) -> bool {
        self.state
            .send_if_modified(|state| !std::mem::replace(&mut state.down, true))
    }

    /// A watch that resolves each time the link is restored from now on.
    pub fn watch(&self) -> Restorations {
        let rx = self.state.subscribe();
        let seen = rx.borrow().restored;
        Restorations { rx, seen }
    }
}

/// Tells its holder each time the link is restored.
#[derive(Debug)]
pub struct Restorations {
    rx: watch::Receiver<LinkState>,
    seen: u64,
}

impl Restorations {
    /// Resolves when the link is restored after the last call; never, once the agent is
    /// gone. Cancel-safe.
    pub async fn restored(&mut self) {
        loop {
            if self.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            let restored = self.rx.borrow_and_update().restored;
            if restored != self.seen {
                self.seen = restored;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_success_after_failures_is_one_restoration() {
        let link = Link::default();
        let mut restored = link.watch();
        link.succeeded();
        assert!(link.failed(), "the first failure of an outage");
        assert!(!link.failed(), "later ones are quiet");
        link.succeeded();
        tokio::time::timeout(Duration::from_secs(1), restored.restored())
            .await
            .expect("told");
        link.succeeded();
        link.failed();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), restored.restored())
                .await
                .is_err(),
            "a success while up, or a failure, restores nothing"
        );
    }
}
