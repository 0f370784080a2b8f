//! Keyless security token service (STS): the OAuth 2.0 authorization
//! server that turns "user + agent + exactly this call" into a short-lived,
//! single-use on-behalf-of token.
//!
//! What is here (domain first, HTTP last):
//! - [`Sts`] (`service.rs`): its own ES256 signing keys in the key manager
//!   (`sts-signing-<n>`, kid = RFC 7638 thumbprint, rotation keeps old keys
//!   in the JWKS), RFC 9068 user access tokens (`typ: at+jwt`, `may_act`)
//!   and their strict verification (`token.rs`), durable consents,
//!   single-use `jti` consumption (atomic on SQLite and PostgreSQL), and
//!   JWT-SVID client authentication (`…:client-assertion-type:jwt-spiffe`).
//! - Token exchange, RFC 8693 (`exchange.rs`): subject = our access token
//!   (or an OBO token, for delegation: nested `act`, authority only
//!   narrows, the subject token is spent), actor = a JWT-SVID, `may_act`,
//!   registered resource servers (`invalid_target`), consent, RAR, Cedar,
//!   OBO mint with a per-tier lifetime; every outcome is an audit event.
//! - RAR, RFC 9396 (`rar.rs`): registered types with JSON Schemas.
//! - Cedar policy at issuance (`policy.rs`, `policies/`): atomic reloads,
//!   an invalid set is refused and the old one stays in force.
//! - `http.rs` (the only module that knows axum): `/oauth2/token` (token
//!   exchange grant), `/oauth2/jwks`, `/.well-known/oauth-authorization-server`,
//!   `/oauth2/consume`.
//!
//! Not done yet (issue 4), for the next session:
//! - Users (`keyless user add`, Argon2id), `/login` (HTML form + CSRF),
//!   rate limiting and lockout of password guessing.
//! - Sessions with `sid` and their liveness check at exchange (today a
//!   subject token is accepted until it expires), logout.
//! - `/oauth2/authorize` with PKCE (S256 only), the `authorization_code`
//!   grant, ID tokens, `/oauth2/userinfo`, OIDC discovery
//!   (`/.well-known/openid-configuration`).
//! - Refresh tokens with rotation and reuse detection (reuse revokes the
//!   family).
//! - Deriving `may_act` of user access tokens from live consents at sign-in
//!   ([`Sts::mint_access_token`] takes the list from its caller today).
//! - `private_key_jwt` client authentication; the public client
//!   `keyless-console`.
//! - Introspection (RFC 7662, showing `act` and `authorization_details`)
//!   and revocation (RFC 7009).
//! - DPoP (RFC 9449) / mTLS (RFC 8705) sender-constrained OBO tokens.
//! - Risk level, approvals and step-up as decision inputs come from the
//!   caller ([`ExchangeContext`]); wiring them to signals and approvals.
//! - `keyless policy test` and `keyless consent list|revoke` CLI commands
//!   (the domain functions exist: [`policy::LoadedPolicies::decide`],
//!   [`Sts::list_consents`], [`Sts::revoke_consent`]); scheduled signing key
//!   rotation and purge of consumed ids ([`Sts::rotate_signing_key`],
//!   [`Sts::purge_consumed`] exist, nothing calls them periodically).

mod config;
mod db;
mod error;
mod exchange;
pub mod http;
pub mod policy;
pub mod rar;
mod service;
mod token;

pub use config::{ClientRegistration, MAX_OBO_TTL, MIN_OBO_TTL, ResourceServer, StsConfig};
pub use db::Consent;
pub use error::StsError;
pub use exchange::{
    ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
    TokenExchangeRequest, TokenExchangeResponse,
};
pub use service::{
    AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, IssuedToken, Sts, UserTokenRequest,
    kinds,
};
pub use token::{ACCESS_TOKEN_TYP, AccessTokenClaims, Actor, MayAct, StringList};
