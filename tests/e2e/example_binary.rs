//! The example server as a user runs it: stdout carries only JSON lines, all stamped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::fetch;

/// `cargo test` builds the examples next to the test binaries' `deps` folder.
pub(crate) fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Starts the example binary on a free port with the test secret and `env`, and waits until
/// it listens.
pub(crate) fn start_example(env: &[(&str, &str)]) -> (KillOnDrop, BufReader<std::process::ChildStdout>, SocketAddr) {
    let path = example_path("api");
    assert!(path.exists(), "{} is missing: run `cargo test --workspace`, which builds the example", path.display());
    let mut command = Command::new(path);
    command
        .env("ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env_remove("LOG_BAGGAGE_KEYS")
        .env_remove("LOG_REDACT")
        .env_remove("LOG_HEADERS")
        .env_remove("SENTRY_DSN")
        .env_remove("REDIS_URL")
        .env_remove("RATE_LIMIT_PER_MINUTE")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("WORKER")
        .env_remove("ACCESS_LOG_SKIP")
        .env_remove("ACCESS_LOG_SAMPLE")
        .env_remove("SLOW_REQUEST_MS")
        .env_remove("RUST_BACKTRACE")
        .env_remove("LOG_ON_ERROR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_SDK_DISABLED")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    // Killed if the test fails half-way, so that no server outlives it.
    let mut child = KillOnDrop(Some(command.spawn().expect("the api example is built by `cargo test`")));
    let mut stdout = BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap());
    // Migrations log their statements first; then the server says where it listens.
    let startup = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the server exited before listening");
        let line: Value = serde_json::from_str(&line).expect("every startup line is JSON");
        assert_ne!(line["level"], "WARN", "with JWT_SECRET set, no development-secret warning: {line}");
        if line["message"] == "listening" {
            break line;
        }
    };
    let addr = startup["addr"].as_str().unwrap().parse().unwrap();
    (child, stdout, addr)
}

/// A token for `user` from the documented tool, the mint_token example, with the same secret.
pub(crate) fn mint_token(user: &str) -> String {
    mint_token_with_roles(user, &[])
}

/// [`mint_token`] with roles: `cargo run --example mint_token -- <user> <role> …`.
pub(crate) fn mint_token_with_roles(user: &str, roles: &[&str]) -> String {
    let minted = Command::new(example_path("mint_token"))
        .arg(user)
        .args(roles)
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .output()
        .expect("the mint_token example is built by `cargo test`");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    String::from_utf8(minted.stdout).unwrap().trim().to_owned()
}

/// Sends SIGTERM and expects a clean exit.
pub(crate) async fn stop(mut child: KillOnDrop) {
    let mut child = child.0.take().unwrap();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "SIGTERM must stop the server cleanly: {exit:?}");
}

