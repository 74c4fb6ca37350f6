//! Segment ⇄ Iterable gateway.
//!
//! * [`mapping`]: Segment events → Iterable requests, exactly as Segment's destination builds
//!   them (pure functions).
//! * [`segment`]: the Segment event model.
//! * [`iterable`]: Iterable's API and the client that calls it.
//! * [`cli`]: the `gateway` command's subcommands.

pub mod cli;
pub mod iterable;
pub mod mapping;
pub mod segment;
