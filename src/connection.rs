//! The configured connections at run time: secrets to authenticate callers, and each
//! connection's compiled mapping.

use crate::configuration::{secret, ConnectionSettings, Settings};
use crate::mapping::reverse::EventNames;
use crate::mapping::Destination;
use crate::segment::auth::secrets_equal;

/// One Segment source ⇄ Iterable project, ready to serve.
#[derive(Debug, Clone)]
pub struct Connection {
    pub settings: ConnectionSettings,
    pub destination: Destination,
    /// Iterable event names → Segment event names, with this connection's overrides.
    pub event_names: EventNames,
}

/// All connections, looked up by name or by write key.
#[derive(Debug, Clone)]
pub struct Connections(Vec<Connection>);

impl Connections {
    /// Compiles every connection's mapping (already validated by `Settings::validate`).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Connections> {
        settings
            .connections
            .iter()
            .map(|c| {
                let destination = c.destination().map_err(anyhow::Error::msg)?;
                let event_names = EventNames::with_overrides(&c.event_names)
                    .with_journey_name(c.journey_event_name.as_deref());
                Ok(Connection {
                    settings: c.clone(),
                    destination,
                    event_names,
                })
            })
            .collect::<anyhow::Result<_>>()
            .map(Connections)
    }

    pub fn by_name(&self, name: &str) -> Option<&Connection> {
        self.0.iter().find(|c| c.settings.name == name)
    }

    /// The connection whose write key this is. Every key is compared, in constant time, so the
    /// answer's timing does not say which connection (if any) was close.
    pub fn by_write_key(&self, key: &str) -> Option<&Connection> {
        let mut found = None;
        for c in &self.0 {
            if let Some(k) = secret(&c.settings.write_key) {
                if secrets_equal(k, key) && found.is_none() {
                    found = Some(c);
                }
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.0.iter()
    }

    /// Every configured secret of every connection (write keys, Iterable API keys, webhook
    /// tokens, shared secrets, Segment write keys), for the audit log's scrubber.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|c| {
            let s = &c.settings;
            [
                &s.write_key,
                &s.iterable_api_key,
                &s.webhook_token,
                &s.shared_secret,
                &s.segment_write_key,
            ]
            .into_iter()
            .filter_map(secret)
        })
    }
}
