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
//! - `private_key_jwt` client authentication, RFC 7523 (`client_auth.rs`):
//!   registered clients with their public JWKS ([`JwtClientRegistration`]),
//!   ES256/EdDSA/RS256/PS256, short `exp`, single-use `jti` (the same atomic
//!   table), [`Sts::authenticate_client_assertion`] for either kind.
//! - Sender-constrained OBO tokens: DPoP, RFC 9449 (`dpop.rs`: token
//!   endpoint proofs → `cnf.jkt` and `token_type: DPoP`; a resource-side
//!   verifier [`dpop::verify_for_resource`]; proofs single use), and mTLS,
//!   RFC 8705 (`mtls.rs`: the [`PeerSvid`] request extension the binary's
//!   TLS listener sets → `cnf.x5t#S256`). `jwk.rs` holds the JWK/JWS
//!   verification both share (public keys only, no `none`/`HS*`).
//! - Token exchange, RFC 8693 (`exchange.rs`): subject = our access token
//!   (or an OBO token, for delegation: nested `act`, authority only
//!   narrows, the subject token is spent), actor = a JWT-SVID or an
//!   X509-SVID vouched for by a registered actor attester (`actor.rs`: only
//!   a JWT-SVID client listed in [`StsConfig::actor_attesters`], the
//!   certificate validated as a current SVID, and the token's `act` says
//!   `attested_by` and `x5t#S256`), `may_act`,
//!   registered resource servers (`invalid_target`), consent, RAR, Cedar,
//!   OBO mint with a per-tier lifetime; every outcome is an audit event.
//!   The success event is queued for the audit log's next group commit
//!   (not awaited) and every consumption requires it committed
//!   ([`Sts::consume_token`], delegation): no OBO token is honoured unless
//!   its issuance is durably in the log.
//! - Per-call facts without per-call reads (`live.rs`): session liveness
//!   and token revocation are cached (consents are read on every exchange)
//!   under a generation counter that every revocation, logout and consent
//!   change bumps after it commits (and, on PostgreSQL, announces to the
//!   other replicas with `pg_notify`; a replica without a working listener
//!   does not cache). Signature checks of a token presented again are
//!   memoized (`keyless_identity::memo`); every other check runs each time.
//! - Service tokens (`client_credentials.rs`): the `client_credentials`
//!   grant (RFC 6749 §4.4) for service scopes such as `ssf.manage` /
//!   `ssf.read`, client assertion only (a JWT-SVID whose SPIFFE ID a
//!   [`ServiceScopeRule`] names, or a registered `private_key_jwt` client),
//!   five-minute Bearer `at+jwt` tokens marked `gty: client_credentials`,
//!   no refresh token; [`Sts::verify_service_token`] for the APIs they
//!   open (`insufficient_scope` → 403).
//! - The risk gate (`risk.rs`): [`RiskGate`], installed by the binary with
//!   [`Sts::set_risk_gate`], is the W1–W5 ladder's word on a session's
//!   level and a restricted (W4) user: a restricted user gets no exchange
//!   and no refresh, a W2 session no refresh (sign in again: the step-up),
//!   and the exchange's Cedar `risk_level` is at least what the session's
//!   level implies (W2 medium, W3+ high; the default policy then keeps
//!   tier-1 reads only, unless `step_up`). Signing in is never blocked.
//! - RAR, RFC 9396 (`rar.rs`): registered types with JSON Schemas.
//! - Cedar policy at issuance (`policy.rs`, `policies/`): atomic reloads,
//!   an invalid set is refused and the old one stays in force; a polling
//!   watcher (names, sizes, mtimes and SHA-256 of the files, every second
//!   in `keyless up`) records `policy.reloaded` / `policy.reload_refused`.
//! - Upkeep (`maintenance.rs`): [`Sts::spawn_maintenance`] rotates the
//!   signing key when it reaches `signing_key_lifetime` (24 h; its age is
//!   its stored `created_at`), removes a retired key once every token it
//!   can have signed has expired, and purges consumed ids and expired
//!   sign-in rows, every `maintenance_interval` (1 min).
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
//!   (token exchange, `authorization_code`, `refresh_token`,
//!   `client_credentials`),
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
//!   at once: a revocation bumps the cache generation before it returns).
//! - Introspection answers `active: true` for an OBO token whose issuance
//!   event is still in the audit log's queue (consumption waits for it).
//! - Confidential clients of the code flow; `private_key_jwt` and DPoP
//!   apply to the token exchange only (the `authorization_code` and
//!   `refresh_token` grants ignore a `DPoP` header and issue Bearer tokens).
//!   DPoP server nonces (RFC 9449 §8) are not used. A delegated exchange
//!   does not carry the subject token's `cnf` over: each OBO token is bound
//!   to the key of the request that obtained it.
//! - `/oauth2/consume` checks a DPoP binding only when the resource server
//!   passes the proof; otherwise it returns `cnf` and the resource server
//!   must check it (no resource server in the tree does yet; the demo
//!   servers and the gateway are later issues). mTLS-bound tokens are
//!   never checked by the STS (only the resource server sees the
//!   presenter's certificate).
//! - `tls_client_auth` / `self_signed_tls_client_auth` (RFC 8705 §2) client
//!   authentication: an mTLS client certificate binds tokens but does not
//!   authenticate the client.
//! - Approvals and step-up as decision inputs come from the caller
//!   ([`ExchangeContext`]); the risk level is the higher of the caller's and
//!   the risk gate's (none until the binary installs one).
//! - `client_credentials` ignores a `DPoP` header (service tokens are
//!   Bearer) and its tokens carry no `cnf`.
//! - `/api/consents` sits in the STS router while DESIGN.md gives `/api/*`
//!   to the console: when `keyless-console` lands, it must not route the
//!   same paths (or should take these over, calling
//!   [`Sts::list_consents`] / [`Sts::revoke_user_consent`]).
//! - The policy watcher polls (no inotify): an edit shows within a second
//!   or so; every replica watches its own directory (keep them in sync
//!   with your config management, the set is not in the store).
//! - JWT-SVID actor tokens are not checked for `iss` (SPIFFE does not
//!   require it; the trust domain of `sub` and our JWT keys are checked).

