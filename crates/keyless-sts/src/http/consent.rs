//! The consent screen and the signed-in user's own consents (part of the
//! HTTP surface, next to `/login`).
//!
//! - `GET /consent?agent=<SPIFFE ID>&types=<RAR types, comma separated>
//!   [&scopes=…][&return_to=/…]`: for a signed-in user (session cookie),
//!   shows who asks for what and a form (CSRF field, Approve / Deny);
//!   without a session, a redirect to `/login` that comes back here. Every
//!   type must be registered and every scope supported (else a 400 page).
//! - `POST /consent`: double-submit CSRF as at `/login`, the session, then
//!   Approve grants ([`Sts::grant_consent`] for the session's subject; an
//!   identical live consent is reused, not stored twice) and
//!   Deny stores nothing but a `consent.denied` event. Either shows a page,
//!   or redirects to `return_to` when it is one of our own paths.
//! - `GET /api/consents`: the user's own consents (JSON array, revoked ones
//!   included); answers the CSRF token in the `X-Keyless-CSRF` header (the
//!   cookie is HttpOnly, so the console cannot read it) and sets the cookie
//!   when there is none.
//! - `DELETE /api/consents/{id}`: revokes one of the user's own consents;
//!   requires `X-Keyless-CSRF` equal to the `keyless_csrf` cookie. Someone
//!   else's consent is a 404, like an unknown one.
//!
//! No session: the pages redirect to sign-in, the API answers 401.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::{
    CSRF_COOKIE, Form, SESSION_COOKIE, cookie, error_response, error_status, escape, html,
    no_store_json, own_path, query_pairs, redirect, set_cookie,
};
use crate::oidc::SCOPES_SUPPORTED;
use crate::{Session, Sts, StsError};

/// The header that carries the CSRF token on API calls that change state.
const CSRF_HEADER: &str = "x-keyless-csrf";

/// A validated consent request.
struct ConsentRequest {
    agent: String,
    types: Vec<String>,
    scopes: Vec<String>,
    /// Empty, or one of our own paths.
    return_to: String,
}

impl ConsentRequest {
    /// The query (or form) that asks for this consent again.
    fn query(&self) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        ser.append_pair("agent", &self.agent);
        if !self.types.is_empty() {
            ser.append_pair("types", &self.types.join(","));
        }
        if !self.scopes.is_empty() {
            ser.append_pair("scopes", &self.scopes.join(","));
        }
        if !self.return_to.is_empty() {
            ser.append_pair("return_to", &self.return_to);
        }
        ser.finish()
    }
}

/// A comma (or space) separated list, trimmed, without empties or repeats.
fn split_list(value: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in value
        .unwrap_or_default()
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

fn parse_request(sts: &Sts, params: &Form) -> Result<ConsentRequest, StsError> {
    let agent = params
        .one("agent")?
        .ok_or_else(|| StsError::InvalidRequest("agent is required".into()))?;
    keyless_identity::SpiffeId::new(&agent)
        .map_err(|e| StsError::InvalidRequest(format!("agent `{agent}`: {e}")))?;
    let types = split_list(params.one("types")?.as_deref());
    if let Some(unknown) = types.iter().find(|t| sts.rar().get(t).is_none()) {
        return Err(StsError::InvalidAuthorizationDetails(format!(
            "unknown authorization_details type `{unknown}`"
        )));
    }
    let scopes = split_list(params.one("scopes")?.as_deref());
    if let Some(unknown) = scopes
        .iter()
        .find(|s| !SCOPES_SUPPORTED.contains(&s.as_str()))
    {
        return Err(StsError::InvalidScope(format!("unknown scope `{unknown}`")));
    }
    if types.is_empty() && scopes.is_empty() {
        return Err(StsError::InvalidRequest(
            "a consent names at least one authorization_details type or scope".into(),
        ));
    }
    let return_to = params.one("return_to")?.unwrap_or_default();
    if !return_to.is_empty() && !own_path(&return_to) {
        return Err(StsError::InvalidRequest("invalid return_to".into()));
    }
    Ok(ConsentRequest {
        agent,
        types,
        scopes,
        return_to,
    })
}

fn consent_error(e: &StsError) -> Response {
    let description = if e.is_client_error() {
        e.to_string()
    } else {
        tracing::error!(error = %e, "consent request failed");
        "internal error".to_owned()
    };
    html(
        error_status(e),
        "Consent error",
        &format!("<p>{}</p>", escape(&description)),
    )
}

/// The live session of the request's cookie, if any.
async fn signed_in(sts: &Sts, headers: &HeaderMap) -> Result<Option<Session>, StsError> {
    match cookie(headers, SESSION_COOKIE) {
        Some(c) => sts.session_by_cookie(&c).await,
        None => Ok(None),
    }
}

/// The redirect to sign-in that comes back to the consent page.
fn to_login(req: &ConsentRequest) -> Response {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    ser.append_pair("return_to", &format!("/consent?{}", req.query()));
    redirect(&format!("/login?{}", ser.finish()), &[])
}

/// The CSRF token already in the cookie (if it looks like one of ours),
/// else a new one and the `Set-Cookie` that installs it.
fn csrf_token(sts: &Sts, headers: &HeaderMap) -> Result<(String, Option<String>), StsError> {
    if let Some(existing) = cookie(headers, CSRF_COOKIE)
        && (32..=128).contains(&existing.len())
        && existing
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok((existing, None));
    }
    let fresh = crate::token::random_secret()?;
    let set = set_cookie(sts, CSRF_COOKIE, &fresh, None);
    Ok((fresh, Some(set)))
}

