//! A client-side limit on the node's API requests, as the kubelet's `kubeAPIQPS` and
//! `kubeAPIBurst` set: a token bucket that every request takes a token from before it is
//! sent. Without it, 1,000 pods starting or retrying together send as fast as the node can,
//! and the API server, which serves every node, takes the whole burst.
//!
//! The bucket is governor's (GCRA, lock-free); the wait is a tokio timer, so a request held
//! back costs a timer entry, not a thread.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tower::{Layer, Service};

/// The kubelet's defaults (50 and 100 since Kubernetes 1.27) are sized for its 110 pods; a
/// wasmlet node is built to run 1,000, and each start costs a status patch, a token request
/// and its events. The same budget per pod, scaled to 1,000 pods, lets a full node start in
/// well under a minute while still bounding a storm of retries.
pub const DEFAULT_QPS: u32 = 500;
/// See [`DEFAULT_QPS`].
pub const DEFAULT_BURST: u32 = 1000;

/// A token bucket on the monotonic clock; [`ApiRateLimit::bucket`] makes one.
pub type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock>;

/// Requests per second on average, and how many may go at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRateLimit {
    /// The sustained rate.
    pub qps: NonZeroU32,
    /// The bucket's size.
    pub burst: NonZeroU32,
}

impl Default for ApiRateLimit {
    fn default() -> Self {
        Self {
            qps: NonZeroU32::new(DEFAULT_QPS).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(DEFAULT_BURST).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl ApiRateLimit {
    /// A bucket that hands out tokens at this rate: `check()` takes one if there is one.
    pub fn bucket(self) -> Bucket {
        RateLimiter::direct_with_clock(
            Quota::per_second(self.qps).allow_burst(self.burst),
            MonotonicClock,
        )
    }
}

/// Takes a token from `bucket`, or says how long until it has one.
pub fn take(bucket: &Bucket) -> Result<(), Duration> {
    bucket
        .check()
        .map_err(|not_until| not_until.wait_time_from(MonotonicClock.now()))
}

/// The layer: every service it wraps shares one bucket.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Bucket>,
}

impl RateLimitLayer {
    /// A layer whose services together send at most `limit`.
    pub fn new(limit: ApiRateLimit) -> Self {
        Self {
            bucket: Arc::new(limit.bucket()),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            token: false,
        }
    }
}

/// A service that is ready only once it holds a token for its next request.
pub struct RateLimited<S> {
    inner: S,
    bucket: Arc<Bucket>,
    /// The timer until the bucket has a token again.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a token was taken for the next call.
    token: bool,
}

impl<S, R> Service<R> for RateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.token {
            if let Some(wait) = &mut self.wait {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match take(&self.bucket) {
                Ok(()) => self.token = true,
                Err(delay) => self.wait = Some(Box::pin(tokio::time::sleep(delay))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        // Tower calls only after poll_ready said yes, which took the token.
        self.token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tower::ServiceExt;

    use super::*;

    fn limit(qps: u32, burst: u32) -> ApiRateLimit {
        ApiRateLimit {
            qps: NonZeroU32::new(qps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    /// Sends `count` requests through `service`, one after another, and returns when each
    /// went out, from the first.
    async fn send_times<S: Service<u32, Response = u32>>(
        service: &mut S,
        count: u32,
    ) -> Vec<Duration>
    where
        S::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let mut times = Vec::new();
        for i in 0..count {
            let answer = service.ready().await.unwrap().call(i).await.unwrap();
            assert_eq!(answer, i);
            times.push(start.elapsed());
        }
        times
    }

    #[tokio::test]
    async fn a_burst_goes_at_once_and_the_rest_at_the_rate() {
        let layer = RateLimitLayer::new(limit(20, 3));
        let mut service = layer.layer(tower::service_fn(|n: u32| async move { Ok::<_, ()>(n) }));
        let times = send_times(&mut service, 6).await;
        // Three tokens in the bucket; then one every 50 ms.
        assert!(
            times[2] < Duration::from_millis(40),
            "the burst waited: {times:?}"
        );
        assert!(
            times[5] >= Duration::from_millis(140),
            "past the burst, 20 per second: {times:?}"
        );
    }

    #[tokio::test]
    async fn services_from_one_layer_share_one_bucket() {
        let layer = RateLimitLayer::new(limit(10, 1));
        let echo = || tower::service_fn(|n: u32| async move { Ok::<_, ()>(n) });
        let (mut first, mut second) = (layer.layer(echo()), layer.layer(echo()));
        let start = Instant::now();
        send_times(&mut first, 1).await;
        send_times(&mut second, 1).await;
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "the second service's request took the first's token: {:?}",
            start.elapsed()
        );
    }
}
