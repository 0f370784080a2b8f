//! Sign-in end to end through `router(state)` and `oneshot`, driven like any
//! HTTP client would: the HTML login form (csrf parsed from the page,
//! cookies carried by hand), `/oauth2/authorize` with PKCE, the code and
//! refresh grants, userinfo, introspection, revocation, logout; plus the
//! domain rules for users, lockout and rate limiting.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use http_body_util::BodyExt;
use keyless_store::Store;
use keyless_sts::{StsConfig, StsError};
use serde_json::Value;
use tower::ServiceExt;

const EMAIL: &str = "carol@example.com";
const PASSWORD: &str = "correct horse battery";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-the-verifier";
const RS: &str = "spiffe://example.org/rs/directory";
const CALLBACK: &str = "http://127.0.0.1:8180/callback";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

async fn fixture_with(edit: impl FnOnce(&mut StsConfig)) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let mut config = StsConfig::new(ISSUER);
    config.resource_servers[0].spiffe_id = Some(RS.into());
    edit(&mut config);
    let mut f = open_with(store, &tmp.path().join("keys"), config).await;
    f._tmp = Some(tmp);
    f
}

async fn fixture() -> (Fixture, String) {
    let f = fixture_with(|_| {}).await;
    let user = f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    (f, user.id)
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> String {
        self.headers[header::LOCATION].to_str().unwrap().to_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// `name=value` of a Set-Cookie named `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap().to_owned())
    }
    fn set_cookie_attrs(&self, name: &str) -> String {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap()
    }
}

