//! The STS's HTTP surface, and the only module that knows axum.
//!
//! - `POST /oauth2/token`: the token-exchange grant (RFC 8693). Optional
//!   client authentication with a JWT-SVID assertion (`client_assertion_type
//!   =…:jwt-spiffe`) or `private_key_jwt` (`…:jwt-bearer`); there is no
//!   client secret anywhere, so `client_secret` and HTTP Basic are refused
//!   rather than ignored. Sender constraint: a `DPoP` header (RFC 9449)
//!   binds the OBO token to the proof's key (`cnf.jkt`, `token_type: DPoP`;
//!   a bad proof is `invalid_dpop_proof`); a request on the mTLS listener
//!   with a client X509-SVID (a [`PeerSvid`] extension) binds it to the
//!   certificate (`cnf.x5t#S256`, RFC 8705). Both may apply at once. DPoP
//!   is not applied to the `authorization_code`/`refresh_token` grants.
//! - `GET /oauth2/jwks`: the STS's signing keys.
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
//! - `POST /oauth2/consume`: single-use consumption of an OBO token by its
//!   resource server, which authenticates with its JWT-SVID (audience = the
//!   issuer) as a bearer token. Optionally with the DPoP proof it received
//!   (`dpop_proof`, `dpop_htm`, `dpop_htu`: the proof and the method and URL
//!   of the request it came on): the STS then checks `ath` and the key
//!   against `cnf.jkt` and spends the proof. The answer carries `cnf`: a
//!   resource server that passed no proof must check the binding itself
//!   (`keyless_sts::dpop::verify_for_resource`, or the certificate).
//!
//! - `GET|POST /login`: the sign-in form (plain HTML: `username`,
//!   `password`, `csrf`, `return_to`), CSRF by double-submit cookie
//!   (`keyless_csrf`), session cookie `keyless_session`. `return_to` is the
//!   query of a pending authorization request, or one of our own paths
//!   (`/…`, e.g. the consent page): never a URL.
//! - `GET|POST /consent`, `GET /api/consents`, `DELETE /api/consents/{id}`:
//!   the consent screen and the signed-in user's own consents
//!   (`http/consent.rs`).
//! - `GET /oauth2/authorize`: authorization code + PKCE S256.
//! - `POST /oauth2/token` also serves `authorization_code` and
//!   `refresh_token` for public clients (`client_id`, no secret).
//! - `GET|POST /oauth2/userinfo`, `GET|POST /oauth2/logout`,
//!   `POST /oauth2/introspect` (RFC 7662, JWT-SVID bearer),
//!   `POST /oauth2/revoke` (RFC 7009), `/.well-known/openid-configuration`.
//!   The per-IP login limit reads `ConnectInfo<SocketAddr>` from the request
//!   extensions: serve with `into_make_service_with_connect_info`.
//!
//! [`error_response`] is the one mapping of [`StsError`] to the wire:
//! RFC 6749 §5.2 JSON; server-side failures are logged and answered with a
//! generic description.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::AuthorizeRequest;
use crate::oidc::{CodeGrant, SCOPES_SUPPORTED};
use serde_json::{Value, json};

use crate::client_credentials::{ClientCredentialsRequest, GRANT_TYPE_CLIENT_CREDENTIALS};
use crate::exchange::{ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TokenExchangeRequest};
use crate::service::{AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE};
use crate::token::Confirmation;
use crate::{CLIENT_ASSERTION_TYPE_JWT_BEARER, PeerSvid, Sts, StsError};

mod consent;

/// Longest form body accepted at the token endpoints.
const MAX_FORM_LEN: usize = 64 * 1024;