#[tokio::test]
async fn the_example_writes_only_stamped_json_lines_and_stops_cleanly() {
    let (child, stdout, addr) = start_example(&[]);

    let token = mint_token("3");
    let bearer = format!("Bearer {token}");
    let me = fetch(addr, "/users/me", &[("authorization", bearer.as_bytes())]).await;
    assert_eq!(me.json()["name"], "Alan Turing");

    let health = fetch(addr, "/health", &[]).await;
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let fanout = fetch(addr, "/fanout", &[]).await;
    let stream = fetch(addr, "/stream", &[]).await;
    let missing = fetch(addr, "/missing", &[]).await;
    let (lines, reader) = watch_lines(stdout);
    // Not /health: by default (`ACCESS_LOG_SKIP`) a successful probe writes no access line.
    let ids = [&me, &fanout, &stream, &missing].map(|reply| reply.request_id().to_owned());
    wait_for("every request's access line", || {
        let lines = lines.lock().unwrap();
        ids.iter().all(|id| lines.iter().any(|l| l["request_id"] == id.as_str() && l["target"] == "reqscope::access"))
    })
    .await;

    stop(child).await;
    until_stdout_ends(reader).await;
    let lines: Vec<Value> = lines.lock().unwrap().clone();
    let of = |id: &str| lines.iter().filter(|l| l["request_id"] == id).count();
    assert_eq!(of(health.request_id()), 0, "health: no line, not even its access line");
    assert_eq!(of(fanout.request_id()), 5, "fanout: four tasks and the access line");
    assert_eq!(of(stream.request_id()), 4, "stream: three chunks and the access line");
    assert_eq!(of(missing.request_id()), 2, "404: the ApiError INFO line and the access line");
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == me.request_id()).collect();
    assert_eq!(mine.len(), 3, "users/me: the handler line, the query line and the access line");
    assert!(mine.iter().all(|l| l["user_id"] == "3"), "{mine:?}");
    assert!(mine.iter().any(|l| l["target"] == "sqlx::query"), "the SQLite query line is stamped: {mine:?}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(lines.iter().all(|l| !l.to_string().contains(signature)), "the token reached stdout");
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

#[tokio::test]
async fn with_sentry_dsn_the_example_sends_panics_and_errors_with_the_user_and_request_id() {
    // A stand-in for Sentry's ingest endpoint on loopback: it keeps every envelope it is sent.
    let envelopes = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = envelopes.clone();
    let ingest = axum::Router::new().route(
        "/api/1/envelope/",
        axum::routing::post(move |body: bytes::Bytes| async move {
            kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            "{}"
        }),
    );
    let ingest_addr = crate::support::serve(ingest).await;
    let dsn = format!("http://public@{ingest_addr}/1");
    let (child, _stdout, addr) = start_example(&[("SENTRY_DSN", &dsn)]);

    let bearer = format!("Bearer {}", mint_token("3"));
    let reply = fetch(addr, "/boom", &[("x-request-id", b"bin-sentry-1"), ("authorization", bearer.as_bytes())]).await;
    assert_eq!(reply.status, 500);
    stop(child).await; // the client flushes its queue on the way out

    // An envelope is newline-separated JSON: its header, then item headers and payloads.
    let events: Vec<Value> = envelopes
        .lock()
        .unwrap()
        .iter()
        .flat_map(|envelope| {
            envelope.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).collect::<Vec<_>>()
        })
        .filter(|item| item["tags"]["request_id"] == "bin-sentry-1")
        .collect();
    assert_eq!(events.len(), 1, "one event for the panic: {events:#?}");
    assert_eq!(events[0]["user"]["id"], "3");
    assert_eq!(events[0]["tags"]["org_id"], "acme");
    assert_eq!(events[0]["transaction"], "GET /boom");
    assert_eq!(events[0]["exception"]["values"][0]["value"], "the /boom route panics on purpose");
}

#[tokio::test]
async fn a_malformed_sentry_dsn_stops_the_example_with_a_clear_error() {
    let output = Command::new(example_path("api"))
        .env("ADDR", "127.0.0.1:0")
        .env("SENTRY_DSN", "not a dsn")
        .output()
        .expect("the api example is built by `cargo test`");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SENTRY_DSN is not a valid Sentry DSN"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn with_redis_url_the_example_keeps_its_rate_limits_in_redis() {
    let Ok(redis_url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("skipped: TEST_REDIS_URL is not set (Redis tests run in CI, see .ci/run)");
        return;
    };
    // Two instances on one Redis share one budget of 3 a minute for user 2's token.
    let env = [("REDIS_URL", redis_url.as_str()), ("RATE_LIMIT_PER_MINUTE", "3")];
    let (first, _first_out, a) = start_example(&env);
    let (second, _second_out, b) = start_example(&env);
    // A subject of its own, so that reruns within the minute do not share the budget.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let user = format!("rate-limited-{}-{nanos}", std::process::id());
    let bearer = format!("Bearer {}", mint_token(&user));
    let mut statuses = Vec::new();
    for addr in [a, b, a, b] {
        let reply = fetch(addr, "/users/me", &[("authorization", bearer.as_bytes())]).await;
        statuses.push(reply.status.as_u16());
    }
    // The user does not exist (404), but each request was counted first; the fourth is refused.
    assert_eq!(statuses, [404, 404, 404, 429]);
    stop(first).await;
    stop(second).await;
}

