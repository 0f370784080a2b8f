//! Keyless secrets broker: a Vault-compatible HTTP API so hvac, vaultrs and
//! the `bao`/`vault` CLIs work unchanged, with no standing credential: a
//! workload logs in with its JWT-SVID, every secret has a lease, and every
//! lease dies on time.
//!
//! Modules (domain first, HTTP last):
//! - [`Secrets`] (`service.rs`): the broker; ACL policies (`acl.rs`: Vault
//!   path globs with capabilities, compiled once per set of token policies
//!   and cached briefly), audit events (every login, lease and wrapping
//!   operation, policy and role change is recorded before the answer).
//! - `auth.rs`: JWT auth roles (bound audiences, subject exact or glob,
//!   claims, TTL/max TTL, token type, uses, single-use `jti`), JWT-SVID
//!   login validated by `keyless-identity`, per-identity token quota, token
//!   resolution, renew-self and revoke-self.
//! - `token.rs`: service tokens (`hvs.`, only SHA-256 stored, with an
//!   accessor) and batch tokens (`hvb.`, stateless, ES256-signed by a
//!   key-manager key).
//! - `lease.rs`: leases with engine hooks ([`LeaseBackend`]), renew capped
//!   at max TTL with a warning, revoke that never silently fails (retries
//!   with backoff until it succeeds), set-based revoke-prefix, the expiry
//!   worker, per-identity lease quotas.
//! - `wrap.rs`: single-use response wrapping, sealed at rest.
//! - `kv.rs`: KV v2 (versions, metadata, soft delete, undelete, destroy),
//!   values sealed with AES-256-GCM under data keys from the key manager,
//!   the path as associated data.
//! - `database.rs`: dynamic PostgreSQL credentials against a real server;
//!   `engines.rs` puts a lease around each one.
//! - `http.rs` (the only module that knows axum): the Vault wire format.
//!
//! Not done yet (issue 5):
//! - `POST /v1/auth/cert/login` (X509-SVID over mTLS).
//! - `bao login -method=jwt` has no CLI handler in OpenBao itself: clients
//!   log in with `bao write auth/jwt/login role=… jwt=…` (tested), then
//!   `bao login TOKEN`.
//! - Response wrapping of 204 answers; token accessor endpoints
//!   (`auth/token/lookup-accessor`, …); `sys/capabilities-self`; the
//!   Vault HTTP paths for database configuration (`database/config`,
//!   `database/roles`: operators use `keyless secrets db …`).
//! - Revocations on several replicas are not claimed per lease (engine
//!   revocations are idempotent, so a race only repeats work); the lease
//!   quota check and the insert are not one transaction (concurrent issues
//!   may overshoot the quota by the number of racing requests).
//! - The optional OpenBao/Vault backend.

mod acl;
mod auth;
mod engines;
mod error;
mod lease;
mod service;
mod token;
mod wrap;

pub mod database;
pub mod http;
pub mod kv;

pub use acl::{Acl, Capability, DEFAULT_POLICY, DEFAULT_POLICY_NAME, Policy};
pub use auth::{
    BoundClaimsType, JwtRole, LoginResult, TokenInfo, TokenType, glob_match, parse_duration,
};
pub use error::SecretsError;
pub use lease::{ENGINE_DATABASE, Lease, LeaseBackend, NewLease};
pub use service::{Secrets, SecretsConfig, kinds, rfc3339};
pub use token::{BATCH_PREFIX, SERVICE_PREFIX, hash_token};
pub use wrap::{WrapInfo, WrapLookup};
