//! One connection, many requests: HTTP/2 streams interleaved on one connection and HTTP/1.1
//! requests one after another on a kept-alive one never see each other's context.

use std::collections::HashSet;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, hs256, lines_of, lines_where, serve};

/// Streams sent at once on the one HTTP/2 connection, each with a user of its own: half
/// `/users/me`, half the streamed `/stream`.
const STREAMS: u64 = 1_000;

/// What the client saw of one request.
struct Seen {
    status: StatusCode,
    version: Version,
    request_id: String,
    body: String,
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Seen {
    let status = response.status();
    let version = response.version();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id on the response")
        .to_owned();
    let body = response.into_body().collect().await.expect("the whole body").to_bytes();
    Seen { status, version, request_id, body: String::from_utf8_lossy(&body).into_owned() }
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", hs256(TEST_SECRET, &claims(user)))
}

/// The user the `n`th stream sends a token for. Not a number, so no user in the
/// database: each answer is a 404 without a query (five hundred queries at once would queue
/// for the example's one SQLite connection, and this test is about the connection the
/// requests share, not that one).
fn user_of(n: u64) -> String {
    format!("h2-user-{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection_keep_their_own_id_and_user() {
    let addr = serve(example_app().await).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Prior knowledge: HTTP/2 from the first byte, no upgrade (h2c).
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(connection);

    let tokens: Vec<String> = (0..STREAMS).map(|n| bearer(&user_of(n))).collect();
    let calls: Vec<_> = (0..STREAMS)
        .map(|n| {
            let mut sender = sender.clone();
            let token = tokens[n as usize].clone();
            tokio::spawn(async move {
                let me = n % 2 == 0;
                let (path, id) =
                    if me { ("/users/me", format!("h2-me-{n}")) } else { ("/stream", format!("h2-stream-{n}")) };
                let request = Request::get(format!("http://{addr}{path}"))
                    .header("x-request-id", &id)
                    .header("authorization", token);
                sender.ready().await.expect("the connection is up");
                let response = sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.expect("sent");
                let seen = read(response).await;
                assert_eq!(seen.version, Version::HTTP_2);
                assert_eq!(seen.request_id, id, "each stream gets its own id back");
                if me {
                    assert_eq!(seen.status, 404, "{}", seen.body);
                    let body: Value = serde_json::from_str(&seen.body).expect("a JSON error");
                    assert_eq!(body["request_id"], id.as_str(), "the error body names this stream's id");
                } else {
                    assert_eq!(seen.status, 200);
                    assert_eq!(seen.body, "chunk 0\nchunk 1\nchunk 2\n");
                }
                (n, id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.expect("the call task"));
    }

    for (n, id) in &ids {
        let access = access_lines_of(id).await;
        assert_eq!(access.len(), 1, "{access:?}");
        let lines = lines_of(id);
        let user = user_of(*n);
        if n % 2 == 0 {
            // The handler's line, the 404's, the access line.
            assert_eq!(lines.len(), 3, "{lines:#?}");
            assert!(lines.iter().any(|l| l["message"] == "loading the current user"), "{lines:#?}");
            for line in &lines {
                assert_eq!(line["user_id"], user.as_str(), "{line}");
                assert_eq!(line["path"], "/users/me", "{line}");
            }
        } else {
            // Three chunks, polled after the handler returned, and the access line.
            assert_eq!(lines.len(), 4, "{lines:#?}");
            assert_eq!(lines.iter().filter(|l| l["message"] == "chunk sent").count(), 3, "{lines:#?}");
            for line in &lines {
                assert_eq!(line["user_id"], user.as_str(), "{line}");
                assert_eq!(line["path"], "/stream", "{line}");
            }
        }
    }
    // Nothing else of this test was written under ids it did not send (a swapped id would
    // have shown up as a missing or extra line above, a mangled one here).
    let sent: HashSet<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    let stray = lines_where(|l| {
        l["request_id"].as_str().is_some_and(|id| id.starts_with("h2-me-") || id.starts_with("h2-stream-"))
            && !sent.contains(l["request_id"].as_str().unwrap())
    });
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test]
async fn requests_kept_alive_on_one_http1_connection_leak_nothing_into_the_next() {
    let addr = serve(example_app().await).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let first = bearer("1");
    let second = bearer("2");

    let mut sent = Vec::new();
    for i in 0..200u32 {
        // User 1, anonymous, user 2, anonymous, …; one anonymous request in five is streamed.
        let (path, token, user) = match i % 4 {
            0 => ("/users/me", Some(&first), Some("1")),
            2 => ("/users/me", Some(&second), Some("2")),
            3 if i % 20 == 3 => ("/stream", None, None),
            _ => ("/health", None, None),
        };
        let id = format!("keepalive-{i}");
        let mut request = Request::get(path).header("host", addr.to_string()).header("x-request-id", &id);
        if let Some(token) = token {
            request = request.header("authorization", token.as_str());
        }
        // `ready` fails if the server closed the connection: every request rides the same one.
        sender.ready().await.expect("the connection is still open");
        let seen = read(sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.expect("sent")).await;
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.status, 200, "{path}: {}", seen.body);
        assert_eq!(seen.request_id, id);
        if let Some(user) = user {
            let body: Value = serde_json::from_str(&seen.body).expect("the user as JSON");
            assert_eq!(body["id"].to_string(), user, "the token's user answered");
        }
        sent.push((id, path, user));
    }

    for (id, path, user) in &sent {
        let access = access_lines_of(id).await;
        assert_eq!(access.len(), 1, "{access:?}");
        let lines = lines_of(id);
        let expected = match *path {
            "/users/me" => 4, // the handler's two lines (INFO, DEBUG), the query's, the access line
            "/stream" => 4,   // three chunks and the access line
            _ => 1,           // the access line
        };
        assert_eq!(lines.len(), expected, "{id} {path}: {lines:#?}");
        for line in &lines {
            assert_eq!(line["path"], *path, "{line}");
            match user {
                Some(user) => assert_eq!(line["user_id"], *user, "{line}"),
                None => assert!(line.get("user_id").is_none(), "the previous request's user leaked: {line}"),
            }
        }
    }
}

#[tokio::test]
async fn the_example_binary_speaks_h2c_with_prior_knowledge() {
    let (child, stdout, addr) = crate::example_binary::start_example(&[]);
    let (lines, reader) = crate::example_binary::watch_lines(stdout);

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::get(format!("http://{addr}/stream"))
        .header("x-request-id", "bin-h2c-1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let seen = read(sender.send_request(request).await.expect("sent")).await;
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.status, 200);
    assert_eq!(seen.request_id, "bin-h2c-1");
    assert_eq!(seen.body, "chunk 0\nchunk 1\nchunk 2\n");

    let of_request =
        || -> Vec<Value> { lines.lock().unwrap().iter().filter(|l| l["request_id"] == "bin-h2c-1").cloned().collect() };
    crate::example_binary::wait_for("the h2c request's access line", || {
        of_request().iter().any(|l| l["target"] == "reqscope::access")
    })
    .await;
    crate::example_binary::stop(child).await;
    crate::example_binary::until_stdout_ends(reader).await;
    let mine = of_request();
    assert_eq!(mine.len(), 4, "three chunks and the access line: {mine:#?}");
    assert!(mine.iter().all(|l| l["path"] == "/stream" && l["client_ip"] == "127.0.0.1"), "{mine:#?}");
}
