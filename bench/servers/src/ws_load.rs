//! `bench-server ws-load`: the WebSocket rows' load client. `connections` WebSockets to
//! `/ws`, each sending a small text message and awaiting its echo before the next, for
//! `seconds`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::latency;

pub async fn run(addr: SocketAddr, seconds: u64, connections: usize, token: String) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut request = format!("ws://{addr}/ws").into_client_request().map_err(|e| e.to_string())?;
        // The upgrade carries the same header as the HTTP rows' requests.
        let bearer = format!("Bearer {token}").parse().map_err(|_| "bad TOKEN")?;
        request.headers_mut().insert("authorization", bearer);
        let (socket, _) =
            tokio_tungstenite::connect_async(request).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tasks.push(tokio::spawn(echoes(socket, deadline)));
    }
    let mut micros = Vec::new();
    for task in tasks {
        micros.extend(task.await.map_err(|e| e.to_string())??);
    }
    latency::report("messages", seconds, &mut micros);
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection's loop: the round trip of each echoed message, in µs; then a close.
async fn echoes(mut socket: Socket, deadline: Instant) -> Result<Vec<f64>, String> {
    let mut micros = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        socket.send(Message::text("hello, echo")).await.map_err(|e| e.to_string())?;
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == "hello, echo" => {}
            other => return Err(format!("expected the echo, got {other:?}")),
        }
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    // A clean close, so that the server's connection ends (and logs its close line).
    let _ = socket.close(None).await;
    Ok(micros)
}
