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
        }
    }
}

/// The header Iterable authenticates with.
pub const API_KEY_HEADER: &str = "Api-Key";
