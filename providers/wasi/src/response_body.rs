//! A served response's body that holds the instance streaming it, so that a client that hangs
//! up mid-body takes the instance with it, while an answered request's instance may finish
//! whatever it does after its response.
//!
//! hyper drops a response's body as soon as it has written what the head promised, often
//! without polling it to its end: at once for a HEAD request or a 1xx, 204 or 304 reply, and
//! after the last of a `Content-Length`'s bytes or after the trailers. So the body's end is
//! counted here from the head, not only from hyper reaching `None`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio_util::task::AbortOnDropHandle;

/// How long an instance whose client hung up mid-body may go on (its writes now fail, so a
/// handler that checks them ends on its own) before it is stopped.
const HUNG_UP_GRACE: Duration = Duration::from_secs(2);

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

/// `response` with its body holding `guest`. `head_request`: it answers a HEAD request, so
/// hyper writes none of its body.
pub(crate) fn holding_guest<B, T: Send + 'static>(
    response: hyper::Response<B>,
    head_request: bool,
    guest: AbortOnDropHandle<T>,
) -> hyper::Response<BodyWithGuest<B, T>> {
    let status = response.status();
    let bodiless = head_request
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
                    if *promised == 0 {
                        self.ended = true;
                    }
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
        if self.ended {
            guest.detach();
            return;
        }
        // Dropped before its end: the client hung up. Without a runtime (it is shutting
        // down) the instance goes at once.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Past the grace the handle is dropped, which stops the instance.
                let _ = tokio::time::timeout(HUNG_UP_GRACE, guest).await;
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

    /// A body of one data frame that, like wasi-http's, never says it has ended.
    fn one_chunk() -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        StreamBody::new(futures::stream::iter(vec![Ok(Frame::data(
            Bytes::from_static(b"hello"),
        ))]))
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

    fn response(status: u16, content_length: Option<&str>) -> hyper::Response<impl Body + Unpin> {
        let mut response = hyper::Response::new(one_chunk());
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        if let Some(length) = content_length {
            response.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from_str(length).unwrap(),
            );
        }
        response
    }

    /// Whether the guest finished its minute of work after `drop_after` frames of the body.
    async fn finishes(
        status: u16,
        content_length: Option<&str>,
        head_request: bool,
        drop_after: usize,
        work: Duration,
    ) -> bool {
        let (guest, finished) = guest(work);
        let mut body =
            holding_guest(response(status, content_length), head_request, guest).into_body();
        for _ in 0..drop_after {
            assert!(body.frame().await.is_some());
        }
        drop(body);
        tokio::time::sleep(Duration::from_secs(120)).await;
        finished.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_written_to_its_end_leaves_the_instance_its_work_after_it() {
        let minute = Duration::from_secs(60);
        // All the Content-Length promised, and hyper dropped it without asking for more.
        assert!(finishes(200, Some("5"), false, 1, minute).await);
        // Nothing to write: a HEAD request, a 204, a 304, an empty length.
        assert!(finishes(200, None, true, 0, minute).await);
        assert!(finishes(204, None, false, 0, minute).await);
        assert!(finishes(304, None, false, 0, minute).await);
        assert!(finishes(200, Some("0"), false, 0, minute).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_before_its_end_stops_the_instance_after_a_grace() {
        let minute = Duration::from_secs(60);
        // Chunked, and the client left before the end.
        assert!(!finishes(200, None, false, 1, minute).await);
        assert!(!finishes(200, None, false, 0, minute).await);
        // Fewer bytes than the Content-Length promised.
        assert!(!finishes(200, Some("6"), false, 1, minute).await);
        // An instance that wraps up within the grace is not cut short.
        assert!(finishes(200, None, false, 1, HUNG_UP_GRACE / 2).await);
    }
}
