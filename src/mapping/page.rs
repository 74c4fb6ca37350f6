//! Page and screen calls, as Segment's classic Iterable destination handled them (DESIGN §2,
//! difference 5; seed 004's settings table).
//!
//! A page call becomes zero or more derived track-like events whose `event` is the name the
//! classic destination used; each then goes through `trackEvent` with its usual mapping, so
//! `dataFields` are the properties and `id` is the derived event's `messageId`.

use crate::segment::event::{CallType, SegmentEvent};
use serde_json::Value;

/// The four classic settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct PageOptions {
    /// `map_pages_to_single_event`: one `Loaded a Page` / `Loaded a Screen` event.
    pub map_pages_to_single_event: bool,
    /// `track_all_pages`: an event for every page.
    pub track_all_pages: bool,
    /// `track_categorized_pages`: an event for every page with a category.
    pub track_categorized_pages: bool,
    /// `track_named_pages`: an event for every page with a name.
    pub track_named_pages: bool,
}

impl Default for PageOptions {
    fn default() -> Self {
        PageOptions {
            map_pages_to_single_event: true,
            track_all_pages: false,
            track_categorized_pages: true,
            track_named_pages: true,
        }
    }
}

/// The derived events for a page or screen call; empty when the settings track none.
pub fn derived_events(event: &SegmentEvent, o: &PageOptions) -> Vec<Value> {
    let noun = match event.call_type() {
        CallType::Screen => "Screen",
        _ => "Page",
    };
    let name = event.page_name();
    let category = event.page_category();
    let mut out: Vec<(String, &str)> = Vec::new();
    if o.map_pages_to_single_event {
        let tracked = o.track_all_pages
            || (o.track_categorized_pages && category.is_some())
            || (o.track_named_pages && name.is_some());
        if tracked {
            out.push((format!("Loaded a {noun}"), ""));
        }
    } else {
        if o.track_all_pages {
            out.push((format!("Loaded a {noun}"), "all"));
        }
        if let (true, Some(n)) = (o.track_named_pages, name) {
            let title = match category {
                Some(c) => format!("Viewed {c} {n} {noun}"),
                None => format!("Viewed {n} {noun}"),
            };
            out.push((title, "named"));
        }
        if let (true, Some(c)) = (o.track_categorized_pages, category) {
            out.push((format!("Viewed {c} {noun}"), "categorized"));
        }
    }
    out.into_iter()
        .map(|(title, suffix)| {
            let mut v = event.as_value().clone();
            if let Value::Object(m) = &mut v {
                m.insert("event".into(), Value::String(title));
                if let (false, Some(id)) = (suffix.is_empty(), event.message_id()) {
                    // A distinct, deterministic id per derived event, so retries update the
                    // event Iterable already has.
                    m.insert("messageId".into(), Value::String(format!("{id}:{suffix}")));
                }
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(v: Value) -> SegmentEvent {
        SegmentEvent::from_value(v, None).unwrap()
    }

    fn names(ev: &SegmentEvent, o: PageOptions) -> Vec<String> {
        derived_events(ev, &o)
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn defaults_send_one_loaded_event_for_named_or_categorized_pages() {
        let o = PageOptions::default();
        assert_eq!(
            names(&page(json!({"type": "page", "name": "Pricing"})), o),
            ["Loaded a Page"]
        );
        assert_eq!(
            names(&page(json!({"type": "screen", "category": "Shop"})), o),
            ["Loaded a Screen"]
        );
        assert!(names(&page(json!({"type": "page"})), o).is_empty());
        let all = PageOptions {
            track_all_pages: true,
            ..o
        };
        assert_eq!(
            names(&page(json!({"type": "page"})), all),
            ["Loaded a Page"]
        );
    }

    #[test]
    fn separate_events_use_the_classic_names_and_distinct_ids() {
        let o = PageOptions {
            map_pages_to_single_event: false,
            track_all_pages: true,
            ..PageOptions::default()
        };
        let ev =
            page(json!({"type": "page", "name": "Pricing", "category": "Docs", "messageId": "m"}));
        let derived = derived_events(&ev, &o);
        let got: Vec<(&str, &str)> = derived
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap(),
                    e["messageId"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("Loaded a Page", "m:all"),
                ("Viewed Docs Pricing Page", "m:named"),
                ("Viewed Docs Page", "m:categorized")
            ]
        );
        let uncategorised = page(json!({"type": "page", "name": "Home"}));
        assert_eq!(
            names(&uncategorised, o),
            ["Loaded a Page", "Viewed Home Page"]
        );
    }
}
