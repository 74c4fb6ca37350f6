//! The integration test binary (one binary, many modules, as zero2prod arranges it).

mod app;
mod cli_map;
mod delivery;
mod differential;
mod helpers;
mod ingest;
mod iterable_client;
mod iterable_webhook;
mod mapping_vectors;
mod operate;
mod oracle_probes;
mod partitions;
mod properties;
mod segment_delivery;
mod startup_errors;
mod tokens_and_subscriptions;
mod ui;
mod user_deletion;
mod webhook_types;
