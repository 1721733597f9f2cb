//! The example's background jobs: `POST /users` queues a welcome email, which runs later —
//! in the server (embedded queue) or in a worker behind RabbitMQ — inside the request's context.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::jobs::{ENQUEUE_TIMEOUT, Jobs, MAX_ATTEMPTS, Queue, WELCOME_EMAIL};
use crate::support::{
    CuttableProxy, Reply, TEST_SECRET, access_lines_of, claims, example_app, example_app_with_jobs, hs256, lines_of,
    lines_where, logs, send, serve,
};

/// A name no other test or run uses.
fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{nanos}-{n}", std::process::id())
}

/// `POST /users` as user `user` (a valid token), with `request_id` and any `extra` headers.
async fn post_user(addr: SocketAddr, user: &str, request_id: &str, email: &str, extra: &[(&str, &[u8])]) -> Reply {
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims(user)));
    let body = serde_json::json!({ "name": "New User", "email": email }).to_string();
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("authorization", bearer.as_bytes()),
        ("x-request-id", request_id.as_bytes()),
    ];
    headers.extend_from_slice(extra);
    send(Method::POST, addr, "/users", &headers, Bytes::from(body)).await
}

/// Lines of `request_id` with this `message`.
fn said(request_id: &str, message: &str) -> Vec<Value> {
    lines_of(request_id).into_iter().filter(|line| line["message"] == message).collect()
}

/// Waits until `done` holds, checking every 20 ms, for at most `limit`.
async fn wait_within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's line: stamped with the request (id, user, trace) and the job, in a span of its own.
fn assert_job_line(line: &Value, request: &Value, user: &str, attempt: u32) {
    assert_eq!(line["request_id"], request["request_id"], "{line}");
    assert_eq!(line["user_id"], user, "{line}");
    assert_eq!(line["trace_id"], request["trace_id"], "the request's trace: {line}");
    assert!(line["span_id"].is_string() && line["span_id"] != request["span_id"], "a span of its own: {line}");
    assert_eq!(line["job"], WELCOME_EMAIL, "{line}");
    assert!(line["job_id"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()), "a UUID: {line}");
    assert_eq!(line["attempt"], attempt, "{line}");
}

