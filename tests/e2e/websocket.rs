//! WebSockets over real sockets: the example's `/ws` echo, and `on_upgrade_in_context` on its
//! own — every line of a connection carries its upgrade request, and one close line counts
//! its messages, however the connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use reqscope::RequestContextLayer;
use reqscope::websocket::{ContextWebSocket, WebSocketUpgradeExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::Instrument;

use crate::support::{
    TEST_SECRET, access_lines_of, claims, example_app, example_app_with_pool, hs256, lines_of, lines_where, logs,
    serve, wait_until,
};

type Client = WebSocketStream<TcpStream>;

/// Opens `ws://addr/ws` over a new TCP connection with `headers`; the socket and the request
/// id echoed on the `101`.
async fn open(addr: SocketAddr, headers: &[(&'static str, &str)]) -> (Client, String) {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("a valid URL");
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().expect("a header value"));
    }
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (socket, response) = tokio_tungstenite::client_async(request, stream).await.expect("the upgrade");
    assert_eq!(response.status(), 101);
    let id = response.headers()["x-request-id"].to_str().expect("an ASCII id").to_owned();
    (socket, id)
}

/// Sends `message` and returns the next data message the server sends back.
async fn round_trip(socket: &mut Client, message: Message) -> Message {
    socket.send(message).await.expect("send");
    next_data(socket).await
}

async fn next_data(socket: &mut Client) -> Message {
    loop {
        match socket.next().await.expect("the connection is open").expect("a message") {
            message @ (Message::Text(_) | Message::Binary(_)) => return message,
            _ => continue,
        }
    }
}

/// Closes with a close frame and reads until the server has answered it.
async fn close(mut socket: Client) {
    socket.close(None).await.expect("send the close frame");
    while let Some(Ok(_)) = socket.next().await {}
}

/// The close line of the connection opened by request `id`, once written; fails if there
/// are two.
async fn close_line_of(id: &str) -> Value {
    let closes = || -> Vec<Value> { lines_of(id).into_iter().filter(|l| l["message"] == "websocket closed").collect() };
    wait_until(&format!("the close line of {id}"), || !closes().is_empty()).await;
    let closes = closes();
    assert_eq!(closes.len(), 1, "one close line per connection: {closes:#?}");
    closes[0].clone()
}

fn received_lines_of(id: &str) -> Vec<Value> {
    lines_of(id).into_iter().filter(|l| l["message"] == "message received").collect()
}

fn assert_close_line(line: &Value, received: u64, sent: u64) {
    assert_eq!(line["target"], "reqscope::access", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["messages_received"], received, "{line}");
    assert_eq!(line["messages_sent"], sent, "{line}");
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    assert!(line["status"].is_null(), "the close line is not the upgrade's access line: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_echoed_and_every_line_carries_the_upgrade_request_and_its_user() {
    let addr = serve(example_app().await).await;
    let token = hs256(TEST_SECRET, &claims("ws-user-1"));
    let bearer = format!("Bearer {token}");
    let (mut socket, id) = open(
        addr,
        &[
            ("x-request-id", "ws-echo-1"),
            ("authorization", &bearer),
            ("traceparent", "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ],
    )
    .await;
    assert_eq!(id, "ws-echo-1", "the forwarded id is echoed on the 101");

    // The upgrade request is over (access line written, context finished) before any
    // message: what follows is stamped from the connection's own scope.
    let access = access_lines_of(&id).await;
    assert_eq!(access.len(), 1, "{access:#?}");
    assert_eq!(access[0]["message"], "request completed");
    assert_eq!(access[0]["status"], 101);
    assert_eq!(access[0]["path"], "/ws");
    assert_eq!(access[0]["user_id"], "ws-user-1");

    let texts = ["one", "two words", "ünïcode ✓"];
    for text in texts {
        assert_eq!(round_trip(&mut socket, Message::text(text)).await, Message::text(text), "echoed unchanged");
    }
    close(socket).await;

    let close = close_line_of(&id).await;
    assert_close_line(&close, 3, 3);
    assert!(close.get("aborted").is_none(), "a clean close is not aborted: {close}");
    let received = received_lines_of(&id);
    assert_eq!(
        received.iter().map(|l| l["bytes"].as_u64().unwrap()).collect::<Vec<_>>(),
        texts.iter().map(|t| t.len() as u64).collect::<Vec<_>>(),
        "one line per message, with its length: {received:#?}"
    );
    for line in received.iter().chain([&close]) {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["request_id"], "ws-echo-1", "{line}");
        assert_eq!(line["trace_id"], "5bf92f3577b34da6a3ce929d0e0e4736", "{line}");
        assert_eq!(line["span_id"], access[0]["span_id"], "the upgrade request's span in the trace: {line}");
        assert_eq!(line["user_id"], "ws-user-1", "{line}");
        assert_eq!(line["org_id"], "acme", "{line}");
        assert_eq!(line["route"], "/ws", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_without_a_close_frame_still_gets_its_close_line() {
    let addr = serve(example_app().await).await;
    let (mut socket, id) = open(addr, &[]).await;
    for text in ["first", "second"] {
        assert_eq!(round_trip(&mut socket, Message::text(text)).await, Message::text(text));
    }
    // The TCP stream goes with it: no close frame, no close handshake.
    drop(socket);

    let close = close_line_of(&id).await;
    assert_close_line(&close, 2, 2);
    assert_eq!(received_lines_of(&id).len(), 2);
    let lines = lines_of(&id);
    assert!(lines.iter().all(|l| l.get("user_id").is_none()), "no token, no user: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sockets_of_different_users_do_not_cross_talk() {
    const SOCKETS: usize = 200;
    const MESSAGES: usize = 3;
    let addr = serve(example_app().await).await;
    // Every socket is open before any sends: 200 connections live at once.
    let all_open = Arc::new(tokio::sync::Barrier::new(SOCKETS));
    let clients: Vec<_> = (0..SOCKETS)
        .map(|n| {
            let all_open = Arc::clone(&all_open);
            tokio::spawn(async move {
                let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims(&format!("crowd-user-{n}"))));
                let id = format!("ws-crowd-{n}");
                let (mut socket, echoed) = open(addr, &[("x-request-id", &id), ("authorization", &bearer)]).await;
                assert_eq!(echoed, id);
                all_open.wait().await;
                for i in 0..MESSAGES {
                    let text = format!("socket {n} message {i}");
                    assert_eq!(round_trip(&mut socket, Message::text(text.clone())).await, Message::text(text));
                }
                close(socket).await;
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a client failed");
    }

    for n in 0..SOCKETS {
        let id = format!("ws-crowd-{n}");
        let user = format!("crowd-user-{n}");
        assert_close_line(&close_line_of(&id).await, MESSAGES as u64, MESSAGES as u64);
        assert_eq!(received_lines_of(&id).len(), MESSAGES, "{id}");
        for line in lines_of(&id) {
            assert_eq!(line["user_id"], user.as_str(), "{line}");
        }
    }
    // And the other way round: every line of a crowd user carries that user's request.
    let crowd = lines_where(|l| l["user_id"].as_str().is_some_and(|u| u.starts_with("crowd-user-")));
    assert_eq!(crowd.len(), SOCKETS * (MESSAGES + 2), "per socket: the access line, the messages, the close line");
    for line in crowd {
        let n = line["user_id"].as_str().unwrap().trim_start_matches("crowd-user-");
        assert_eq!(line["request_id"], format!("ws-crowd-{n}"), "{line}");
    }
}

/// The example's `/ws` handler inside a span with a `case` field, so that its lines are
/// found even without a request id.
async fn ws_in_case_span(upgrade: WebSocketUpgrade) -> Response {
    crate::ws::ws(upgrade).instrument(tracing::info_span!("ws_case", case = "no-request-context")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_request_context_the_socket_works_and_closes_with_its_line() {
    // No `RequestContextLayer`: nothing to capture.
    let addr = serve(Router::new().route("/ws", get(ws_in_case_span))).await;
    let request = format!("ws://{addr}/ws");
    let (mut socket, response) =
        tokio_tungstenite::client_async(request, TcpStream::connect(addr).await.unwrap()).await.expect("upgrade");
    assert!(response.headers().get("x-request-id").is_none());
    assert_eq!(round_trip(&mut socket, Message::text("alone")).await, Message::text("alone"));
    assert_eq!(round_trip(&mut socket, Message::binary(vec![1, 2, 3])).await, Message::binary(vec![1, 2, 3]));
    close(socket).await;

    let of_case = || lines_where(|l| l["case"] == "no-request-context");
    wait_until("the close line without a context", || of_case().iter().any(|l| l["message"] == "websocket closed"))
        .await;
    let lines = of_case();
    assert_eq!(lines.len(), 3, "two messages and the close line, in the handler's span: {lines:#?}");
    assert!(lines.iter().all(|l| l.get("request_id").is_none()), "{lines:#?}");
    assert_eq!(lines.iter().map(|l| l["bytes"].as_u64()).collect::<Vec<_>>(), [Some(5), Some(3), None]);
    assert_close_line(&lines[2], 2, 2);
}

/// Answers every data message twice, through the `Sink` half of a split socket.
async fn twice(socket: ContextWebSocket) {
    let (mut sink, mut stream) = socket.split();
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, axum::extract::ws::Message::Text(_) | axum::extract::ws::Message::Binary(_)) {
            tracing::info!("message received");
            if sink.send(message.clone()).await.is_err() || sink.send(message).await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_socket_counts_data_messages_both_ways_and_no_control_frames() {
    let app = Router::new()
        .route("/ws", get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade_in_context(twice) }))
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let (mut socket, id) = open(addr, &[("x-request-id", "ws-split-1")]).await;
    socket.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let pong = socket.next().await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()), "axum answers the ping");
    for message in [Message::text("hello"), Message::binary(vec![0xff; 4])] {
        assert_eq!(round_trip(&mut socket, message.clone()).await, message);
        assert_eq!(next_data(&mut socket).await, message);
    }
    close(socket).await;

    assert_close_line(&close_line_of(&id).await, 2, 4);
    assert_eq!(received_lines_of(&id).len(), 2);
}

async fn claims_the_close_lines_keys(upgrade: WebSocketUpgrade) -> Response {
    reqscope::RequestContext::with(|ctx| {
        ctx.set_field("messages_sent", "a context field");
        ctx.set_field("messages_received", 1_000_i64);
    });
    crate::ws::ws(upgrade).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_field_cannot_take_the_close_lines_own_keys() {
    let app = Router::new().route("/ws", get(claims_the_close_lines_keys)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let (mut socket, id) = open(addr, &[("x-request-id", "ws-keys-1")]).await;
    assert_eq!(round_trip(&mut socket, Message::text("x")).await, Message::text("x"));
    close(socket).await;

    let close = close_line_of(&id).await;
    assert_close_line(&close, 1, 1);
    assert_eq!(close["fields.messages_sent"], "a context field", "{close}");
    assert_eq!(close["fields.messages_received"], 1_000, "{close}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_off_by_the_server_shutting_down_writes_its_close_line_aborted() {
    logs();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new().route("/ws", get(crate::ws::ws)).layer(RequestContextLayer::new());
            tokio::spawn(async move {
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
            });
            let _ = stop_rx.await;
        });
        // What the example's `main` does after its grace period: every task, the connection
        // included, is dropped mid-way.
        runtime.shutdown_timeout(Duration::from_secs(1));
    });
    let addr = addr_rx.await.expect("the server started");
    let (mut socket, id) = open(addr, &[("x-request-id", "ws-shutdown-1")]).await;
    assert_eq!(round_trip(&mut socket, Message::text("still here")).await, Message::text("still here"));
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || server.join()).await.unwrap().expect("the server thread");

    let close = close_line_of(&id).await;
    assert_close_line(&close, 1, 1);
    assert_eq!(close["aborted"], true, "{close}");
    assert!(!matches!(socket.next().await, Some(Ok(Message::Text(_)))), "the connection is gone");
}

async fn panics_on_the_first_message(mut socket: ContextWebSocket) {
    if let Some(Ok(_)) = socket.recv().await {
        panic!("the websocket handler panics on purpose");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_is_reported_stamped_and_closes_with_its_line() {
    let app = Router::new()
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade_in_context(panics_on_the_first_message) }),
        )
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let (mut socket, id) = open(addr, &[("x-request-id", "ws-panic-1")]).await;
    socket.send(Message::text("boom")).await.unwrap();
    // The server's task is gone: the connection ends without an answer.
    assert!(!matches!(socket.next().await, Some(Ok(Message::Text(_)))));

    let close = close_line_of(&id).await;
    assert_close_line(&close, 1, 0);
    assert_eq!(close["aborted"], true, "{close}");
    let lines = lines_of(&id);
    let panic = lines.iter().position(|l| l["target"] == "reqscope::panic").expect("the panic's line");
    assert_eq!(lines[panic]["level"], "ERROR");
    assert_eq!(lines[panic]["message"], "websocket handler panicked");
    assert_eq!(lines[panic]["panic"], "the websocket handler panics on purpose");
    assert!(lines[panic]["location"].as_str().unwrap().contains("tests/e2e/websocket.rs"), "{}", lines[panic]);
    let closed = lines.iter().position(|l| l["message"] == "websocket closed").unwrap();
    assert!(panic < closed, "the panic, then the close line: {lines:#?}");
}

/// Runs one statement per message on the pool (sqlx-sqlite runs it, and logs it, on its
/// worker thread, which sees the span but not the task-local).
async fn query_per_message(State(pool): State<sqlx::AnyPool>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade_in_context(move |mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let axum::extract::ws::Message::Text(text) = message {
                let n: i64 =
                    sqlx::query_scalar("SELECT length($1)").bind(text.as_str()).fetch_one(&pool).await.unwrap();
                if socket.send(axum::extract::ws::Message::text(n.to_string())).await.is_err() {
                    break;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_statements_of_a_connection_are_stamped_after_the_upgrade_request_ended() {
    let (_, pool) = example_app_with_pool().await;
    let app = Router::new().route("/ws", get(query_per_message)).layer(RequestContextLayer::new()).with_state(pool);
    let addr = serve(app).await;
    let (mut socket, id) = open(addr, &[("x-request-id", "ws-sqlite-1")]).await;
    access_lines_of(&id).await; // the upgrade request has ended
    assert_eq!(round_trip(&mut socket, Message::text("four")).await, Message::text("4"));
    assert_eq!(round_trip(&mut socket, Message::text("sixteen chars ok")).await, Message::text("16"));
    close(socket).await;

    assert_close_line(&close_line_of(&id).await, 2, 2);
    let statements = lines_of(&id)
        .into_iter()
        .filter(|l| l["target"] == "sqlx::query" && l["summary"].as_str().is_some_and(|s| s.contains("length")))
        .count();
    assert_eq!(statements, 2, "both statements, logged on sqlx's worker, carry the request id");
}
