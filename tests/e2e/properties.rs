//! Property tests: untrusted input — forwarded ids, `traceparent`, bearer tokens and their
//! claims, any text or bytes in a log field — is judged exactly by the documented rules and
//! always yields exactly one valid JSON line.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use reqscope::auth::AuthLayer;
use reqscope::logging::{LogLayer, MemoryWriter};
use reqscope::trace::{TraceContext, TraceParent};
use reqscope::{RequestContext, RequestContextLayer, RequestId};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::prelude::*;

use crate::grammar::{id_is_valid, traceparent_is_valid};

const SECRET: &[u8] = b"a property-test secret of at least 32 bytes";

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Runs `f` under a subscriber of its own and returns every line it wrote.
fn lines_written(f: impl FnOnce()) -> Vec<String> {
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(logs.clone()));
    tracing::subscriber::with_default(subscriber, f);
    logs.lines()
}

fn valid_traceparent() -> impl Strategy<Value = String> {
    ("[0-9a-f]{32}", "[0-9a-f]{16}", any::<u8>())
        .prop_filter("non-zero ids", |(t, p, _)| t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0'))
        .prop_map(|(t, p, flags)| format!("00-{t}-{p}-{flags:02x}"))
}

/// A `traceparent` of any version (`ff` included), with or without fields after a `-` or
/// another byte.
fn any_version_traceparent() -> impl Strategy<Value = String> {
    (valid_traceparent(), "[0-9a-f]{2}", proptest::option::of("[-.][ -~]{0,12}"))
        .prop_map(|(value, version, rest)| format!("{version}{}{}", &value[2..], rest.unwrap_or_default()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_version_is_judged_by_the_grammar_and_sent_on_as_version_00(
        value in any_version_traceparent(), at in 0usize..70, byte in any::<u8>()
    ) {
        let mut bytes = value.into_bytes();
        prop_assert_eq!(TraceParent::parse(&bytes).is_ok(), traceparent_is_valid(&bytes));
        if let Ok(parent) = TraceParent::parse(&bytes) {
            let sent = TraceContext::child_of(parent, None).traceparent();
            prop_assert!(sent.as_bytes().starts_with(b"00-") && sent.len() == 55);
        }
        if let Some(b) = bytes.get_mut(at) {
            *b = byte;
        }
        prop_assert_eq!(TraceParent::parse(&bytes).is_ok(), traceparent_is_valid(&bytes));
    }

    #[test]
    fn a_forwarded_id_is_kept_exactly_when_it_follows_the_rules(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        match RequestId::from_bytes(&bytes) {
            Ok(id) => {
                prop_assert!(id_is_valid(&bytes));
                prop_assert_eq!(id.as_bytes(), &bytes[..]);
                prop_assert!(HeaderValue::from_bytes(id.as_bytes()).is_ok());
            }
            Err(_) => prop_assert!(!id_is_valid(&bytes)),
        }
    }

    #[test]
    fn ids_from_the_alphabet_are_always_kept(id in "[A-Za-z0-9._:+/=@-]{1,128}") {
        prop_assert_eq!(RequestId::parse(&id).map(|id| id.to_string()), Ok(id));
    }

    #[test]
    fn traceparent_is_accepted_exactly_by_the_strict_grammar(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
        prop_assert_eq!(TraceParent::parse(&bytes).is_ok(), traceparent_is_valid(&bytes));
    }

    #[test]
    fn one_changed_byte_in_a_valid_traceparent_is_judged_by_the_grammar(
        value in valid_traceparent(), at in 0usize..55, byte in any::<u8>()
    ) {
        let mut bytes = value.into_bytes();
        bytes[at] = byte;
        prop_assert_eq!(TraceParent::parse(&bytes).is_ok(), traceparent_is_valid(&bytes));
    }

    #[test]
    fn a_continued_trace_keeps_the_trace_id_and_sends_a_valid_child(value in valid_traceparent()) {
        let parent = TraceParent::parse(value.as_bytes()).unwrap();
        let trace = TraceContext::child_of(parent, None);
        let child = TraceParent::parse(trace.traceparent().as_bytes()).unwrap();
        prop_assert_eq!(child.trace_id, parent.trace_id);
        prop_assert_eq!(&child.parent_id, trace.span_id());
        prop_assert_eq!(child.flags & 1, parent.flags & 1);
    }

    #[test]
    fn any_field_content_yields_exactly_one_valid_json_line(
        message in any::<String>(),
        text in any::<String>(),
        user in any::<String>(),
        raw in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let ctx = RequestContext::new(RequestId::parse("prop-1").unwrap());
        ctx.set_user_id(user.as_str());
        ctx.set_field("tenant", text.as_str());
        // Header bytes that are not UTF-8 reach a line through `Debug`, as `?value`.
        let header = HeaderValue::from_bytes(&raw).ok();
        let lines = lines_written(|| {
            RequestContext::scope_sync(ctx, || tracing::info!(input = %text, header = ?header, bytes = ?raw, "{message}"));
        });
        prop_assert_eq!(lines.len(), 1);
        let line: Value = serde_json::from_str(&lines[0]).map_err(|e| TestCaseError::fail(format!("{e}: {}", lines[0])))?;
        prop_assert_eq!(line["message"].as_str(), Some(message.as_str()));
        prop_assert_eq!(line["input"].as_str(), Some(text.as_str()));
        prop_assert_eq!(line["tenant"].as_str(), Some(text.as_str()));
        prop_assert_eq!(line["user_id"].as_str(), Some(user.as_str()));
        prop_assert_eq!(line["request_id"].as_str(), Some("prop-1"));
    }
}

/// One request through `RequestContextLayer` + `AuthLayer` in process: status, JSON body
/// (when not 200), and the lines written.
fn authenticate(authorization: &HeaderValue) -> (StatusCode, Value, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let service = ServiceBuilder::new().layer(RequestContextLayer::new()).layer(AuthLayer::hmac(SECRET)).service(
        service_fn(|_req: Request<Full<bytes::Bytes>>| async {
            tracing::info!("handler ran");
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"{}"))))
        }),
    );
    let request = Request::get("/").header("authorization", authorization.clone()).body(Full::default()).unwrap();
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let out = outcome.clone();
    let lines = lines_written(|| {
        runtime.block_on(async {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            *out.lock().unwrap() = Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        })
    });
    let (status, body) = outcome.lock().unwrap().take().unwrap();
    (status, body, lines)
}

