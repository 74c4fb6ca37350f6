//! Single and bulk calls are never mixed for one user within `delivery.user_call_window_ms`
//! (issue 9): what a call is. Iterable processes `users/bulkUpdate` apart from `users/update`,
//! `users/updateEmail` and `users/updateSubscriptions`, and `events/trackBulk` apart from
//! `events/track` (reference §1.3).

/// A pair of Iterable endpoint kinds that must not be mixed for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// users/update, users/updateEmail, users/updateSubscriptions ↔ users/bulkUpdate.
    Profile,
    /// events/track ↔ events/trackBulk.
    Events,
}

/// Which side of its family a call is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Single,
    Bulk,
}
