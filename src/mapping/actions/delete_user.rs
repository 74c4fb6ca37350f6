//! `deleteUser`: a Segment `{"type": "delete"}` message, or `gateway forget` / `unforget`, →
//! Iterable's user deletion (issue 11 part 1; Iterable/api-client `api-docs.json`):
//!
//! * `delete` (the default): `DELETE /api/users/byUserId/{userId}` (every project type), else
//!   `DELETE /api/users/{email}` (email-based and hybrid projects). Asynchronous; "does not
//!   prevent future data collection" (the gateway's own suppression does, for what passes it).
//! * `forget`: `POST /api/users/forget` with `{"email"}` or `{"userId"}`, not both: deletes and
//!   "prevents future data collection". Email-based projects must forget by email, userID-based
//!   ones by userId, hybrid ones accept either: the email when there is one, unless the
//!   connection says `iterableProjectType = "userId"`.
//! * `unforget`: `POST /api/users/unforget`, the same body (only `gateway unforget` asks it).
//!
//! Deletion is not a subscription: every connection honours it whatever its subscriptions and
//! whatever the message's `integrations` say. The mode is the connection's `deletion` setting,
//! unless the message names one in `context.gateway.deletion` (what `gateway forget --mode`
//! and `gateway unforget` write).

use super::{ActionError, PlannedRequest};
use crate::iterable::api::Endpoint;
use crate::mapping::js;
use crate::mapping::schema::{root, Schema};
use serde_json::{json, Map, Value};
use std::sync::LazyLock;

/// Which deletion Iterable is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deletion {
    #[default]
    Delete,
    Forget,
    Unforget,
}

impl Deletion {
    pub fn as_str(self) -> &'static str {
        match self {
            Deletion::Delete => "delete",
            Deletion::Forget => "forget",
            Deletion::Unforget => "unforget",
        }
    }

    pub fn parse(s: &str) -> Option<Deletion> {
        match s {
            "delete" => Some(Deletion::Delete),
            "forget" => Some(Deletion::Forget),
            "unforget" => Some(Deletion::Unforget),
            _ => None,
        }
    }
}

/// Strings, not emails: a deletion is never refused for the form of an address.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    root(
        vec![
            ("userId", Schema::string("User ID")),
            ("email", Schema::string("Email Address")),
            ("deletion", Schema::string("Deletion")),
            ("source", Schema::string("Source")),
        ],
        vec![],
    )
});

/// The one request of a deletion; `default` is the connection's `deletion` setting.
pub fn perform(
    payload: Map<String, Value>,
    default: Deletion,
    user_id_project: bool,
) -> Result<Vec<PlannedRequest>, ActionError> {
    let get = |k: &str| payload.get(k).filter(|v| js::truthy(v)).cloned();
    let mode = match payload.get("deletion").and_then(Value::as_str) {
        None => default,
        Some(s) => Deletion::parse(s).ok_or_else(|| {
            ActionError::validation(format!(
                "context.gateway.deletion must be \"delete\", \"forget\" or \"unforget\", not {s:?}."
            ))
        })?,
    };
    // Only `gateway unforget` lifts a forget; a message that asks for it is a deletion.
    let operator = payload.get("source").and_then(Value::as_str) == Some("operator");
    let mode = match mode {
        Deletion::Unforget if !operator => default,
        m => m,
    };
    let (user_id, email) = (get("userId"), get("email"));
    let (endpoint, body) = match mode {
        Deletion::Delete => match (user_id, email) {
            (Some(u), _) => (Endpoint::UsersDeleteByUserId, json!({"userId": u})),
            (None, Some(e)) => (Endpoint::UsersDelete, json!({"email": e})),
            (None, None) => return Err(missing()),
        },
        Deletion::Forget | Deletion::Unforget => {
            let endpoint = if mode == Deletion::Forget {
                Endpoint::UsersForget
            } else {
                Endpoint::UsersUnforget
            };
            let by_email = email
                .clone()
                .filter(|_| !user_id_project || user_id.is_none());
            match (by_email, user_id, email) {
                (Some(e), _, _) => (endpoint, json!({"email": e})),
                (None, Some(u), _) => (endpoint, json!({"userId": u})),
                (None, None, Some(e)) => (endpoint, json!({"email": e})),
                (None, None, None) => return Err(missing()),
            }
        }
    };
    Ok(vec![PlannedRequest { endpoint, body }])
}

fn missing() -> ActionError {
    ActionError::validation(
        "A deletion needs a userId or an email (traits.email or context.traits.email); an anonymousId alone names no Iterable user.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(p: Value, default: Deletion, by_user_id: bool) -> (Endpoint, Value) {
        let Value::Object(p) = p else { unreachable!() };
        let mut r = perform(p, default, by_user_id).unwrap();
        let r = r.remove(0);
        (r.endpoint, r.body)
    }

    #[test]
    fn delete_prefers_the_user_id_and_forget_the_email() {
        let both = json!({"userId": "u1", "email": "a@x.com"});
        assert_eq!(
            plan(both.clone(), Deletion::Delete, false),
            (Endpoint::UsersDeleteByUserId, json!({"userId": "u1"}))
        );
        assert_eq!(
            plan(json!({"email": "a@x.com"}), Deletion::Delete, false),
            (Endpoint::UsersDelete, json!({"email": "a@x.com"}))
        );
        assert_eq!(
            plan(both.clone(), Deletion::Forget, false),
            (Endpoint::UsersForget, json!({"email": "a@x.com"}))
        );
        assert_eq!(
            plan(both.clone(), Deletion::Forget, true),
            (Endpoint::UsersForget, json!({"userId": "u1"}))
        );
        let asked = json!({"userId": "u1", "deletion": "unforget", "source": "operator"});
        assert_eq!(
            plan(asked, Deletion::Delete, false),
            (Endpoint::UsersUnforget, json!({"userId": "u1"}))
        );
        let not_operator = json!({"userId": "u1", "deletion": "unforget"});
        assert_eq!(
            plan(not_operator, Deletion::Delete, false),
            (Endpoint::UsersDeleteByUserId, json!({"userId": "u1"}))
        );
        let Value::Object(none) = json!({"deletion": "forget"}) else {
            unreachable!()
        };
        let e = perform(none, Deletion::Delete, false).unwrap_err();
        assert!(e.message.contains("needs a userId or an email"), "{e}");
    }
}
