//! The auth layer over real sockets: every token class, the context it fills, JWKS refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqscope::RequestContextLayer;
use reqscope::auth::{AuthLayer, Claims, RequireRoleLayer};
use serde_json::{Value, json};

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, fetch, hs256, lines_of, logs, now, serve};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// One request to `/users/me` with `authorization` (raw header value) and a forwarded id.
async fn me(addr: std::net::SocketAddr, id: &str, authorization: Option<&str>) -> crate::support::Reply {
    let mut headers: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
    if let Some(value) = authorization {
        headers.push(("authorization", value.as_bytes()));
    }
    fetch(addr, "/users/me", &headers).await
}

fn assert_rejected(reply: &crate::support::Reply, reason: &str, case: &str) {
    assert_eq!(reply.status, 401, "{case}: {}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "unauthorized", "{case}");
    assert_eq!(body["message"], reason, "{case}");
    assert_eq!(body["request_id"], reply.request_id(), "{case}");
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    if reason == "missing" {
        assert_eq!(challenge, "Bearer realm=\"api\"", "{case}");
    } else {
        assert_eq!(
            challenge,
            format!("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"{reason}\""),
            "{case}"
        );
    }
}

#[tokio::test]
async fn every_token_class_gets_its_status_body_and_reason() {
    let addr = serve(example_app().await).await;
    let valid = hs256(TEST_SECRET, &claims("1"));
    let mut expired = claims("1");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("1");
    early["nbf"] = json!(now() + 3600);
    let mut no_exp = claims("1");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_iss = claims("1");
    wrong_iss["iss"] = json!("someone-else");
    let mut wrong_aud = claims("1");
    wrong_aud["aud"] = json!("another-api");
    let mut huge = claims("1");
    huge["padding"] = json!("x".repeat(9000));
    let mut no_iss = claims("1");
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = claims("1");
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_sub = claims("1");
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut within_leeway = claims("1");
    within_leeway["exp"] = json!(now() - 10);

    let cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("valid", Some(format!("Bearer {valid}")), 200, None),
        ("lowercase scheme", Some(format!("bearer {valid}")), 200, None),
        ("no header", None, 401, Some("missing")),
        ("expired", Some(format!("Bearer {}", hs256(TEST_SECRET, &expired))), 401, Some("expired")),
        ("nbf in the future", Some(format!("Bearer {}", hs256(TEST_SECRET, &early))), 401, Some("not_yet_valid")),
        (
            "wrong signature",
            Some(format!("Bearer {}", hs256(b"another secret, also 32 bytes long!!", &claims("1")))),
            401,
            Some("invalid_signature"),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned(&claims("1")))), 401, Some("unsupported_algorithm")),
        ("missing exp", Some(format!("Bearer {}", hs256(TEST_SECRET, &no_exp))), 401, Some("malformed")),
        ("wrong iss", Some(format!("Bearer {}", hs256(TEST_SECRET, &wrong_iss))), 401, Some("wrong_issuer")),
        ("wrong aud", Some(format!("Bearer {}", hs256(TEST_SECRET, &wrong_aud))), 401, Some("wrong_audience")),
        ("oversize", Some(format!("Bearer {}", hs256(TEST_SECRET, &huge))), 401, Some("too_large")),
        (
            "iss required when configured",
            Some(format!("Bearer {}", hs256(TEST_SECRET, &no_iss))),
            401,
            Some("wrong_issuer"),
        ),
        (
            "aud required when configured",
            Some(format!("Bearer {}", hs256(TEST_SECRET, &no_aud))),
            401,
            Some("wrong_audience"),
        ),
        ("no sub", Some(format!("Bearer {}", hs256(TEST_SECRET, &no_sub))), 401, Some("malformed")),
        (
            "expired 10 s ago, inside the 30 s leeway",
            Some(format!("Bearer {}", hs256(TEST_SECRET, &within_leeway))),
            200,
            None,
        ),
        ("garbage", Some("Bearer not-a-token".to_owned()), 401, Some("malformed")),
        ("no Bearer prefix", Some(valid.clone()), 401, Some("malformed")),
        ("other scheme", Some(format!("Basic {valid}")), 401, Some("malformed")),
    ];
    let mut sent = Vec::new();
    for (i, (case, authorization, status, reason)) in cases.iter().enumerate() {
        let id = format!("auth-table-{i}");
        let reply = me(addr, &id, authorization.as_deref()).await;
        assert_eq!(reply.status.as_u16(), *status, "{case}: {}", reply.body);
        match reason {
            None => assert_eq!(reply.json()["email"], "ada@example.com", "{case}"),
            Some(reason) => {
                assert_rejected(&reply, reason, case);
                access_lines_of(&id).await;
                let warnings: Vec<Value> =
                    lines_of(&id).into_iter().filter(|l| l["target"] == "reqscope::auth").collect();
                assert_eq!(warnings.len(), 1, "{case}: one WARN per rejection");
                assert_eq!(warnings[0]["level"], "WARN");
                assert_eq!(warnings[0]["reason"], *reason, "{case}");
            }
        }
        sent.extend(authorization.clone());
    }
    let written = logs().contents();
    for authorization in sent {
        let token = authorization.rsplit(' ').next().unwrap();
        // The signature part is what makes a token a credential; it must never be logged.
        let signature = token.rsplit('.').next().unwrap();
        if signature.len() > 10 {
            assert!(!written.contains(signature), "a token reached the logs");
        }
        assert!(!written.contains(&authorization), "an Authorization header reached the logs");
    }
}