/// The routes, to be merged into the fabric's one listener.
pub fn router(sts: Arc<Sts>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/consume", post(consume))
        .route("/oauth2/jwks", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/login", get(login_page).post(login_submit))
        .route("/oauth2/authorize", get(authorize))
        .route("/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/oauth2/logout", get(logout).post(logout))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/consent", get(consent::page).post(consent::submit))
        .route("/api/consents", get(consent::list))
        .route("/api/consents/{id}", axum::routing::delete(consent::revoke))
        .with_state(sts)
}

/// The HTTP status of an error (RFC 6749 §5.2: 400, except 401 for
/// `invalid_client`).
pub fn error_status(e: &StsError) -> StatusCode {
    match e {
        StsError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        StsError::AlreadyConsumed(_) => StatusCode::CONFLICT,
        StsError::InvalidRequest(_)
        | StsError::InvalidToken(_)
        | StsError::InvalidTarget(_)
        | StsError::InvalidAuthorizationDetails(_)
        | StsError::InvalidScope(_)
        | StsError::AccessDenied { .. }
        | StsError::UnsupportedGrantType(_)
        | StsError::UnsupportedResponseType(_)
        | StsError::ConsentNotFound(_)
        | StsError::InvalidGrant(_)
        | StsError::InvalidDpopProof(_)
        | StsError::WeakPassword(_) => StatusCode::BAD_REQUEST,
        StsError::InvalidCredentials => StatusCode::UNAUTHORIZED,
        StsError::CsrfMismatch | StsError::InsufficientScope(_) => StatusCode::FORBIDDEN,
        StsError::AccountLocked(_) | StsError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        StsError::UserExists(_) => StatusCode::CONFLICT,
        StsError::UserNotFound(_) => StatusCode::NOT_FOUND,
        StsError::InvalidPolicy(_)
        | StsError::InvalidConfig(_)
        | StsError::Corrupt(_)
        | StsError::Crypto(_)
        | StsError::Store(_)
        | StsError::Database(_)
        | StsError::Audit(_)
        | StsError::Identity(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{error, error_description}` with `Cache-Control: no-store`.
pub fn error_response(e: &StsError) -> Response {
    let description = if e.is_client_error() {
        e.to_string()
    } else {
        tracing::error!(error = %e, "sts request failed");
        "internal error".to_owned()
    };
    let mut resp = no_store_json(
        &json!({"error": e.oauth_code(), "error_description": description}),
        error_status(e),
    );
    if matches!(e, StsError::InvalidClient(_)) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn no_store_json(body: &Value, status: StatusCode) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A parsed `application/x-www-form-urlencoded` body. Parameters that may
/// appear once are refused when repeated (RFC 6749 §3.2).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, StsError> {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(StsError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        if body.len() > MAX_FORM_LEN {
            return Err(StsError::InvalidRequest(
                "the request body is too large".into(),
            ));
        }
        Ok(Self(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    fn one(&self, name: &str) -> Result<Option<String>, StsError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(v.clone())),
            (Some(_), Some(_)) => Err(StsError::InvalidRequest(format!(
                "parameter `{name}` is repeated"
            ))),
        }
    }

    fn many(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn token(
    State(sts): State<Arc<Sts>>,
    peer: Option<axum::Extension<PeerSvid>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(form) = Form::parse(&headers, &body)
        && let Ok(Some(grant_type)) = form.one("grant_type")
        && matches!(grant_type.as_str(), "authorization_code" | "refresh_token")
    {
        let result = user_grant(&sts, &headers, &form, &grant_type)
            .await
            .and_then(|r| serde_json::to_value(r).map_err(|e| StsError::Crypto(e.to_string())));
        return match result {
            Ok(body) => no_store_json(&body, StatusCode::OK),
            Err(e) => error_response(&e),
        };
    }
    if let Ok(form) = Form::parse(&headers, &body)
        && let Ok(Some(grant_type)) = form.one("grant_type")
        && grant_type == GRANT_TYPE_CLIENT_CREDENTIALS
    {
        let result = client_credentials(&sts, &headers, &form)
            .await
            .and_then(|r| serde_json::to_value(r).map_err(|e| StsError::Crypto(e.to_string())));
        return match result {
            Ok(body) => no_store_json(&body, StatusCode::OK),
            Err(e) => error_response(&e),
        };
    }
    let parsed = match parse_token_request(&sts, &headers, &body).await {
        Ok(parsed) => sender_constraint(&sts, &headers, peer.as_ref().map(|p| &p.0))
            .await
            .map(|sender| (parsed, sender)),
        Err(e) => Err(e),
    };
    let ((req, client), sender) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // Refused before the exchange started (bad form, failed client
            // authentication): still a decision, still an event.
            if let Err(audit) = sts.record_refused(&e).await {
                return error_response(&audit);
            }
            return error_response(&e);
        }
    };
    // Risk, approvals and step-up will come from the authenticated
    // gateway and the signals crate; until then, the defaults.
    let ctx = ExchangeContext {
        sender,
        ..ExchangeContext::default()
    };
    let result = sts
        .exchange(&req, client.as_ref(), &ctx)
        .await
        .and_then(|resp| serde_json::to_value(&resp).map_err(|e| StsError::Crypto(e.to_string())));
    match result {
        Ok(body) => no_store_json(&body, StatusCode::OK),
        Err(e) => error_response(&e),
    }
}

/// The sender constraint of a token-exchange request: the key of its DPoP
/// proof (verified and spent here: a bad proof refuses the whole request
/// with `invalid_dpop_proof`, RFC 9449 §5), and the client X509-SVID of the
/// mTLS connection it came on (RFC 8705 §3).
async fn sender_constraint(
    sts: &Sts,
    headers: &HeaderMap,
    peer: Option<&PeerSvid>,
) -> Result<Option<Confirmation>, StsError> {
    let mut proofs = headers.get_all(crate::dpop::DPOP_HEADER).iter();
    let jkt = match (proofs.next(), proofs.next()) {
        (None, _) => None,
        (Some(proof), None) => {
            let proof = proof
                .to_str()
                .map_err(|_| StsError::InvalidDpopProof("the header is not ascii".into()))?;
            Some(sts.verify_token_request_proof(proof.trim()).await?.jkt)
        }
        (Some(_), Some(_)) => {
            return Err(StsError::InvalidDpopProof(
                "more than one dpop header".into(),
            ));
        }
    };
    let cnf = Confirmation {
        jkt,
        x5t_s256: peer.map(PeerSvid::x5t_s256),
    };
    Ok((!cnf.is_empty()).then_some(cnf))
}

async fn parse_token_request(
    sts: &Sts,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TokenExchangeRequest, Option<AuthenticatedClient>), StsError> {
    let form = Form::parse(headers, body)?;
    if headers.contains_key(header::AUTHORIZATION) || form.one("client_secret")?.is_some() {
        return Err(StsError::InvalidClient(
            "client secrets are not supported: authenticate with a jwt-svid client assertion"
                .into(),
        ));
    }
    let client = match (
        form.one("client_assertion_type")?,
        form.one("client_assertion")?,
    ) {
        (Some(kind), Some(assertion)) => {
            Some(sts.authenticate_client_assertion(&kind, &assertion).await?)
        }
        (None, None) => None,
        _ => {
            return Err(StsError::InvalidClient(
                "client_assertion and client_assertion_type go together".into(),
            ));
        }
    };
    let grant_type = form
        .one("grant_type")?
        .ok_or_else(|| StsError::InvalidRequest("grant_type is required".into()))?;
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
        return Err(StsError::UnsupportedGrantType(grant_type));
    }
    let req = TokenExchangeRequest {
        grant_type,
        subject_token: form.one("subject_token")?,
        subject_token_type: form.one("subject_token_type")?,
        actor_token: form.one("actor_token")?,
        actor_token_type: form.one("actor_token_type")?,
        resource: form.many("resource"),
        audience: form.many("audience"),
        scope: form.one("scope")?,
        requested_token_type: form.one("requested_token_type")?,
        authorization_details: form.one("authorization_details")?,
    };
    Ok((req, client))
}

async fn consume(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: Bytes) -> Response {
    match consume_inner(&sts, &headers, &body).await {
        Ok(body) => no_store_json(&body, StatusCode::OK),
        Err(e) => error_response(&e),
    }
}

async fn consume_inner(sts: &Sts, headers: &HeaderMap, body: &[u8]) -> Result<Value, StsError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            StsError::InvalidClient("authenticate with a jwt-svid as bearer token".into())
        })?;
    let caller = sts
        .identity()
        .validate_jwt_svid(bearer.trim(), sts.issuer())
        .map_err(|e| StsError::InvalidClient(format!("caller: {e}")))?;
    let form = Form::parse(headers, body)?;
    let token = form
        .one("token")?
        .ok_or_else(|| StsError::InvalidRequest("token is required".into()))?;
    let audience = form
        .one("audience")?
        .ok_or_else(|| StsError::InvalidRequest("audience is required".into()))?;
    // The DPoP proof the resource server received with the token, and the
    // method and URL of that request: checked (and the proof spent) before
    // the token is consumed, so a bad proof does not burn the token.
    let dpop = (
        form.one("dpop_proof")?,
        form.one("dpop_htm")?,
        form.one("dpop_htu")?,
    );
    match &dpop {
        (Some(proof), Some(htm), Some(htu)) => {
            if let Some(rs) = sts.config().resource_server(&audience) {
                let claims = sts.verify_access_token(&token, Some(&rs.audience)).await?;
                sts.check_dpop_binding(&claims, &token, proof, htm, htu)
                    .await?;
            }
        }
        (None, None, None) => {}
        _ => {
            return Err(StsError::InvalidRequest(
                "dpop_proof, dpop_htm and dpop_htu go together".into(),
            ));
        }
    }
    let claims = sts
        .consume_token(&token, &audience, Some(caller.spiffe_id.as_str()))
        .await?;
    // `cnf` tells a resource server that did not pass the proof what it
    // must check itself (a DPoP key, a client certificate).
    Ok(json!({
        "consumed": true,
        "jti": claims.jti,
        "sub": claims.sub,
        "act": claims.act,
        "exp": claims.exp,
        "authorization_details": claims.authorization_details,
        "cnf": claims.cnf,
        "dpop_checked": dpop.0.is_some(),
    }))
}

async fn jwks(State(sts): State<Arc<Sts>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Short: a rotated key must reach resource servers quickly.
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        sts.jwks().to_string(),
    )
        .into_response()
}

/// The RFC 8414 metadata document.
pub fn metadata_document(sts: &Sts) -> Value {
    let mut doc = base_metadata(sts);
    if let (Some(mtls), Value::Object(m)) = (&sts.config().mtls_base_url, &mut doc) {
        m.insert(
            "tls_client_certificate_bound_access_tokens".into(),
            json!(true),
        );
        m.insert(
            "mtls_endpoint_aliases".into(),
            json!({
                "token_endpoint": format!("{mtls}/oauth2/token"),
                "introspection_endpoint": format!("{mtls}/oauth2/introspect"),
                "revocation_endpoint": format!("{mtls}/oauth2/revoke"),
            }),
        );
    }
    doc
}

fn base_metadata(sts: &Sts) -> Value {
    let issuer = sts.issuer();
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/oauth2/jwks"),
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "userinfo_endpoint": format!("{issuer}/oauth2/userinfo"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "end_session_endpoint": format!("{issuer}/oauth2/logout"),
        "grant_types_supported": [
            GRANT_TYPE_TOKEN_EXCHANGE,
            "authorization_code",
            "refresh_token",
            GRANT_TYPE_CLIENT_CREDENTIALS,
        ],
        "code_challenge_methods_supported": ["S256"],
        // "none": an agent authenticates by its actor token. The JWT-SVID
        // client assertion is advertised by its assertion type; the SPIFFE
        // client-auth draft's own metadata name is still to be checked.
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
        "client_assertion_types_supported": [
            CLIENT_ASSERTION_TYPE_JWT_SPIFFE,
            CLIENT_ASSERTION_TYPE_JWT_BEARER,
        ],
        "dpop_signing_alg_values_supported": crate::dpop::DPOP_SIGNING_ALGS,
        "authorization_details_types_supported": sts.rar().types_supported(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "scopes_supported": SCOPES_SUPPORTED,
    })
}

async fn metadata(State(sts): State<Arc<Sts>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        metadata_document(&sts).to_string(),
    )
        .into_response()
}

/// OIDC discovery: the RFC 8414 document plus the OIDC members.
pub fn openid_configuration_document(sts: &Sts) -> Value {
    let mut doc = metadata_document(sts);
    if let Value::Object(m) = &mut doc {
        m.insert("subject_types_supported".into(), json!(["public"]));
        m.insert(
            "id_token_signing_alg_values_supported".into(),
            json!(["ES256"]),
        );
        m.insert(
            "claims_supported".into(),
            json!(["sub", "email", "sid", "auth_time", "nonce"]),
        );
    }
    doc
}

async fn openid_configuration(State(sts): State<Arc<Sts>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        openid_configuration_document(&sts).to_string(),
    )
        .into_response()
}

// --- authorization code and refresh grants ---

async fn user_grant(
    sts: &Sts,
    headers: &HeaderMap,
    form: &Form,
    grant_type: &str,
) -> Result<crate::TokenResponse, StsError> {
    if headers.contains_key(header::AUTHORIZATION) || form.one("client_secret")?.is_some() {
        return Err(StsError::InvalidClient(
            "public clients have no secret: send client_id and the pkce verifier".into(),
        ));
    }
    let client_id = form
        .one("client_id")?
        .ok_or_else(|| StsError::InvalidClient("client_id is required".into()))?;
    if sts.config().public_client(&client_id).is_none() {
        return Err(StsError::InvalidClient(format!(
            "`{client_id}` is not a registered client"
        )));
    }
    let required = |name: &str| -> Result<String, StsError> {
        form.one(name)?
            .ok_or_else(|| StsError::InvalidRequest(format!("{name} is required")))
    };
    if grant_type == "authorization_code" {
        sts.redeem_code(&CodeGrant {
            code: required("code")?,
            redirect_uri: required("redirect_uri")?,
            code_verifier: required("code_verifier")?,
            client_id,
        })
        .await
    } else {
        sts.refresh(&required("refresh_token")?, &client_id).await
    }
}

// --- client credentials ---

/// The `client_credentials` grant: client assertion only (no secret, no
/// HTTP Basic). A `DPoP` header is not applied: service tokens are Bearer.
async fn client_credentials(
    sts: &Sts,
    headers: &HeaderMap,
    form: &Form,
) -> Result<crate::TokenResponse, StsError> {
    let req = ClientCredentialsRequest {
        client_assertion_type: form.one("client_assertion_type")?,
        client_assertion: form.one("client_assertion")?,
        scope: form.one("scope")?,
        resource: form.many("resource"),
        audience: form.many("audience"),
    };
    if headers.contains_key(header::AUTHORIZATION) || form.one("client_secret")?.is_some() {
        let e = StsError::InvalidClient(
            "client secrets are not supported: authenticate with a client assertion".into(),
        );
        // Still a decision: recorded like any other refusal of the grant.
        sts.record_client_credentials_refused(&e).await?;
        return Err(e);
    }
    sts.client_credentials(&req).await
}

// --- cookies and html ---

const SESSION_COOKIE: &str = "keyless_session";
const CSRF_COOKIE: &str = "keyless_csrf";

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(sts: &Sts, name: &str, value: &str, max_age: Option<i64>) -> String {
    // Secure whenever the issuer is https; on plain loopback http a Secure
    // cookie would never come back.
    let secure = if sts.issuer().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}{age}")
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("content-security-policy"),
                // No `form-action`: browsers apply it to the redirect chain
                // after the login post, which ends at the client's origin.
                "default-src 'none'; frame-ancestors 'none'",
            ),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
        ],
        page,
    )
        .into_response()
}

fn error_page(e: &StsError) -> Response {
    let description = if e.is_client_error() {
        e.to_string()
    } else {
        tracing::error!(error = %e, "sts request failed");
        "internal error".to_owned()
    };
    html(
        error_status(e),
        "Sign-in error",
        &format!("<p>{}</p>", escape(&description)),
    )
}

fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    match header::HeaderValue::from_str(location) {
        Ok(v) => {
            h.insert(header::LOCATION, v);
        }
        Err(_) => return error_page(&StsError::InvalidRequest("invalid redirect".into())),
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    for c in cookies {
        if let Ok(v) = header::HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn client_ip(req: &axum::extract::Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A `return_to` is the query of a pending authorization request, appended
/// to our own `/oauth2/authorize` path (never a URL: no open redirect).
fn valid_return_to(r: &str) -> bool {
    r.len() <= 8 * 1024 && !r.contains(['\r', '\n', '#'])
}

/// Whether `p` is a path on this server and nothing else: one leading `/`
/// (`//host` would be another origin), printable ASCII only (browsers drop
/// tabs and newlines and read `\` as `/`, which could make `/\host` into
/// `//host`), no fragment.
fn own_path(p: &str) -> bool {
    p.len() <= 8 * 1024
        && p.starts_with('/')
        && !p.starts_with("//")
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'#')
}

/// Where a sign-in returns: nothing → `/`; one of our own paths (a value
/// starting with `/`, e.g. the consent page) → that path; anything else is
/// the query of a pending authorization request → `/oauth2/authorize?…`.
/// `None` for a value that is neither.
fn login_destination(return_to: &str) -> Option<String> {
    if return_to.is_empty() {
        Some("/".to_owned())
    } else if return_to.starts_with('/') {
        own_path(return_to).then(|| return_to.to_owned())
    } else {
        valid_return_to(return_to).then(|| format!("/oauth2/authorize?{return_to}"))
    }
}

fn login_form(csrf: &str, return_to: &str, message: Option<&str>) -> String {
    let msg = message
        .map(|m| format!("<p role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    format!(
        "{msg}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"return_to\" value=\"{rt}\">\
         <label>Email <input name=\"username\" type=\"email\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>",
        csrf = escape(csrf),
        rt = escape(return_to),
    )
}

// --- /login ---

async fn login_page(State(sts): State<Arc<Sts>>, req: axum::extract::Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let return_to = pairs
        .iter()
        .find(|(k, _)| k == "return_to")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if login_destination(&return_to).is_none() {
        return error_page(&StsError::InvalidRequest("invalid return_to".into()));
    }
    let csrf = match crate::token::random_secret() {
        Ok(c) => c,
        Err(e) => return error_page(&e),
    };
    let mut resp = html(
        StatusCode::OK,
        "Sign in to Keyless",
        &login_form(&csrf, &return_to, None),
    );
    if let Ok(v) = header::HeaderValue::from_str(&set_cookie(&sts, CSRF_COOKIE, &csrf, None)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn login_submit(State(sts): State<Arc<Sts>>, req: axum::extract::Request) -> Response {
    let ip = client_ip(&req);
    let headers = req.headers().clone();
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_FORM_LEN).await else {
        return error_page(&StsError::InvalidRequest(
            "the request body is too large".into(),
        ));
    };
    let form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(e) => return error_page(&e),
    };
    let field = |n: &str| form.one(n).ok().flatten().unwrap_or_default();
    // Double-submit: a cross-site form can send the field but cannot read
    // or set our cookie, so the two only match for our own page.
    let csrf_cookie = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    let csrf = field("csrf");
    if csrf.is_empty() || !crate::token::ct_eq(&csrf, &csrf_cookie) {
        return error_page(&StsError::CsrfMismatch);
    }
    let return_to = field("return_to");
    let Some(location) = login_destination(&return_to) else {
        return error_page(&StsError::InvalidRequest("invalid return_to".into()));
    };
    match sts
        .verify_password(&field("username"), &field("password"), ip)
        .await
    {
        Ok(user) => {
            let new = match sts.start_session(&user.id).await {
                Ok(n) => n,
                Err(e) => return error_page(&e),
            };
            let ttl = crate::service::secs(sts.config().session_ttl);
            redirect(
                &location,
                &[set_cookie(&sts, SESSION_COOKIE, &new.cookie, Some(ttl))],
            )
        }
        Err(
            e @ (StsError::InvalidCredentials | StsError::AccountLocked(_) | StsError::RateLimited),
        ) => {
            // One message for all three: the page does not tell whether an
            // account exists or is locked (the audit log does).
            html(
                error_status(&e),
                "Sign in to Keyless",
                &login_form(
                    &csrf,
                    &return_to,
                    Some(
                        "Sign-in failed: wrong email or password, or too many attempts (try again later).",
                    ),
                ),
            )
        }
        Err(e) => error_page(&e),
    }
}

// --- /oauth2/authorize ---

async fn authorize(State(sts): State<Arc<Sts>>, req: axum::extract::Request) -> Response {
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let pairs = query_pairs(Some(&raw_query));
    let mut areq = AuthorizeRequest::default();
    for (k, v) in pairs.iter() {
        let slot = match k.as_str() {
            "response_type" => &mut areq.response_type,
            "client_id" => &mut areq.client_id,
            "redirect_uri" => &mut areq.redirect_uri,
            "scope" => &mut areq.scope,
            "state" => &mut areq.state,
            "nonce" => &mut areq.nonce,
            "code_challenge" => &mut areq.code_challenge,
            "code_challenge_method" => &mut areq.code_challenge_method,
            "authorization_details" => &mut areq.authorization_details,
            _ => continue,
        };
        if slot.is_some() {
            return error_page(&StsError::InvalidRequest(format!(
                "parameter `{k}` is repeated"
            )));
        }
        *slot = Some(v.clone());
    }
    // Client and redirect first: until they check out, errors are a page,
    // never a redirect (no open redirector).
    let redirect_uri = match sts.authorize_redirect_uri(&areq) {
        Ok(u) => u,
        Err(e) => return error_page(&e),
    };
    let back = |params: &[(&str, &str)]| {
        let mut url = redirect_uri.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        if let Some(state) = &areq.state {
            ser.append_pair("state", state);
        }
        url.push_str(&ser.finish());
        redirect(&url, &[])
    };
    if let Err(e) = sts.check_authorize(&areq) {
        return back(&[
            ("error", e.oauth_code()),
            ("error_description", &e.to_string()),
        ]);
    }
    let session = match cookie(req.headers(), SESSION_COOKIE) {
        Some(c) => match sts.session_by_cookie(&c).await {
            Ok(s) => s,
            Err(e) => return back(&[("error", e.oauth_code())]),
        },
        None => None,
    };
    let Some(session) = session else {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        ser.append_pair("return_to", &raw_query);
        return redirect(&format!("/login?{}", ser.finish()), &[]);
    };
    match sts.issue_code(&areq, &session).await {
        Ok(code) => back(&[("code", &code)]),
        Err(e) => back(&[("error", e.oauth_code())]),
    }
}

// --- userinfo, logout, introspection, revocation ---

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn userinfo(State(sts): State<Arc<Sts>>, headers: HeaderMap) -> Response {
    let result = match bearer(&headers) {
        Some(t) => sts.userinfo(t).await,
        None => Err(StsError::InvalidToken(
            "a bearer access token is required".into(),
        )),
    };
    match result {
        Ok(v) => no_store_json(&v, StatusCode::OK),
        Err(e) if e.is_client_error() => {
            let mut resp = no_store_json(
                &json!({"error": "invalid_token", "error_description": e.to_string()}),
                StatusCode::UNAUTHORIZED,
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
        Err(e) => error_response(&e),
    }
}

/// RP-initiated logout. `id_token_hint` is accepted but not relied on:
/// the session comes from the cookie and the client from `client_id`.
async fn logout(State(sts): State<Arc<Sts>>, req: axum::extract::Request) -> Response {
    let headers = req.headers().clone();
    let mut pairs = query_pairs(req.uri().query());
    if req.method() == axum::http::Method::POST {
        let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_FORM_LEN).await else {
            return error_page(&StsError::InvalidRequest(
                "the request body is too large".into(),
            ));
        };
        // Every parameter is optional (RP-initiated logout): an empty
        // body, whatever its content type, is a logout without any.
        if !body.is_empty() {
            match Form::parse(&headers, &body) {
                Ok(f) => pairs.extend(f.0),
                Err(e) => return error_page(&e),
            }
        }
    }
    let param = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let target = match param("post_logout_redirect_uri") {
        None => None,
        Some(uri) => {
            let client_id = param("client_id");
            let registered = sts.config().public_clients.iter().any(|c| {
                client_id.as_ref().is_none_or(|id| *id == c.client_id)
                    && c.post_logout_redirect_uris.contains(&uri)
            });
            if !registered {
                return error_page(&StsError::InvalidRequest(format!(
                    "post_logout_redirect_uri `{uri}` is not registered"
                )));
            }
            Some(uri)
        }
    };
    if let Some(c) = cookie(&headers, SESSION_COOKIE) {
        match sts.session_by_cookie(&c).await {
            Ok(Some(s)) => {
                if let Err(e) = sts.logout(&s.sid).await {
                    return error_page(&e);
                }
            }
            Ok(None) => {}
            Err(e) => return error_page(&e),
        }
    }
    let clear = set_cookie(&sts, SESSION_COOKIE, "", Some(0));
    match target {
        Some(mut uri) => {
            if let Some(state) = param("state") {
                let mut ser = url::form_urlencoded::Serializer::new(String::new());
                ser.append_pair("state", &state);
                uri.push(if uri.contains('?') { '&' } else { '?' });
                uri.push_str(&ser.finish());
            }
            redirect(&uri, &[clear])
        }
        None => {
            let mut resp = html(StatusCode::OK, "Signed out", "<p>You are signed out.</p>");
            if let Ok(v) = header::HeaderValue::from_str(&clear) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
    }
}

async fn introspect(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let caller = bearer(&headers).ok_or_else(|| {
            StsError::InvalidClient("authenticate with a jwt-svid as bearer token".into())
        })?;
        sts.authenticate_introspector(caller)?;
        let form = Form::parse(&headers, &body)?;
        let token = form
            .one("token")?
            .ok_or_else(|| StsError::InvalidRequest("token is required".into()))?;
        sts.introspect(&token).await
    }
    .await;
    match result {
        Ok(v) => no_store_json(&v, StatusCode::OK),
        Err(e) => error_response(&e),
    }
}

async fn revoke(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let form = Form::parse(&headers, &body)?;
        let client_id = form.one("client_id")?;
        if let Some(id) = &client_id
            && sts.config().public_client(id).is_none()
        {
            return Err(StsError::InvalidClient(format!(
                "`{id}` is not a registered client"
            )));
        }
        let token = form
            .one("token")?
            .ok_or_else(|| StsError::InvalidRequest("token is required".into()))?;
        sts.revoke_token(&token, client_id.as_deref()).await
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response(),
        Err(e) => error_response(&e),
    }
}
