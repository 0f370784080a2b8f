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
//! - Users and sessions (`signin.rs`): [`Sts::add_user`] (email unique and
//!   lowercased, Argon2id PHC hashes — the `argon2` crate brings RustCrypto's
//!   blake2, used for password hashing only), [`Sts::verify_password`]
//!   (constant work for unknown users, persisted per-account lockout, an
//!   in-memory per-IP token bucket, `login.*` events), sessions whose `sid`
//!   every token carries and whose liveness the exchange, consumption,
//!   refresh, introspection and userinfo check ([`Sts::session_live`],
//!   [`Sts::logout`], [`Sts::revoke_user_sessions`] for CAEP).
//! - Sign-in flow (`oidc.rs`): authorization codes (hashed, single use,
//!   60 s, PKCE S256 only), the `authorization_code` grant (access token
//!   with `may_act` from the user's live consents, ID token, refresh token),
//!   refresh rotation with reuse detection (revokes the family and the
//!   session), userinfo, introspection (RFC 7662) and revocation (RFC 7009)
//!   through a per-family record of issued access tokens.
//! - `http.rs` (the only module that knows axum): `/login` (plain HTML form,
//!   double-submit CSRF cookie), `/oauth2/authorize`, `/oauth2/token`
//!   (token exchange, `authorization_code`, `refresh_token`),
//!   `/oauth2/userinfo`, `/oauth2/logout`, `/oauth2/introspect`,
//!   `/oauth2/revoke`, `/oauth2/jwks`, `/oauth2/consume`,
//!   `/.well-known/oauth-authorization-server`,
//!   `/.well-known/openid-configuration`; and (`http/consent.rs`) the
//!   consent page `GET|POST /consent?agent=…&types=…[&scopes=…]` (signed-in
//!   user, same double-submit CSRF as `/login`, Approve grants, Deny leaves
//!   only a `consent.denied` event; `/login`'s `return_to` may now also be
//!   one of our own paths) and the console's `GET /api/consents`,
//!   `DELETE /api/consents/{id}` (session cookie, the user's own consents
//!   only, `X-Keyless-CSRF` header = the CSRF cookie, which `GET` hands out).
//!
//! Not done yet (issue 4), for the next session:
//! - The per-IP login limit reads `ConnectInfo<SocketAddr>` (the binary
//!   serves with `into_make_service_with_connect_info`); the limiter is per
//!   process, so replicas each count their own.
//! - `/oauth2/authorize` shows no consent screen: it issues a code as soon
//!   as a session exists (the console is first-party; agent consent is the
//!   separate `/consent` page); `prompt`, `max_age` and
//!   `id_token_hint` (at logout) are ignored; logout by GET is not
//!   CSRF-protected. No per-client scope restrictions.
//! - Introspection answers only for access tokens (refresh tokens come
//!   back inactive); revocation of a public client's token needs no client
//!   authentication (holding the token is the proof).
//! - A user access token's `may_act` is fixed at issuance: a consent
//!   granted later appears after the next refresh (a revoked consent bites
//!   at once: the exchange re-reads consents).
//! - `private_key_jwt` client authentication; confidential clients of the
//!   code flow.
//! - DPoP (RFC 9449) / mTLS (RFC 8705) sender-constrained OBO tokens.
//! - Risk level, approvals and step-up as decision inputs come from the
//!   caller ([`ExchangeContext`]); wiring them to signals and approvals.
//! - `/api/consents` sits in the STS router while DESIGN.md gives `/api/*`
//!   to the console: when `keyless-console` lands, it must not route the
//!   same paths (or should take these over, calling
//!   [`Sts::list_consents`] / [`Sts::revoke_user_consent`]).
//! - `keyless policy test` CLI command (the domain function exists:
//!   [`policy::LoadedPolicies::decide`]); scheduled signing
//!   key rotation and purges ([`Sts::rotate_signing_key`],
//!   [`Sts::purge_consumed`], [`Sts::purge_expired_signin`] exist, nothing
//!   calls them periodically).

mod config;
mod db;
mod error;
mod exchange;
pub mod http;
mod oidc;
pub mod policy;
pub mod rar;
mod service;
mod signin;
mod token;

pub use config::{
    CONSOLE_CLIENT_ID, ClientRegistration, MAX_OBO_TTL, MIN_OBO_TTL, PasswordHashCost,
    PublicClient, ResourceServer, StsConfig,
};
pub use db::Consent;
pub use error::StsError;
pub use exchange::{
    ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
    TokenExchangeRequest, TokenExchangeResponse,
};
pub use oidc::{AuthorizeRequest, CodeGrant, TokenResponse};
pub use service::{
    AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, IssuedToken, Sts, UserTokenRequest,
    kinds,
};
pub use signin::{MIN_PASSWORD_LEN, NewSession, Session, User};
pub use token::{ACCESS_TOKEN_TYP, AccessTokenClaims, Actor, IdTokenClaims, MayAct, StringList};
