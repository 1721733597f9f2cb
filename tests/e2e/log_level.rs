//! One request raised to DEBUG (`x-log-level` from a user with the role `log-debug`), and
//! DEBUG lines kept until their request fails (`LOG_ON_ERROR=debug`): over real HTTP, with
//! the lines a production setup writes at `RUST_LOG=info` (`support::level_lines_of`).

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use reqscope::{CatchPanicLayer, RequestContextLayer};
use serde_json::Value;
use sqlx::AnyPool;

use crate::example_binary::{failed_start, mint_token_with_roles, start_example, stop, wait_for, watch_lines};
use crate::support::{TEST_SECRET, claims, example_app, fetch, hs256, level_lines_after_access, lines_of, serve};

/// A handler that logs at DEBUG everywhere a request's work goes: the handler, a spawned
/// task, a blocking task, a query on sqlx-sqlite's worker thread, and the chunks of its
/// streaming body.
async fn chase(State(pool): State<AnyPool>) -> Response {
    tracing::debug!("handler");
    let _ = reqscope::spawn(async { tracing::debug!("spawned task") }).await;
    let _ = reqscope::spawn_blocking(|| tracing::debug!("blocking task")).await;
    sqlx::query("SELECT 1").execute(&pool).await.expect("SELECT 1");
    let chunks = futures_util::stream::iter(0..2u64).then(|chunk| async move {
        tokio::task::yield_now().await;
        tracing::debug!(chunk, "streamed chunk");
        Ok::<_, Infallible>(format!("chunk {chunk}\n"))
    });
    Body::from_stream(chunks).into_response()
}

async fn fail_500() -> StatusCode {
    tracing::debug!("before the 500");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn error_then_ok() -> &'static str {
    tracing::debug!(step = 1, "step");
    tracing::error!("went wrong");
    tracing::debug!(step = 2, "step");
    "recovered"
}

async fn many_then_error() -> &'static str {
    for n in 0..300u64 {
        tracing::debug!(n, "step");
    }
    tracing::error!("gave up");
    "done"
}

/// Routes of the tests' own, behind the example's layers (its auth layer, token optional).
async fn test_app() -> Router {
    sqlx::any::install_default_drivers();
    // Statements logged at DEBUG, on the SQLite worker thread.
    let options: sqlx::any::AnyConnectOptions = "sqlite::memory:".parse().expect("a SQLite URL");
    let options = sqlx::ConnectOptions::log_statements(options, log::LevelFilter::Debug);
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect_with(options).await.expect("SQLite");
    Router::new()
        .route("/chase", get(chase))
        .route("/fail-500", get(fail_500))
        .route("/error-then-ok", get(error_then_ok))
        .route("/many-then-error", get(many_then_error))
        .route_layer(crate::app::auth_layer(TEST_SECRET).optional())
        .layer(CatchPanicLayer::new())
        .layer(RequestContextLayer::new())
        .with_state(pool)
}

fn bearer(roles: &[&str]) -> String {
    let mut claims = claims("7");
    claims["roles"] = serde_json::json!(roles);
    format!("Bearer {}", hs256(TEST_SECRET, &claims))
}

fn debug_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["level"] == "DEBUG").collect()
}

