//! The auth layer over real sockets: every token class, the context it fills, JWKS refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqscope::auth::{AuthLayer, Claims, JwksError, RequireRoleLayer};
use reqscope::{RequestContext, RequestContextLayer};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::{
    TEST_SECRET, access_lines_of, claims, example_app, fetch, hs256, lines_of, logs, now, serve, wait_until,
};

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
    admin["roles"] = json!(["admin"]);
    let admin = format!("Bearer {}", hs256(TEST_SECRET, &admin));
    assert_eq!(fetch(addr, "/admin", &[("authorization", admin.as_bytes())]).await.body, "admin area");
}

#[tokio::test]
async fn oauth_scope_grants_roles_only_when_asked_to() {
    let app = |auth: AuthLayer| {
        Router::new()
            .route("/admin", get(|| async { "admin area" }).route_layer(RequireRoleLayer::new("admin")))
            .route_layer(auth)
            .layer(RequestContextLayer::new())
    };
    let mut scoped = claims("6");
    scoped["roles"] = json!([]);
    scoped["scope"] = json!("read admin");
    let scoped = format!("Bearer {}", hs256(TEST_SECRET, &scoped));

    let by_default = serve(app(AuthLayer::hmac(TEST_SECRET))).await;
    let denied = fetch(by_default, "/admin", &[("authorization", scoped.as_bytes())]).await;
    assert_eq!(denied.status, 403, "a client's scope is not a role of its user: {}", denied.body);

    let opted_in = serve(app(AuthLayer::hmac(TEST_SECRET).roles_from_scope())).await;
    let granted = fetch(opted_in, "/admin", &[("authorization", scoped.as_bytes())]).await;
    assert_eq!(granted.body, "admin area");
}

#[tokio::test]
async fn the_role_guard_trusts_the_verified_token_not_the_context() {
    // Code between the auth layer and the guard (here a middleware; a helper or another layer
    // alike) patches roles and a user into the context, for its log lines.
    let patch_context = tower::util::MapRequestLayer::new(|request: axum::extract::Request| {
        RequestContext::with(|ctx| {
            ctx.set_user_id("mallory");
            ctx.set_roles(["admin"]);
        });
        request
    });
    let app = Router::new()
        .route(
            "/admin",
            get(|| async { "admin area" }).route_layer(RequireRoleLayer::new("admin")).route_layer(patch_context),
        )
        .route_layer(AuthLayer::hmac(TEST_SECRET).optional())
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;

    let reader = format!("Bearer {}", hs256(TEST_SECRET, &claims("5")));
    let denied =
        fetch(addr, "/admin", &[("x-request-id", b"auth-guard-1"), ("authorization", reader.as_bytes())]).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.json()["message"], "requires role admin");
    // The context did carry the patched role: the guard looked elsewhere.
    let access = access_lines_of("auth-guard-1").await;
    assert_eq!(access[0]["roles"], json!(["admin"]));

    assert_rejected(&fetch(addr, "/admin", &[]).await, "missing", "anonymous, with a patched user and role");
}

/// An HS256 token with a header of our own making (jsonwebtoken's `Header` only holds string
/// parameters, and no `crit`).
fn hs256_with_header(header: &Value, claims: &Value) -> String {
    let message =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(TEST_SECRET), Algorithm::HS256)
            .expect("sign");
    format!("{message}.{signature}")
}