#[tokio::test]
async fn a_bad_rate_limit_stops_the_example_with_a_clear_error() {
    let stderr = failed_start(&[("RATE_LIMIT_PER_MINUTE", "lots")]);
    assert!(stderr.contains("RATE_LIMIT_PER_MINUTE must be a whole number of requests"), "{stderr}");
}

/// Starts the example with `env`, expects it to refuse to start, and returns its stderr.
pub(crate) fn failed_start(env: &[(&str, &str)]) -> String {
    let child = Command::new(example_path("api"))
        .env("ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .env_remove("SENTRY_DSN")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("LOG_BAGGAGE_KEYS")
        .env_remove("LOG_REDACT")
        .env_remove("LOG_HEADERS")
        .env_remove("AMQP_URL")
        .env_remove("WORKER")
        .env_remove("ACCESS_LOG_SKIP")
        .env_remove("ACCESS_LOG_SAMPLE")
        .env_remove("SLOW_REQUEST_MS")
        .env_remove("LOG_ON_ERROR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_SDK_DISABLED")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the api example is built by `cargo test`");
    // A server that starts anyway would never exit: give up on it rather than hang.
    let mut child = KillOnDrop(Some(child));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the example started with {env:?} instead of refusing to");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.as_mut().unwrap().stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

pub(crate) struct KillOnDrop(pub(crate) Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn two_example_servers_log_one_trace_and_one_request_id_for_a_chained_request() {
    let (second, second_out, second_addr) = start_example(&[]);
    let downstream = format!("http://{second_addr}");
    let (first, first_out, first_addr) = start_example(&[("DOWNSTREAM_URL", &downstream)]);

    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = fetch(first_addr, "/chain?hops=1", &[("traceparent", incoming.as_bytes())]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.request_id().to_owned();
    let (first_seen, first_reader) = watch_lines(first_out);
    let (second_seen, second_reader) = watch_lines(second_out);
    let logged = |seen: &Arc<Mutex<Vec<Value>>>| {
        seen.lock().unwrap().iter().any(|l| l["request_id"] == id.as_str() && l["target"] == "reqscope::access")
    };
    wait_for("both servers' access lines", || logged(&first_seen) && logged(&second_seen)).await;
    stop(first).await;
    stop(second).await;
    until_stdout_ends(first_reader).await;
    until_stdout_ends(second_reader).await;

    let of = |seen: Arc<Mutex<Vec<Value>>>| -> Vec<Value> {
        seen.lock().unwrap().iter().filter(|l| l["request_id"] == id.as_str()).cloned().collect()
    };
    let first_lines = of(first_seen);
    let second_lines = of(second_seen);
    assert_eq!(first_lines.len(), 3, "the handler's line, the outgoing call's and the access line: {first_lines:?}");
    assert_eq!(
        second_lines.len(),
        1,
        "the second server's access line, under the first's request id: {second_lines:?}"
    );
    let all: Vec<&Value> = first_lines.iter().chain(&second_lines).collect();
    assert!(all.iter().all(|l| l["trace_id"] == "0af7651916cd43dd8448eb211c80319c"), "{all:?}");
    let first_span = &first_lines[0]["span_id"];
    let (outgoing, request): (Vec<&Value>, Vec<&Value>) =
        first_lines.iter().partition(|l| l["target"] == "reqscope::outgoing");
    assert!(request.iter().all(|l| l["span_id"] == *first_span));
    // The call is a client span of its own, child of the request's span.
    assert_eq!(outgoing.len(), 1, "{first_lines:?}");
    assert_eq!(outgoing[0]["parent_span_id"], *first_span);
    assert_ne!(outgoing[0]["span_id"], *first_span);
    assert_ne!(second_lines[0]["span_id"], *first_span, "each service logs its own span");
    assert_eq!(reply.json()["downstream"]["span_id"], second_lines[0]["span_id"]);
}

#[test]
fn a_bad_downstream_url_stops_the_start_with_a_clear_error() {
    let stderr = failed_start(&[("DOWNSTREAM_URL", "https://example.com")]);
    assert!(stderr.contains("DOWNSTREAM_URL must be an http:// URL"), "{stderr}");
    let stderr = failed_start(&[("DOWNSTREAM_URL", "not a url")]);
    assert!(stderr.contains("DOWNSTREAM_URL must be a URL"), "{stderr}");
}

/// A next hop for `/chain` that answers after `delay`, counting the calls it has received.
async fn slow_downstream(delay: Duration) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/chain",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                axum::Json(serde_json::json!({ "hops": 0 }))
            }
        }),
    );
    (crate::support::serve(app).await, calls)
}

