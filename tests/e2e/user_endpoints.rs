//! The example's user endpoints on its database (SQLite here).

use bytes::Bytes;
use http::Method;

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, hs256, logs, send, serve};

#[tokio::test]
async fn creating_users_answers_each_kind_of_bad_input() {
    let addr = serve(example_app().await).await;
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
    let created = post(r#"{"name":"Katherine Johnson","email":"secret.katherine@nasa.example"}"#, true).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let user = created.json();
    assert_eq!(user["name"], "Katherine Johnson");
    assert!(user["id"].as_i64().unwrap() > 3);

    let duplicate = post(r#"{"name":"K. J.","email":"secret.katherine@nasa.example"}"#, true).await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.body);
    assert_eq!(duplicate.json()["error"], "conflict");
    assert_eq!(duplicate.json()["request_id"], duplicate.request_id());

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
    access_lines_of("db-down-1").await;
    let errors: Vec<serde_json::Value> =
        crate::support::lines_of("db-down-1").into_iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "one stamped ERROR line: {errors:?}");
    assert_eq!(errors[0]["path"], "/users/1");

    assert_eq!(crate::support::fetch(addr, "/health", &[]).await.status, 200);
    let ready = crate::support::fetch(addr, "/ready", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["database"], "down");
}