fn messages(lines: &[&Value]) -> Vec<String> {
    lines.iter().map(|l| l["message"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn a_raised_request_logs_debug_everywhere_while_100_others_stay_at_info() {
    let addr = serve(test_app().await).await;
    let raised = bearer(&["reader", "log-debug"]);
    let no_role = bearer(&["reader"]);
    let mut requests = Vec::new();
    for i in 0..100 {
        let id = format!("lvl-normal-{i}");
        // Every kind of request that must stay at INFO: nothing, the role without the header,
        // the header without the role, an unknown value with the role, no token at all.
        let headers: Vec<(&'static str, Vec<u8>)> = match i % 5 {
            0 => vec![],
            1 => vec![("authorization", raised.clone().into_bytes())],
            2 => vec![("authorization", no_role.clone().into_bytes()), ("x-log-level", b"debug".to_vec())],
            3 => vec![("authorization", raised.clone().into_bytes()), ("x-log-level", b"verbose".to_vec())],
            _ => vec![("x-log-level", b"trace".to_vec())],
        };
        requests.push(tokio::spawn(async move {
            let mut sent: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            sent.push(("x-request-id", id.as_bytes()));
            fetch(addr, "/chase", &sent).await
        }));
    }
    let chased = tokio::spawn({
        let raised = raised.clone();
        async move {
            let headers: [(&str, &[u8]); 3] =
                [("x-request-id", b"lvl-chased"), ("authorization", raised.as_bytes()), ("x-log-level", b"debug")];
            fetch(addr, "/chase", &headers).await
        }
    });
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "an ignored header is never an error: {}", reply.body);
    }
    let reply = chased.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "chunk 0\nchunk 1\n");

    let lines = level_lines_after_access("lvl-chased").await;
    let debug = debug_lines(&lines);
    let query = debug.iter().find(|l| l["target"] == "sqlx::query");
    assert!(query.is_some(), "the query's DEBUG line from the SQLite worker thread: {lines:#?}");
    let own: Vec<&Value> = debug.iter().copied().filter(|l| l["target"] != "sqlx::query").collect();
    let mut shown = messages(&own);
    shown.sort();
    assert_eq!(shown, ["blocking task", "handler", "spawned task", "streamed chunk", "streamed chunk"], "{lines:#?}");
    assert!(debug.iter().all(|l| l["user_id"] == "7" && l.get("buffered").is_none()), "{debug:#?}");

    for i in 0..100 {
        let id = format!("lvl-normal-{i}");
        let lines = level_lines_after_access(&id).await;
        assert!(debug_lines(&lines).is_empty(), "{id} is not raised: {lines:#?}");
        assert!(lines.iter().all(|l| l.get("buffered").is_none()), "{lines:#?}");
        // The header is ignored without a word, at any level.
        let every = lines_of(&id);
        assert!(every.iter().all(|l| l["level"] != "WARN" && l["level"] != "ERROR"), "{every:#?}");
        assert!(every.iter().all(|l| !l.to_string().contains("log-level")), "{every:#?}");
    }
}

#[tokio::test]
async fn users_me_logs_its_row_at_debug_only_for_a_raised_request() {
    let addr = serve(example_app().await).await;
    let token = {
        let mut claims = claims("1");
        claims["roles"] = serde_json::json!(["log-debug"]);
        format!("Bearer {}", hs256(TEST_SECRET, &claims))
    };
    let raised = fetch(
        addr,
        "/users/me",
        &[("x-request-id", b"lvl-me-raised"), ("authorization", token.as_bytes()), ("x-log-level", b"debug")],
    )
    .await;
    assert_eq!(raised.status, 200);
    let calm = fetch(addr, "/users/me", &[("x-request-id", b"lvl-me-calm"), ("authorization", token.as_bytes())]).await;
    assert_eq!(calm.status, 200);

    let lines = level_lines_after_access("lvl-me-raised").await;
    let row = lines.iter().find(|l| l["message"] == "user row fetched").expect("the DEBUG line of a raised request");
    assert_eq!(row["level"], "DEBUG");
    assert_eq!(row["user_id"], "1");
    assert_eq!(row["found"], true);
    let lines = level_lines_after_access("lvl-me-calm").await;
    assert!(debug_lines(&lines).is_empty(), "a request that succeeds drops its DEBUG lines: {lines:#?}");
}

/// The positions of `messages` among `lines`, each found exactly once.
fn once_each(lines: &[Value], messages: &[&str]) -> Vec<usize> {
    messages
        .iter()
        .map(|message| {
            let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i]["message"] == *message).collect();
            assert_eq!(at.len(), 1, "{message:?} once: {lines:#?}");
            at[0]
        })
        .collect()
}

#[tokio::test]
async fn a_panic_writes_the_kept_lines_just_before_its_error_line() {
    let addr = serve(example_app().await).await;
    let reply = fetch(addr, "/boom", &[("x-request-id", b"lvl-boom")]).await;
    assert_eq!(reply.status, 500);
    let lines = level_lines_after_access("lvl-boom").await;
    let at = once_each(&lines, &["about to fail", "handler panicked", "request completed"]);
    assert_eq!(at, [0, 1, 2], "{lines:#?}");
    assert_eq!(lines[0]["level"], "DEBUG");
    assert_eq!(lines[0]["buffered"], true);
    assert_eq!(lines[0]["path"], "/boom");
    assert!(lines[1].get("buffered").is_none() && lines[1].get("buffered_dropped").is_none(), "{}", lines[1]);
    assert_eq!(lines[2]["level"], "ERROR");
}