#[tokio::test]
async fn the_user_org_and_roles_are_on_every_later_line() {
    let addr = serve(example_app().await).await;
    let token = hs256(TEST_SECRET, &claims("2"));
    let reply = me(addr, "auth-ctx-1", Some(&format!("Bearer {token}"))).await;
    assert_eq!(reply.json()["name"], "Grace Hopper");
    let access = access_lines_of("auth-ctx-1").await;
    assert_eq!(access[0]["user_id"], "2");
    assert_eq!(access[0]["org_id"], "acme");
    assert_eq!(access[0]["roles"], json!(["reader"]));
    let handler = lines_of("auth-ctx-1").into_iter().find(|l| l["message"] == "loading the current user").unwrap();
    assert_eq!(handler["user_id"], "2");
    assert_eq!(handler["org_id"], "acme");
    assert_eq!(handler["roles"], json!(["reader"]));
}

fn key_app(auth: AuthLayer) -> Router {
    async fn whoami(Extension(claims): Extension<Claims>) -> Json<Value> {
        Json(json!({ "sub": claims.subject(), "org": claims.get("org_id") }))
    }
    Router::new().route("/whoami", get(whoami)).route_layer(auth).layer(RequestContextLayer::new())
}

async fn whoami(addr: std::net::SocketAddr, token: &str) -> crate::support::Reply {
    fetch(addr, "/whoami", &[("authorization", format!("Bearer {token}").as_bytes())]).await
}

