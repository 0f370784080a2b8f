//! Continuous access evaluation for Keyless: Security Event Tokens (RFC
//! 8417 as profiled by SSF 1.0), CAEP 1.0 events, an SSF transmitter (push
//! RFC 8935, poll RFC 8936) and receiver, and the W1–W5 risk ladder.
//!
//! - [`set`], [`subject`], [`caep`]: the token, its subject identifiers
//!   (RFC 9493 + SSF `complex`) and the event types.
//! - [`transmitter`]: streams, subjects, verification, the durable outbox,
//!   push and poll delivery.
//! - [`receiver`] and [`keys`]: verification against the transmitter's
//!   keys, replay refusal, and applying events through a [`receiver::CaepHandler`].
//! - [`risk`] decides a session's level from anomaly signals; [`ladder`]
//!   carries out each level's effect.
//! - [`http`]: the SSF endpoints and `/ssf/push`.
//!
//! Not done yet:
//! - W3 says "MFA mandatory": Keyless has no second factor yet, so W3 means
//!   Cedar decides with `risk_level = high` (the default policy then lets
//!   only tier-1 reads through without `step_up`, which nothing sets yet).
//! - W4 "existing tokens are flagged": introspection reports
//!   `keyless_risk` (`level`, `restricted`) for a still-valid token of a
//!   restricted user or a risky session; tokens a resource server verifies
//!   locally (JWT) are not marked.
//! - A poll subscription's bearer token lives in memory only and is not
//!   renewed: it polls until the token expires or the process restarts.
//! - Push endpoints are not restricted beyond http(s): a workload holding
//!   `ssf.manage` can make the transmitter POST SETs (no other data) to any
//!   address it can reach, internal ones included.
//! - Push receivers are not authenticated beyond the SET itself (no
//!   `Authorization` check on `/ssf/push`); stream `inactivity_timeout` and
//!   `min_verification_interval` are accepted and ignored.

pub mod caep;
pub mod http;
pub mod keys;
pub mod ladder;
pub mod receiver;
pub mod risk;
pub mod set;
pub mod subject;
pub mod transmitter;
