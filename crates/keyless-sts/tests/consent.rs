//! The consent screen and the console's consent API through
//! `router(state)` and `oneshot`, driven like a browser would: the page's
//! CSRF field and cookie carried by hand, sign-in when there is no
//! session, Approve/Deny, and the signed-in user's own consents (list,
//! revoke with the `X-Keyless-CSRF` header, nobody else's).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const EMAIL: &str = "carol@example.com";
const PASSWORD: &str = "correct horse battery";

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

fn get(path: &str, cookies: &[&str]) -> Request<Body> {
    let mut r = Request::get(path);
    if !cookies.is_empty() {
        r = r.header(header::COOKIE, cookies.join("; "));
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, body: String, cookies: &[&str]) -> Request<Body> {
    let mut r =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if !cookies.is_empty() {
        r = r.header(header::COOKIE, cookies.join("; "));
    }
    r.body(Body::from(body)).unwrap()
}

fn delete(path: &str, cookies: &[&str], csrf: Option<&str>) -> Request<Body> {
    let mut r = Request::delete(path);
    if !cookies.is_empty() {
        r = r.header(header::COOKIE, cookies.join("; "));
    }
    if let Some(c) = csrf {
        r = r.header("X-Keyless-CSRF", c);
    }
    r.body(Body::empty()).unwrap()
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

/// A user with a live session: (subject id, `keyless_session=…`).
async fn signed_in(f: &Fixture, email: &str) -> (String, String) {
    let user = f.sts.add_user(email, PASSWORD).await.unwrap();
    let new = f.sts.start_session(&user.id).await.unwrap();
    (user.id, format!("keyless_session={}", new.cookie))
}

fn consent_path(agent: &str, types: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![("agent", agent), ("types", types)];
    pairs.extend_from_slice(extra);
    format!("/consent?{}", form(&pairs))
}

/// Opens the consent page and submits it with `decision`; returns the answer.
async fn decide(f: &Fixture, session: &str, path: &str, decision: &str) -> Resp {
    let page = send(f, get(path, &[session])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf_cookie = page.cookie("keyless_csrf").unwrap();
    let fields: Vec<(String, String)> = ["csrf", "agent", "types", "scopes", "return_to"]
        .iter()
        .map(|n| ((*n).to_owned(), hidden(&page.body, n)))
        .collect();
    let mut pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.push(("decision", decision));
    send(f, post("/consent", form(&pairs), &[session, &csrf_cookie])).await
}

#[tokio::test]
async fn approve_through_the_form_grants_the_consent() {
    let f = open().await;
    let (sub, session) = signed_in(&f, EMAIL).await;
    let path = consent_path(
        AGENT,
        "directory_read, directory_write",
        &[("scopes", "tools")],
    );

    let page = send(&f, get(&path, &[&session])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(AGENT));
    assert!(page.body.contains(EMAIL));
    assert!(page.body.contains("<strong>directory_read</strong>"));
    assert!(page.body.contains("<strong>directory_write</strong>"));
    assert!(page.body.contains("value=\"approve\"") && page.body.contains("value=\"deny\""));
    assert_eq!(
        hidden(&page.body, "csrf"),
        page.cookie("keyless_csrf").unwrap()["keyless_csrf=".len()..]
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");

    let r = decide(&f, &session, &path, "approve").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Consent granted"));
    let consents = f.sts.list_consents(Some(&sub)).await.unwrap();
    assert_eq!(consents.len(), 1);
    let c = &consents[0];
    assert_eq!(c.agent, AGENT);
    assert_eq!(c.rar_types, ["directory_read", "directory_write"]);
    assert_eq!(c.scopes, ["tools"]);
    assert!(r.body.contains(&c.id));
    assert!(f.event_kinds().contains(&"consent.granted".to_owned()));

    // The same request again: the live consent is reused, not doubled;
    // a different one is a new consent.
    let r = decide(&f, &session, &path, "approve").await;
    assert!(r.body.contains(&c.id), "{}", r.body);
    assert_eq!(f.sts.list_consents(Some(&sub)).await.unwrap().len(), 1);
    let other = consent_path(AGENT, "directory_read", &[]);
    decide(&f, &session, &other, "approve").await;
    assert_eq!(f.sts.list_consents(Some(&sub)).await.unwrap().len(), 2);
}

#[tokio::test]
async fn deny_stores_nothing_but_an_event_and_return_to_stays_on_our_origin() {
    let f = open().await;
    let (sub, session) = signed_in(&f, EMAIL).await;
    let path = consent_path(AGENT, "directory_read", &[("return_to", "/agents?x=1")]);
    let r = decide(&f, &session, &path, "deny").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/agents?x=1");
    assert!(f.sts.list_consents(Some(&sub)).await.unwrap().is_empty());
    let denied = f
        .events
        .events()
        .into_iter()
        .find(|e| e.kind == "consent.denied")
        .expect("a consent.denied event");
    assert_eq!(denied.agent.as_deref(), Some(AGENT));

    let r = decide(&f, &session, &path, "approve").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/agents?x=1");
    assert_eq!(f.sts.list_consents(Some(&sub)).await.unwrap().len(), 1);

    // Only our own paths: another origin, however spelled, is refused.
    for bad in [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example/",
        "/\tx",
    ] {
        let p = consent_path(AGENT, "directory_read", &[("return_to", bad)]);
        let r = send(&f, get(&p, &[&session])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn csrf_mismatch_is_403_and_grants_nothing() {
    let f = open().await;
    let (sub, session) = signed_in(&f, EMAIL).await;
    let path = consent_path(AGENT, "directory_read", &[]);
    let page = send(&f, get(&path, &[&session])).await;
    let csrf = hidden(&page.body, "csrf");
    let submit = |field: &str, cookie: Option<&str>| {
        let mut cookies = vec![session.as_str()];
        if let Some(c) = cookie {
            cookies.push(c);
        }
        post(
            "/consent",
            form(&[
                ("csrf", field),
                ("agent", AGENT),
                ("types", "directory_read"),
                ("decision", "approve"),
            ]),
            &cookies,
        )
    };
    // Field without cookie, cookie and field different, nothing at all.
    let other = "keyless_csrf=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for req in [
        submit(&csrf, None),
        submit(&csrf, Some(other)),
        submit("", Some("keyless_csrf=")),
    ] {
        let r = send(&f, req).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    assert!(f.sts.list_consents(Some(&sub)).await.unwrap().is_empty());
}

#[tokio::test]
async fn not_signed_in_goes_through_login_and_back() {
    let f = open().await;
    f.sts.add_user(EMAIL, PASSWORD).await.unwrap();
    let path = consent_path(AGENT, "directory_read", &[("scopes", "tools")]);

    let r = send(&f, get(&path, &[])).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let login = r.location();
    assert!(
        login.starts_with("/login?return_to=%2Fconsent%3F"),
        "{login}"
    );

    let page = send(&f, get(&login, &[])).await;
    assert_eq!(page.status, StatusCode::OK);
    let return_to = hidden(&page.body, "return_to");
    assert!(return_to.starts_with("/consent?agent="), "{return_to}");
    let r = send(
        &f,
        post(
            "/login",
            form(&[
                ("username", EMAIL),
                ("password", PASSWORD),
                ("csrf", &hidden(&page.body, "csrf")),
                ("return_to", &return_to),
            ]),
            &[&page.cookie("keyless_csrf").unwrap()],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), return_to);
    let session = r.cookie("keyless_session").unwrap();
    let page = send(&f, get(&r.location(), &[&session])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(AGENT));

    // A post without a session also goes to sign-in, granting nothing.
    let csrf = "keyless_csrf=BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let r = send(
        &f,
        post(
            "/consent",
            form(&[
                ("csrf", &csrf["keyless_csrf=".len()..]),
                ("agent", AGENT),
                ("types", "directory_read"),
                ("decision", "approve"),
            ]),
            &[csrf],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.location().starts_with("/login?return_to=%2Fconsent%3F"));
    assert!(f.sts.list_consents(None).await.unwrap().is_empty());

    // Sign-in returns only to our own paths.
    for bad in ["//evil.example", "/\\evil.example", "/a b"] {
        let q = form(&[("return_to", bad)]);
        let r = send(&f, get(&format!("/login?{q}"), &[])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn unknown_type_bad_agent_or_unknown_scope_is_400() {
    let f = open().await;
    let (_, session) = signed_in(&f, EMAIL).await;
    for path in [
        consent_path(AGENT, "directory_read,no_such_type", &[]),
        consent_path("https://not-a-spiffe-id", "directory_read", &[]),
        consent_path(AGENT, "directory_read", &[("scopes", "root")]),
        consent_path(AGENT, "", &[]),
        "/consent?types=directory_read".to_owned(),
    ] {
        let r = send(&f, get(&path, &[&session])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
    }
    let r = send(
        &f,
        get(&consent_path(AGENT, "no_such_type", &[]), &[&session]),
    )
    .await;
    assert!(r.body.contains("no_such_type"), "{}", r.body);
}

#[tokio::test]
async fn the_api_lists_and_revokes_only_the_users_own_consents() {
    let f = open().await;
    let (sub, session) = signed_in(&f, EMAIL).await;
    let (other_sub, _) = signed_in(&f, "dave@example.com").await;
    let types = ["directory_read".to_owned()];
    let mine = f.sts.grant_consent(&sub, AGENT, &types, &[]).await.unwrap();
    let theirs = f
        .sts
        .grant_consent(&other_sub, AGENT, &types, &[])
        .await
        .unwrap();

    let r = send(&f, get("/api/consents", &[])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&f, delete(&format!("/api/consents/{}", mine.id), &[], None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = send(&f, get("/api/consents", &[&session])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = r.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.id.as_str()]);
    let csrf = r.headers["x-keyless-csrf"].to_str().unwrap().to_owned();
    let csrf_cookie = r.cookie("keyless_csrf").unwrap();
    assert_eq!(csrf_cookie, format!("keyless_csrf={csrf}"));
    // With the cookie already set, the same token comes back.
    let again = send(&f, get("/api/consents", &[&session, &csrf_cookie])).await;
    assert_eq!(again.headers["x-keyless-csrf"], csrf.as_str());
    assert!(again.cookie("keyless_csrf").is_none());

    let path = format!("/api/consents/{}", mine.id);
    // No header, a wrong header, a header without the cookie: 403.
    for req in [
        delete(&path, &[&session, &csrf_cookie], None),
        delete(&path, &[&session, &csrf_cookie], Some("nope")),
        delete(&path, &[&session], Some(&csrf)),
    ] {
        let r = send(&f, req).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    assert!(
        f.sts.list_consents(Some(&sub)).await.unwrap()[0]
            .revoked_at
            .is_none()
    );

    // Someone else's consent looks like no consent at all.
    let r = send(
        &f,
        delete(
            &format!("/api/consents/{}", theirs.id),
            &[&session, &csrf_cookie],
            Some(&csrf),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(
        f.sts.list_consents(Some(&other_sub)).await.unwrap()[0]
            .revoked_at
            .is_none()
    );

    let r = send(&f, delete(&path, &[&session, &csrf_cookie], Some(&csrf))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["id"], mine.id.as_str());
    assert!(r.json()["revoked_at"].is_i64());
    assert!(
        f.sts.list_consents(Some(&sub)).await.unwrap()[0]
            .revoked_at
            .is_some()
    );
    assert!(f.event_kinds().contains(&"consent.revoked".to_owned()));

    // Already revoked, or unknown: 404.
    let r = send(&f, delete(&path, &[&session, &csrf_cookie], Some(&csrf))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &f,
        delete("/api/consents/nope", &[&session, &csrf_cookie], Some(&csrf)),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
