//! The console router through `oneshot`: pages get index.html with the
//! security headers, assets their type and a long cache, unknown files 404,
//! and no path of another crate is claimed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(path: &str) -> axum::response::Response {
    keyless_console::router()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body(response: axum::response::Response) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

/// The header's value, or `<missing>` so that the assertion shows what failed.
fn header_of(response: &axum::response::Response, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("<missing>")
}

#[tokio::test]
async fn index_is_served_with_csp_and_no_store() {
    let response = get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        header_of(&response, header::CONTENT_SECURITY_POLICY),
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
         base-uri 'none'; form-action 'self'"
    );
    assert_eq!(
        header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );
    assert_eq!(header_of(&response, header::REFERRER_POLICY), "no-referrer");
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(html.contains("<html"), "{html}");
    assert_eq!(
        html.as_bytes(),
        keyless_console::asset("/index.html").unwrap().body
    );
}

#[tokio::test]
async fn every_app_route_and_the_callback_serve_index() {
    let index = keyless_console::asset("/index.html").unwrap().body;
    for path in [
        "/callback?code=abc&state=xyz",
        "/chat",
        "/chat?consented=1",
        "/approvals",
        "/consents",
        "/audit",
        "/identities",
        "/leases",
        "/streams",
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(body(response).await, index, "{path}");
    }
}

#[tokio::test]
async fn index_references_only_embedded_assets() {
    // Whatever index.html loads from /assets/ must be served, or the page is blank.
    let html = String::from_utf8(body(get("/").await).await).unwrap();
    let referenced: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert!(!referenced.is_empty(), "{html}");
    for path in referenced {
        let response = get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn an_asset_is_served_with_its_type_and_immutable_cache() {
    let mut seen = 0;
    for a in keyless_console::assets().filter(|a| a.path.starts_with("/assets/")) {
        let expected = if a.path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if a.path.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            continue;
        };
        let response = get(a.path).await;
        assert_eq!(response.status(), StatusCode::OK, "{}", a.path);
        assert_eq!(header_of(&response, header::CONTENT_TYPE), expected);
        assert_eq!(
            header_of(&response, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(body(response).await, a.body);
        seen += 1;
    }
    assert!(seen > 0, "no script or stylesheet is embedded");
}

#[tokio::test]
async fn the_built_console_has_a_script() {
    // With the placeholder (KEYLESS_CONSOLE_SKIP_BUILD) there is none to check.
    if keyless_console::built() {
        assert!(
            keyless_console::assets()
                .any(|a| a.path.starts_with("/assets/") && a.path.ends_with(".js"))
        );
    }
}

#[tokio::test]
async fn unknown_asset_is_404() {
    for path in [
        "/assets/nope.js",
        "/assets/",
        "/assets/../index.html",
        "/assets/index.html",
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert!(matches!(
        keyless_console::asset("/assets/nope.js"),
        Err(keyless_console::ConsoleError::NoSuchAsset(p)) if p == "/assets/nope.js"
    ));
}

#[tokio::test]
async fn other_crates_paths_are_not_claimed() {
    for path in [
        "/api/config",
        "/api/chat",
        "/login",
        "/consent",
        "/oauth2/token",
        "/events",
        "/audit/entries",
        "/index.html",
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