#[tokio::test]
async fn a_500_writes_them_before_its_access_line() {
    let addr = serve(test_app().await).await;
    let reply = fetch(addr, "/fail-500", &[("x-request-id", b"lvl-500")]).await;
    assert_eq!(reply.status, 500);
    let lines = level_lines_after_access("lvl-500").await;
    assert_eq!(once_each(&lines, &["before the 500", "request completed"]), [0, 1], "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["buffered"], true);
    assert_eq!(lines[1]["level"], "ERROR");
    assert_eq!(lines[1]["status"], 500);
}

#[tokio::test]
async fn an_error_event_writes_them_and_the_later_ones_follow_at_once() {
    let addr = serve(test_app().await).await;
    let reply = fetch(addr, "/error-then-ok", &[("x-request-id", b"lvl-error")]).await;
    assert_eq!(reply.status, 200);
    let lines = level_lines_after_access("lvl-error").await;
    let shown: Vec<(String, Value)> =
        lines.iter().map(|l| (l["message"].as_str().unwrap().to_owned(), l["step"].clone())).collect();
    let expected =
        [("step", 1.into()), ("went wrong", Value::Null), ("step", 2.into()), ("request completed", Value::Null)];
    assert_eq!(shown, expected.map(|(m, s)| (m.to_owned(), s)), "{lines:#?}");
    assert_eq!(lines[0]["buffered"], true);
    assert_eq!(lines[2]["buffered"], true, "marked: written only because the request had an error");
    assert_eq!(lines[3]["level"], "INFO");
}

#[tokio::test]
async fn each_request_keeps_at_most_256_lines_and_the_error_line_counts_the_rest() {
    let addr = serve(test_app().await).await;
    let reply = fetch(addr, "/many-then-error", &[("x-request-id", b"lvl-many")]).await;
    assert_eq!(reply.status, 200);
    let lines = level_lines_after_access("lvl-many").await;
    let kept: Vec<u64> = lines.iter().filter(|l| l["buffered"] == true).map(|l| l["n"].as_u64().unwrap()).collect();
    assert_eq!(kept, (44..300).collect::<Vec<u64>>(), "the newest 256, in order");
    let error = lines.iter().find(|l| l["message"] == "gave up").unwrap();
    assert_eq!(error["buffered_dropped"], 44, "{error}");
    let at = once_each(&lines, &["gave up"])[0];
    assert_eq!(at, 256, "right after the kept lines");
}

#[tokio::test]
async fn the_example_raises_a_request_for_the_role_and_keeps_lines_with_log_on_error() {
    let raised = format!("Bearer {}", mint_token_with_roles("1", &["log-debug"]));
    let plain = format!("Bearer {}", mint_token_with_roles("1", &[]));
    async fn me(addr: std::net::SocketAddr, id: &str, token: &str, level: &str) {
        let headers: [(&str, &[u8]); 3] =
            [("x-request-id", id.as_bytes()), ("authorization", token.as_bytes()), ("x-log-level", level.as_bytes())];
        let reply = fetch(addr, "/users/me", &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let (child, stdout, addr) = start_example(&[]);
    me(addr, "bin-lvl-raised", &raised, "debug").await;
    me(addr, "bin-lvl-no-role", &plain, "debug").await;
    me(addr, "bin-lvl-bad", &raised, "loud").await;
    let boom = fetch(addr, "/boom", &[("x-request-id", b"bin-lvl-boom")]).await;
    assert_eq!(boom.status, 500);
    let (lines, reader) = watch_lines(stdout);
    let ids = ["bin-lvl-raised", "bin-lvl-no-role", "bin-lvl-bad", "bin-lvl-boom"];
    let logged = |lines: &std::sync::Mutex<Vec<Value>>| {
        let lines = lines.lock().unwrap();
        ids.iter().all(|id| lines.iter().any(|l| l["request_id"] == *id && l["target"] == "reqscope::access"))
    };
    wait_for("every request's access line", || logged(&lines)).await;
    stop(child).await;
    crate::example_binary::until_stdout_ends(reader).await;
    let lines = lines.lock().unwrap().clone();
    let of = |id: &str| -> Vec<Value> { lines.iter().filter(|l| l["request_id"] == id).cloned().collect() };
    let raised_lines = of("bin-lvl-raised");
    assert!(
        raised_lines.iter().any(|l| l["message"] == "user row fetched" && l["level"] == "DEBUG"),
        "{raised_lines:#?}"
    );
    for id in ["bin-lvl-no-role", "bin-lvl-bad", "bin-lvl-boom"] {
        assert!(debug_lines(&of(id)).is_empty(), "{id}: LOG_ON_ERROR is off by default: {:#?}", of(id));
    }

    let (child, stdout, addr) = start_example(&[("LOG_ON_ERROR", "debug")]);
    let boom = fetch(addr, "/boom", &[("x-request-id", b"bin-keep-boom")]).await;
    assert_eq!(boom.status, 500);
    // An unknown value: not raised, so its DEBUG line is kept, then dropped.
    me(addr, "bin-keep-me", &raised, "no").await;
    let (lines, reader) = watch_lines(stdout);
    let logged = |lines: &std::sync::Mutex<Vec<Value>>| {
        let lines = lines.lock().unwrap();
        ["bin-keep-boom", "bin-keep-me"]
            .iter()
            .all(|id| lines.iter().any(|l| l["request_id"] == *id && l["target"] == "reqscope::access"))
    };
    wait_for("both access lines", || logged(&lines)).await;
    stop(child).await;
    crate::example_binary::until_stdout_ends(reader).await;
    let lines = lines.lock().unwrap().clone();
    let of = |id: &str| -> Vec<Value> { lines.iter().filter(|l| l["request_id"] == id).cloned().collect() };
    let boom_lines = of("bin-keep-boom");
    let at = once_each(&boom_lines, &["about to fail", "handler panicked"]);
    assert_eq!(at[0] + 1, at[1], "just before the panic's line: {boom_lines:#?}");
    assert_eq!(boom_lines[at[0]]["buffered"], true);
    assert!(debug_lines(&of("bin-keep-me")).is_empty(), "a request that succeeds drops them: {:#?}", of("bin-keep-me"));
}

#[test]
fn a_bad_log_on_error_stops_the_start_with_one_line_naming_it() {
    let stderr = failed_start(&[("LOG_ON_ERROR", "always")]);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("LOG_ON_ERROR must be `debug`, `trace` or `off`, got \"always\""), "{stderr}");
}

/// Runs a job carried from a request `id` (raised or not) whose work logs at DEBUG, then
/// fails or not; returns the job's lines at INFO once its end line is in.
async fn job_lines(id: &str, raised: bool, fails: bool) -> Vec<Value> {
    use reqscope::carry::Carried;
    use reqscope::job::Job;
    crate::support::logs();
    let request = reqscope::RequestContext::new(reqscope::RequestId::parse(id).unwrap());
    if raised {
        request.raise_level(Some(reqscope::RaisedLevel::Debug));
    }
    let headers = request.carry().to_headers();
    // A worker that knows nothing of the request but the message's headers.
    let worker = tokio::spawn(async move {
        Job::new("report")
            .run(Carried::from_headers(&headers), async move {
                tracing::debug!("job step");
                if fails { Err("no printer") } else { Ok(()) }
            })
            .await
    });
    let _ = worker.await.unwrap();
    let id = id.to_owned();
    let ended = || level_lines_of_job(&id).iter().any(|l| l["target"] == "reqscope::job" && l.get("outcome").is_some());
    wait_for("the job's end line", ended).await;
    level_lines_of_job(&id)
}

fn level_lines_of_job(id: &str) -> Vec<Value> {
    crate::support::level_lines_of(id).into_iter().filter(|l| l["job"] == "report").collect()
}

#[tokio::test]
async fn a_job_carried_from_a_raised_request_runs_raised_and_a_failed_job_writes_its_kept_lines() {
    let lines = job_lines("lvl-job-raised", true, false).await;
    assert_eq!(messages(&lines.iter().collect::<Vec<_>>()), ["job step", "job completed"], "{lines:#?}");
    assert!(lines[0].get("buffered").is_none());

    let lines = job_lines("lvl-job-calm", false, false).await;
    assert_eq!(messages(&lines.iter().collect::<Vec<_>>()), ["job completed"], "{lines:#?}");

    let lines = job_lines("lvl-job-failed", false, true).await;
    assert_eq!(messages(&lines.iter().collect::<Vec<_>>()), ["job step", "job failed"], "{lines:#?}");
    assert_eq!(lines[0]["buffered"], true);
    assert_eq!(lines[1]["level"], "ERROR");
}