fn with_cookie(mut resp: Response, set_cookie: Option<String>) -> Response {
    if let Some(c) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn consent_form(sts: &Sts, req: &ConsentRequest, email: &str, csrf: &str) -> String {
    let types: String = req
        .types
        .iter()
        .map(|t| {
            let description = sts
                .rar()
                .get(t)
                .and_then(|r| r.schema.get("description"))
                .and_then(|d| d.as_str())
                .unwrap_or_default();
            format!(
                "<li><strong>{}</strong>: {}</li>",
                escape(t),
                escape(description)
            )
        })
        .collect();
    let scopes = if req.scopes.is_empty() {
        String::new()
    } else {
        format!(
            "<p>Scopes: <code>{}</code></p>",
            escape(&req.scopes.join(" "))
        )
    };
    format!(
        "<p>Signed in as <strong>{email}</strong>.</p>\
         <p>The agent <code>{agent}</code> asks to act on your behalf for:</p>\
         <ul>{types}</ul>{scopes}\
         <p>Until you revoke this consent, it may request short-lived tokens for \
         these on your behalf; each request is still checked against policy.</p>\
         <form method=\"post\" action=\"/consent\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"agent\" value=\"{agent}\">\
         <input type=\"hidden\" name=\"types\" value=\"{type_list}\">\
         <input type=\"hidden\" name=\"scopes\" value=\"{scope_list}\">\
         <input type=\"hidden\" name=\"return_to\" value=\"{return_to}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        email = escape(email),
        agent = escape(&req.agent),
        csrf = escape(csrf),
        type_list = escape(&req.types.join(",")),
        scope_list = escape(&req.scopes.join(",")),
        return_to = escape(&req.return_to),
    )
}

// --- the pages ---

pub(super) async fn page(State(sts): State<Arc<Sts>>, req: axum::extract::Request) -> Response {
    let params = Form(query_pairs(req.uri().query()));
    let creq = match parse_request(&sts, &params) {
        Ok(r) => r,
        Err(e) => return consent_error(&e),
    };
    let session = match signed_in(&sts, req.headers()).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(&creq),
        Err(e) => return consent_error(&e),
    };
    let email = match sts.user_by_id(&session.user_id).await {
        Ok(Some(u)) => u.email,
        Ok(None) => return to_login(&creq),
        Err(e) => return consent_error(&e),
    };
    let (csrf, set) = match csrf_token(&sts, req.headers()) {
        Ok(c) => c,
        Err(e) => return consent_error(&e),
    };
    with_cookie(
        html(
            StatusCode::OK,
            "Allow an agent to act for you?",
            &consent_form(&sts, &creq, &email, &csrf),
        ),
        set,
    )
}

