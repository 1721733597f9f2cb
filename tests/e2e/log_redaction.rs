//! Redaction at format time and the request headers of the access line, over real HTTP: what
//! the lines (JSON and pretty) and the Sentry events say, and what they never say.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderName, Method};
use proptest::prelude::*;
use reqscope::logging::{LogLayer, MemoryWriter};
use reqscope::redact::{DEFAULT_KEYS, Redaction};
use reqscope::{CatchPanicLayer, RequestContext, RequestContextLayer};
use serde_json::Value;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

use crate::support::{
    TEST_SECRET, access_lines_of, claims, example_app, fetch, hs256, lines_of, logs, send, serve, wait_until,
};

/// Every default key as an event field, each value `v-<key>`; field names are static, so they
/// are spelled out (and checked against the list by the tests).
fn log_every_default_key() {
    tracing::info!(
        password = "v-password",
        passwd = "v-passwd",
        secret = "v-secret",
        token = "v-token",
        access_token = "v-access_token",
        refresh_token = "v-refresh_token",
        id_token = "v-id_token",
        authorization = "v-authorization",
        cookie = "v-cookie",
        set_cookie = "v-set_cookie",
        api_key = "v-api_key",
        apikey = "v-apikey",
        client_secret = "v-client_secret",
        private_key = "v-private_key",
        rows = 3,
        "every default key"
    );
}

/// A handler that logs a sensitive value from every source: the event's fields (every default
/// key, other spellings, a user-added key, a value only the hook knows), a span around it, a
/// custom context field; the baggage comes from the request.
async fn secrets() -> &'static str {
    RequestContext::with(|ctx| {
        ctx.set_field("session_token", "v-custom");
        ctx.set_field("tenant", "acme");
    });
    async {
        log_every_default_key();
        tracing::info!(
            DB_Password = "v-db-password",
            x.api.key = "v-dotted",
            userAccessToken = ?"v-camel",
            user_email = "v-user-email",
            note = "card v-4111",
            kept = "visible",
            "spellings"
        );
        tracing::info!(kept = %"visible", "card v-4111 in a message");
    }
    .instrument(tracing::info_span!("charge", card.secret = "v-span", order = 7))
    .await;
    "done"
}

