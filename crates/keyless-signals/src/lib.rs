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

pub mod caep;
pub mod http;
pub mod keys;
pub mod ladder;
pub mod receiver;
pub mod risk;
pub mod set;
pub mod subject;
pub mod transmitter;
