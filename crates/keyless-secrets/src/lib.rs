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
//!   envelope encryption: a data key per path, wrapped by a key-manager KEK
//!   with the path as associated data; each version's value sealed with
//!   AES-256-GCM under it with the path and version as associated data.
//! - `database/`: dynamic PostgreSQL credentials against a real server
//!   (`mod.rs`: connections, roles, issue, renew, revoke; `sql.rs`: the one
//!   place that splices names, password verifiers and times into SQL).
//! - `engines.rs`: the glue between the broker and its engines (audit
//!   events around KV reads and writes, a lease around every credential).
//! - `openbao.rs`: the optional OpenBao/Vault backend (KV v2 and database
//!   credentials from a real cluster, while Keyless still authenticates,
//!   authorizes, audits and leases).
//! - `http.rs` (the only module that knows axum): the Vault wire format.
//! - Cert login (`auth.rs`, `POST /v1/auth/cert/login`): an X509-SVID
//!   verified by the mTLS listener, matched against cert roles
//!   (`allowed_uri_sans`, exact or glob).
//! - `rotating.rs`: rotating credentials for upstreams that still need a
//!   static secret; each read runs the credential's hook with a new secret
//!   and returns it under a short lease whose revocation rotates again.
//!
//! Not done yet (issue 5):
//! - `bao login -method=jwt` has no CLI handler in OpenBao itself: clients
//!   log in with `bao write auth/jwt/login role=… jwt=…` (tested), then
//!   `bao login TOKEN`.
//! - Response wrapping of 204 answers; token accessor endpoints
//!   (`auth/token/lookup-accessor`, …); `sys/capabilities-self`; the
//!   Vault HTTP paths for database configuration (`database/config`,
//!   `database/roles`: operators use `keyless secrets db …`).
//! - The lease quota check and the insert are not one transaction
//!   (concurrent issues may overshoot the quota by the number of racing
//!   requests).
//! - OpenBao backend: KV metadata, list, delete/undelete/destroy are not
//!   forwarded (400 in openbao mode); no TLS to OpenBao yet (http only).

mod acl;
mod auth;
mod engines;
mod error;
mod lease;
mod rotating;
mod service;
mod token;
mod wrap;

pub mod database;
pub mod http;
pub mod kv;
pub mod openbao;

pub use acl::{Acl, Capability, DEFAULT_POLICY, DEFAULT_POLICY_NAME, Policy};
pub use auth::{
    BoundClaimsType, CertRole, JwtRole, LoginResult, TokenInfo, TokenType, glob_match,
    parse_duration,
};
pub use error::SecretsError;
pub use lease::{ENGINE_DATABASE, Lease, LeaseBackend, NewLease};
pub use rotating::{
    ENGINE_ROTATING, ROTATING_DELETED, ROTATING_FAILED, ROTATING_WRITTEN, RotatedSecret,
    RotatingCredential,
};
pub use service::{Secrets, SecretsConfig, kinds, rfc3339};
pub use token::{BATCH_PREFIX, SERVICE_PREFIX, hash_token};
pub use wrap::{WrapInfo, WrapLookup};