/// The headers the test app puts on its access line.
fn listed_headers() -> Vec<HeaderName> {
    [
        "user-agent",
        "x-client",
        "x-long",
        "x-absent",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect()
}

fn test_app() -> Router {
    Router::new()
        .route("/secrets", get(secrets))
        .layer(CatchPanicLayer::new())
        .layer(RequestContextLayer::new().log_request_headers(listed_headers()))
}

/// The redaction of the test app: the defaults, `email`, and a hook for card numbers.
fn test_redaction() -> Redaction {
    Redaction::new().redact_keys(["email"]).redact_values(|_key: &str, value: &str| value.contains("4111"))
}

/// Serves `app` under a subscriber of the test's own — JSON lines and pretty lines, both with
/// `redaction` and the baggage key `auth.token` listed — sends `GET path` with `headers`, and
/// returns both outputs once the access line is written.
async fn json_and_pretty(app: Router, path: &str, headers: &[(&str, &[u8])]) -> (Vec<Value>, String) {
    let json = MemoryWriter::new();
    let pretty = MemoryWriter::new();
    let layer = || LogLayer::new().baggage_fields(["session", "auth.token"]).redaction(test_redaction());
    let subscriber = tracing_subscriber::registry()
        .with(layer().with_writer(json.clone()))
        .with(layer().pretty().with_writer(pretty.clone()));
    // The runtime is single-threaded: the server and its events run on this thread, under
    // this subscriber, apart from the other tests' global one.
    let _default = tracing::subscriber::set_default(subscriber);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let reply = fetch(addr, path, headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_until("the access lines", || {
        json.contents().contains("\"reqscope::access\"") && pretty.contents().contains("reqscope::access:")
    })
    .await;
    server.abort();
    (json.json_lines(), pretty.contents())
}

#[tokio::test(flavor = "current_thread")]
async fn every_sensitive_value_is_redacted_in_json_and_pretty_lines_from_every_source() {
    let long = "L".repeat(1000);
    let headers: &[(&str, &[u8])] = &[
        ("x-request-id", b"redact-http-1"),
        ("baggage", b"session=s-1,auth.token=v-baggage"),
        ("user-agent", b"curl/8.5.0"),
        ("x-client", b"web 2.1"),
        ("x-long", long.as_bytes()),
        ("authorization", b"Bearer v-authorization-header"),
        ("proxy-authorization", b"Basic v-proxy"),
        ("cookie", b"sid=v-cookie-header"),
        ("set-cookie", b"sid=v-set-cookie-header"),
        ("x-api-key", b"v-api-key-header"),
        ("x-auth-token", b"v-auth-token-header"),
    ];
    let (json, pretty) = json_and_pretty(test_app(), "/secrets", headers).await;
    let raw_json = serde_json::to_string(&json).unwrap();
    assert!(!raw_json.contains("v-"), "a sensitive value reached a JSON line: {raw_json}");
    assert!(!pretty.contains("v-"), "a sensitive value reached a pretty line: {pretty}");

    let every = json.iter().find(|l| l["message"] == "every default key").expect("the handler's line");
    for key in DEFAULT_KEYS {
        assert_eq!(every[key], "[redacted]", "{key}: {every}");
        assert!(pretty.contains(&format!(" {key}=\"[redacted]\"")), "{key}: {pretty}");
    }
    assert_eq!(every["rows"], 3);
    assert_eq!(every["session_token"], "[redacted]", "a custom context field: {every}");
    assert_eq!(every["tenant"], "acme");
    assert_eq!(every["baggage.auth.token"], "[redacted]", "a baggage entry: {every}");
    assert_eq!(every["baggage.session"], "s-1");
    assert_eq!(every["card.secret"], "[redacted]", "a span field: {every}");
    assert_eq!(every["order"], 7);

    let spellings = json.iter().find(|l| l["message"] == "spellings").unwrap();
    for key in ["DB_Password", "x.api.key", "userAccessToken", "user_email", "note"] {
        assert_eq!(spellings[key], "[redacted]", "{key}: {spellings}");
    }
    assert_eq!(spellings["kept"], "visible");
    let hooked = json.iter().find(|l| l["kept"] == "visible" && l["message"] != "spellings").unwrap();
    assert_eq!(hooked["message"], "[redacted]", "the value hook sees the message: {hooked}");

    let access = json.iter().find(|l| l["target"] == "reqscope::access").unwrap();
    assert_eq!(access["header.user-agent"], "curl/8.5.0", "{access}");
    assert_eq!(access["header.x-client"], "web 2.1");
    assert_eq!(access["header.x-long"].as_str().map(str::len), Some(256), "capped at 256 bytes");
    assert!(access.get("header.x-absent").is_none(), "not sent, not written: {access}");
    for name in ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"] {
        assert_eq!(access[format!("header.{name}")], "[redacted]", "{name}: {access}");
        assert!(pretty.contains(&format!(" header.{name}=\"[redacted]\"")), "{name}: {pretty}");
    }
    assert!(pretty.contains(" header.user-agent=\"curl/8.5.0\""), "{pretty}");
    let other_headers = json.iter().filter(|l| l["target"] != "reqscope::access");
    assert!(
        other_headers.flat_map(|l| l.as_object().unwrap().keys()).all(|k| !k.starts_with("header.")),
        "headers go on the access line only: {json:?}"
    );
}

#[tokio::test]
async fn the_example_writes_the_user_agent_on_its_access_line_and_never_the_token() {
    let addr = serve(example_app().await).await;
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("2")));
    let reply = fetch(
        addr,
        "/users/me",
        &[("x-request-id", b"redact-ua-1"), ("user-agent", b"curl/8.5.0"), ("authorization", bearer.as_bytes())],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let access = access_lines_of("redact-ua-1").await.remove(0);
    assert_eq!(access["header.user-agent"], "curl/8.5.0", "LOG_HEADERS defaults to user-agent: {access}");
    assert!(access.get("header.authorization").is_none(), "not listed: {access}");
    assert!(!logs().contents().contains(&bearer[7..]), "the token reached a line");
}