pub(super) async fn submit(
    State(sts): State<Arc<Sts>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(e) => return consent_error(&e),
    };
    // Double-submit, as at /login: a cross-site form can send the field but
    // can neither read nor set our cookie.
    let csrf_cookie = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    let csrf = form.one("csrf").ok().flatten().unwrap_or_default();
    if csrf.is_empty() || !crate::token::ct_eq(&csrf, &csrf_cookie) {
        return consent_error(&StsError::CsrfMismatch);
    }
    let creq = match parse_request(&sts, &form) {
        Ok(r) => r,
        Err(e) => return consent_error(&e),
    };
    let approve = match form.one("decision").ok().flatten().as_deref() {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return consent_error(&StsError::InvalidRequest(
                "decision must be `approve` or `deny`".into(),
            ));
        }
    };
    let session = match signed_in(&sts, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(&creq),
        Err(e) => return consent_error(&e),
    };
    let done = if approve {
        grant_once(&sts, &session.user_id, &creq)
            .await
            .map(|c| {
                format!(
                    "<p>The agent <code>{}</code> may now act on your behalf for the \
                     approved types. You can revoke this consent (<code>{}</code>) at any time.</p>",
                    escape(&c.agent),
                    escape(&c.id)
                )
            })
    } else {
        sts.record_consent_denied(&session.user_id, &creq.agent, &creq.types, &creq.scopes)
            .await
            .map(|()| "<p>Nothing was granted.</p>".to_owned())
    };
    match done {
        Ok(_) if !creq.return_to.is_empty() => redirect(&creq.return_to, &[]),
        Ok(body) => html(
            StatusCode::OK,
            if approve {
                "Consent granted"
            } else {
                "Consent denied"
            },
            &body,
        ),
        Err(e) => consent_error(&e),
    }
}

/// Grants `req` for `user`, unless the very same consent (agent, types and
/// scopes) is already live: approving twice stores it once.
async fn grant_once(
    sts: &Sts,
    user: &str,
    req: &ConsentRequest,
) -> Result<crate::Consent, StsError> {
    let same = |a: &[String], b: &[String]| {
        a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
    };
    let existing = sts.list_consents(Some(user)).await?.into_iter().find(|c| {
        c.revoked_at.is_none()
            && c.agent == req.agent
            && same(&c.rar_types, &req.types)
            && same(&c.scopes, &req.scopes)
    });
    match existing {
        Some(c) => Ok(c),
        None => {
            sts.grant_consent(user, &req.agent, &req.types, &req.scopes)
                .await
        }
    }
}

// --- the console's API ---

fn unauthorized() -> Response {
    let mut resp = no_store_json(
        &json!({"error": "unauthorized", "error_description": "sign in first"}),
        StatusCode::UNAUTHORIZED,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Cookie realm=\"keyless\""),
    );
    resp
}

fn api_error(e: &StsError) -> Response {
    match e {
        StsError::ConsentNotFound(_) => no_store_json(
            &json!({"error": "not_found", "error_description": e.to_string()}),
            StatusCode::NOT_FOUND,
        ),
        _ => error_response(e),
    }
}

pub(super) async fn list(State(sts): State<Arc<Sts>>, headers: HeaderMap) -> Response {
    let session = match signed_in(&sts, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return unauthorized(),
        Err(e) => return api_error(&e),
    };
    let consents = match sts.list_consents(Some(&session.user_id)).await {
        Ok(c) => c,
        Err(e) => return api_error(&e),
    };
    let (csrf, set) = match csrf_token(&sts, &headers) {
        Ok(c) => c,
        Err(e) => return api_error(&e),
    };
    let mut resp = with_cookie(no_store_json(&json!(consents), StatusCode::OK), set);
    if let Ok(v) = HeaderValue::from_str(&csrf) {
        resp.headers_mut().insert(CSRF_HEADER, v);
    }
    resp
}

pub(super) async fn revoke(
    State(sts): State<Arc<Sts>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = match signed_in(&sts, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return unauthorized(),
        Err(e) => return api_error(&e),
    };
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    if sent.is_empty() || !crate::token::ct_eq(sent, &expected) {
        return api_error(&StsError::CsrfMismatch);
    }
    match sts.revoke_user_consent(&session.user_id, &id).await {
        Ok(c) => no_store_json(&json!(c), StatusCode::OK),
        Err(e) => api_error(&e),
    }
}
