//! WebSocket connections that keep the request context of their upgrade request.
//!
//! ```
//! use axum::extract::ws::{Message, WebSocketUpgrade};
//! use axum::response::Response;
//! use axum::{Router, routing::get};
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::websocket::{ContextWebSocket, WebSocketUpgradeExt};
//!
//! async fn ws(upgrade: WebSocketUpgrade) -> Response {
//!     // Instead of `on_upgrade`, which would run `echo` in a task without the context.
//!     upgrade.on_upgrade_in_context(echo)
//! }
//!
//! async fn echo(mut socket: ContextWebSocket) {
//!     while let Some(Ok(message)) = socket.recv().await {
//!         if let Message::Text(text) = message {
//!             // Stamped with the upgrade request: request_id, trace_id, user_id, …
//!             tracing::info!(bytes = text.len(), "message received");
//!             if socket.send(Message::Text(text)).await.is_err() {
//!                 break;
//!             }
//!         }
//!     }
//! } // Here: one `reqscope::access` line, "websocket closed".
//!
//! let app: Router = Router::new().route("/ws", get(ws)).layer(RequestContextLayer::new());
//! ```
//!
//! axum's [`WebSocketUpgrade::on_upgrade`] runs its callback in a task of its own, spawned
//! with a bare `tokio::spawn`: without the request context, so none of the connection's lines
//! would say which request (and which user) opened it. [`WebSocketUpgradeExt::on_upgrade_in_context`]
//! captures the context at handler time and runs the callback inside it:
//!
//! - **Every line of the connection is stamped** with the upgrade request's `request_id`,
//!   `trace_id`, `user_id` (when the auth layer ran before the handler), route, client ip…, in
//!   the callback and in tasks it starts with `reqscope::spawn`, for as long as the
//!   connection lasts — long after the `101 Switching Protocols` response and its access line.
//! - **The connection is a span of its own**, `websocket` (target `reqscope::request`, so the
//!   filters that keep the request span keep it too), a child of the request span. It carries
//!   a fork of the request's context ([`RequestContext::fork`]: same id, trace and user) that
//!   lives until the connection closes: code that hops threads with the span but not the
//!   task-local — sqlx-sqlite's worker — stays stamped after the upgrade request has finished.
//!   Context changes made during the connection (`ctx.set_field(…)`) stay with it.
//! - **One line when it closes**, target `reqscope::access`, message `websocket closed`:
//!   `duration_ms` (since the upgrade), `messages_received`, `messages_sent` (text and binary
//!   messages; pings, pongs and close frames are not counted):
//!
//!   ```json
//!   {"level":"INFO","target":"reqscope::access","message":"websocket closed","request_id":"…",
//!    "trace_id":"…","span_id":"…","user_id":"7","method":"GET","path":"/ws",…,
//!    "duration_ms":5123.4,"messages_received":3,"messages_sent":3}
//!   ```
//!
//!   It is written when the callback returns — after a close frame, or when the client
//!   vanished without one (`recv` then gives an error or `None`). When the callback never
//!   returns (its future is dropped when the runtime shuts down) or panics, the line is
//!   written all the same, with `"aborted":true`; a panic also gets an ERROR line (target
//!   `reqscope::panic`, message `websocket handler panicked`) with its message and location.
//!
//! The callback gets a [`ContextWebSocket`]: axum's [`WebSocket`] that counts the messages
//! for the close line. It has the same `recv` / `send`, and is a `Stream` and a `Sink`, so
//! `futures_util::StreamExt::split` gives the two halves (they count into the same line; the
//! line is written when the callback returns, so a callback that moves the halves into tasks
//! of their own should wait for them).
//!
//! Outside a request context (no `RequestContextLayer`) it works the same, without context:
//! the lines carry only the fields of the spans current in the handler.
//!
//! A failed upgrade (the client left before the protocol switched) never calls the callback
//! and writes no close line; axum's `on_failed_upgrade` callback sees it, as before.
//!
//! # Other upgraded connections
//!
//! Any other protocol served over an HTTP upgrade (hyper's `hyper::upgrade::on`: a tunnel,
//! a custom protocol) has the same pitfall — the upgraded connection is served in a task that
//! does not inherit task-locals — and the propagation helpers of the core solve it:
//! `reqscope::spawn` (or `tokio::spawn(fut.in_current_context())`, with
//! `reqscope::FutureExt`) for the task, `reqscope::bind` for a synchronous callback of a
//! protocol library that runs on a thread of its own:
//!
//! ```
//! use axum::extract::Request;
//! use axum::http::StatusCode;
//! use reqscope_core::FutureExt as _;
//!
//! async fn tunnel(mut req: Request) -> StatusCode {
//!     let on_upgrade = hyper::upgrade::on(&mut req);
//!     // Captures the context (and the current span) now, in the handler.
//!     tokio::spawn(
//!         async move {
//!             match on_upgrade.await {
//!                 Ok(_upgraded) => tracing::info!("tunnel open"), // stamped with the request
//!                 Err(error) => tracing::warn!(%error, "upgrade failed"),
//!             }
//!         }
//!         .in_current_context(),
//!     );
//!     StatusCode::SWITCHING_PROTOCOLS // with the protocol's `upgrade` headers
//! }
//! # let _ = axum::Router::<()>::new().route("/tunnel", axum::routing::get(tunnel));
//! ```
//!
//! Those lines are stamped through the task-local; unlike `on_upgrade_in_context`, that
//! leaves the span fallback to the request span, which stops stamping once the upgrade
//! response has ended.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::ws::{Message, OnFailedUpgrade, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_core::Stream;
use futures_core::stream::FusedStream;
use futures_sink::Sink;
use http::HeaderValue;
use pin_project_lite::pin_project;
use reqscope_core::__private::{install_panic_location_hook, panic_message, take_panic_location};
use reqscope_core::{Captured, FutureExt as _, InContext, REQUEST_SPAN_TARGET, RequestContext};

