//! The WebSocket stacks: an echo on `GET /ws`, bare axum and with the request context on
//! the connection (`on_upgrade_in_context`) and one stamped line per message.

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use reqscope::RequestContextLayer;
use reqscope::logging::{LogLayer, NonBlocking};
use tracing_subscriber::prelude::*;

use crate::stacks;

/// The example server's own `/ws` handler, so that the row measures what the example serves.
#[path = "../../../examples/api/ws.rs"]
mod example_ws;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsStack {
    /// axum's WebSocket alone, no output.
    Bare,
    /// `RequestContextLayer`, the connection in the upgrade's context, one line per message.
    ContextLog,
}

impl WsStack {
    pub const NAMES: [&'static str; 2] = ["ws-bare", "ws-context-log"];
    const ALL: [WsStack; 2] = [WsStack::Bare, WsStack::ContextLog];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stack| stack.name() == name)
    }

    pub fn router(self, writer: NonBlocking) -> Result<Router, String> {
        Ok(match self {
            WsStack::Bare => Router::new().route("/ws", get(bare)),
            WsStack::ContextLog => {
                stacks::init(tracing_subscriber::registry().with(LogLayer::new().with_writer(writer)))?;
                Router::new().route("/ws", get(example_ws::ws)).layer(RequestContextLayer::new())
            }
        })
    }
}

async fn bare(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_)) && socket.send(message).await.is_err() {
                break;
            }
        }
    })
}
