//! The integration test binary (one binary, many modules, as zero2prod arranges it).

mod app;
mod cli_map;
mod commit;
mod delivery;
mod differential;
mod helpers;
mod hostile;
mod ingest;
mod iterable_client;
mod iterable_webhook;
mod mapping_vectors;
mod operate;
mod oracle_probes;
mod outage;
mod partitions;
mod poison;
mod properties;
mod secrets;
mod segment_delivery;
mod startup_errors;
mod tokens_and_subscriptions;
mod ui;
mod user_deletion;
mod webhook_types;