/// Runs a WebSocket connection inside the request context of its upgrade request; implemented
/// for axum's [`WebSocketUpgrade`]. See the [module docs](self).
pub trait WebSocketUpgradeExt: sealed::Sealed {
    /// Like [`WebSocketUpgrade::on_upgrade`], with `callback` running inside the current
    /// request context (captured now, in the handler) and a `websocket` span of its own, on
    /// a [`ContextWebSocket`]; writes one `websocket closed` line when the callback ends.
    #[must_use = "to set up the WebSocket connection, this response must be returned"]
    fn on_upgrade_in_context<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(ContextWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static;
}

impl<F: OnFailedUpgrade> WebSocketUpgradeExt for WebSocketUpgrade<F> {
    fn on_upgrade_in_context<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(ContextWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        install_panic_location_hook();
        let captured = connection_scope();
        self.on_upgrade(move |socket| {
            let counts = Arc::new(Counts::default());
            let socket = ContextWebSocket { inner: socket, counts: Arc::clone(&counts) };
            captured.run(|| {
                // Made before the callback runs: a callback that panics before returning its
                // future is reported and closes with its line (aborted) too.
                let mut close =
                    CloseLine { captured: captured.clone(), opened: Instant::now(), counts, written: false };
                match std::panic::catch_unwind(AssertUnwindSafe(|| callback(socket))) {
                    Ok(future) => Connection { inner: future.in_current_context(), close },
                    Err(payload) => close.panicked(payload),
                }
            })
        })
    }
}

/// The connection's context and span, made in the handler: a fork of the request's context,
/// which the upgrade response's end does not finish, and the `websocket` span that holds it
/// for the log layer's span fallback.
fn connection_scope() -> Captured {
    let open = || {
        let span = tracing::info_span!(target: REQUEST_SPAN_TARGET, "websocket");
        span.in_scope(Captured::current)
    };
    match RequestContext::current() {
        Some(request) => RequestContext::scope_sync(request.fork(), open),
        None => open(),
    }
}

mod sealed {
    pub trait Sealed {}
    impl<F> Sealed for axum::extract::ws::WebSocketUpgrade<F> {}
}

/// Messages counted for the close line.
#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    sent: AtomicU64,
}

