//! The STS's HTTP surface, and the only module that knows axum.
//!
//! - `POST /oauth2/token`: the token-exchange grant (RFC 8693). Optional
//!   client authentication with a JWT-SVID assertion (`client_assertion_type
//!   =…:jwt-spiffe`); there is no client secret anywhere, so `client_secret`
//!   and HTTP Basic are refused rather than ignored.
//! - `GET /oauth2/jwks`: the STS's signing keys.
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
//! - `POST /oauth2/consume`: single-use consumption of an OBO token by its
//!   resource server, which authenticates with its JWT-SVID (audience = the
//!   issuer) as a bearer token.
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
use serde_json::{Value, json};

use crate::exchange::{ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TokenExchangeRequest};
use crate::service::{AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE};
use crate::{Sts, StsError};

/// Longest form body accepted at the token endpoints.
const MAX_FORM_LEN: usize = 64 * 1024;

/// The routes, to be merged into the fabric's one listener.
pub fn router(sts: Arc<Sts>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/consume", post(consume))
        .route("/oauth2/jwks", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
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
        | StsError::ConsentNotFound(_) => StatusCode::BAD_REQUEST,
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

async fn token(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, client) = match parse_token_request(&sts, &headers, &body) {
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
    let result = sts
        .exchange(&req, client.as_ref(), &ExchangeContext::default())
        .await
        .and_then(|resp| serde_json::to_value(&resp).map_err(|e| StsError::Crypto(e.to_string())));
    match result {
        Ok(body) => no_store_json(&body, StatusCode::OK),
        Err(e) => error_response(&e),
    }
}

fn parse_token_request(
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
        (Some(kind), Some(assertion)) => Some(sts.authenticate_client(&kind, &assertion)?),
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
    let claims = sts
        .consume_token(&token, &audience, Some(caller.spiffe_id.as_str()))
        .await?;
    Ok(json!({
        "consumed": true,
        "jti": claims.jti,
        "sub": claims.sub,
        "act": claims.act,
        "exp": claims.exp,
        "authorization_details": claims.authorization_details,
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
    let issuer = sts.issuer();
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/oauth2/jwks"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        // "none": an agent authenticates by its actor token. The JWT-SVID
        // client assertion is advertised by its assertion type; the SPIFFE
        // client-auth draft's own metadata name is still to be checked.
        "token_endpoint_auth_methods_supported": ["none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256"],
        "client_assertion_types_supported": [CLIENT_ASSERTION_TYPE_JWT_SPIFFE],
        "authorization_details_types_supported": sts.rar().types_supported(),
        "response_types_supported": [],
        "scopes_supported": ["openid", "tools"],
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
