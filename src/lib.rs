//! Segment ⇄ Iterable gateway.
//!
//! * [`mapping`]: Segment events → Iterable requests, exactly as Segment's destination builds
//!   them (pure functions).
//! * [`segment`]: the Segment event model.
//! * [`iterable`]: Iterable's API and the client that calls it.
//! * [`cli`]: the `gateway` command's subcommands.
//! * [`delivery`]: the dispatcher: outbox claims, bulk requests, retries, the attempt log.
//! * [`database`]: PostgreSQL for the audit log, and the local cluster run without `database.url`.
//! * [`http`]: the HTTP layer: routes, body reading, the request's audit record, errors to
//!   status codes, socket limits.
//! * [`audit`]: what the database records, the group commit, secrets scrubbing, database health.

pub mod audit;
pub mod cli;
pub mod configuration;
pub mod connection;
pub mod database;
pub mod delivery;
pub mod error;
pub mod http;
pub mod iterable;
pub mod mapping;
pub mod privacy;
pub mod segment;
pub mod startup;
pub mod telemetry;
pub mod ui;
