//! Tamper-evident audit log for Keyless (RFC 6962 Merkle tree, C2SP
//! checkpoints, inclusion and consistency proofs) and the live event bus.

pub mod event;

pub use event::{Event, EventSink, MemorySink, Outcome, SinkError};
