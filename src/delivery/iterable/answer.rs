//! Which items a 2xx bulk answer of Iterable refused: it names them only by email, userId or
//! event name (reference §1.4), so they are mapped back to the request's members.

use crate::delivery::engine::Member;
use serde_json::Value;
use std::collections::HashMap;

/// The members (by index) of a request that `body` lists as failed, with the list's name.
///
/// An item with neither email nor userId (Segment's `performBatch` sends it as it is) cannot
/// be named by the answer: when `failCount` says more items failed than the lists name, such
/// items are counted as refused rather than delivered.
pub(super) fn refused(members: &[Member], body: &Value) -> Vec<(usize, String)> {
    let refusals = Refusals::read(body);
    let mut out: Vec<(usize, String)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            refusals
                .list_of(m)
                .map(|list| (i, format!("Iterable's bulk answer lists it in {list}")))
        })
        .collect();
    let fail_count = body.get("failCount").and_then(Value::as_u64).unwrap_or(0) as usize;
    if fail_count > out.len() {
        let unnamed = |m: &Member| m.email.is_none() && m.user_id.is_none();
        for (i, _) in members.iter().enumerate().filter(|(_, m)| unnamed(m)) {
            out.push((i, format!("Iterable's bulk answer counts {fail_count} failed items and names fewer; this one has neither email nor userId")));
        }
        out.sort_by_key(|(i, _)| *i);
    }
    out
}

/// The identifiers a bulk answer lists as failed, each with the name of its list.
#[derive(Debug, Default)]
struct Refusals {
    /// Lowercased: Iterable compares emails case-insensitively.
    emails: HashMap<String, String>,
    user_ids: HashMap<String, String>,
    event_names: HashMap<String, String>,
}

/// `failedUpdates` lists (reference §1.4: `UserBulkUpdateListResponse`, `BulkTrackResponse`).
const FAILED_UPDATES: [&str; 10] = [
    "invalidEmails",
    "invalidUserIds",
    "notFoundEmails",
    "notFoundUserIds",
    "forgottenEmails",
    "forgottenUserIds",
    "conflictEmails",
    "conflictUserIds",
    "invalidDataEmails",
    "invalidDataUserIds",
];

impl Refusals {
    fn read(body: &Value) -> Refusals {
        let mut r = Refusals::default();
        let mut add = |list: &Value, name: String| {
            let map = if name.ends_with("Emails") {
                &mut r.emails
            } else if name.ends_with("UserIds") {
                &mut r.user_ids
            } else {
                &mut r.event_names
            };
            let lower = name.ends_with("Emails");
            for id in list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let id = if lower {
                    id.to_lowercase()
                } else {
                    id.to_string()
                };
                map.entry(id).or_insert_with(|| name.clone());
            }
        };
        for list in FAILED_UPDATES {
            if let Some(ids) = body.get("failedUpdates").and_then(|f| f.get(list)) {
                add(ids, format!("failedUpdates.{list}"));
            }
        }
        for list in ["invalidEmails", "invalidUserIds", "disallowedEventNames"] {
            if let Some(ids) = body.get(list) {
                add(ids, list.to_string());
            }
        }
        r
    }

    fn list_of(&self, m: &Member) -> Option<&str> {
        let email = m
            .email
            .as_ref()
            .and_then(|e| self.emails.get(&e.to_lowercase()));
        let user = m.user_id.as_ref().and_then(|u| self.user_ids.get(u));
        let name = m.event_name.as_ref().and_then(|n| self.event_names.get(n));
        email.or(user).or(name).map(String::as_str)
    }
}
