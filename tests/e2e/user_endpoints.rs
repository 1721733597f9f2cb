//! The example's user endpoints on its database (SQLite here).

use bytes::Bytes;
use http::Method;

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, hs256, logs, send, serve};

#[tokio::test]
async fn creating_users_answers_each_kind_of_bad_input() {
    creating_users(example_app().await, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_too() {
    let Some((app, _pool, schema)) = crate::support::postgres_app().await else { return };
    let addr = serve(app).await;
    let reply = crate::support::fetch(addr, "/users/2", &[]).await;
    assert_eq!(reply.json()["name"], "Grace Hopper", "seeded by the migration");
    concurrent_users(addr, "pg").await;
    creating_users_at(addr, "postgres").await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_on_sqlite() {
    let addr = serve(example_app().await).await;
    concurrent_users(addr, "sqlite").await;
}

/// 200 concurrent `/users/me` requests by three users: every query line carries its own
/// request's id and user.
async fn concurrent_users(addr: std::net::SocketAddr, tag: &str) {
    let requests: Vec<_> = (0..200u32)
        .map(|n| {
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let user = (n % 3 + 1).to_string();
                let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims(&user)));
                let id = format!("db-conc-{tag}-{n}");
                let reply = crate::support::fetch(
                    addr,
                    "/users/me",
                    &[("x-request-id", id.as_bytes()), ("authorization", bearer.as_bytes())],
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                (id, user)
            })
        })
        .collect();
    let mut expected = std::collections::HashMap::new();
    for request in requests {
        let (id, user) = request.await.unwrap();
        expected.insert(id, user);
    }
    for id in expected.keys() {
        crate::support::access_lines_of(id).await;
    }
    let mut queries = 0;
    for line in logs().json_lines() {
        if let Some(user) = line["request_id"].as_str().and_then(|id| expected.get(id)) {
            assert_eq!(line["user_id"], user.as_str(), "cross-talk: {line}");
            if line["target"] == "sqlx::query" {
                queries += 1;
            }
        }
    }
    assert_eq!(queries, 200, "one stamped query line per request");
}

async fn creating_users(app: axum::Router, tag: &str) {
    let addr = serve(app).await;
    creating_users_at(addr, tag).await;
}

