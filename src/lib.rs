//! Segment ⇄ Iterable gateway.
//!
//! * [`mapping`]: Segment events → Iterable requests, exactly as Segment's destination builds
//!   them (pure functions).
//! * [`segment`]: the Segment event model.
//! * [`iterable`]: Iterable's API and the client that calls it.
//! * [`cli`]: the `gateway` command's subcommands.
//! * [`delivery`]: the dispatcher: outbox claims, bulk requests, retries, the attempt log.
//! * [`database`]: PostgreSQL for the audit log, and the local cluster run without `database.url`.

pub mod audit;
pub mod body;
pub mod cli;
pub mod configuration;
pub mod connection;
pub mod database;
pub mod delivery;
pub mod error;
pub mod inbound;
pub mod iterable;
pub mod mapping;
pub mod ops;
pub mod privacy;
pub mod segment;
pub mod startup;
pub mod telemetry;
pub mod ui;
