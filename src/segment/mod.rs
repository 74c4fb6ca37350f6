//! The Segment side: the event model (and, later, the tracking API routes and client).

pub mod event;
