//! The integration test binary (one binary, many modules, as zero2prod arranges it).

mod app;
mod cli_map;
mod commit;
mod database;
mod delivery;
mod differential;
mod helpers;
mod hostile;
mod ingest;
mod iterable_client;
mod iterable_webhook;
mod mapping_vectors;
mod oracle_probes;
mod outage;
mod poison;
mod properties;
mod secrets;
mod segment_delivery;
