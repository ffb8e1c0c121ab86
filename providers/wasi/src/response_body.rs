//! A served response's body that holds the instance streaming it, so that a client that hangs
//! up mid-body takes the instance with it, while an answered request's instance may finish
//! what it does after its response, for a while: either way its slot is given back.
//!
//! hyper drops a response's body as soon as it has written what the head promised, often
//! without polling it to its end: at once for a HEAD request, a 1xx, 204 or 304 reply, a
//! CONNECT's 2xx or a body that says it is empty, and after the last of a `Content-Length`'s
//! bytes or after the trailers. So the body's end is counted here from the head and the
//! frames, not only from hyper reaching `None`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio_util::task::AbortOnDropHandle;

use crate::serve::RESPONSE_TIMEOUT;

/// How long an instance whose client hung up mid-body may go on (its writes now fail, so a
/// handler that checks them ends on its own) before it is stopped.
const HUNG_UP_GRACE: Duration = Duration::from_secs(2);

/// How long an instance may work on after its response has ended (a log line, a call out)
/// before it is stopped: a handler stuck after answering must not hold its request slot for
/// ever. As long as a request may wait for its response.
const WORK_AFTER_RESPONSE: Duration = RESPONSE_TIMEOUT;

/// `body`, holding `guest` (the task running the instance that streams it).
/// `T: Send + 'static`: a guest left a grace is waited on by a task of its own.
pub(crate) struct BodyWithGuest<B, T: Send + 'static> {
    body: B,
    guest: Option<AbortOnDropHandle<T>>,
    /// Body bytes the head promised and hyper has not taken yet (`Content-Length`); `None`
    /// when the head does not say (chunked).
    promised: Option<u64>,
    ended: bool,
}

/// `response` to a `method` request, with its body holding `guest`.
pub(crate) fn holding_guest<B: Body, T: Send + 'static>(
    response: hyper::Response<B>,
    method: &hyper::Method,
    guest: AbortOnDropHandle<T>,
) -> hyper::Response<BodyWithGuest<B, T>> {
    let status = response.status();
    // What hyper writes no body for.
    let bodiless = method == hyper::Method::HEAD
        || (method == hyper::Method::CONNECT && status.is_success())
        || response.body().is_end_stream()
        || status.is_informational()
        || status == hyper::StatusCode::NO_CONTENT
        || status == hyper::StatusCode::NOT_MODIFIED;
    let promised = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    response.map(|body| BodyWithGuest {
        body,
        guest: Some(guest),
        promised,
        ended: bodiless || promised == Some(0),
    })
}

impl<B: Body + Unpin, T: Send + 'static> Body for BodyWithGuest<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.ended = true,
            Poll::Ready(Some(Ok(frame))) => {
                let taken = frame
                    .data_ref()
                    .map_or(0, |data| bytes::Buf::remaining(data) as u64);
                if let Some(promised) = self.promised.as_mut() {
                    *promised = promised.saturating_sub(taken);
                }
                // hyper ends the body after a frame the body says is its last, too.
                if self.promised == Some(0) || self.body.is_end_stream() {
                    self.ended = true;
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B, T: Send + 'static> Drop for BodyWithGuest<B, T> {
    fn drop(&mut self) {
        let Some(guest) = self.guest.take() else {
            return;
        };
        // Dropped before its end, the client hung up.
        let time_left = if self.ended {
            WORK_AFTER_RESPONSE
        } else {
            HUNG_UP_GRACE
        };
        // Without a runtime (it is shutting down) the instance goes at once.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Past its time the handle is dropped, which stops the instance.
                let _ = tokio::time::timeout(time_left, guest).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A body of one data frame that, like wasi-http's, never says it has ended.
    fn one_chunk() -> TestBody {
        StreamBody::new(futures::stream::iter(vec![Ok(Frame::data(
            Bytes::from_static(b"hello"),
        ))]))
        .boxed_unsync()
    }

    /// The body wasi-http gives a response whose guest never asked for one.
    fn empty() -> TestBody {
        http_body_util::Empty::new().boxed_unsync()
    }

    /// A guest that finishes its work `after` its response, and says whether it did.
    fn guest(after: Duration) -> (AbortOnDropHandle<()>, Arc<AtomicBool>) {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            flag.store(true, Ordering::SeqCst);
        });
        (AbortOnDropHandle::new(task), finished)
    }

    fn response(
        status: u16,
        content_length: Option<&str>,
        body: TestBody,
    ) -> hyper::Response<TestBody> {
        let mut response = hyper::Response::new(body);
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        if let Some(length) = content_length {
            response.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from_str(length).unwrap(),
            );
        }
        response
    }

    /// Whether a guest with `work` to do after answering `method` with `response` finished
    /// it, hyper having dropped the body after `frames` of it.
    async fn finishes(
        response: hyper::Response<TestBody>,
        method: hyper::Method,
        frames: usize,
        work: Duration,
    ) -> bool {
        let (guest, finished) = guest(work);
        let mut body = holding_guest(response, &method, guest).into_body();
        for _ in 0..frames {
            let _ = body.frame().await;
        }
        drop(body);
        tokio::time::sleep(Duration::from_secs(300)).await;
        finished.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_written_to_its_end_leaves_the_instance_time_for_its_work_after_it() {
        use hyper::Method;
        let work = WORK_AFTER_RESPONSE / 2;
        let ended = [
            // All the Content-Length promised, and hyper dropped it without asking for more.
            (response(200, Some("5"), one_chunk()), Method::GET, 1),
            // Read to its end.
            (response(200, None, one_chunk()), Method::GET, 2),
            // Nothing to write: a HEAD request, a 204, a 304, an empty length, a CONNECT's
            // 2xx, a body that says it is empty.
            (response(200, None, one_chunk()), Method::HEAD, 0),
            (response(204, None, one_chunk()), Method::GET, 0),
            (response(304, None, one_chunk()), Method::GET, 0),
            (response(200, Some("0"), one_chunk()), Method::GET, 0),
            (response(200, None, one_chunk()), Method::CONNECT, 0),
            (response(302, None, empty()), Method::GET, 0),
        ];
        for (response, method, frames) in ended {
            let head = format!("{method} {} {:?}", response.status(), response.headers());
            assert!(finishes(response, method, frames, work).await, "{head}");
        }
        // But not for ever: a handler stuck after its answer gives its slot back.
        let stuck = WORK_AFTER_RESPONSE * 2;
        assert!(!finishes(response(200, None, one_chunk()), Method::GET, 2, stuck).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_before_its_end_stops_the_instance_after_a_grace() {
        use hyper::Method;
        let work = HUNG_UP_GRACE * 2;
        // Chunked, and the client left before the end.
        assert!(!finishes(response(200, None, one_chunk()), Method::GET, 1, work).await);
        assert!(!finishes(response(200, None, one_chunk()), Method::GET, 0, work).await);
        // Fewer bytes than the Content-Length promised; a CONNECT that was refused.
        assert!(!finishes(response(200, Some("6"), one_chunk()), Method::GET, 1, work).await);
        assert!(!finishes(response(403, None, one_chunk()), Method::CONNECT, 0, work).await);
        // An instance that wraps up within the grace is not cut short.
        let quick = HUNG_UP_GRACE / 2;
        assert!(finishes(response(200, None, one_chunk()), Method::GET, 1, quick).await);
    }
}
