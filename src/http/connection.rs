//! The HTTP listener's connections: accepted, served (HTTP/1.1 and HTTP/2 cleartext), and closed
//! when a client holds one without using it.
//!
//! `axum::serve` has neither a header-read nor an idle timeout: a client trickling its headers a
//! byte a second, or a thousand keep-alive connections left open, stay forever. Here each
//! connection has a watcher that closes it when
//! - it has started sending a request but has not finished its headers within
//!   `header_read_timeout` (counted from the request's first byte), or
//! - no request has been in progress for `idle_timeout` (keep-alive connections kept longer than
//!   a load balancer's own idle timeout, so that the balancer, not the server, closes them).
//!
//! A request in progress (its handler running or its response being written) is never cut here:
//! slow bodies are bounded by the body-read timeout, work by the request timeout. On shutdown
//! every connection is asked to finish its request in progress and close; [`serve`] returns when
//! none is left.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::{Error, Unparsable};
use crate::http::error::ErrorBody;

/// How long a connection may go without a request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// From a request's first byte to the end of its headers.
    pub header_read: Duration,
    /// With no request in progress.
    pub idle: Duration,
}

/// What one connection is doing, for its watcher.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response has not been written yet.
    in_progress: usize,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// When bytes of the next request's head began to arrive.
    head_since: Option<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                idle_since: Instant::now(),
                head_since: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        let mut state = self.state();
        if state.in_progress == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request's headers were read; it is in progress until the returned guard drops (with
    /// the response body, once written).
    fn begin(self: &Arc<Self>) -> InProgress {
        let mut state = self.state();
        state.in_progress += 1;
        state.head_since = None;
        drop(state);
        self.changed.notify_one();
        InProgress(Arc::clone(self))
    }

    /// When the connection is to be closed if nothing changes; `None` while a request runs.
    fn deadline(&self, timeouts: ConnectionTimeouts) -> Option<Instant> {
        let state = self.state();
        if state.in_progress > 0 {
            return None;
        }
        Some(match state.head_since {
            Some(since) => since + timeouts.header_read,
            None => state.idle_since + timeouts.idle,
        })
    }

    /// Resolves once the connection has outlived its deadline.
    async fn expired(&self, timeouts: ConnectionTimeouts) {
        loop {
            let changed = self.changed.notified();
            match self.deadline(timeouts) {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// One request in progress on a connection.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_progress -= 1;
        if state.in_progress == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// The socket, telling its connection's [`Activity`] when bytes arrive, and writing our JSON error
/// in place of the HTTP library's own empty one.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    replacing: Option<Replacement>,
}

/// Our answer, being written in place of bytes the HTTP library asked to write.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// How many of the library's bytes it stands for (reported written once it is).
    stands_for: usize,
}

/// hyper answers a request it cannot parse itself, before any route sees it: 400 (malformed),
/// 414 (URI too long) or 431 (headers too large), each with an empty body. Such an answer is
/// recognised as it is written: one of those statuses with `content-length: 0`, where every
/// error of ours has a JSON body.
fn library_refusal(head: &[u8]) -> Option<Unparsable> {
    let text = std::str::from_utf8(head).ok()?;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?;
    let refusal = match status.get(..4)? {
        "400 " => Unparsable::Malformed,
        "414 " => Unparsable::UriTooLong,
        "431 " => Unparsable::HeadersTooLarge,
        _ => return None,
    };
    let head_end = text.find("\r\n\r\n")?;
    let empty = text[..head_end + 2]
        .to_ascii_lowercase()
        .contains("\r\ncontent-length: 0\r\n");
    (empty && head_end + 4 == text.len()).then_some(refusal)
}

/// The whole HTTP/1.1 answer for a request the library refused: our JSON error body.
fn our_answer(refusal: Unparsable) -> Vec<u8> {
    let error = Error::Unparsable(refusal);
    let body = serde_json::to_vec(&ErrorBody::from(&error)).unwrap_or_default();
    let status = error.status();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

impl Watched {
    /// Starts replacing `data` when it is the library's own refusal.
    fn intercept(&mut self, data: &[u8]) {
        if self.replacing.is_none()
            && let Some(refusal) = library_refusal(data)
        {
            tracing::debug!(
                ?refusal,
                "answering an unparsable request with a JSON error"
            );
            self.replacing = Some(Replacement {
                bytes: our_answer(refusal),
                written: 0,
                stands_for: data.len(),
            });
        }
    }

    /// Writes the replacement, if any; `None` when there is none.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<usize>>> {
        let replacement = self.replacing.as_mut()?;
        while replacement.written < replacement.bytes.len() {
            match Pin::new(&mut self.stream)
                .poll_write(cx, &replacement.bytes[replacement.written..])
            {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => replacement.written += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let stands_for = replacement.stands_for;
        self.replacing = None;
        Some(Poll::Ready(Ok(stands_for)))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.intercept(data);
        match this.poll_replacement(cx) {
            Some(poll) => poll,
            None => Pin::new(&mut this.stream).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // The library's refusals are one short head; longer writes are never one.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.replacing.is_none() && total <= 1024 {
            let head: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            this.intercept(&head);
        }
        match this.poll_replacement(cx) {
            Some(poll) => poll,
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets each
/// connection finish its request in progress, and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: ConnectionTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection holds a sender; `recv` answers `None` once all of them have closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            app.clone(),
            timeouts,
            stop_rx.clone(),
            open_tx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

async fn connection(
    stream: TcpStream,
    app: Router,
    timeouts: ConnectionTimeouts,
    mut stop: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
        replacing: None,
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let in_progress = activity.begin();
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                // The body holds the request's count until it is written (dropped).
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &in_progress;
                        frame
                    }))
                }))
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = activity.expired(timeouts) => {
                tracing::debug!("closing a connection that sent no complete request in time");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = changed.is_err() || *stop.borrow();
                if stopping {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: ConnectionTimeouts = ConnectionTimeouts {
        header_read: Duration::from_secs(2),
        idle: Duration::from_secs(10),
    };

    #[test]
    fn only_the_librarys_empty_refusals_are_replaced() {
        let hyper = |status: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 16:00:00 GMT\r\n\r\n"
            )
        };
        assert_eq!(
            library_refusal(hyper("400 Bad Request").as_bytes()),
            Some(Unparsable::Malformed)
        );
        assert_eq!(
            library_refusal(hyper("414 URI Too Long").as_bytes()),
            Some(Unparsable::UriTooLong)
        );
        assert_eq!(
            library_refusal(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ndate: x\r\ncontent-length: 0\r\n\r\n"
            ),
            Some(Unparsable::HeadersTooLarge)
        );
        // Ours: a body; another status; a head followed by body bytes.
        assert_eq!(
            library_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n"),
            None
        );
        assert_eq!(library_refusal(hyper("404 Not Found").as_bytes()), None);
        assert_eq!(
            library_refusal(format!("{}{{}}", hyper("400 Bad Request")).as_bytes()),
            None
        );

        let answer = String::from_utf8(our_answer(Unparsable::HeadersTooLarge)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_what_the_connection_does() {
        let activity = Activity::new();
        let opened = Instant::now();
        assert_eq!(activity.deadline(TIMEOUTS), Some(opened + TIMEOUTS.idle));

        tokio::time::advance(Duration::from_secs(1)).await;
        activity.read();
        let head = Instant::now();
        assert_eq!(
            activity.deadline(TIMEOUTS),
            Some(head + TIMEOUTS.header_read)
        );

        let request = activity.begin();
        assert_eq!(
            activity.deadline(TIMEOUTS),
            None,
            "a request in progress is never cut"
        );
        activity.read();
        assert_eq!(
            activity.deadline(TIMEOUTS),
            None,
            "body bytes are not a new head"
        );

        tokio::time::advance(Duration::from_secs(60)).await;
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.deadline(TIMEOUTS), Some(ended + TIMEOUTS.idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_expires_after_the_header_timeout() {
        let activity = Activity::new();
        activity.read();
        let started = Instant::now();
        activity.expired(TIMEOUTS).await;
        assert_eq!(Instant::now() - started, TIMEOUTS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_started_before_the_deadline_holds_the_connection() {
        let activity = Activity::new();
        let watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { activity.expired(TIMEOUTS).await })
        };
        tokio::time::advance(Duration::from_secs(5)).await;
        let request = activity.begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        drop(request);
        let ended = Instant::now();
        watcher.await.unwrap();
        assert_eq!(Instant::now() - ended, TIMEOUTS.idle);
    }
}
