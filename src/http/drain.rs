//! Reading what is left of a request body after an early error answer.
//!
//! A handler that refuses a request before reading its whole body (an overloaded server, a
//! `Content-Length` over the limit, an unknown model) would otherwise close the connection while
//! the client is still sending; HTTP/1.1 clients then see a reset instead of the answer. So the
//! body a handler drops unfinished is handed back here and discarded in the background, up to
//! four times the body limit and a time bound, while the answer goes out. A body that stalled
//! past the body-read timeout is not waited for: its connection closes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http::AppState;

/// Longest time spent discarding an unread body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that, dropped before its end, puts the rest in `slot`.
struct Reclaimable {
    inner: Option<Body>,
    finished: bool,
    slot: Slot,
}

impl http_body::Body for Reclaimable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.finished = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !self.finished
            && !http_body::Body::is_end_stream(&inner)
        {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        }
    }
}

/// Middleware: after an error answer, discard what the handler left of the body.
pub async fn drain_unread_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let slot = Slot::default();
    let (parts, body) = request.into_parts();
    let body = Body::new(Reclaimable {
        inner: Some(body),
        finished: false,
        slot: Arc::clone(&slot),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && status != StatusCode::REQUEST_TIMEOUT
    {
        let rest = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rest) = rest {
            let limit = state.limits.body_limit.saturating_mul(4);
            tokio::spawn(tokio::time::timeout(DRAIN_TIME, discard(rest, limit)));
        }
    }
    response
}

/// Reads and drops frames until the end of the body or `limit` bytes.
async fn discard(mut body: Body, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > limit {
                return;
            }
        }
    }
}
