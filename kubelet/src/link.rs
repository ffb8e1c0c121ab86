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

/// Whether `err` is the API server's answer: an error status it sent (kube takes the code
/// from a JSON body when there is one, so a gateway's `{}` comes with code 0, and is no
/// answer), not a gateway's 502, 503 or 504.
pub fn answered(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if matches!(status.code, 400..=501 | 505..=599))
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

    /// A request failed with `err`: an answer from the API server, even a refusal or a
    /// "too many requests", is a link that works, and only a request that got no answer
    /// is a link that is down (else a node refused by RBAC or throttled by the server would
    /// see the link come back with each success and resend every pod's status each time).
    /// A 502, 503 or 504 is no answer: it is what a proxy or load balancer in front of an
    /// API server it cannot reach says. Returns what [`Self::failed`] returns, and false
    /// for an answer.
    pub fn failed_with(&self, err: &kube::Error) -> bool {
        if answered(err) {
            self.succeeded();
            false
        } else {
            self.failed()
        }
    }

    /// As [`Self::failed_with`], for a watch's error.
    pub fn watch_failed_with(&self, err: &kube::runtime::watcher::Error) -> bool {
        use kube::runtime::watcher::Error;
        match err {
            Error::InitialListFailed(err)
            | Error::WatchStartFailed(err)
            | Error::WatchFailed(err) => self.failed_with(err),
            Error::WatchError(_) | Error::NoResourceVersion => {
                self.succeeded();
                false
            }
        }
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

    #[tokio::test]
    async fn an_answer_even_a_refusal_is_a_link_that_works() {
        let answer = |code| {
            kube::Error::Api(
                kube::core::Status::failure("no", "Forbidden")
                    .with_code(code)
                    .boxed(),
            )
        };
        let unreachable = || kube::Error::Service(Box::new(std::io::Error::other("refused")));
        let link = Link::default();
        let mut restored = link.watch();

        assert!(!link.failed_with(&answer(403)), "a refusal is no outage");
        assert!(link.failed_with(&unreachable()), "no answer is");
        assert!(!link.failed_with(&answer(429)));
        tokio::time::timeout(Duration::from_secs(1), restored.restored())
            .await
            .expect("an answer after an outage restores the link");
        assert!(!link.failed_with(&answer(409)));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), restored.restored())
                .await
                .is_err(),
            "answers while up restore nothing"
        );
        assert!(
            link.failed_with(&answer(503)),
            "a gateway that cannot reach the API server is no answer"
        );
        assert!(!link.failed_with(&answer(403)));
        assert!(
            link.failed_with(&answer(0)),
            "a JSON body that is no Status (a gateway's) is no answer"
        );
        assert!(!link.failed_with(&answer(404)));
        let gone = kube::runtime::watcher::Error::WatchError(
            kube::core::Status::failure("too old", "Expired")
                .with_code(410)
                .boxed(),
        );
        assert!(!link.watch_failed_with(&gone));
        let dropped = kube::runtime::watcher::Error::WatchFailed(unreachable());
        assert!(link.watch_failed_with(&dropped), "a dropped watch is");
    }
}