#[tokio::test]
async fn the_welcome_email_runs_in_the_request_context_with_a_span_of_its_own() {
    // The example as it ships: its x-device-id step, its tenant step, its embedded queue.
    let addr = serve(example_app().await).await;

    let id = unique("job-ok");
    let device = unique("device-value");
    let email = format!("{}@example.com", unique("welcome"));
    let reply = post_user(addr, "7", &id, &email, &[("x-device-id", device.as_bytes())]).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let access = access_lines_of(&id).await.remove(0);

    wait_within(Duration::from_secs(10), "the job's end line", || !said(&id, "job completed").is_empty()).await;
    let sent = said(&id, "welcome email sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_job_line(&sent[0], &access, "7", 1);
    assert_eq!(sent[0]["level"], "INFO");
    assert_eq!(sent[0]["has_device_id"], true, "{}", sent[0]);
    assert_eq!(access["tenant"], "acme", "the token's org is the tenant: {access}");
    assert_eq!(sent[0]["tenant"], "acme", "the custom field travels into the job: {}", sent[0]);
    assert_eq!(sent[0]["user"], reply.json()["id"], "the new user's id: {}", sent[0]);
    let end = said(&id, "job completed").remove(0);
    assert_eq!(end["target"], "reqscope::job");
    assert_eq!(end["outcome"], "ok");
    assert_eq!(end["job_id"], sent[0]["job_id"]);
    assert_eq!(end["span_id"], sent[0]["span_id"]);
    assert!(end["duration_ms"].is_f64() && end["queue_ms"].is_f64(), "{end}");
    let all = logs().contents();
    assert!(!all.contains(&device), "the hidden device id reached a line");
    assert!(!all.contains(&email), "the email address reached a line");
}

#[tokio::test]
async fn a_failing_job_is_tried_three_times_then_dropped_with_an_error() {
    let addr = serve(example_app().await).await;
    let id = unique("job-fail");
    let reply = post_user(addr, "8", &id, &format!("{}@fail.example", unique("nobody")), &[]).await;
    assert_eq!(reply.status, 201, "the job is queued; it fails later: {}", reply.body);
    let access = access_lines_of(&id).await.remove(0);
    let gave_up = |id: &str| said(id, "welcome email dropped: gave up after the last attempt");

    wait_within(Duration::from_secs(10), "the give-up line", || !gave_up(&id).is_empty()).await;
    let failed = said(&id, "welcome email failed");
    let attempts: Vec<u64> = failed.iter().map(|line| line["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3], "{failed:?}");
    for (line, attempt) in failed.iter().zip(1..) {
        assert_eq!(line["level"], "ERROR");
        assert_job_line(line, &access, "8", attempt);
        assert_eq!(line["job_id"], failed[0]["job_id"], "one job, three attempts");
    }
    let ends = said(&id, "job failed");
    assert_eq!(ends.len(), 3, "{ends:?}");
    assert!(ends.iter().all(|line| line["outcome"] == "error" && line["level"] == "ERROR"), "{ends:?}");
    let gave_up = gave_up(&id);
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0]["level"], "ERROR");
    assert_eq!(gave_up[0]["attempt"], MAX_ATTEMPTS);
    assert_eq!(gave_up[0]["job_id"], failed[0]["job_id"]);
    assert!(lines_of(&id).iter().all(|line| line["attempt"].as_u64().is_none_or(|n| n <= 3)), "no fourth attempt");
}

#[tokio::test]
async fn with_rabbitmq_unreachable_or_silent_post_users_answers_503_in_time_and_keeps_no_user() {
    // Nothing listens on a port that was just free: the connection is refused.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap();
    // A "broker" that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    for (broker, tag) in [(refused, "refused"), (silent_addr, "silent")] {
        let queue = Queue::new(&format!("amqp://guest:guest@{broker}/%2f"), WELCOME_EMAIL).unwrap();
        let jobs = Jobs::rabbitmq(queue);
        assert!(jobs.connect().await.is_err(), "{tag}");
        let addr = serve(example_app_with_jobs(jobs).await).await;
        let id = unique(&format!("job-{tag}"));
        let started = Instant::now();
        let reply = post_user(addr, "9", &id, &format!("{}@example.com", unique("later")), &[]).await;
        assert!(started.elapsed() < ENQUEUE_TIMEOUT + Duration::from_secs(2), "{tag}: {:?}", started.elapsed());
        assert_eq!(reply.status, 503, "{tag}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"], "queue_unavailable", "{tag}");
        assert_eq!(body["request_id"], id.as_str());
        assert!(body["message"].is_string());
        let access = access_lines_of(&id).await;
        assert_eq!(access[0]["level"], "ERROR", "{tag}");
        // The seeded users are 1 to 3: the fourth was inserted, then taken back.
        let kept = crate::support::fetch(addr, "/users/4", &[]).await;
        assert_eq!(kept.status, 404, "{tag}: the user without a queued job was kept: {}", kept.body);
    }
}

#[tokio::test]
async fn a_bad_amqp_url_or_worker_value_stops_the_start_with_a_clear_error() {
    let stderr = crate::example_binary::failed_start(&[("AMQP_URL", "not a url")]);
    assert!(stderr.contains("AMQP_URL must be an amqp:// URL"), "{stderr}");
    let stderr = crate::example_binary::failed_start(&[("AMQP_URL", "amqp://guest:hunter2@[::1/%2f")]);
    assert!(stderr.contains("AMQP_URL must be an amqp:// URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the URL's password is not repeated: {stderr}");
    let stderr = crate::example_binary::failed_start(&[("WORKER", "yes")]);
    assert!(stderr.contains("WORKER must be 1"), "{stderr}");
}

/// The RabbitMQ URL for tests, or `None` (with the reason printed) when `TEST_AMQP_URL` is
/// unset. With `CI=true` an unreachable broker is a failure, not a skip.
async fn amqp_url() -> Option<String> {
    let Ok(url) = std::env::var("TEST_AMQP_URL") else {
        eprintln!("skipped: TEST_AMQP_URL is not set (RabbitMQ tests run in CI, see .ci/run)");
        return None;
    };
    match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
        Ok(connection) => {
            let _ = connection.close(200, "OK".into()).await;
            Some(url)
        }
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but RabbitMQ at TEST_AMQP_URL is unreachable: {error}")
        }
        Err(error) => {
            eprintln!("skipped: RabbitMQ at TEST_AMQP_URL is unreachable: {error}");
            None
        }
    }
}

