//! Segment ⇄ Iterable gateway.
//!
//! * [`mapping`]: Segment events → Iterable requests, exactly as Segment's destination builds
//!   them (pure functions).
//! * [`segment`]: the Segment event model.
//! * [`iterable`]: Iterable's API and the client that calls it.
//! * [`cli`]: the `gateway` command's subcommands.
//! * [`database`]: PostgreSQL for the audit log, and the local cluster run without `database.url`.

pub mod audit;
pub mod cli;
pub mod configuration;
pub mod database;
pub mod iterable;
pub mod mapping;
pub mod segment;
