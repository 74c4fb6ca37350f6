//! The audit log: what the database records of every exchange (DESIGN §4), and the group
//! committer that writes inbound requests with their events before they are acknowledged.

pub mod health;
pub mod queries;
pub mod redact;
pub mod sealed;
pub mod storable;
pub mod writer;

use serde_json::Value;

/// Which way an exchange goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SegmentToIterable,
    IterableToSegment,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SegmentToIterable => "segment_to_iterable",
            Direction::IterableToSegment => "iterable_to_segment",
        }
    }
}

/// The key under which `message_seen` remembers a (connection, direction, messageId): the first
/// 16 bytes of SHA-256 over `direction:chars(connection):connection:messageId`. The same as the
/// SQL `gateway_message_key` (migration 20261202000810, a test holds them equal), computed here
/// so that the serial group-commit writer does not run a SQL function per event in PostgreSQL.
pub fn message_key(connection: &str, direction: Direction, message_id: &str) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(direction.as_str());
    // PostgreSQL's length() counts characters, not bytes.
    hash.update(format!(":{}:", connection.chars().count()));
    hash.update(connection);
    hash.update(":");
    hash.update(message_id);
    let digest = hash.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(key)
}

/// The one state every event is in (the `event.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Waiting for a dispatcher (now or at `next_attempt_at`).
    Pending,
    /// Claimed by a dispatcher whose lease has not run out. Stored as `pending` with a live
    /// lease (so a claim is an in-place update); the audit views show it as `in_flight`.
    InFlight,
    Delivered,
    /// Refused for good: mapping error, or a permanent answer (4xx) from the partner.
    Failed,
    /// Never to be sent, and why (filters, duplicates, no subscription).
    Skipped,
    /// Every attempt failed.
    Dead,
    /// Dry-run mode settled it: what would have been sent is in the attempt log, nothing was.
    DryRun,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::InFlight => "in_flight",
            EventState::Delivered => "delivered",
            EventState::Failed => "failed",
            EventState::Skipped => "skipped",
            EventState::Dead => "dead",
            EventState::DryRun => "dry_run",
        }
    }
}

/// An event parsed from an inbound request, as it enters the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub message_id: String,
    pub call_type: Option<String>,
    /// Events with the same key (per connection) are delivered in order.
    pub user_key: String,
    pub payload: Value,
    /// `Pending`, or `Skipped` with a reason, or `Failed` (e.g. not a valid event).
    pub state: EventState,
    pub state_reason: Option<String>,
}

/// An inbound HTTP request, accepted or not, as the audit log keeps it.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub route: String,
    pub connection: Option<String>,
    pub direction: Direction,
    /// The status the request will be answered with.
    pub status: u16,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Request headers, secrets redacted.
    pub headers: Value,
    pub content_encoding: Option<String>,
    /// The body as received, Content-Encoding undone when that worked, secrets removed; only a
    /// prefix of it when `body_truncated`.
    pub body: Vec<u8>,
    /// Bytes received (decompressed when that worked; at least `body.len()`).
    pub body_size: usize,
    /// Whether `body` is only the first bytes of what was received.
    pub body_truncated: bool,
    pub events: Vec<NewEvent>,
    /// The events' payloads serialised once ([`InboundRecord::seal`]); until then the writer
    /// serialises them itself.
    pub sealed: Option<sealed::SealedEvents>,
}