/// A name no other test or run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn the_user_created_line_redacts_the_email_which_is_on_no_line() {
    let addr = serve(example_app().await).await;
    let email = format!("{}@users.example", unique("redacted-address"));
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("5")));
    let body = serde_json::json!({ "name": "Dorothy Vaughan", "email": email }).to_string();
    let headers: &[(&str, &[u8])] = &[
        ("content-type", b"application/json"),
        ("authorization", bearer.as_bytes()),
        ("x-request-id", b"redact-created-1"),
    ];
    let reply = send(Method::POST, addr, "/users", headers, Bytes::from(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["email"], email.as_str(), "the response keeps the real value");
    access_lines_of("redact-created-1").await;
    // The welcome-email job runs later, in the request's context: its end line comes last.
    wait_until("the job's end line", || lines_of("redact-created-1").iter().any(|l| l["message"] == "job completed"))
        .await;
    let created: Vec<Value> =
        lines_of("redact-created-1").into_iter().filter(|l| l["message"] == "user created").collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["level"], "INFO");
    assert_eq!(created[0]["new_user_id"], reply.json()["id"], "{}", created[0]);
    assert_eq!(created[0]["email"], "[redacted]", "{}", created[0]);
    assert!(!logs().contents().contains(&email), "the address reached a line");
}

/// A handler that reports an error to Sentry with a sensitive value in every place an event
/// has one: fields (every default key), tags, nested extra data, a custom context field, a
/// breadcrumb before it.
async fn reports() -> &'static str {
    RequestContext::with(|ctx| ctx.set_field("api_key", "v-custom"));
    tracing::info!(refresh_token = "v-breadcrumb", "about to charge");
    let mut extra = sentry::protocol::Map::new();
    extra.insert("outer".to_owned(), serde_json::json!({ "inner": [{ "db_password": "v-nested" }], "n": 1 }));
    sentry::capture_event(sentry::protocol::Event {
        message: Some("manual report".to_owned()),
        extra,
        ..Default::default()
    });
    tracing::error!(
        password = "v-password",
        passwd = "v-passwd",
        secret = "v-secret",
        token = "v-token",
        access_token = "v-access_token",
        refresh_token = "v-refresh_token",
        id_token = "v-id_token",
        authorization = "v-authorization",
        cookie = "v-cookie",
        set_cookie = "v-set_cookie",
        api_key = "v-api_key",
        apikey = "v-apikey",
        client_secret = "v-client_secret",
        private_key = "v-private_key",
        tags.session_token = "v-tag",
        rows = 3,
        "charging failed"
    );
    "reported"
}

#[test]
fn sentry_events_are_redacted_like_the_lines() {
    crate::error_tracking::with_sentry(|| async {
        let app = Router::new().route("/reports", get(reports)).layer(RequestContextLayer::new());
        let addr = serve(app).await;
        let reply = fetch(addr, "/reports", &[("x-request-id", b"redact-sentry-1")]).await;
        assert_eq!(reply.body, "reported");
        let events = crate::error_tracking::events_of("redact-sentry-1", 2).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        let sent = serde_json::to_string(&events).unwrap();
        assert!(!sent.contains("v-"), "a sensitive value reached Sentry: {sent}");

        let error = events.iter().find(|e| e.message.as_deref() == Some("charging failed")).unwrap();
        let sentry::protocol::Context::Other(fields) = &error.contexts["Rust Tracing Fields"] else {
            panic!("the event's fields are a map: {:?}", error.contexts)
        };
        for key in DEFAULT_KEYS {
            assert_eq!(fields[key], "[redacted]", "{key}: {fields:?}");
        }
        assert_eq!(fields["rows"], 3);
        assert_eq!(error.tags.get("session_token").map(String::as_str), Some("[redacted]"));
        assert_eq!(error.tags.get("request_id").map(String::as_str), Some("redact-sentry-1"), "stamped tags stay");
        let sentry::protocol::Context::Other(request) = &error.contexts["request"] else { panic!() };
        assert_eq!(request["api_key"], "[redacted]", "{request:?}");
        assert_eq!(request["request_id"], "redact-sentry-1");
        let crumb = error.breadcrumbs.values.iter().find(|b| b.message.as_deref() == Some("about to charge")).unwrap();
        assert_eq!(crumb.data["refresh_token"], "[redacted]", "{crumb:?}");

        let manual = events.iter().find(|e| e.message.as_deref() == Some("manual report")).unwrap();
        assert_eq!(manual.extra["outer"], serde_json::json!({ "inner": [{ "db_password": "[redacted]" }], "n": 1 }));
    });
}