#[tokio::test]
async fn header_parameters_crit_and_the_subject_type() {
    let addr = serve(example_app().await).await;
    let bearer = |header: Value, claims: Value| format!("Bearer {}", hs256_with_header(&header, &claims));

    // RFC 7515 §4: unknown header parameters are ignored, whatever their JSON type.
    let extra = json!({"alg": "HS256", "typ": "JWT", "x-version": 2, "x-ratio": 0.5, "x-flags": [1, true],
        "x-meta": {"region": 3}, "x-null": null, "x-on": false});
    let reply = me(addr, "auth-header-1", Some(&bearer(extra, claims("1")))).await;
    assert_eq!(reply.status, 200, "numeric and other non-string parameters: {}", reply.body);
    assert_eq!(reply.json()["email"], "ada@example.com");

    // RFC 7515 §4.1.11: `crit` names extensions that must be understood; none are here.
    for (i, crit) in [json!(["exp"]), json!(["b64"]), json!([])].into_iter().enumerate() {
        let header = json!({"alg": "HS256", "crit": crit, "exp": 1, "b64": true});
        let id = format!("auth-crit-{i}");
        let reply = me(addr, &id, Some(&bearer(header, claims("1")))).await;
        assert_rejected(&reply, "unsupported_crit", &format!("crit {crit}"));
        access_lines_of(&id).await;
        let warning = lines_of(&id).into_iter().find(|l| l["target"] == "reqscope::auth").expect("a WARN line");
        assert_eq!(warning["reason"], "unsupported_crit");
    }

    // `sub` is a string (RFC 7519 §4.1.2): a numeric one is refused, as documented.
    let mut numeric = claims("1");
    numeric["sub"] = json!(1);
    let reply = me(addr, "auth-sub-1", Some(&bearer(json!({"alg": "HS256"}), numeric))).await;
    assert_rejected(&reply, "malformed", "numeric sub");
    let mut big = claims("1");
    big["sub"] = json!(12345678901234567890123_f64);
    assert_rejected(&me(addr, "auth-sub-2", Some(&bearer(json!({"alg": "HS256"}), big))).await, "malformed", "big sub");
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
    // Every request's lines are in once its access line (its last) is.
    for id in expected.keys() {
        access_lines_of(id).await;
    }
    let mut checked = 0;
    for line in logs().json_lines() {
        if let Some(user) = line["request_id"].as_str().and_then(|id| expected.get(id)) {
            assert_eq!(line["user_id"], user.as_str(), "cross-talk: {line}");
            checked += 1;
        }
    }
    assert_eq!(
        checked, 1200,
        "the handler's lines (INFO, and the DEBUG row line), a query line (SQLite worker thread) and an access line per request"
    );
}

/// A JWKS endpoint on loopback whose key set can be swapped, counting fetches; it can fail,
/// send a `Cache-Control`, or hold every fetch until released.
#[derive(Clone)]
struct Idp {
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    /// Fetches answered: `fetches - answered` are held or under way.
    answered: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    cache_control: Arc<Mutex<Option<&'static str>>>,
    /// `true`: fetches are answered; `false`: they wait until it is `true` again.
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Idp {
    /// Serves `fixture` at `/jwks.json`; returns the endpoint and its URL.
    async fn start(fixture_name: &str) -> (Idp, String) {
        let idp = Idp {
            jwks: Arc::new(Mutex::new(String::new())),
            fetches: Arc::default(),
            answered: Arc::default(),
            failing: Arc::default(),
            cache_control: Arc::default(),
            open: Arc::new(tokio::sync::watch::channel(true).0),
        };
        idp.publish(fixture_name);
        let addr = serve(Router::new().route("/jwks.json", get(jwks)).with_state(idp.clone())).await;
        (idp, format!("http://{addr}/jwks.json"))
    }

    fn publish(&self, fixture_name: &str) {
        *self.jwks.lock().unwrap() = String::from_utf8(fixture(fixture_name)).unwrap();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> usize {
        self.fetches() - self.answered.load(Ordering::SeqCst)
    }

    fn hold(&self) {
        self.open.send_replace(false);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }
}

async fn jwks(State(idp): State<Idp>) -> Response {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let _ = idp.open.subscribe().wait_for(|open| *open).await;
    idp.answered.fetch_add(1, Ordering::SeqCst);
    if idp.failing.load(Ordering::SeqCst) {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = idp.jwks.lock().unwrap().clone();
    match *idp.cache_control.lock().unwrap() {
        Some(value) => ([(axum::http::header::CACHE_CONTROL, value)], body).into_response(),
        None => body.into_response(),
    }
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(&format!("{name}_private.pem"))).unwrap()
}

#[tokio::test]
async fn jwks_urls_are_cached_and_refetched_for_unknown_kids() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    // No minimum interval: every unknown kid may trigger a fetch, so no waiting for one.
    // Without the token cache, every request is judged by the keys themselves.
    let auth = AuthLayer::jwks_url(&url)
        .unwrap()
        .audience(crate::jwt::AUDIENCE)
        .min_refresh_interval(Duration::ZERO)
        .without_verified_token_cache();
    let addr = serve(key_app(auth)).await;
    let c = claims("9");
    let (key_a, key_b) = (rsa_key("rsa_a"), rsa_key("rsa_b"));

    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await.status, 200);
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await.status, 200);
    assert_eq!(idp.fetches(), 1, "fetched once, then cached");

    // The identity provider rotates to key B.
    idp.publish("jwks_b.json");
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-b"), &key_b, &c)).await.status, 200);
    assert_eq!(idp.fetches(), 2, "an unknown kid triggers one refresh");
    let gone = whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await;
    assert_rejected(&gone, "invalid_signature", "a key the provider removed");

    // The provider fails: an unknown kid cannot be checked, which is not the client's fault.
    idp.failing.store(true, Ordering::SeqCst);
    let fetches = idp.fetches();
    let reply = whoami(addr, &sign(Algorithm::RS256, Some("key-c"), &key_b, &c)).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "unavailable");
    assert_eq!(idp.fetches(), fetches + 1, "it was asked");
    // Keys already cached keep working while the provider is down.
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-b"), &key_b, &c)).await.status, 200);
}

