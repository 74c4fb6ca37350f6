//! The Iterable side: its API described as data, and the HTTP client that calls it.

pub mod api;
pub mod client;