/// Names a span or event field can have (static in tracing), each sensitive under the default
/// keys in another spelling or nesting.
const SENSITIVE_NAMES: [&str; 8] = [
    "password",
    "db.password",
    "DB_PASSWORD",
    "user.credentials.api_key",
    "x.session.token",
    "nested.a.b.c.client_secret",
    "Authorization",
    "refreshToken",
];

/// A span (or event, at `depth` 0) carrying the sensitive field `name` with `value`, recorded
/// when it is created or later.
fn span_with(name: usize, value: &str, late: bool) -> tracing::Span {
    macro_rules! span {
        ($($field:ident).+) => {
            if late {
                let span = tracing::info_span!("nest", $($field).+ = tracing::field::Empty, plain = 1);
                span.record(SENSITIVE_NAMES[name], value);
                span
            } else {
                tracing::info_span!("nest", $($field).+ = value, plain = 1)
            }
        };
    }
    match name {
        0 => span!(password),
        1 => span!(db.password),
        2 => span!(DB_PASSWORD),
        3 => span!(user.credentials.api_key),
        4 => span!(x.session.token),
        5 => span!(nested.a.b.c.client_secret),
        6 => span!(Authorization),
        _ => span!(refreshToken),
    }
}

fn event_with(name: usize, value: &str) {
    match name {
        0 => tracing::info!(password = value, "x"),
        1 => tracing::info!(db.password = value, "x"),
        2 => tracing::info!(DB_PASSWORD = value, "x"),
        3 => tracing::info!(user.credentials.api_key = value, "x"),
        4 => tracing::info!(x.session.token = value, "x"),
        5 => tracing::info!(nested.a.b.c.client_secret = value, "x"),
        6 => tracing::info!(Authorization = ?value, "x"),
        _ => tracing::info!(refreshToken = %value, "x"),
    }
}

/// A key made of `segments` joined by `separators`, ending in a default key written with
/// `separator` for its own `_` and in `upper` case or not.
fn dynamic_key() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec("[a-z0-9]{1,6}", 0..4),
        proptest::sample::select(&[".", "_", "-"][..]),
        proptest::sample::select(&DEFAULT_KEYS[..]),
        any::<bool>(),
    )
        .prop_map(|(segments, separator, key, upper)| {
            let key = key.replace('_', separator);
            let key = if upper { key.to_ascii_uppercase() } else { key };
            segments.into_iter().chain([key]).collect::<Vec<_>>().join(separator)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_sensitive_value_ever_reaches_a_line(
        secret in "S3cR[ -~]{6,20}",
        depth in 0usize..5,
        holder in 0usize..6,
        name in 0usize..SENSITIVE_NAMES.len(),
        late in any::<bool>(),
        context_key in dynamic_key(),
        baggage_key in dynamic_key(),
        pretty in any::<bool>(),
    ) {
        let logs = MemoryWriter::new();
        let layer = LogLayer::new().baggage_fields([baggage_key.as_str()]);
        let layer = if pretty { layer.pretty() } else { layer };
        let subscriber = tracing_subscriber::registry().with(layer.with_writer(logs.clone()));
        let ctx = RequestContext::new(reqscope::RequestId::new_v4());
        ctx.set_field(context_key.as_str(), secret.as_str());
        ctx.set_baggage(baggage_key.as_str(), secret.as_str()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            RequestContext::scope_sync(ctx, || {
                // Spans nested `depth` deep, the sensitive field on the one at `holder` (or on
                // the event when `holder` is past the innermost).
                let mut guards = Vec::new();
                for level in 0..depth {
                    let span = if level == holder {
                        span_with(name, &secret, late)
                    } else {
                        tracing::info_span!("nest", plain = level)
                    };
                    guards.push(span.entered());
                }
                if holder >= depth {
                    event_with(name, &secret);
                } else {
                    tracing::info!(plain = "event", "x");
                }
                drop(guards);
            })
        });
        let text = logs.contents();
        prop_assert_eq!(logs.lines().len(), 1, "{}", text);
        let escaped_json = serde_json::to_string(&secret).unwrap();
        let escaped_debug = format!("{secret:?}");
        for form in [secret.as_str(), &escaped_json[1..escaped_json.len() - 1], &escaped_debug[1..escaped_debug.len() - 1]] {
            prop_assert!(!text.contains(form), "{} reached the line: {}", form, text);
        }
        prop_assert!(text.contains("[redacted]"), "{}", text);
    }
}