#[tokio::test]
async fn jwks_fetches_for_unknown_kids_are_rate_limited() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    // The default minimum interval, 30 s: longer than this test.
    let auth = AuthLayer::jwks_url(&url).unwrap().audience(crate::jwt::AUDIENCE);
    let handle = auth.clone();
    let addr = serve(key_app(auth)).await;
    let c = claims("9");
    let key_a = rsa_key("rsa_a");
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &c)).await.status, 200);

    // Made-up kids right after a fetch: refused without asking the provider again.
    for n in 0..5 {
        let reply = whoami(addr, &sign(Algorithm::RS256, Some(&format!("key-zzz-{n}")), &key_a, &c)).await;
        assert_rejected(&reply, "invalid_signature", "unknown kid");
    }
    assert_eq!(idp.fetches(), 1, "refreshes are rate-limited");

    // An explicit refresh is not; this one fails.
    idp.failing.store(true, Ordering::SeqCst);
    assert!(matches!(handle.refresh().await, Err(JwksError::Status(500))));
    assert_eq!(idp.fetches(), 2);
    let reply = whoami(addr, &sign(Algorithm::RS256, Some("key-d"), &key_a, &c)).await;
    assert_eq!(reply.status, 503, "unknown while the provider is down: not the client's fault");
    assert_eq!(idp.fetches(), 2, "and still rate-limited");
    let mut other = c.clone();
    other["n"] = json!(1);
    assert_eq!(whoami(addr, &sign(Algorithm::RS256, Some("key-a"), &key_a, &other)).await.status, 200);
}

#[tokio::test]
async fn a_client_hanging_up_mid_fetch_cancels_nothing() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    idp.hold();
    // The default minimum interval (30 s): a second fetch could not start within this test.
    let addr = serve(key_app(AuthLayer::jwks_url(&url).unwrap().audience(crate::jwt::AUDIENCE))).await;
    let token = sign(Algorithm::RS256, Some("key-a"), &rsa_key("rsa_a"), &claims("9"));

    // The first request starts the first fetch, which the provider holds; its client leaves.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /whoami HTTP/1.1\r\nhost: {addr}\r\nx-request-id: auth-hangup-1\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    wait_until("the first fetch", || idp.fetches() == 1).await;
    drop(client);
    let access = access_lines_of("auth-hangup-1").await;
    assert_eq!(access[0]["aborted"], true, "the server dropped the request: {}", access[0]);

    // The fetch goes on without it, and the next request is verified with its keys.
    idp.release();
    let started = Instant::now();
    let reply = whoami(addr, &token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(5), "no waiting for the minimum interval");
    assert_eq!(idp.fetches(), 1, "one fetch, shared");
}

#[tokio::test]
async fn a_stale_key_set_keeps_verifying_while_it_is_refetched() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    // Stale as soon as fetched, refetchable at once: every request finds the set stale.
    let auth = AuthLayer::jwks_url(&url)
        .unwrap()
        .audience(crate::jwt::AUDIENCE)
        .min_refresh_interval(Duration::ZERO)
        .jwks_max_age(Duration::ZERO)
        .without_verified_token_cache();
    let addr = serve(key_app(auth)).await;
    let token = sign(Algorithm::RS256, Some("key-a"), &rsa_key("rsa_a"), &claims("9"));
    assert_eq!(whoami(addr, &token).await.status, 200);
    // Already stale once fetched: a refetch may have started; let it be answered.
    wait_until("no fetch under way", || idp.in_flight() == 0).await;

    // The provider becomes slow: the refetch waits, the requests do not.
    idp.hold();
    for _ in 0..3 {
        let reply = tokio::time::timeout(Duration::from_secs(5), whoami(addr, &token))
            .await
            .expect("answered with the old keys, without waiting for the refetch");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    wait_until("the background refetch", || idp.in_flight() == 1).await;
    let fetches = idp.fetches();
    assert_eq!(whoami(addr, &token).await.status, 200);
    assert_eq!((idp.fetches(), idp.in_flight()), (fetches, 1), "one refetch in flight, shared");
    idp.release();
}