/// Whether a message counts for the close line: text and binary, not control frames.
fn counted(message: &Message) -> bool {
    matches!(message, Message::Text(_) | Message::Binary(_))
}

/// axum's [`WebSocket`], counting the text and binary messages received and sent for the
/// `websocket closed` line; handed to the callback of
/// [`WebSocketUpgradeExt::on_upgrade_in_context`].
///
/// A `Stream` of received messages and a `Sink` of messages to send, like [`WebSocket`].
#[derive(Debug)]
pub struct ContextWebSocket {
    inner: WebSocket,
    counts: Arc<Counts>,
}

impl ContextWebSocket {
    /// Receives the next message; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends a message.
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        let count = counted(&message);
        self.inner.send(message).await?;
        if count {
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The selected WebSocket subprotocol, if one was chosen.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.inner.protocol()
    }

    /// Text and binary messages received so far.
    pub fn messages_received(&self) -> u64 {
        self.counts.received.load(Ordering::Relaxed)
    }

    /// Text and binary messages sent so far (accepted by the socket).
    pub fn messages_sent(&self) -> u64 {
        self.counts.sent.load(Ordering::Relaxed)
    }
}

impl Stream for ContextWebSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = ready!(Pin::new(&mut self.inner).poll_next(cx));
        if let Some(Ok(message)) = &next
            && counted(message)
        {
            self.counts.received.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(next)
    }
}

impl FusedStream for ContextWebSocket {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl Sink<Message> for ContextWebSocket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        let count = counted(&message);
        Pin::new(&mut self.inner).start_send(message)?;
        if count {
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

pin_project! {
    /// The callback's future inside the connection's context, and its close line. The
    /// fields drop in order: whatever the callback logs while it is dropped comes before the
    /// close line.
    struct Connection<F> {
        #[pin]
        inner: InContext<F>,
        close: CloseLine,
    }
}

impl<F: Future<Output = ()>> Future for Connection<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                this.close.write(false);
                Poll::Ready(())
            }
            Err(payload) => this.close.panicked(payload),
        }
    }
}

/// Writes the connection's one close line: when the callback returns, else when it is
/// dropped.
struct CloseLine {
    captured: Captured,
    opened: Instant,
    counts: Arc<Counts>,
    written: bool,
}

impl CloseLine {
    /// The task would only print it: reports the panic like a handler's, stamped, writes the
    /// close line, and goes on unwinding.
    fn panicked(&mut self, payload: Box<dyn std::any::Any + Send>) -> ! {
        let message = panic_message(&*payload);
        let location = take_panic_location().unwrap_or_else(|| "unknown".to_owned());
        self.captured.run(|| {
            tracing::error!(target: "reqscope::panic", panic = %message, location = %location, "websocket handler panicked")
        });
        self.write(true);
        std::panic::resume_unwind(payload)
    }

    fn write(&mut self, aborted: bool) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let duration_ms = self.opened.elapsed().as_micros() as f64 / 1000.0;
        let messages_received = self.counts.received.load(Ordering::Relaxed);
        let messages_sent = self.counts.sent.load(Ordering::Relaxed);
        // From here on the connection's span stops stamping, as the request span does after
        // the access line; this line is stamped all the same (task-local).
        if let Some(ctx) = self.captured.context() {
            ctx.mark_finished();
        }
        self.captured.run(|| {
            if aborted {
                tracing::info!(
                    target: "reqscope::access", duration_ms, messages_received, messages_sent, aborted = true,
                    "websocket closed"
                );
            } else {
                tracing::info!(target: "reqscope::access", duration_ms, messages_received, messages_sent, "websocket closed");
            }
        });
    }
}

impl Drop for CloseLine {
    fn drop(&mut self) {
        self.write(true);
    }
}
