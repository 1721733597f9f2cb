//! `GET /ws`: a WebSocket echo. Every text (or binary) message comes back unchanged and logs
//! one line, stamped with the upgrade request — its id, its trace and, when the upgrade
//! carried a valid bearer token, the user — long after the `101` response; the connection's
//! end logs one `websocket closed` line with its duration and message counts.

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::Response;
use reqscope::websocket::{ContextWebSocket, WebSocketUpgradeExt};

pub async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade_in_context(echo)
}

async fn echo(mut socket: ContextWebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let bytes = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(data) => data.len(),
            // axum answers pings itself; a close frame ends the stream.
            _ => continue,
        };
        tracing::info!(bytes, "message received");
        if socket.send(message).await.is_err() {
            break;
        }
    }
}