/// Reads a server's stdout on a thread of its own, so that the test can watch lines arrive;
/// the thread ends at the end of stdout.
pub(crate) fn watch_lines(
    stdout: BufReader<std::process::ChildStdout>,
) -> (Arc<Mutex<Vec<Value>>>, std::thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let line = line.unwrap();
            let parsed =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            sink.lock().unwrap().push(parsed);
        }
    });
    (lines, reader)
}

/// Waits until the process has closed its stdout (it has exited) and every line is read.
pub(crate) async fn until_stdout_ends(reader: std::thread::JoinHandle<()>) {
    tokio::task::spawn_blocking(move || reader.join()).await.unwrap().expect("stdout reader");
}

pub(crate) async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sigterm(child: &KillOnDrop) {
    let pid = child.0.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

async fn wait_for_exit(mut child: KillOnDrop) -> std::process::ExitStatus {
    let mut child = child.0.take().unwrap();
    tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_flushes_every_line() {
    const IN_FLIGHT: usize = 8;
    let (downstream, calls) = slow_downstream(Duration::from_millis(400)).await;
    let next = format!("http://{downstream}");
    let (child, stdout, addr) = start_example(&[("DOWNSTREAM_URL", &next), ("SHUTDOWN_GRACE_SECS", "10")]);
    let (lines, reader) = watch_lines(stdout);

    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("shutdown-{i}");
                fetch(addr, "/chain?hops=1", &[("x-request-id", id.as_bytes())]).await
            })
        })
        .collect();
    wait_for("every request to reach the next hop", || calls.load(std::sync::atomic::Ordering::SeqCst) == IN_FLIGHT)
        .await;
    sigterm(&child);

    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "an in-flight request finishes after SIGTERM: {}", reply.body);
        assert_eq!(reply.json()["downstream"]["hops"], 0);
    }
    wait_for("the shutdown line", || lines.lock().unwrap().iter().any(|l| l["message"] == "shutting down")).await;
    // The listener closes right after the signal is handled: new connections are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "after SIGTERM the server still accepts connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = wait_for_exit(child).await;
    assert!(exit.success(), "{exit:?}");
    until_stdout_ends(reader).await;

    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
    for i in 0..IN_FLIGHT {
        let id = format!("shutdown-{i}");
        let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 3, "the handler's line, the outgoing call's and the access line of {id}: {mine:?}");
        let call = mine.iter().find(|l| l["target"] == "reqscope::outgoing").unwrap();
        assert_eq!(call["status"], 200, "the call finished too: {call}");
        let access = mine.iter().find(|l| l["target"] == "reqscope::access").unwrap();
        assert_eq!(access["status"], 200);
        assert!(access.get("aborted").is_none(), "{access}");
    }
    assert!(!lines.iter().any(|l| l["level"] == "WARN"), "no request was cut off");
}

#[tokio::test]
async fn a_request_outlasting_the_grace_period_is_cut_off_and_logged_as_aborted() {
    let (downstream, calls) = slow_downstream(Duration::from_secs(60)).await;
    let next = format!("http://{downstream}");
    let (child, stdout, addr) = start_example(&[("DOWNSTREAM_URL", &next), ("SHUTDOWN_GRACE_SECS", "1")]);
    let (lines, reader) = watch_lines(stdout);

    let stuck = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/chain?hops=1")
            .header("host", addr.to_string())
            .header("x-request-id", "stuck-1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(request).await
    });
    wait_for("the request to reach the next hop", || calls.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    let signalled = std::time::Instant::now();
    sigterm(&child);
    let exit = wait_for_exit(child).await;
    assert!(exit.success(), "{exit:?}");
    // Grace (1 s) + cut-off (≤ 1 s) + start-up slack; the stuck call alone would last 10 s.
    assert!(signalled.elapsed() < Duration::from_secs(8), "the grace period bounds the shutdown");
    assert!(stuck.await.unwrap().is_err(), "the stuck request got no response");

    until_stdout_ends(reader).await;
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l["level"] == "WARN" && l["grace_secs"] == 1), "the cut-off is reported");
    let access: Vec<&Value> =
        lines.iter().filter(|l| l["request_id"] == "stuck-1" && l["target"] == "reqscope::access").collect();
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["aborted"], true);
}