/// A queue of its own on the broker at `url`, gone a minute after its test stopped using it.
fn test_queue(url: &str, tag: &str) -> Queue {
    Queue::new(url, &unique(&format!("reqscope-test-{tag}"))).unwrap().expire_after(Duration::from_secs(60))
}

/// Starts consuming `queue` in this process and waits until it does.
async fn start_worker(queue: &Queue) {
    tokio::spawn(queue.clone().work());
    let name = queue.name().to_owned();
    wait_within(Duration::from_secs(10), "the consumer", || {
        !lines_where(|line| line["message"] == "consuming" && line["queue"] == name.as_str()).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_rabbitmq_the_worker_runs_each_job_in_its_request_context_and_retries_it() {
    let Some(url) = amqp_url().await else { return };
    let queue = test_queue(&url, "context");
    start_worker(&queue).await;
    let addr = serve(example_app_with_jobs(Jobs::rabbitmq(queue)).await).await;

    let ok = unique("amqp-ok");
    let reply = post_user(addr, "11", &ok, &format!("{}@example.com", unique("rabbit")), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let access = access_lines_of(&ok).await.remove(0);
    wait_within(Duration::from_secs(10), "the job's end line", || !said(&ok, "job completed").is_empty()).await;
    let sent = said(&ok, "welcome email sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_job_line(&sent[0], &access, "11", 1);
    assert_eq!(sent[0]["has_device_id"], false);
    assert_eq!(sent[0]["user"], reply.json()["id"]);
    let end = said(&ok, "job completed").remove(0);
    assert_eq!(end["outcome"], "ok");
    assert!(end["duration_ms"].is_f64() && end["queue_ms"].is_f64(), "{end}");

    // A failing job: republished with the attempt counted up, three attempts, then dropped.
    let failing = unique("amqp-fail");
    let reply = post_user(addr, "12", &failing, &format!("{}@fail.example", unique("rabbit")), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let access = access_lines_of(&failing).await.remove(0);
    let gave_up = || said(&failing, "welcome email dropped: gave up after the last attempt");
    wait_within(Duration::from_secs(10), "the give-up line", || !gave_up().is_empty()).await;
    let failed = said(&failing, "welcome email failed");
    let attempts: Vec<u64> = failed.iter().map(|line| line["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3], "{failed:?}");
    for (line, attempt) in failed.iter().zip(1..) {
        assert_job_line(line, &access, "12", attempt);
        assert_eq!(line["job_id"], failed[0]["job_id"], "the retries keep the message id");
    }
    assert_eq!(gave_up().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_from_fifty_users_through_rabbitmq_each_carry_their_own_request() {
    let Some(url) = amqp_url().await else { return };
    let queue = test_queue(&url, "load");
    start_worker(&queue).await;
    let addr = serve(example_app_with_jobs(Jobs::rabbitmq(queue)).await).await;

    let tag = unique("load");
    let requests: Vec<_> = (0..500)
        .map(|n| {
            let tag = tag.clone();
            tokio::spawn(async move {
                let user = format!("load-user-{}", n % 50);
                let id = format!("{tag}-{n}");
                let reply = post_user(addr, &user, &id, &format!("{tag}-{n}@example.com"), &[]).await;
                assert_eq!(reply.status, 201, "{}", reply.body);
                (id, (user, reply.json()["id"].clone()))
            })
        })
        .collect();
    let mut expected = HashMap::new();
    for request in requests {
        let (id, user) = request.await.unwrap();
        expected.insert(id, user);
    }

    let prefix = format!("{tag}-");
    let sent = || {
        lines_where(|line| {
            line["message"] == "welcome email sent"
                && line["request_id"].as_str().is_some_and(|id| id.starts_with(&prefix))
        })
    };
    wait_within(Duration::from_secs(60), "500 welcome emails", || {
        sent().iter().map(|line| line["request_id"].as_str().unwrap().to_owned()).collect::<HashSet<_>>().len() == 500
    })
    .await;
    let sent = sent();
    for line in &sent {
        let (user, new_user) = &expected[line["request_id"].as_str().unwrap()];
        assert_eq!(line["user_id"], user.as_str(), "cross-talk: {line}");
        assert_eq!(&line["user"], new_user, "the job of another request: {line}");
        assert_eq!(line["job"], WELCOME_EMAIL);
    }
    let job_ids: HashSet<&str> = sent.iter().map(|line| line["job_id"].as_str().unwrap()).collect();
    assert!(job_ids.len() >= 500, "a message id per job");
    // Every line under these request ids, the jobs' end lines included, names its own user.
    for line in logs().json_lines() {
        if let Some((user, _)) = line["request_id"].as_str().and_then(|id| expected.get(id)) {
            assert_eq!(line["user_id"], user.as_str(), "cross-talk: {line}");
        }
    }
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let host_start = url[start..authority_end].rfind('@').map_or(start, |i| start + i + 1);
    let mut proxied = url.to_owned();
    proxied.replace_range(host_start..authority_end, &addr.to_string());
    proxied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_answers_503_in_time_and_every_acknowledged_job_is_delivered() {
    let Some(url) = amqp_url().await else { return };
    let uri: lapin::uri::AMQPUri = url.parse().unwrap();
    let broker =
        tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port)).await.unwrap().next().unwrap();
    let proxy = CuttableProxy::start(broker).await;
    // The server's publisher and the worker's consumer both reach the broker through the proxy.
    let queue = test_queue(&via(&url, proxy.addr), "cut");
    start_worker(&queue).await;
    let addr = serve(example_app_with_jobs(Jobs::rabbitmq(queue)).await).await;
    let tag = unique("cut");
    let mut acknowledged = Vec::new();
    let post = |n: usize, email: String| {
        let id = format!("{tag}-{n}");
        async move { (post_user(addr, "21", &id, &email, &[]).await, id) }
    };
    let email = |n: usize| format!("{tag}-{n}@example.com");

    for n in 0..5 {
        let (reply, id) = post(n, email(n)).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        acknowledged.push(id);
    }

    proxy.cut();
    for n in 5..10 {
        let started = Instant::now();
        let (reply, id) = post(n, email(n)).await;
        assert!(started.elapsed() < ENQUEUE_TIMEOUT + Duration::from_secs(2), "bounded: {:?}", started.elapsed());
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.json()["error"], "queue_unavailable");
        assert_eq!(reply.json()["request_id"], id.as_str());
    }

    proxy.restore();
    // The publisher connects again on the next publish; the first may still meet the old
    // connection's end.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 10;
    loop {
        let (reply, id) = post(n, email(n)).await;
        n += 1;
        if reply.status == 201 {
            acknowledged.push(id);
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(Instant::now() < deadline, "publishing never recovered: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in n..n + 5 {
        let (reply, id) = post(m, email(m)).await;
        assert_eq!(reply.status, 201, "after the broker came back: {}", reply.body);
        acknowledged.push(id);
    }
    // A refused user was not kept: the same email is free again.
    let (reply, id) = post(n + 5, email(5)).await;
    assert_eq!(reply.status, 201, "the user of a 503 was kept: {}", reply.body);
    acknowledged.push(id);

    // Nothing acknowledged is lost: the jobs queued before the cut, and after it, all ran
    // (the worker reconnected on its own).
    wait_within(Duration::from_secs(30), "every acknowledged job", || {
        acknowledged.iter().all(|id| !said(id, "welcome email sent").is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_malformed_carried_context_still_runs_with_one_warning() {
    let Some(url) = amqp_url().await else { return };
    let queue = test_queue(&url, "malformed");
    start_worker(&queue).await;

    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let bad_trace = unique("secret-trace-value");
    let bad_context = unique("secret-context-value");
    let cases = [
        ("traceparent", format!("00-{bad_trace}-01"), "traceparent"),
        ("reqscope-context", format!("v=1,user_id=%ZZ{bad_context}"), "reqscope-context"),
    ];
    let mut published = Vec::new();
    for (header, value, part) in cases {
        let mut headers = FieldTable::default();
        headers.insert("x-request-id".into(), AMQPValue::LongString(unique("raw-request").into()));
        headers.insert(header.into(), AMQPValue::LongString(value.into()));
        let message_id = unique("raw-message");
        let properties =
            lapin::BasicProperties::default().with_message_id(message_id.clone().into()).with_headers(headers);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.name().into(),
                options,
                br#"{"user_id":4242,"email":"raw@example.com"}"#,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(confirm, lapin::Confirmation::Ack(None));
        published.push((message_id, part));
    }

    for (message_id, part) in &published {
        let of_job = |message: &str| {
            let message_id = message_id.clone();
            let message = message.to_owned();
            lines_where(move |line| line["job_id"] == message_id.as_str() && line["message"] == message.as_str())
        };
        wait_within(Duration::from_secs(10), "the job's end line", || !of_job("job completed").is_empty()).await;
        let sent = of_job("welcome email sent");
        assert_eq!(sent.len(), 1, "the job ran: {sent:?}");
        assert_eq!(sent[0]["user"], 4242);
        assert!(sent[0]["user_id"].is_null(), "a context of its own: {}", sent[0]);
        let warnings = lines_where(|line| line["job_id"] == message_id.as_str() && line["level"] == "WARN");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0]["target"], "reqscope::job");
        assert!(warnings[0]["reason"].as_str().unwrap().contains(part), "the reason names the {part}: {}", warnings[0]);
        assert_eq!(warnings[0]["request_id"], sent[0]["request_id"], "the warning is the job's");
    }
    let all = logs().contents();
    assert!(!all.contains(&bad_trace) && !all.contains(&bad_context), "a bad carried value reached a line");
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test]
async fn the_api_and_a_separate_worker_process_share_jobs_through_rabbitmq() {
    use crate::example_binary::{
        KillOnDrop, example_path, mint_token, start_example, stop, until_stdout_ends, wait_for, watch_lines,
    };
    let Some(url) = amqp_url().await else { return };
    let path = example_path("worker");
    assert!(path.exists(), "{} is missing: run `cargo test --workspace`, which builds the example", path.display());
    let mut worker = Command::new(path);
    worker
        .env("AMQP_URL", &url)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut worker = KillOnDrop(Some(worker.spawn().expect("the worker example is built by `cargo test`")));
    let worker_out = std::io::BufReader::new(worker.0.as_mut().unwrap().stdout.take().unwrap());
    let (worker_lines, worker_reader) = watch_lines(worker_out);
    wait_for("the worker to consume", || worker_lines.lock().unwrap().iter().any(|l| l["message"] == "consuming"))
        .await;
    let (api, api_out, addr) = start_example(&[("AMQP_URL", &url)]);
    let (api_lines, api_reader) = watch_lines(api_out);

    let id = unique("bin-job");
    let bearer = format!("Bearer {}", mint_token("5"));
    let body = serde_json::json!({ "name": "Worker Test", "email": format!("{}@example.com", unique("bin")) });
    let headers: [(&str, &[u8]); 3] =
        [("content-type", b"application/json"), ("authorization", bearer.as_bytes()), ("x-request-id", id.as_bytes())];
    let reply = send(Method::POST, addr, "/users", &headers, Bytes::from(body.to_string())).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let of = |lines: &std::sync::Mutex<Vec<Value>>, pick: &dyn Fn(&Value) -> bool| -> Option<Value> {
        lines.lock().unwrap().iter().find(|l| l["request_id"] == id.as_str() && pick(l)).cloned()
    };
    let is_access = |l: &Value| l["target"] == "reqscope::access";
    let is_sent = |l: &Value| l["message"] == "welcome email sent";
    wait_for("the api's access line", || of(&api_lines, &is_access).is_some()).await;
    wait_for("the worker's job line", || of(&worker_lines, &is_sent).is_some()).await;
    let access = of(&api_lines, &is_access).unwrap();
    let sent = of(&worker_lines, &is_sent).unwrap();
    assert_job_line(&sent, &access, "5", 1);
    assert!(of(&api_lines, &is_sent).is_none(), "the job ran in the worker, not in the server");

    stop(api).await;
    stop(worker).await;
    until_stdout_ends(api_reader).await;
    until_stdout_ends(worker_reader).await;
    assert!(worker_lines.lock().unwrap().iter().any(|l| l["message"] == "stopped"));
}