async fn creating_users_at(addr: std::net::SocketAddr, tag: &str) {
    let tag: &'static str = Box::leak(tag.to_owned().into_boxed_str());
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("1")));
    let post = |body: &'static str, with_token: bool| {
        let bearer = bearer.clone();
        async move {
            let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
            if with_token {
                headers.push(("authorization", bearer.as_bytes()));
            }
            send(Method::POST, addr, "/users", &headers, Bytes::from_static(body.as_bytes())).await
        }
    };
    let body: &'static str = Box::leak(
        format!(r#"{{"name":"Katherine Johnson","email":"secret.katherine.{tag}@nasa.example"}}"#).into_boxed_str(),
    );
    let created = post(body, true).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let user = created.json();
    assert_eq!(user["name"], "Katherine Johnson");
    assert!(user["id"].as_i64().unwrap() > 3);

    let body: &'static str =
        Box::leak(format!(r#"{{"name":"K. J.","email":"secret.katherine.{tag}@nasa.example"}}"#).into_boxed_str());
    let duplicate = post(body, true).await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.body);
    assert_eq!(duplicate.json()["error"], "conflict");
    assert_eq!(duplicate.json()["request_id"], duplicate.request_id());
    access_lines_of(duplicate.request_id()).await;
    let duplicate_lines = crate::support::lines_of(duplicate.request_id());
    assert!(duplicate_lines.iter().all(|l| l["level"] != "ERROR"), "a 4xx is no ERROR: {duplicate_lines:?}");
    assert!(
        duplicate_lines.iter().any(|l| l["target"] == "reqscope::error" && l["level"] == "INFO" && l["status"] == 409)
    );

    for (body, status, error) in [
        (r#"{"name":"x","email":"#, 400, "bad_request"),
        (r#"{"name":"x"}"#, 422, "invalid"),
        (r#"{"name":"","email":"a@b.example"}"#, 422, "invalid"),
        (r#"{"name":"x","email":"not an email"}"#, 422, "invalid"),
        (r#"{"name":1,"email":"a@b.example"}"#, 422, "invalid"),
    ] {
        let reply = post(body, true).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.json()["error"], error, "{body}");
        assert_eq!(reply.json()["request_id"], reply.request_id(), "{body}");
    }
    assert_eq!(post(r#"{"name":"x","email":"x@y.example"}"#, false).await.status, 401);

    let created_id = created.request_id().to_owned();
    let access = access_lines_of(&created_id).await;
    assert_eq!(access[0]["status"], 201);
    assert_eq!(access[0]["user_id"], "1");
    assert!(!logs().contents().contains("secret.katherine"), "a bound parameter value reached the logs");
}

#[tokio::test]
async fn a_lost_database_gives_503_with_one_stamped_error_and_health_keeps_answering() {
    let (app, pool) = crate::support::example_app_with_pool().await;
    let addr = serve(app).await;
    let ready = crate::support::fetch(addr, "/ready", &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["database"], "up");

    pool.close().await;
    let reply = crate::support::fetch(addr, "/users/1", &[("x-request-id", b"db-down-1")]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "unavailable");
    assert_eq!(reply.json()["request_id"], "db-down-1");
    let access = access_lines_of("db-down-1").await;
    assert_eq!(access[0]["level"], "ERROR", "a 503 is a failed request: {}", access[0]);
    let errors: Vec<serde_json::Value> = crate::support::lines_of("db-down-1")
        .into_iter()
        .filter(|l| l["level"] == "ERROR" && l["target"] != "reqscope::access")
        .collect();
    assert_eq!(errors.len(), 1, "one stamped ERROR line besides the access line: {errors:?}");
    assert_eq!(errors[0]["path"], "/users/1");
    assert_eq!(errors[0]["status"], 503);
    assert!(errors[0]["error"].as_str().unwrap().contains("closed"), "the cause's chain is logged: {}", errors[0]);
    assert!(!reply.body.contains("closed"), "but not sent to the client");

    assert_eq!(crate::support::fetch(addr, "/health", &[]).await.status, 200);
    let ready = crate::support::fetch(addr, "/ready", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["database"], "down");
}

#[tokio::test]
async fn statements_slower_than_the_threshold_are_warnings() {
    // A threshold of zero makes every statement "slow": each query line comes at WARN.
    let url = format!("sqlite:file:reqscope-test-slow-{}?mode=memory&cache=shared", std::process::id());
    let pool = crate::db::connect(&url, std::time::Duration::ZERO).await.unwrap();
    let addr = serve(crate::app::app(
        crate::app::auth_layer(TEST_SECRET),
        crate::support::default_limit(),
        pool,
        crate::support::unused_next_hop(),
    ))
    .await;
    crate::support::fetch(addr, "/users/1", &[("x-request-id", b"db-slow-1")]).await;
    access_lines_of("db-slow-1").await;
    let queries: Vec<serde_json::Value> =
        crate::support::lines_of("db-slow-1").into_iter().filter(|l| l["target"] == "sqlx::query").collect();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0]["level"], "WARN", "{}", queries[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_going_away_and_coming_back() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("skipped: TEST_DATABASE_URL is not set (PostgreSQL tests run in CI, see .ci/run)");
        return;
    };
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority = &url[start..url[start..].find('/').map_or(url.len(), |i| start + i)];
    let host_port = authority.rsplit('@').next().unwrap();
    let target = tokio::net::lookup_host(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
    .await
    .unwrap()
    .next()
    .unwrap();
    let proxy = crate::support::CuttableProxy::start(target).await;
    let Some((app, _pool, schema)) = crate::support::postgres_app_via(Some(proxy.addr)).await else { return };
    let addr = serve(app).await;
    assert_eq!(crate::support::fetch(addr, "/users/1", &[]).await.status, 200);

    proxy.cut();
    let reply = crate::support::fetch(addr, "/users/1", &[("x-request-id", b"pg-down-1")]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["request_id"], "pg-down-1");
    let access = access_lines_of("pg-down-1").await;
    assert_eq!(access[0]["level"], "ERROR", "a 503 is a failed request: {}", access[0]);
    let errors = crate::support::lines_of("pg-down-1")
        .into_iter()
        .filter(|l| l["level"] == "ERROR" && l["target"] != "reqscope::access")
        .count();
    assert_eq!(errors, 1, "one stamped ERROR line besides the access line");
    assert_eq!(crate::support::fetch(addr, "/health", &[]).await.status, 200);
    assert_eq!(crate::support::fetch(addr, "/ready", &[]).await.status, 503);

    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let reply = crate::support::fetch(addr, "/users/1", &[]).await;
        if reply.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery without a restart: {}", reply.body);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(crate::support::fetch(addr, "/ready", &[]).await.status, 200);
    schema.drop_schema().await;
}