mod actor;
mod client_auth;
mod client_credentials;
mod config;
mod db;
pub mod dpop;
mod error;
mod exchange;
pub mod http;
mod jwk;
mod live;
mod maintenance;
mod mtls;
mod oidc;
pub mod policy;
pub mod rar;
mod risk;
mod service;
mod signin;
mod token;

pub use actor::TOKEN_TYPE_ATTESTED_X509_SVID;
pub use client_auth::{CLIENT_ASSERTION_TYPE_JWT_BEARER, MAX_ASSERTION_LIFETIME};
pub use client_credentials::{
    ClientCredentialsRequest, GRANT_TYPE_CLIENT_CREDENTIALS, MAX_SERVICE_TOKEN_TTL, ServiceCaller,
};
pub use config::{
    CONSOLE_CLIENT_ID, ClientRegistration, JwtClientRegistration, MAX_OBO_TTL, MIN_OBO_TTL,
    PasswordHashCost, PublicClient, ResourceServer, ServiceScopeRule, StsConfig,
};
pub use db::Consent;
pub use error::StsError;
pub use exchange::{
    ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
    TokenExchangeRequest, TokenExchangeResponse,
};
pub use maintenance::{MaintenanceReport, STS_KEY_REMOVED};
pub use mtls::PeerSvid;
pub use oidc::{AuthorizeRequest, CodeGrant, TokenResponse};
pub use risk::RiskGate;
pub use service::{
    AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, IssuedToken, Sts, UserTokenRequest,
    kinds,
};
pub use signin::{MIN_PASSWORD_LEN, NewSession, Session, User};
pub use token::{
    ACCESS_TOKEN_TYP, AccessTokenClaims, Actor, Confirmation, GTY_CLIENT_CREDENTIALS,
    IdTokenClaims, MayAct, StringList,
};