#[tokio::test]
async fn cache_control_max_age_of_the_jwks_is_honoured() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    *idp.cache_control.lock().unwrap() = Some("public, max-age=1");
    // The default maximum age (10 minutes) would not refetch within this test.
    let auth = AuthLayer::jwks_url(&url).unwrap().audience(crate::jwt::AUDIENCE).min_refresh_interval(Duration::ZERO);
    let addr = serve(key_app(auth)).await;
    let token = sign(Algorithm::RS256, Some("key-a"), &rsa_key("rsa_a"), &claims("9"));
    let fetched = Instant::now();
    assert_eq!(whoami(addr, &token).await.status, 200);
    assert_eq!(idp.fetches(), 1);
    // Requests keep coming (answered from the cache); one of them finds the set a second old.
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.fetches() < 2 {
        assert!(Instant::now() < deadline, "max-age=1 was not honoured");
        assert_eq!(whoami(addr, &token).await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fetched.elapsed() >= Duration::from_secs(1), "refetched before max-age ran out");
}

#[tokio::test]
async fn refresh_picks_up_a_rotation_and_forgets_tokens_of_removed_keys() {
    let (idp, url) = Idp::start("jwks_a.json").await;
    let auth = AuthLayer::jwks_url(&url).unwrap().audience(crate::jwt::AUDIENCE);
    let handle = auth.clone();
    let addr = serve(key_app(auth)).await;
    let c = claims("9");
    let by_a = sign(Algorithm::RS256, Some("key-a"), &rsa_key("rsa_a"), &c);
    let by_b = sign(Algorithm::RS256, Some("key-b"), &rsa_key("rsa_b"), &c);
    assert_eq!(whoami(addr, &by_a).await.status, 200);
    assert_eq!(whoami(addr, &by_a).await.status, 200, "now in the verified-token cache");

    // Key A is rotated out; the provider tells us (a webhook calls refresh).
    idp.publish("jwks_b.json");
    handle.refresh().await.expect("refresh");
    assert_eq!(idp.fetches(), 2);
    // Right after the refetch: the cached token of the removed key no longer passes.
    assert_rejected(&whoami(addr, &by_a).await, "invalid_signature", "a cached token of a removed key");
    // And the new key verifies without another fetch (none could start: 30 s interval).
    assert_eq!(whoami(addr, &by_b).await.status, 200);
    assert_eq!(idp.fetches(), 2);

    // Keys given in code have nothing to refresh.
    AuthLayer::hmac(TEST_SECRET).refresh().await.expect("a no-op");
}

#[tokio::test]
async fn a_remote_key_set_checks_the_audience_unless_waived() {
    let (_idp, url) = Idp::start("jwks_a.json").await;
    let key_a = rsa_key("rsa_a");
    let token = |aud: Option<&str>| {
        let mut c = claims("9");
        match aud {
            Some(aud) => c["aud"] = json!(aud),
            None => drop(c.as_object_mut().unwrap().remove("aud")),
        }
        sign(Algorithm::RS256, Some("key-a"), &key_a, &c)
    };
    // `AuthLayer::jwks_url(url)?` alone is not a layer (a compile error; see the doc tests).
    let ours = serve(key_app(AuthLayer::jwks_url(&url).unwrap().audience(crate::jwt::AUDIENCE))).await;
    assert_eq!(whoami(ours, &token(Some(crate::jwt::AUDIENCE))).await.status, 200);
    // A token the same provider signed for another application.
    assert_rejected(&whoami(ours, &token(Some("another-app"))).await, "wrong_audience", "another app's token");
    assert_rejected(&whoami(ours, &token(None)).await, "wrong_audience", "no aud");

    let waived = serve(key_app(AuthLayer::jwks_url(&url).unwrap().allow_any_audience())).await;
    assert_eq!(whoami(waived, &token(Some("another-app"))).await.status, 200, "explicitly waived");
}
