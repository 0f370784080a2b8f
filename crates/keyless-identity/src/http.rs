//! The identity crate's HTTP surface, and the only module that knows axum:
//! the SPIFFE federation bundle endpoint and OIDC discovery for JWT-SVIDs.
//!
//! - `GET /spiffe/bundle`: the SPIFFE bundle (JWKS with `x509-svid` and
//!   `jwt-svid` keys, `spiffe_refresh_hint`, `spiffe_sequence`), the
//!   `https_web` profile's document.
//! - `GET /spiffe/.well-known/openid-configuration`: OIDC discovery with
//!   issuer `<public_url>/spiffe`, which is what lets OpenBao/Vault's JWT auth
//!   (`oidc_discovery_url`) and cloud STSes trust JWT-SVIDs.
//! - `GET /spiffe/keys`: the JWKS that document points at.
//!
//! Everything here is public by design: bundles are trust anchors, not
//! secrets. These routes cannot fail on input; [`error_status`] and
//! [`error_response`] are the crate's one mapping of [`IdentityError`] to
//! HTTP, for the admin API that serves entries.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::{Identity, IdentityError};

/// The routes, to be merged into the fabric's one listener.
pub fn router(identity: Arc<Identity>) -> Router {
    Router::new()
        .route("/spiffe/bundle", get(bundle))
        .route("/spiffe/.well-known/openid-configuration", get(discovery))
        .route("/spiffe/keys", get(keys))
        .with_state(identity)
}

/// JSON with a short cache lifetime: consumers must see a newly prepared
/// authority well before it is activated.
fn json_response(body: Value, max_age_secs: u64) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CACHE_CONTROL,
                format!("public, max-age={max_age_secs}"),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn bundle(State(identity): State<Arc<Identity>>) -> Response {
    json_response(
        identity.federation_bundle(),
        identity.refresh_hint().as_secs(),
    )
}

async fn discovery(State(identity): State<Arc<Identity>>) -> Response {
    let issuer = identity.issuer();
    let doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    json_response(doc, identity.refresh_hint().as_secs())
}

async fn keys(State(identity): State<Arc<Identity>>) -> Response {
    json_response(identity.oidc_jwks(), identity.refresh_hint().as_secs())
}

/// The HTTP status for an identity error.
pub fn error_status(error: &IdentityError) -> StatusCode {
    match error {
        IdentityError::SpiffeId(_)
        | IdentityError::Selector { .. }
        | IdentityError::InvalidEntry(_)
        | IdentityError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        IdentityError::InvalidJwt(_) => StatusCode::UNAUTHORIZED,
        IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        // No signing authority or no audit log: the action cannot be done
        // (or cannot be recorded) right now; retrying later may work.
        IdentityError::NoAuthority(_) | IdentityError::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
        IdentityError::TrustDomainMismatch { .. }
        | IdentityError::InvalidConfig(_)
        | IdentityError::Certificate(_)
        | IdentityError::Corrupt(_)
        | IdentityError::Crypto(_)
        | IdentityError::Store(_)
        | IdentityError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error": "..."}` with [`error_status`]. Client errors say what was
/// wrong with the request; server errors are logged here and answered with a
/// generic message, so database or key-store details never reach a caller.
pub fn error_response(error: &IdentityError) -> Response {
    let status = error_status(error);
    let message = if status.is_server_error() {
        tracing::error!(error = %error, "identity request failed");
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                "identity service temporarily unavailable".to_owned()
            }
            _ => "internal error".to_owned(),
        }
    } else {
        error.to_string()
    };
    (status, axum::Json(json!({ "error": message }))).into_response()
}