#[tokio::test]
async fn public_keys_verify_their_own_family_only() {
    let c = claims("7");
    let rsa = serve(key_app(AuthLayer::rsa_pem(fixture("rsa_a_public.pem")).unwrap())).await;
    let rs256 = sign(Algorithm::RS256, None, &EncodingKey::from_rsa_pem(&fixture("rsa_a_private.pem")).unwrap(), &c);
    let reply = whoami(rsa, &rs256).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"sub": "7", "org": "acme"}));
    let ps256 = sign(Algorithm::PS256, None, &EncodingKey::from_rsa_pem(&fixture("rsa_a_private.pem")).unwrap(), &c);
    assert_eq!(whoami(rsa, &ps256).await.status, 200);

    // The classic confusion attack: the RSA public key used as an HMAC secret.
    let swapped = hs256(&fixture("rsa_a_public.pem"), &c);
    assert_rejected(&whoami(rsa, &swapped).await, "unsupported_algorithm", "HS256 with the RSA public key");
    let other_rsa =
        sign(Algorithm::RS256, None, &EncodingKey::from_rsa_pem(&fixture("rsa_b_private.pem")).unwrap(), &c);
    assert_rejected(&whoami(rsa, &other_rsa).await, "invalid_signature", "another RSA key");

    let ec = serve(key_app(AuthLayer::ec_pem(fixture("ec256_public.pem")).unwrap())).await;
    let es256 = sign(Algorithm::ES256, None, &EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap(), &c);
    assert_eq!(whoami(ec, &es256).await.status, 200);
    assert_rejected(&whoami(ec, &rs256).await, "unsupported_algorithm", "RS256 against an EC key");

    let ed = serve(key_app(AuthLayer::ed_pem(fixture("ed25519_public.pem")).unwrap())).await;
    let eddsa = sign(Algorithm::EdDSA, None, &EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(), &c);
    assert_eq!(whoami(ed, &eddsa).await.status, 200);

    let jwks = serve(key_app(
        AuthLayer::jwks_file(format!("{}/tests/fixtures/jwks_a.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    ))
    .await;
    let with_kid =
        sign(Algorithm::RS256, Some("key-a"), &EncodingKey::from_rsa_pem(&fixture("rsa_a_private.pem")).unwrap(), &c);
    assert_eq!(whoami(jwks, &with_kid).await.status, 200);

    assert!(AuthLayer::rsa_pem("not a key").unwrap_err().to_string().contains("invalid key"));
    assert!(AuthLayer::jwks_json("{}").unwrap_err().to_string().contains("invalid JWKS"));
}

#[tokio::test]
async fn optional_mode_and_the_role_guard() {
    let app = Router::new()
        .route("/admin", get(|| async { "admin area" }).route_layer(RequireRoleLayer::new("admin")))
        .route(
            "/open",
            get(|| async {
                reqscope::RequestContext::with(|c| c.user_id()).flatten().as_deref().unwrap_or("anonymous").to_owned()
            }),
        )
        .route_layer(AuthLayer::hmac(TEST_SECRET).optional())
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    assert_eq!(fetch(addr, "/open", &[]).await.body, "anonymous");
    let reader = hs256(TEST_SECRET, &claims("5"));
    let bearer = format!("Bearer {reader}");
    assert_eq!(fetch(addr, "/open", &[("authorization", bearer.as_bytes())]).await.body, "5");
    assert_rejected(
        &fetch(addr, "/open", &[("authorization", b"Bearer x.y.z")]).await,
        "malformed",
        "bad token in optional mode",
    );

    let denied = fetch(addr, "/admin", &[("authorization", bearer.as_bytes())]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "forbidden");
    assert_eq!(denied.json()["message"], "requires role admin");
    assert_eq!(denied.json()["request_id"], denied.request_id());
    assert_rejected(&fetch(addr, "/admin", &[]).await, "missing", "no user at all");

    let mut admin = claims("6");
    admin["roles"] = json!([]);
    admin["scope"] = json!("read admin");
    let admin = format!("Bearer {}", hs256(TEST_SECRET, &admin));
    assert_eq!(fetch(addr, "/admin", &[("authorization", admin.as_bytes())]).await.body, "admin area");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_users_never_swap() {
    let addr = serve(example_app().await).await;
    let requests: Vec<_> = (0..300u32)
        .map(|n| {
            tokio::spawn(async move {
                let user = (n % 3 + 1).to_string();
                // A claim of its own makes every token distinct: each is verified in full.
                let mut c = claims(&user);
                c["n"] = json!(n);
                let token = hs256(TEST_SECRET, &c);
                let id = format!("auth-conc-{n}");
                let reply = me(addr, &id, Some(&format!("Bearer {token}"))).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.json()["id"].to_string(), user);
                (id, user)
            })
        })
        .collect();
    let mut expected = HashMap::new();
    for request in requests {
        let (id, user) = request.await.unwrap();
        expected.insert(id, user);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut checked = 0;
    for line in logs().json_lines() {
        if let Some(user) = line["request_id"].as_str().and_then(|id| expected.get(id)) {
            assert_eq!(line["user_id"], user.as_str(), "cross-talk: {line}");
            checked += 1;
        }
    }
    assert_eq!(checked, 900, "a handler line, a query line (SQLite worker thread) and an access line per request");
}

/// A JWKS endpoint whose key set can be swapped, counting fetches.
#[derive(Clone, Default)]
struct Idp {
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

async fn jwks(State(idp): State<Idp>) -> Result<String, axum::http::StatusCode> {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    if idp.failing.load(Ordering::SeqCst) {
        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(idp.jwks.lock().unwrap().clone())
}

#[tokio::test]
async fn jwks_urls_are_cached_refreshed_on_unknown_kids_and_rate_limited() {
    let idp = Idp::default();
    *idp.jwks.lock().unwrap() = String::from_utf8(fixture("jwks_a.json")).unwrap();
    let idp_addr = serve(Router::new().route("/jwks.json", get(jwks)).with_state(idp.clone())).await;
    let auth = AuthLayer::jwks_url(&format!("http://{idp_addr}/jwks.json"))
        .unwrap()
        .min_refresh_interval(Duration::from_millis(1500));
    let addr = serve(key_app(auth)).await;
    let c = claims("9");
    let key_a = EncodingKey::from_rsa_pem(&fixture("rsa_a_private.pem")).unwrap();
    let key_b = EncodingKey::from_rsa_pem(&fixture("rsa_b_private.pem")).unwrap();

    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await.status, 200);
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await.status, 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "fetched once, then cached");

    // The identity provider rotates to key B.
    *idp.jwks.lock().unwrap() = String::from_utf8(fixture("jwks_b.json")).unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-b"), &key_b, &c)).await.status, 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2, "an unknown kid triggers one refresh");

    // Made-up kids right after a refresh: refused without asking the provider again.
    for _ in 0..5 {
        let reply = whoami(addr, &sign(Algorithm::RS256, Some("key-zzz"), &key_b, &c)).await;
        assert_rejected(&reply, "invalid_signature", "unknown kid");
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2, "refreshes are rate-limited");

    // The provider fails: an unknown kid cannot be checked, which is not the client's fault.
    idp.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let reply = whoami(addr, &sign(Algorithm::RS256, Some("key-c"), &key_b, &c)).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "unavailable");
    let fetches = idp.fetches.load(Ordering::SeqCst);
    let again = whoami(addr, &sign(Algorithm::RS256, Some("key-d"), &key_b, &c)).await;
    assert_eq!(again.status, 503, "still unknown while the provider is down: not the client's fault");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetches, "and still rate-limited");
    // Keys already cached keep working while the provider is down.
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-b"), &key_b, &c)).await.status, 200);
}