fn check_auth_outcome(token: &str, authorization: &HeaderValue) -> Result<(), TestCaseError> {
    let (status, body, lines) = authenticate(authorization);
    prop_assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED, "{status}");
    if status == StatusCode::UNAUTHORIZED {
        prop_assert_eq!(body["error"].as_str(), Some("unauthorized"));
        prop_assert!(body["message"].is_string());
        prop_assert!(body["request_id"].is_string());
    }
    for line in &lines {
        let parsed: Value = serde_json::from_str(line).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert!(parsed.is_object());
        if token.len() >= 16 {
            prop_assert!(!line.contains(token), "the token reached a log line: {line}");
        }
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..config() })]

    #[test]
    fn any_bearer_text_is_a_401_json_error_never_a_panic(token in "[ -~]{0,300}") {
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else { return Ok(()) };
        let (status, _, _) = authenticate(&value);
        prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
        check_auth_outcome(&token, &value)?;
    }

    #[test]
    fn tokens_with_any_header_and_claims_json_are_judged_without_panics(
        header in json_value(), claims in json_value(), signature in "[A-Za-z0-9_-]{0,90}"
    ) {
        let token = format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        check_auth_outcome(&token, &value)?;
    }

    #[test]
    fn correctly_signed_tokens_with_any_claims_json_are_judged_without_panics(claims in json_value(), sub in json_value()) {
        // Any payload, signed with the right key: claims of every shape reach the claim checks.
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = match claims {
            Value::Object(mut map) => {
                map.insert("sub".into(), sub);
                map.entry("exp").or_insert(exp.into());
                Value::Object(map)
            }
            other => other,
        };
        let token = reqscope::auth::mint_hs256(SECRET, &claims).unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        check_auth_outcome(&token, &value)?;
        let (status, _, lines) = authenticate(&value);
        if status == StatusCode::OK {
            // Only a subject that names someone authenticates, and it is what gets logged.
            let handler: Value = lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|l| l["message"] == "handler ran").expect("the handler line");
            let logged = handler["user_id"].as_str().expect("an authenticated line has a user").to_owned();
            let sub = &claims["sub"];
            prop_assert!(
                sub.as_str() == Some(logged.as_str()) || sub.as_number().map(|n| n.to_string()) == Some(logged),
                "{sub}"
            );
        }
    }

    #[test]
    fn correctly_signed_tokens_with_any_claim_content_log_the_subject_verbatim(
        sub in any::<String>(), org in any::<String>(), roles in proptest::collection::vec(any::<String>(), 0..4), extra in json_value()
    ) {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = serde_json::json!({ "sub": sub, "org_id": org, "roles": roles, "exp": exp, "extra": extra });
        let token = reqscope::auth::mint_hs256(SECRET, &claims).unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        check_auth_outcome(&token, &value)?;
        let (status, body, lines) = authenticate(&value);
        if sub.is_empty() {
            prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "an empty subject authenticates nobody");
            prop_assert_eq!(body["message"].as_str(), Some("malformed"));
        } else {
            prop_assert_eq!(status, StatusCode::OK);
        }
        if status == StatusCode::OK {
            let handler: Value = lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|l| l["message"] == "handler ran").expect("the handler line");
            prop_assert_eq!(handler["user_id"].as_str(), Some(sub.as_str()));
        }
    }
}