#[test]
fn every_default_key_is_spelled_out_in_these_tests() {
    // The handlers above list the default keys by hand (field names are static): this fails
    // when the set changes and they do not.
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(logs.clone()));
    tracing::subscriber::with_default(subscriber, log_every_default_key);
    let line = &logs.json_lines()[0];
    let mut redacted: Vec<&str> =
        line.as_object().unwrap().iter().filter(|(_, v)| *v == "[redacted]").map(|(k, _)| k.as_str()).collect();
    let mut expected = DEFAULT_KEYS.to_vec();
    redacted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(redacted, expected);
}

/// `POST /users` on the example binary started with `env`: the user's address, and every line
/// of the request once its job has ended.
async fn created_on_the_binary(env: &[(&str, &str)], request_id: &str) -> (String, Vec<Value>) {
    use crate::example_binary::{start_example, stop, until_stdout_ends, wait_for, watch_lines};
    let (child, stdout, addr) = start_example(env);
    let (lines, reader) = watch_lines(stdout);
    let email = format!("{}@users.example", unique("bin-address"));
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("6")));
    let body = serde_json::json!({ "name": "Mary Jackson", "email": email }).to_string();
    let headers: &[(&str, &[u8])] = &[
        ("content-type", b"application/json"),
        ("authorization", bearer.as_bytes()),
        ("x-request-id", request_id.as_bytes()),
        ("user-agent", b"bin-agent/1"),
        ("x-client", b"bin-client"),
    ];
    let reply = send(Method::POST, addr, "/users", headers, Bytes::from(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let ended =
        || lines.lock().unwrap().iter().any(|l| l["request_id"] == request_id && l["message"] == "job completed");
    wait_for("the job's end line", ended).await;
    stop(child).await;
    until_stdout_ends(reader).await;
    let all = lines.lock().unwrap().clone();
    (email, all)
}

#[tokio::test]
async fn the_example_binary_redacts_the_email_by_default_and_writes_the_user_agent() {
    let (email, lines) = created_on_the_binary(&[], "redact-bin-1").await;
    assert!(lines.iter().all(|l| !l.to_string().contains(&email)), "the address reached stdout");
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == "redact-bin-1").collect();
    let created: Vec<&&Value> = mine.iter().filter(|l| l["message"] == "user created").collect();
    assert_eq!(created.len(), 1, "{mine:?}");
    assert_eq!(created[0]["email"], "[redacted]");
    assert!(created[0]["new_user_id"].is_i64(), "{}", created[0]);
    let access = mine.iter().find(|l| l["target"] == "reqscope::access").unwrap();
    assert_eq!(access["header.user-agent"], "bin-agent/1", "{access}");
    assert!(access.get("header.x-client").is_none(), "{access}");
}

#[tokio::test]
async fn log_redact_and_log_headers_replace_the_example_defaults() {
    let env = [("LOG_REDACT", "note, x-client"), ("LOG_HEADERS", "X-Client, authorization,")];
    let (email, lines) = created_on_the_binary(&env, "redact-bin-2").await;
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == "redact-bin-2").collect();
    let created = mine.iter().find(|l| l["message"] == "user created").unwrap();
    assert_eq!(created["email"], email.as_str(), "`email` is the example's default only: {created}");
    let access = mine.iter().find(|l| l["target"] == "reqscope::access").unwrap();
    assert_eq!(access["header.x-client"], "[redacted]", "a LOG_REDACT key judges header names too: {access}");
    assert_eq!(access["header.authorization"], "[redacted]", "{access}");
    assert!(access.get("header.user-agent").is_none(), "{access}");
    assert!(lines.iter().all(|l| !l.to_string().contains("bin-client")), "a redacted header reached stdout");
}

#[test]
fn bad_log_redact_and_log_headers_values_stop_the_start_with_a_clear_error() {
    for (variable, value, says) in [
        ("LOG_REDACT", "email, bad key", "LOG_REDACT must be a comma-separated list of field names"),
        ("LOG_REDACT", "-", "LOG_REDACT must be a comma-separated list of field names"),
        ("LOG_HEADERS", "user agent", "LOG_HEADERS must be a comma-separated list of header names"),
        ("LOG_HEADERS", "user-agent, x:y", "LOG_HEADERS must be a comma-separated list of header names"),
    ] {
        let stderr = crate::example_binary::failed_start(&[(variable, value)]);
        assert!(stderr.contains(says), "{variable}={value:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