#[test]
fn a_bad_grace_period_stops_the_start_with_a_clear_error() {
    let stderr = failed_start(&[("SHUTDOWN_GRACE_SECS", "soon")]);
    assert!(stderr.contains("SHUTDOWN_GRACE_SECS must be a whole number of seconds"), "{stderr}");
}

#[cfg(target_os = "linux")]
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads RSS from `/proc`, hence Linux only. While stdout is stalled the server writes only
/// these requests' access lines, so every dropped line is one of them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn with_stdout_unread_requests_are_served_lines_are_dropped_counted_and_reported() {
    const REQUESTS: usize = 3000;
    // A small buffer, so that a few hundred lines fill the pipe and the buffer behind it.
    // Every /health request writes its access line here, so that each one is a line to count.
    let (child, stdout, addr) = start_example(&[("LOG_BUFFER_BYTES", "65536"), ("ACCESS_LOG_SKIP", "")]);
    let pid = child.0.as_ref().unwrap().id();
    // Nobody reads stdout now: the pipe fills, then the writer's buffer.
    let send_batch = |from: usize, to: usize| async move {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                tokio::spawn(async move {
                    for i in (from + w..to).step_by(8) {
                        let id = format!("bp-{i}");
                        let reply = fetch(addr, "/health", &[("x-request-id", id.as_bytes())]).await;
                        assert_eq!(reply.status, 200, "request {i} while stdout is not read");
                    }
                })
            })
            .collect();
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(60), worker).await.expect("no deadlock").unwrap();
        }
    };
    send_batch(0, 1000).await;
    let rss_after_1000 = rss_kib(pid);
    send_batch(1000, REQUESTS).await;
    let rss_after_all = rss_kib(pid);
    assert!(
        rss_after_all < rss_after_1000 + 16 * 1024,
        "memory stays bounded while lines are dropped: {rss_after_1000} KiB → {rss_after_all} KiB"
    );

    // Output recovers once read again; lines written before the buffer has drained may still be
    // dropped (and counted), so ask until one of the new requests' lines shows up.
    let (lines, reader) = watch_lines(stdout);
    let mut after = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let id = format!("bp-after-{after}");
        fetch(addr, "/health", &[("x-request-id", id.as_bytes())]).await;
        after += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let recovered =
            lines.lock().unwrap().iter().any(|l| l["request_id"].as_str().is_some_and(|r| r.starts_with("bp-after-")));
        if recovered {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "output never recovered");
    }
    stop(child).await;
    until_stdout_ends(reader).await;

    let lines = lines.lock().unwrap();
    let summaries: Vec<&Value> = lines.iter().filter(|l| l["dropped"].is_u64()).collect();
    assert!(!summaries.is_empty(), "a summary line reports the drops");
    assert!(summaries.iter().all(|s| s["level"] == "WARN"), "{summaries:?}");
    let dropped: u64 = summaries.iter().map(|s| s["dropped"].as_u64().unwrap()).sum();
    let written = lines
        .iter()
        .filter(|l| {
            l["target"] == "reqscope::access" && l["request_id"].as_str().is_some_and(|id| id.starts_with("bp-"))
        })
        .count() as u64;
    assert!(dropped > 0 && written > 0, "written {written}, dropped {dropped}");
    assert_eq!(
        written + dropped,
        (REQUESTS + after) as u64,
        "every line, the ones sent while output recovered included, is either written or counted as dropped"
    );
}
