//! The crate's one error type. Each variant knows its RFC 6749 §5.2 error
//! code ([`StsError::oauth_code`]); `http.rs` maps codes to statuses in one
//! exhaustive match, and only the description of client errors reaches the
//! wire (server-side failures are logged, never leaked).

/// Errors of the security token service.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// A malformed request, or a subject/actor token that is invalid or
    /// refused (RFC 8693 §2.2.2 uses `invalid_request` for both).
    #[error("{0}")]
    InvalidRequest(String),
    /// The requested resource/audience is not a registered resource server,
    /// or asks for more than the subject token allows.
    #[error("{0}")]
    InvalidTarget(String),
    /// `authorization_details` is malformed, of an unknown type, violates
    /// its type's schema, or widens what the subject token carries.
    #[error("{0}")]
    InvalidAuthorizationDetails(String),
    #[error("{0}")]
    InvalidScope(String),
    /// A valid token that lacks the scope a protected resource requires
    /// (RFC 6750 §3.1): the caller is known but not allowed (HTTP 403).
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    /// Refused by consent or by policy; `policy` names the deciding policy
    /// ids (empty when no consent or no permit matched).
    #[error("{reason}")]
    AccessDenied { policy: Vec<String>, reason: String },
    #[error("unsupported grant type `{0}`")]
    UnsupportedGrantType(String),
    #[error("unsupported response type `{0}`")]
    UnsupportedResponseType(String),
    #[error("{0}")]
    InvalidClient(String),
    /// One of our own tokens failed verification (bad signature, expired…).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A DPoP proof (RFC 9449) that is malformed, invalid, replayed or
    /// does not match the request or the token it must bind.
    #[error("invalid dpop proof: {0}")]
    InvalidDpopProof(String),
    /// A single-use token id was already consumed.
    #[error("token `{0}` was already used")]
    AlreadyConsumed(String),
    /// An authorization code or refresh token that is invalid, expired,
    /// reused, or bound to another client/redirect/verifier.
    #[error("{0}")]
    InvalidGrant(String),
    /// Wrong username or password (never says which), or a disabled user.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failed sign-ins for this account.
    #[error("account `{0}` is temporarily locked")]
    AccountLocked(String),
    /// Too many sign-in attempts from one address.
    #[error("too many sign-in attempts, try again later")]
    RateLimited,
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("user `{0}` not found")]
    UserNotFound(String),
    /// A password or email that may not be used.
    #[error("{0}")]
    WeakPassword(String),
    /// A session or login request without a valid CSRF token.
    #[error("csrf token mismatch")]
    CsrfMismatch,
    #[error("consent `{0}` not found")]
    ConsentNotFound(String),
    /// A policy set (or schema) that does not parse or validate; the
    /// previous set stays in force.
    #[error("invalid policy set: {0}")]
    InvalidPolicy(String),
    #[error("invalid sts configuration: {0}")]
    InvalidConfig(String),
    #[error("stored sts data is corrupt: {0}")]
    Corrupt(String),
    #[error("crypto error: {0}")]
    Crypto(String),
    #[error(transparent)]
    Store(#[from] keyless_store::StoreError),
    #[error("database error: {0}")]
    Database(#[from] keyless_store::sqlx::Error),
    #[error(transparent)]
    Audit(#[from] keyless_audit::SinkError),
    #[error(transparent)]
    Identity(#[from] keyless_identity::IdentityError),
}

// === impl StsError ===

impl StsError {
    /// The OAuth error code (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 9396 §5),
    /// or `server_error` for failures that are not the caller's.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::InvalidToken(_) | Self::AlreadyConsumed(_) => {
                "invalid_request"
            }
            Self::InvalidTarget(_) => "invalid_target",
            Self::InvalidAuthorizationDetails(_) => "invalid_authorization_details",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::AccessDenied { .. } => "access_denied",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::UnsupportedResponseType(_) => "unsupported_response_type",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
            Self::ConsentNotFound(_)
            | Self::UserExists(_)
            | Self::UserNotFound(_)
            | Self::WeakPassword(_) => "invalid_request",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::InvalidCredentials | Self::AccountLocked(_) | Self::CsrfMismatch => {
                "access_denied"
            }
            Self::RateLimited => "temporarily_unavailable",
            Self::InvalidPolicy(_)
            | Self::InvalidConfig(_)
            | Self::Corrupt(_)
            | Self::Crypto(_)
            | Self::Store(_)
            | Self::Database(_)
            | Self::Audit(_)
            | Self::Identity(_) => "server_error",
        }
    }

    /// Whether the caller caused this error (its description may be shown).
    pub fn is_client_error(&self) -> bool {
        self.oauth_code() != "server_error"
    }
}