async fn send(f: &Fixture, req: Request<Body>) -> Resp {
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, body: String, cookie: Option<&str>, bearer: Option<&str>) -> Request<Body> {
    let mut r =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    if let Some(b) = bearer {
        r = r.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    r.body(Body::from(body)).unwrap()
}

fn authorize_query(method: &str, verifier: &str) -> String {
    form(&[
        ("response_type", "code"),
        ("client_id", "keyless-console"),
        ("redirect_uri", CALLBACK),
        ("scope", "openid email tools"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", &challenge(verifier)),
        ("code_challenge_method", method),
    ])
}

/// The value of hidden input `name` in an HTML page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    let rest = &html[start..];
    rest[..rest.find('"').unwrap()]
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Drives authorize → login form → authorize; returns (code, session cookie).
async fn sign_in(f: &Fixture) -> (String, String) {
    let r = send(
        f,
        get(
            &format!("/oauth2/authorize?{}", authorize_query("S256", VERIFIER)),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let login = r.location();
    assert!(login.starts_with("/login?return_to="), "{login}");

    let page = send(f, get(&login, None)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"username\""));
    assert!(page.body.contains("name=\"password\""));
    let attrs = page.set_cookie_attrs("keyless_csrf");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax"),
        "{attrs}"
    );
    let csrf_cookie = page.cookie("keyless_csrf").unwrap();
    let csrf = hidden(&page.body, "csrf");
    let return_to = hidden(&page.body, "return_to");

    let r = send(
        f,
        post(
            "/login",
            form(&[
                ("username", EMAIL),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("return_to", &return_to),
            ]),
            Some(&csrf_cookie),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let back = r.location();
    assert!(back.starts_with("/oauth2/authorize?"), "{back}");
    let attrs = r.set_cookie_attrs("keyless_session");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax") && attrs.contains("Path=/"),
        "{attrs}"
    );
    let session = r.cookie("keyless_session").unwrap();

    let r = send(f, get(&back, Some(&session))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cb = r.location();
    assert!(cb.starts_with(&format!("{CALLBACK}?")), "{cb}");
    assert_eq!(query_param(&cb, "state").as_deref(), Some("st-123"));
    (query_param(&cb, "code").unwrap(), session)
}

fn code_form<'a>(code: &'a str, verifier: &'a str) -> String {
    form(&[
        ("grant_type", "authorization_code"),
        ("client_id", "keyless-console"),
        ("code", code),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier),
    ])
}

fn refresh_form(token: &str) -> String {
    form(&[
        ("grant_type", "refresh_token"),
        ("client_id", "keyless-console"),
        ("refresh_token", token),
    ])
}

async fn token(f: &Fixture, body: String) -> Resp {
    send(f, post("/oauth2/token", body, None, None)).await
}

async fn introspect(f: &Fixture, token: &str) -> Value {
    let caller = f.svid(RS, ISSUER).await;
    let r = send(
        f,
        post(
            "/oauth2/introspect",
            form(&[("token", token)]),
            None,
            Some(&caller),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()
}

#[tokio::test]
async fn code_flow_with_pkce_through_the_html_form() {
    let (f, user_id) = fixture().await;
    f.sts
        .grant_consent(&user_id, AGENT, &["directory_read".into()], &[])
        .await
        .unwrap();
    let (code, _session) = sign_in(&f).await;
    let r = token(&f, code_form(&code, VERIFIER)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    let at = body["access_token"].as_str().unwrap();
    let claims = jws_part(at, 1);
    assert_eq!(jws_part(at, 0)["typ"], "at+jwt");
    assert_eq!(claims["sub"], user_id);
    assert_eq!(claims["email"], EMAIL);
    assert_eq!(claims["scope"], "openid email tools");
    assert_eq!(
        claims["may_act"]["sub"], AGENT,
        "may_act from live consents"
    );
    let sid = claims["sid"].as_str().unwrap().to_owned();
    assert!(f.sts.session_live(&sid).await.unwrap());

    let id = body["id_token"].as_str().unwrap();
    assert_eq!(jws_part(id, 0)["typ"], "JWT");
    let idc = jws_part(id, 1);
    assert_eq!(idc["iss"], ISSUER);
    assert_eq!(idc["aud"], "keyless-console");
    assert_eq!(idc["nonce"], "n-456");
    assert_eq!(idc["sid"], sid.as_str());
    assert_eq!(idc["email"], EMAIL);
    assert!(idc["auth_time"].as_i64().unwrap() > 0);
    assert!(
        f.sts.verify_access_token(id, None).await.is_err(),
        "an id token never passes as an access token"
    );
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);

    // userinfo
    let r = send(
        &f,
        Request::get("/oauth2/userinfo")
            .header(header::AUTHORIZATION, format!("Bearer {at}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["sub"], user_id);
    assert_eq!(r.json()["email"], EMAIL);

    // introspection shows the live token
    let i = introspect(&f, at).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["sub"], user_id);
    assert_eq!(i["sid"], sid.as_str());

    let kinds = f.event_kinds();
    for k in ["login.success", "session.started", "token.issued"] {
        assert!(kinds.contains(&k.to_owned()), "{k} in {kinds:?}");
    }
}

#[tokio::test]
async fn pkce_plain_or_missing_is_refused_with_an_error_redirect() {
    let (f, _) = fixture().await;
    for method in ["plain", ""] {
        let mut q = authorize_query(method, VERIFIER);
        if method.is_empty() {
            q = q.replace("&code_challenge_method=", "");
        }
        let r = send(&f, get(&format!("/oauth2/authorize?{q}"), None)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let loc = r.location();
        assert!(loc.starts_with(CALLBACK), "{loc}");
        assert_eq!(
            query_param(&loc, "error").as_deref(),
            Some("invalid_request")
        );
        assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
        assert!(query_param(&loc, "code").is_none());
    }
}

#[tokio::test]
async fn unregistered_redirect_uri_is_an_error_page_never_a_redirect() {
    let (f, _) = fixture().await;
    let q = authorize_query("S256", VERIFIER).replace(
        &form(&[("redirect_uri", CALLBACK)]),
        &form(&[("redirect_uri", "https://evil.example/cb")]),
    );
    let r = send(&f, get(&format!("/oauth2/authorize?{q}"), None)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get(header::LOCATION).is_none());
    let q = authorize_query("S256", VERIFIER).replace("keyless-console", "nobody");
    let r = send(&f, get(&format!("/oauth2/authorize?{q}"), None)).await;
    assert!(r.headers.get(header::LOCATION).is_none());
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn wrong_verifier_is_invalid_grant() {
    let (f, _) = fixture().await;
    let (code, _) = sign_in(&f).await;
    let wrong = "x".repeat(50);
    let r = token(&f, code_form(&code, &wrong)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
    // Too short a verifier is refused the same way.
    let (code, _) = sign_in(&f).await;
    let r = token(&f, code_form(&code, "short")).await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn code_reuse_is_invalid_grant_and_revokes_what_it_issued() {
    let (f, _) = fixture().await;
    let (code, _) = sign_in(&f).await;
    let first = token(&f, code_form(&code, VERIFIER)).await.json();
    let at = first["access_token"].as_str().unwrap();
    assert_eq!(introspect(&f, at).await["active"], true);
    let again = token(&f, code_form(&code, VERIFIER)).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.json()["error"], "invalid_grant");
    assert_eq!(
        introspect(&f, at).await,
        serde_json::json!({"active": false})
    );
    let r = token(&f, refresh_form(first["refresh_token"].as_str().unwrap())).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(
        f.event_kinds()
            .contains(&"authorization_code.reuse_detected".to_owned())
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let (f, _) = fixture().await;
    let (code, session) = sign_in(&f).await;
    let first = token(&f, code_form(&code, VERIFIER)).await.json();
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let second = token(&f, refresh_form(&rt1)).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let second = second.json();
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    let at2 = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&f, &at2).await["active"], true);

    // rt1 again: reuse. The family, its tokens and the session die.
    let r = token(&f, refresh_form(&rt1)).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(
        introspect(&f, &at2).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        token(&f, refresh_form(&rt2)).await.json()["error"],
        "invalid_grant"
    );
    assert!(
        f.event_kinds()
            .contains(&"refresh.reuse_detected".to_owned())
    );
    // The session cookie no longer signs in: back to the login form.
    let r = send(
        &f,
        get(
            &format!("/oauth2/authorize?{}", authorize_query("S256", VERIFIER)),
            Some(&session),
        ),
    )
    .await;
    assert!(r.location().starts_with("/login?"));
}

#[tokio::test]
async fn csrf_mismatch_is_403() {
    let (f, _) = fixture().await;
    let page = send(&f, get("/login", None)).await;
    let csrf = hidden(&page.body, "csrf");
    for (cookie, field) in [
        (Some("keyless_csrf=other"), csrf.as_str()),
        (None, csrf.as_str()),
        (Some("keyless_csrf="), ""),
    ] {
        let r = send(
            &f,
            post(
                "/login",
                form(&[("username", EMAIL), ("password", PASSWORD), ("csrf", field)]),
                cookie,
                None,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.cookie("keyless_session").is_none());
    }
}

#[tokio::test]
async fn wrong_password_rerenders_the_form_without_saying_why() {
    let (f, _) = fixture().await;
    let page = send(&f, get("/login", None)).await;
    let csrf = hidden(&page.body, "csrf");
    let r = send(
        &f,
        post(
            "/login",
            form(&[
                ("username", EMAIL),
                ("password", "not the password"),
                ("csrf", &csrf),
            ]),
            Some(&page.cookie("keyless_csrf").unwrap()),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("Sign-in failed"));
    assert!(r.cookie("keyless_session").is_none());
}

#[tokio::test]
async fn lockout_after_repeated_failures_even_for_the_right_password() {
    let (f, _) = fixture().await;
    for _ in 0..4 {
        let e = f.sts.verify_password(EMAIL, "wrong password!", None).await;
        assert!(matches!(e, Err(StsError::InvalidCredentials)), "{e:?}");
    }
    let e = f.sts.verify_password(EMAIL, "wrong password!", None).await;
    assert!(matches!(e, Err(StsError::AccountLocked(_))), "{e:?}");
    let e = f.sts.verify_password(EMAIL, PASSWORD, None).await;
    assert!(matches!(e, Err(StsError::AccountLocked(_))), "{e:?}");
    let kinds = f.event_kinds();
    assert_eq!(kinds.iter().filter(|k| *k == "login.failure").count(), 4);
    assert_eq!(kinds.iter().filter(|k| *k == "login.locked").count(), 2);
    // Unknown users fail the same way and are never "locked".
    let e = f
        .sts
        .verify_password("nobody@example.com", PASSWORD, None)
        .await;
    assert!(matches!(e, Err(StsError::InvalidCredentials)));
}

#[tokio::test]
async fn lockout_expires() {
    let f = fixture_with(|c| c.lockout_duration = std::time::Duration::ZERO).await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    for _ in 0..5 {
        assert!(
            f.sts
                .verify_password(EMAIL, "wrong password!", None)
                .await
                .is_err()
        );
    }
    f.sts.verify_password(EMAIL, PASSWORD, None).await.unwrap();
}

#[tokio::test]
async fn per_ip_rate_limit() {
    let f = fixture_with(|c| {
        c.login_ip_burst = 3;
        c.login_ip_refill = std::time::Duration::from_secs(3600);
    })
    .await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    let ip = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    for _ in 0..3 {
        f.sts.verify_password(EMAIL, PASSWORD, ip).await.unwrap();
    }
    let e = f.sts.verify_password(EMAIL, PASSWORD, ip).await;
    assert!(matches!(e, Err(StsError::RateLimited)), "{e:?}");
    // Another address is not affected.
    let other = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
    f.sts.verify_password(EMAIL, PASSWORD, other).await.unwrap();
}

#[tokio::test]
async fn add_user_refuses_duplicates_weak_passwords_and_bad_emails() {
    let (f, _) = fixture().await;
    let e = f
        .sts
        .add_user("Carol@Example.com", "another long password")
        .await;
    assert!(matches!(e, Err(StsError::UserExists(_))), "{e:?}");
    assert!(matches!(
        f.sts.add_user("dave@example.com", "short").await,
        Err(StsError::WeakPassword(_))
    ));
    assert!(matches!(
        f.sts.add_user("dave@example.com", "").await,
        Err(StsError::WeakPassword(_))
    ));
    assert!(matches!(
        f.sts.add_user("not-an-email", PASSWORD).await,
        Err(StsError::WeakPassword(_))
    ));
    let u = f
        .sts
        .add_user(" Dave@Example.COM ", PASSWORD)
        .await
        .unwrap();
    assert_eq!(u.email, "dave@example.com");
    f.sts
        .verify_password("DAVE@example.com", PASSWORD, None)
        .await
        .unwrap();
    let pw = keyless_sts::Sts::generate_password().unwrap();
    assert!(pw.len() >= 24);
}

#[tokio::test]
async fn revocation_of_refresh_and_access_tokens() {
    let (f, _) = fixture().await;
    let (code, _) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await.json();
    let at = t["access_token"].as_str().unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    // Unknown tokens: 200 all the same.
    let r = send(
        &f,
        post("/oauth2/revoke", form(&[("token", "nope")]), None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Revoking the refresh token revokes the family's access tokens.
    let r = send(
        &f,
        post(
            "/oauth2/revoke",
            form(&[("token", rt), ("client_id", "keyless-console")]),
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        introspect(&f, at).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        token(&f, refresh_form(rt)).await.json()["error"],
        "invalid_grant"
    );

    // An access token alone.
    let (code, _) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await.json();
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(introspect(&f, at).await["active"], true);
    let r = send(
        &f,
        post("/oauth2/revoke", form(&[("token", at)]), None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        introspect(&f, at).await,
        serde_json::json!({"active": false})
    );
}

#[tokio::test]
async fn introspection_requires_a_registered_caller_and_hides_everything_inactive() {
    let (f, _) = fixture().await;
    let stranger = f.svid("spiffe://example.org/agent/nosy", ISSUER).await;
    let r = send(
        &f,
        post(
            "/oauth2/introspect",
            form(&[("token", "x")]),
            None,
            Some(&stranger),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &f,
        post("/oauth2/introspect", form(&[("token", "x")]), None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        introspect(&f, "garbage").await,
        serde_json::json!({"active": false})
    );

    // An OBO token: active with act and authorization_details; consumed → inactive.
    let (code, session) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await.json();
    let at = t["access_token"].as_str().unwrap().to_owned();
    let sub = jws_part(&at, 1)["sub"].as_str().unwrap().to_owned();
    f.sts
        .grant_consent(&sub, AGENT, &["directory_read".into()], &["tools".into()])
        .await
        .unwrap();
    // may_act is derived at issuance: refresh to pick up the new consent.
    let t = token(&f, refresh_form(t["refresh_token"].as_str().unwrap()))
        .await
        .json();
    let at = t["access_token"].as_str().unwrap().to_owned();
    let actor = f.svid(AGENT, ISSUER).await;
    let details = serde_json::json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"], "limit": 50}]);
    let obo = f
        .sts
        .exchange(
            &exchange_request(&at, &actor, "directory", &details),
            None,
            &keyless_sts::ExchangeContext::default(),
        )
        .await;
    let obo = match obo {
        Ok(o) => o.access_token,
        Err(e) => panic!("exchange: {e}"),
    };
    let i = introspect(&f, &obo).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["act"]["sub"], AGENT);
    assert!(i["authorization_details"].is_array());
    f.sts
        .consume_token(&obo, "directory", Some(RS))
        .await
        .unwrap();
    assert_eq!(
        introspect(&f, &obo).await,
        serde_json::json!({"active": false})
    );

    // Logout kills the session: its tokens go inactive, userinfo refuses.
    let r = send(&f, get("/oauth2/logout", Some(&session))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        introspect(&f, &at).await,
        serde_json::json!({"active": false})
    );
    let r = send(
        &f,
        Request::get("/oauth2/userinfo")
            .header(header::AUTHORIZATION, format!("Bearer {at}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_redirects_only_to_registered_uris() {
    let (f, _) = fixture().await;
    let (_, session) = sign_in(&f).await;
    let r = send(
        &f,
        get(
            "/oauth2/logout?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
            Some(&session),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(
        &f,
        get(
            &format!(
                "/oauth2/logout?{}",
                form(&[
                    ("client_id", "keyless-console"),
                    ("post_logout_redirect_uri", &format!("{ISSUER}/")),
                    ("state", "s1")
                ])
            ),
            Some(&session),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), format!("{ISSUER}/?state=s1"));
    assert!(r.set_cookie_attrs("keyless_session").contains("Max-Age=0"));
}

#[tokio::test]
async fn logout_by_post_with_an_empty_body_is_a_logout_without_parameters() {
    let (f, _) = fixture().await;
    for content_type in [None, Some("application/x-www-form-urlencoded")] {
        let (code, session) = sign_in(&f).await;
        let at = token(&f, code_form(&code, VERIFIER)).await.json()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut r = Request::post("/oauth2/logout").header(header::COOKIE, &session);
        if let Some(ct) = content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        let r = send(&f, r.body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "{content_type:?}: {}", r.body);
        assert!(r.body.contains("signed out"), "{}", r.body);
        assert!(r.set_cookie_attrs("keyless_session").contains("Max-Age=0"));
        assert_eq!(
            introspect(&f, &at).await,
            serde_json::json!({"active": false}),
            "the session ended"
        );
    }
    // A body that is there must still be a form.
    let r = send(
        &f,
        Request::post("/oauth2/logout")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn discovery_documents() {
    let (f, _) = fixture().await;
    let oidc = send(&f, get("/.well-known/openid-configuration", None))
        .await
        .json();
    assert_eq!(oidc["issuer"], ISSUER);
    assert_eq!(
        oidc["authorization_endpoint"],
        format!("{ISSUER}/oauth2/authorize")
    );
    assert_eq!(
        oidc["userinfo_endpoint"],
        format!("{ISSUER}/oauth2/userinfo")
    );
    assert_eq!(
        oidc["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        oidc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        oidc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    let meta = send(&f, get("/.well-known/oauth-authorization-server", None))
        .await
        .json();
    assert_eq!(
        meta["authorization_endpoint"],
        oidc["authorization_endpoint"]
    );
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{ISSUER}/oauth2/introspect")
    );
}

#[tokio::test]
async fn signin_flow_on_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("sts_signin").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut config = StsConfig::new(ISSUER);
    config.resource_servers[0].spiffe_id = Some(RS.into());
    let f = open_with(
        Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        config,
    )
    .await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    assert!(matches!(
        f.sts.add_user(EMAIL, PASSWORD).await,
        Err(StsError::UserExists(_))
    ));
    // Code flow, rotation, reuse detection.
    let (code, _) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let t = t.json();
    let rt1 = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        token(&f, code_form(&code, VERIFIER)).await.json()["error"],
        "invalid_grant"
    );
    let (code, _) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await.json();
    let rt1b = t["refresh_token"].as_str().unwrap().to_owned();
    let t2 = token(&f, refresh_form(&rt1b)).await.json();
    let at2 = t2["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&f, &at2).await["active"], true);
    assert_eq!(
        token(&f, refresh_form(&rt1b)).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(
        introspect(&f, &at2).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        token(&f, refresh_form(&rt1)).await.json()["error"],
        "invalid_grant"
    );
    // Revocation of a lone access token.
    let (code, _) = sign_in(&f).await;
    let at = token(&f, code_form(&code, VERIFIER)).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    f.sts.revoke_token(&at, None).await.unwrap();
    assert_eq!(
        introspect(&f, &at).await,
        serde_json::json!({"active": false})
    );
    // Lockout counting in SQL.
    for _ in 0..4 {
        assert!(matches!(
            f.sts.verify_password(EMAIL, "wrong password!", None).await,
            Err(StsError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        f.sts.verify_password(EMAIL, "wrong password!", None).await,
        Err(StsError::AccountLocked(_))
    ));
}

#[tokio::test]
async fn login_rate_limits_by_client_address_and_escapes_return_to() {
    let f = fixture_with(|c| {
        c.login_ip_burst = 1;
        c.login_ip_refill = std::time::Duration::from_secs(3600);
    })
    .await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    let page = send(&f, get("/login?return_to=%22%3E%3Cscript%3Ex", None)).await;
    assert!(!page.body.contains("<script>"));
    assert!(page.body.contains("&quot;&gt;&lt;script&gt;x"));
    let csrf = hidden(&page.body, "csrf");
    let cookie = page.cookie("keyless_csrf").unwrap();
    let attempt = || {
        let mut r = post(
            "/login",
            form(&[("username", EMAIL), ("password", PASSWORD), ("csrf", &csrf)]),
            Some(&cookie),
            None,
        );
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 9],
                40000,
            ))));
        r
    };
    let r = send(&f, attempt()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/");
    let r = send(&f, attempt()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.cookie("keyless_session").is_none());
}

#[tokio::test]
async fn purge_keeps_live_sign_in_rows() {
    let (f, _) = fixture().await;
    let (code, _) = sign_in(&f).await;
    let t = token(&f, code_form(&code, VERIFIER)).await.json();
    assert_eq!(f.sts.purge_expired_signin().await.unwrap(), 0);
    assert_eq!(
        introspect(&f, t["access_token"].as_str().unwrap()).await["active"],
        true
    );
    assert_eq!(
        token(&f, refresh_form(t["refresh_token"].as_str().unwrap()))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn only_the_code_response_type_is_served() {
    let (f, _) = fixture().await;
    let q = authorize_query("S256", VERIFIER).replace("response_type=code", "response_type=token");
    let r = send(&f, get(&format!("/oauth2/authorize?{q}"), None)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        query_param(&r.location(), "error").as_deref(),
        Some("unsupported_response_type")
    );
}

#[tokio::test]
async fn authorization_details_ride_into_the_access_token_and_bad_ones_are_refused() {
    let f = fixture_with(|c| {
        c.public_clients.push(keyless_sts::PublicClient {
            client_id: "cli".into(),
            redirect_uris: vec!["http://127.0.0.1:9999/cb".into()],
            post_logout_redirect_uris: vec![],
        });
    })
    .await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    let (_, session) = sign_in(&f).await;
    let details =
        r#"[{"type":"directory_read","actions":["read"],"datatypes":["users"],"limit":5}]"#;
    let query = |details: &str| {
        form(&[
            ("response_type", "code"),
            ("client_id", "cli"),
            ("redirect_uri", "http://127.0.0.1:9999/cb"),
            ("scope", "openid"),
            ("code_challenge", &challenge(VERIFIER)),
            ("code_challenge_method", "S256"),
            ("authorization_details", details),
        ])
    };
    let r = send(
        &f,
        get(
            &format!("/oauth2/authorize?{}", query(details)),
            Some(&session),
        ),
    )
    .await;
    let loc = r.location();
    assert!(loc.starts_with("http://127.0.0.1:9999/cb?code="), "{loc}");
    let code = query_param(&loc, "code").unwrap();
    let r = token(
        &f,
        form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "cli"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9999/cb"),
            ("code_verifier", VERIFIER),
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let claims = jws_part(r.json()["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["client_id"], "cli");
    assert_eq!(
        claims["authorization_details"],
        serde_json::from_str::<Value>(details).unwrap()
    );
    // A code of one client is useless to another.
    let r = send(
        &f,
        get(
            &format!("/oauth2/authorize?{}", query(details)),
            Some(&session),
        ),
    )
    .await;
    let code = query_param(&r.location(), "code").unwrap();
    let r = token(
        &f,
        form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "keyless-console"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9999/cb"),
            ("code_verifier", VERIFIER),
        ]),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    let r = send(
        &f,
        get(
            &format!("/oauth2/authorize?{}", query(r#"[{"type":"nope"}]"#)),
            Some(&session),
        ),
    )
    .await;
    assert_eq!(
        query_param(&r.location(), "error").as_deref(),
        Some("invalid_authorization_details")
    );
}

#[tokio::test]
async fn password_reset_replaces_the_password_and_ends_sessions() {
    let f = common::open().await;
    let user = f
        .sts
        .add_user("reset@example.com", "first-password-123")
        .await
        .unwrap();
    let session = f.sts.start_session(&user.id).await.unwrap();
    assert!(f.sts.session_live(&session.session.sid).await.unwrap());
    f.sts
        .reset_password("reset@example.com", "second-password-456")
        .await
        .unwrap();
    assert!(
        !f.sts.session_live(&session.session.sid).await.unwrap(),
        "old sessions end"
    );
    assert!(matches!(
        f.sts.reset_password("reset@example.com", "short").await,
        Err(StsError::WeakPassword(_))
    ));
    assert!(matches!(
        f.sts
            .reset_password("nobody@example.com", "long-enough-password")
            .await,
        Err(StsError::UserNotFound(_))
    ));
}
