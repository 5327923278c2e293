//! pathtrace: follow a packet through the Linux network stack and say where and why it dies.
//!
//! Data flows one way: [`probes`] (kernel programs) → [`events`] (decoded hops) →
//! [`correlate`] (packets, flows) → [`verdict`] → [`diagnose`] → [`report`] → [`connection`]
//! (one story per flow) → [`output`].
//! [`resolve`] answers questions about the host along the way; [`trace`] runs a session.

pub mod cli;
pub mod clock;
pub mod connection;
pub mod correlate;
pub mod daemon;
pub mod diagnose;
pub mod doctor;
pub mod events;
pub mod flood;
pub mod host;
pub mod net;
pub mod output;
pub mod probes;
pub mod report;
pub mod resolve;
pub mod ruleset;
pub mod trace;
pub mod verdict;
