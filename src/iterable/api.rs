//! Iterable's REST API as data: hosts, endpoints and methods. No I/O here, so the pure mapping
//! layer can name the requests it plans.

use serde::{Deserialize, Serialize};

/// Where an Iterable project lives (reference/iterable-actions.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataCenter {
    #[default]
    UnitedStates,
    Europe,
}

impl DataCenter {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DataCenter::UnitedStates => "united_states",
            DataCenter::Europe => "europe",
        }
    }

    /// Segment's `dataCenterLocation`: `europe` is the EU; any other value, or none, is the US.
    pub fn from_setting(s: Option<&str>) -> DataCenter {
        match s {
            Some("europe") => DataCenter::Europe,
            _ => DataCenter::UnitedStates,
        }
    }
}

/// The base URLs used for each data center; tests point them at a mock server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hosts {
    pub us: String,
    pub eu: String,
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts {
            us: "https://api.iterable.com".into(),
            eu: "https://api.eu.iterable.com".into(),
        }
    }
}

impl Hosts {
    pub fn base(&self, dc: DataCenter) -> &str {
        match dc {
            DataCenter::UnitedStates => &self.us,
            DataCenter::Europe => &self.eu,
        }
    }
}

/// Every Iterable endpoint the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    UsersUpdate,
    UsersUpdateEmail,
    UsersBulkUpdate,
    EventsTrack,
    EventsTrackBulk,
    CommerceUpdateCart,
    CommerceTrackPurchase,
    ListsSubscribe,
    ListsUnsubscribe,
    /// `users/registerDeviceToken`: a mobile push token (APNS, APNS_SANDBOX, GCM).
    UsersRegisterDeviceToken,
    /// `users/registerBrowserToken`: a web push token.
    UsersRegisterBrowserToken,
    /// `users/updateSubscriptions`: overwrites each list of ids it is given.
    UsersUpdateSubscriptions,
    Lists,
    Webhooks,
    /// `DELETE users/{email}`: deletes a user by email (email-based and hybrid projects).
    UsersDelete,
    /// `DELETE users/byUserId/{userId}`: deletes a user by userId (every project).
    UsersDeleteByUserId,
    /// `users/forget`: GDPR forget; deletes and prevents future collection.
    UsersForget,
    /// `users/unforget`: lifts a forget (deleted data stays deleted).
    UsersUnforget,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::UsersUpdate => "/api/users/update",
            Endpoint::UsersUpdateEmail => "/api/users/updateEmail",
            Endpoint::UsersBulkUpdate => "/api/users/bulkUpdate",
            Endpoint::EventsTrack => "/api/events/track",
            Endpoint::EventsTrackBulk => "/api/events/trackBulk",
            Endpoint::CommerceUpdateCart => "/api/commerce/updateCart",
            Endpoint::CommerceTrackPurchase => "/api/commerce/trackPurchase",
            Endpoint::ListsSubscribe => "/api/lists/subscribe",
            Endpoint::ListsUnsubscribe => "/api/lists/unsubscribe",
            Endpoint::UsersRegisterDeviceToken => "/api/users/registerDeviceToken",
            Endpoint::UsersRegisterBrowserToken => "/api/users/registerBrowserToken",
            Endpoint::UsersUpdateSubscriptions => "/api/users/updateSubscriptions",
            Endpoint::Lists => "/api/lists",
            Endpoint::Webhooks => "/api/webhooks",
            // The two user deletions take the user in the path: these are the templates (the
            // audit log's `endpoint`, the rate limiter's key); `request_path` fills them in.
            Endpoint::UsersDelete => "/api/users/{email}",
            Endpoint::UsersDeleteByUserId => "/api/users/byUserId/{userId}",
            Endpoint::UsersForget => "/api/users/forget",
            Endpoint::UsersUnforget => "/api/users/unforget",
        }
    }

    /// The HTTP method: `DELETE` for the two deletions by path, `POST` for everything else.
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::UsersDelete | Endpoint::UsersDeleteByUserId => "DELETE",
            _ => "POST",
        }
    }

    /// Whether the request carries its body (a `DELETE` carries the user in its path instead).
    pub fn sends_body(self) -> bool {
        self.method() == "POST"
    }

    /// The path of one request: [`path`](Self::path), with the user of a deletion by path
    /// taken from the planned body (`{"email": ...}` or `{"userId": ...}`) and
    /// percent-encoded as one path segment (emails may hold `/` and `+`).
    pub fn request_path(self, body: &serde_json::Value) -> std::borrow::Cow<'static, str> {
        let (prefix, key) = match self {
            Endpoint::UsersDelete => ("/api/users/", "email"),
            Endpoint::UsersDeleteByUserId => ("/api/users/byUserId/", "userId"),
            other => return std::borrow::Cow::Borrowed(other.path()),
        };
        let user = body
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let segment = percent_encoding::utf8_percent_encode(user, PATH_SEGMENT);
        std::borrow::Cow::Owned(format!("{prefix}{segment}"))
    }
}

/// Everything but RFC 3986's unreserved characters is escaped in a path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    // "@" is allowed in a segment (RFC 3986 pchar) and keeps the URL of an email readable.
    .remove(b'@');

/// The header Iterable authenticates with.
pub const API_KEY_HEADER: &str = "Api-Key";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deletions_by_path_encode_the_user_as_one_segment() {
        let e = Endpoint::UsersDelete;
        assert_eq!(e.method(), "DELETE");
        assert_eq!(
            e.request_path(&json!({"email": "a/b+c@x.com"})),
            "/api/users/a%2Fb%2Bc@x.com"
        );
        assert_eq!(
            Endpoint::UsersDeleteByUserId.request_path(&json!({"userId": "u 1?"})),
            "/api/users/byUserId/u%201%3F"
        );
        assert_eq!(
            Endpoint::UsersForget.request_path(&json!({"email": "a@x.com"})),
            "/api/users/forget"
        );
        assert_eq!(Endpoint::UsersForget.method(), "POST");
    }
}
