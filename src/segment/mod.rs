//! The Segment side: the event model, who is calling, and the tracking API and webhook routes.

pub mod auth;
pub mod event;
pub mod ingest;
pub mod normalise;
