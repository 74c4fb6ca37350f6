//! The Iterable side: its API described as data, the HTTP client that calls it, and the system
//! webhook route.

pub mod api;
pub mod client;
pub mod webhook;
