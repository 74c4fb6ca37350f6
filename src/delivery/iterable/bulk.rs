//! The one bulk builder: what an event becomes for Iterable, and how the bulk-capable parts of
//! many events become bulk requests. The dispatcher sends what it builds and `gateway map
//! --batch` prints it, so the dry run shows the bytes the service sends. Pure: no I/O.
//!
//! An event is planned per matching subscription as Segment's Iterable (Actions) destination
//! handles it with batching on (its default, `enable_batching = true`): updateUser, trackEvent
//! and syncAudience payloads are prepared as `performBatch` prepares them (batch-mode
//! validation) and grouped into `users/bulkUpdate`, `events/trackBulk` and `lists/*` requests;
//! the other actions (and a mapping that sets `enable_batching` to false) are sent one by one,
//! as `perform` builds them. Like Segment's `performBatch`, a bulk item is not checked for an
//! identity: Iterable names the items it refuses in its answer (`failedUpdates`).
//!
//! One event makes calls of one kind per family (`delivery::window`): when it also makes a
//! single-user call of a family (an identify's `users/updateSubscriptions` with its
//! `users/bulkUpdate` item; a trackEvent subscription with `enable_batching: false` beside a
//! batching one), its bulk parts of that family are sent as `perform` builds them, one request
//! each, as with `enable_batching: false`. Iterable asks to use only one kind for a user in a
//! short period; waiting between the event's own requests instead would hold up the batch.

use crate::delivery::window::{Family, Kind};
use crate::iterable::api::Endpoint;
use crate::mapping::{
    js, page, Action, ActionError, Destination, Mode, Outcome, PlannedRequest, Subscription,
};
use crate::segment::event::{CallType, SegmentEvent};
use serde_json::{Map, Value};

/// Most items in one bulk request (reference §1.3: RudderStack's and Segment's chunk size).
pub const MAX_BULK_ITEMS: usize = 1000;
/// Largest bulk body: Iterable's "max body 4MB" for bulkUpdate, applied to trackBulk too as
/// RudderStack does (reference §1.3).
pub const MAX_BULK_BYTES: usize = 4_000_000;

/// One part of an event's plan, in order: part `n + 1` is sent once part `n` went through.
#[derive(Debug, Clone)]
pub enum Part {
    /// A request of its own (`perform`).
    Single(PlannedRequest),
    /// An item of a bulk request (`performBatch`).
    Bulk(BulkItem),
}

impl Part {
    /// The family and kind of call it is, if it is one Iterable processes apart from the other
    /// kind (`delivery::window`).
    pub fn user_call(&self) -> Option<(Family, Kind)> {
        match self {
            Part::Single(r) => user_call(r.endpoint),
            Part::Bulk(item) => match item.action {
                Action::UpdateUser => user_call(Endpoint::UsersBulkUpdate),
                Action::TrackEvent => user_call(Endpoint::EventsTrackBulk),
                _ => None,
            },
        }
    }

    /// The users it names as Iterable finds them: `email:<email>` (trimmed, lower-cased) and
    /// `userId:<id>`, from `email`, `userId` and updateEmail's `currentEmail`, `newEmail`,
    /// `currentUserId`.
    pub fn identities(&self) -> Vec<String> {
        let body = match self {
            Part::Single(r) => r.body.as_object(),
            Part::Bulk(item) => Some(&item.payload),
        };
        let Some(body) = body else {
            return Vec::new();
        };
        const KEYS: [(&str, &str); 5] = [
            ("email", "email"),
            ("userId", "userId"),
            ("currentEmail", "email"),
            ("newEmail", "email"),
            ("currentUserId", "userId"),
        ];
        let mut out: Vec<String> = KEYS
            .iter()
            .filter_map(|(key, kind)| {
                let raw = body.get(*key)?.as_str()?;
                let v = raw.trim();
                match *kind {
                    _ if v.is_empty() => None,
                    "email" => Some(format!("email:{}", v.to_lowercase())),
                    _ => Some(format!("userId:{raw}")),
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The family and kind of call an endpoint is (`delivery::window`): Iterable's
/// `users/bulkUpdate` against `users/update`, `users/updateEmail`, `users/updateSubscriptions`;
/// `events/trackBulk` against `events/track`.
pub fn user_call(endpoint: Endpoint) -> Option<(Family, Kind)> {
    match endpoint {
        Endpoint::UsersUpdate | Endpoint::UsersUpdateEmail | Endpoint::UsersUpdateSubscriptions => {
            Some((Family::Profile, Kind::Single))
        }
        Endpoint::UsersBulkUpdate => Some((Family::Profile, Kind::Bulk)),
        Endpoint::EventsTrack => Some((Family::Events, Kind::Single)),
        Endpoint::EventsTrackBulk => Some((Family::Events, Kind::Bulk)),
        _ => None,
    }
}

/// The endpoints [`user_call`] names, as paths.
pub const USER_CALL_ENDPOINTS: [(&str, Family, Kind); 6] = [
    ("/api/users/update", Family::Profile, Kind::Single),
    ("/api/users/updateEmail", Family::Profile, Kind::Single),
    (
        "/api/users/updateSubscriptions",
        Family::Profile,
        Kind::Single,
    ),
    ("/api/users/bulkUpdate", Family::Profile, Kind::Bulk),
    ("/api/events/track", Family::Events, Kind::Single),
    ("/api/events/trackBulk", Family::Events, Kind::Bulk),
];

/// A payload prepared for `performBatch`, with what groups it with others.
#[derive(Debug, Clone)]
pub struct BulkItem {
    pub action: Action,
    /// The index of the subscription that produced it.
    pub subscription: usize,
    pub payload: Map<String, Value>,
    /// The event (or the page-derived event) it came from: syncAudience reads its settings.
    pub event: Value,
}

impl BulkItem {
    /// Items of one group may share a request. Users and events of different subscriptions
    /// share bulkUpdate and trackBulk requests (each request spends a token of Iterable's
    /// per-endpoint limit). As in Segment's `performBatch`, a bulkUpdate's `updateOnly` is its
    /// first user's (oracle probes "batch/updateUser updateOnly ..."). List items stay per
    /// subscription: `performBatch` reads the list from the first payload.
    fn group(&self) -> (Action, usize) {
        match self.action {
            Action::UpdateUser | Action::TrackEvent => (self.action, 0),
            _ => (self.action, self.subscription),
        }
    }
}

/// What one event becomes.
#[derive(Debug, Clone, Default)]
pub struct EventPlan {
    /// The actions of the subscriptions that matched, comma-separated (None: none matched).
    pub action: Option<String>,
    pub parts: Vec<Part>,
    /// Refusals by the actions ("updateUser: Must include email or userId. (PAYLOAD_...)").
    pub errors: Vec<(Action, ActionError)>,
    /// Why nothing is sent, when nothing is.
    pub skipped: Vec<String>,
}

/// Plans one event through every matching subscription of `dest`, with one kind of call per
/// family (see the module).
pub fn plan_event(dest: &Destination, event: &SegmentEvent, now_ms: i64) -> EventPlan {
    let plan = plan_with(dest, event, now_ms, &[]);
    let mixed: Vec<Family> = [Family::Profile, Family::Events]
        .into_iter()
        .filter(|f| {
            let kinds = |k| plan.parts.iter().any(|p| p.user_call() == Some((*f, k)));
            kinds(Kind::Single) && kinds(Kind::Bulk)
        })
        .collect();
    if mixed.is_empty() {
        return plan;
    }
    let unbatched: Vec<Action> = [
        (Action::UpdateUser, Family::Profile),
        (Action::TrackEvent, Family::Events),
    ]
    .into_iter()
    .filter(|(_, f)| mixed.contains(f))
    .map(|(a, _)| a)
    .collect();
    plan_with(dest, event, now_ms, &unbatched)
}

/// [`plan_event`], with the subscriptions of the `unbatched` actions planned as `perform`
/// plans them even when they batch.
fn plan_with(
    dest: &Destination,
    event: &SegmentEvent,
    now_ms: i64,
    unbatched: &[Action],
) -> EventPlan {
    let mut plan = EventPlan::default();
    // A `delete` message is its user's deletion whatever the subscriptions
    // (`actions::delete_user`): one request of its own, never in a bulk request.
    if event.call_type() == CallType::Delete {
        for outcome in dest.plan(event, now_ms) {
            match outcome {
                Outcome::Requests { action, requests } => {
                    plan.action = Some(action.name().to_string());
                    plan.parts.extend(requests.into_iter().map(Part::Single));
                }
                Outcome::Error { action, error } => {
                    plan.action = Some(action.name().to_string());
                    plan.errors.push((action, error));
                }
                Outcome::Skipped { reason } => plan.skipped.push(reason),
            }
        }
        return plan;
    }
    if let Some(reason) = crate::mapping::filters::skip_reason(event.as_value()) {
        plan.skipped.push(reason);
        return plan;
    }
    let matching: Vec<(usize, &Subscription)> = dest
        .subscriptions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.trigger.matches(event.as_value()))
        .collect();
    // `perform` for every matching subscription, computed only if one needs it: outcome `k`
    // is the `k`th matching subscription's.
    let mut singles: Option<Vec<Outcome>> = None;
    let mut single = |k: usize, plan: &mut EventPlan| {
        let outcomes = singles.get_or_insert_with(|| dest.plan(event, now_ms));
        match outcomes.get(k).cloned() {
            Some(Outcome::Requests { requests, .. }) => {
                plan.parts.extend(requests.into_iter().map(Part::Single))
            }
            Some(Outcome::Error { action, error }) => plan.errors.push((action, error)),
            Some(Outcome::Skipped { reason }) => plan.skipped.push(reason),
            None => {}
        }
    };
    for (k, &(index, sub)) in matching.iter().enumerate() {
        if !sub.action.batches() || unbatched.contains(&sub.action) {
            single(k, &mut plan);
            continue;
        }
        let inputs = if sub.pages {
            page::derived_events(event, &dest.page)
        } else {
            vec![event.as_value().clone()]
        };
        if inputs.is_empty() {
            plan.skipped.push(format!(
                "the page settings track no event for this {} (no name or category)",
                event.call_type()
            ));
        }
        let mut items = Vec::new();
        let mut batching = true;
        for input in inputs {
            match dest.prepare(sub, &input, Mode::Batch) {
                // A mapping may turn batching off (Segment's `enable_batching: false`): then
                // Segment calls `perform` for the event.
                Ok(p) if matches!(p.get("enable_batching"), Some(Value::Bool(false))) => {
                    batching = false;
                    break;
                }
                Ok(payload) => items.push(Part::Bulk(BulkItem {
                    action: sub.action,
                    subscription: index,
                    payload,
                    event: input,
                })),
                Err(error) => plan.errors.push((sub.action, error)),
            }
        }
        if batching {
            plan.parts.extend(items);
        } else {
            single(k, &mut plan);
        }
    }
    if matching.is_empty() {
        // Destination::plan says why no subscription matched.
        for outcome in dest.plan(event, now_ms) {
            if let Outcome::Skipped { reason } = outcome {
                plan.skipped.push(reason);
            }
        }
    }
    let actions: Vec<&str> = matching.iter().map(|(_, s)| s.action.name()).collect();
    plan.action = (!actions.is_empty()).then(|| actions.join(","));
    plan
}

/// One bulk request built.
#[derive(Debug, Clone)]
pub struct Bulk<K> {
    pub request: PlannedRequest,
    /// The body as sent (numbers as JavaScript prints them).
    pub wire: String,
    /// The callers' keys of the items it carries.
    pub members: Vec<K>,
    /// At the item or byte cap: waiting would not make it carry more.
    pub full: bool,
}

/// What [`build`] makes of a set of items.
#[derive(Debug, Clone)]
pub struct Built<K> {
    pub requests: Vec<Bulk<K>>,
    /// Items `performBatch` refused (syncAudience), with why.
    pub errors: Vec<(K, Action, ActionError)>,
}

/// Groups `items` (oldest first; `K` is the caller's key for each) into bulk requests of at
/// most [`MAX_BULK_ITEMS`] items and [`MAX_BULK_BYTES`] bytes; `solo` items go alone.
pub fn build<K: Copy>(dest: &Destination, items: &[(K, &BulkItem, bool)], now_ms: i64) -> Built<K> {
    type Group<'a, K> = ((Action, usize), Vec<(K, &'a BulkItem)>);
    let mut groups: Vec<Group<K>> = Vec::new();
    let mut out = Built {
        requests: Vec::new(),
        errors: Vec::new(),
    };
    for &(key, item, solo) in items {
        if solo {
            chunk(dest, item.action, &[(key, item)], now_ms, &mut out);
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == item.group()) {
            Some((_, members)) => members.push((key, item)),
            None => groups.push((item.group(), vec![(key, item)])),
        }
    }
    for ((action, _), members) in groups {
        for c in members.chunks(MAX_BULK_ITEMS) {
            chunk(dest, action, c, now_ms, &mut out);
        }
    }
    out
}

/// `performBatch` over one chunk; halves it while a body exceeds the byte cap.
fn chunk<K: Copy>(
    dest: &Destination,
    action: Action,
    items: &[(K, &BulkItem)],
    now_ms: i64,
    out: &mut Built<K>,
) {
    let payloads: Vec<&Map<String, Value>> = items.iter().map(|(_, i)| &i.payload).collect();
    let events: Vec<&Value> = items.iter().map(|(_, i)| &i.event).collect();
    let (requests, errors) = dest.perform_batch(action, &payloads, &events, now_ms);
    let wires: Vec<String> = requests
        .iter()
        .map(|r| js::to_json_string(&r.body))
        .collect();
    if items.len() > 1 && wires.iter().any(|w| w.len() > MAX_BULK_BYTES) {
        let (a, b) = items.split_at(items.len() / 2);
        chunk(dest, action, a, now_ms, out);
        chunk(dest, action, b, now_ms, out);
        return;
    }
    let refused = |i: usize| errors.iter().any(|(e, _)| *e == i);
    let members: Vec<K> = (0..items.len())
        .filter(|&i| !refused(i))
        .map(|i| items[i].0)
        .collect();
    for (i, error) in errors {
        out.errors.push((items[i].0, action, error));
    }
    let full = items.len() >= MAX_BULK_ITEMS;
    for (request, wire) in requests.into_iter().zip(wires) {
        let full = full || wire.len() * 10 >= MAX_BULK_BYTES * 9;
        out.requests.push(Bulk {
            request,
            wire,
            members: members.clone(),
            full,
        });
    }
}

/// Whether an endpoint is one of the bulk ones (its answer lists refused items).
pub fn is_bulk(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::UsersBulkUpdate
            | Endpoint::EventsTrackBulk
            | Endpoint::ListsSubscribe
            | Endpoint::ListsUnsubscribe
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dest() -> Destination {
        Destination::from_settings(&json!({"apiKey": "k"})).unwrap()
    }

    fn event(v: Value) -> SegmentEvent {
        SegmentEvent::from_value(v, None).unwrap()
    }

    fn bulk_items(d: &Destination, events: &[Value]) -> Vec<BulkItem> {
        events
            .iter()
            .flat_map(|e| plan_event(d, &event(e.clone()), 0).parts)
            .map(|p| match p {
                Part::Bulk(b) => b,
                Part::Single(s) => panic!("expected a bulk item, got {s:?}"),
            })
            .collect()
    }

    #[test]
    fn tracks_and_identifies_become_one_bulk_request_each() {
        let d = dest();
        let events = [
            json!({"type": "track", "event": "A", "userId": "u1", "messageId": "m1"}),
            json!({"type": "identify", "userId": "u2", "traits": {"email": "a@b.co"}}),
            json!({"type": "track", "event": "B", "userId": "u3", "messageId": "m3"}),
        ];
        let items = bulk_items(&d, &events);
        let keyed: Vec<(usize, &BulkItem, bool)> = items
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b, false))
            .collect();
        let built = build(&d, &keyed, 0);
        let shape: Vec<(Endpoint, Vec<usize>)> = built
            .requests
            .iter()
            .map(|b| (b.request.endpoint, b.members.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                (Endpoint::EventsTrackBulk, vec![0, 2]),
                (Endpoint::UsersBulkUpdate, vec![1])
            ]
        );
        assert_eq!(
            built.requests[0].wire,
            js::to_json_string(&built.requests[0].request.body)
        );
    }

    #[test]
    fn an_event_with_a_single_user_profile_call_sends_its_profile_update_single_too() {
        let d = Destination::from_settings(&json!({"apiKey": "k", "updateSubscriptions": true}))
            .unwrap();
        type Shape = Vec<(Option<(Family, Kind)>, Vec<String>)>;
        let shape = |e: Value| -> Shape {
            plan_event(&d, &event(e), 0)
                .parts
                .iter()
                .map(|p| (p.user_call(), p.identities()))
                .collect()
        };
        let who = vec!["email:ann@example.com".to_string(), "userId:u-1".into()];
        // With subscription traits: users/update and users/updateSubscriptions, no bulkUpdate.
        let with_lists = shape(json!({"type": "identify", "userId": "u-1",
            "traits": {"email": "Ann@Example.com", "emailListIds": [12]}}));
        assert_eq!(
            with_lists,
            [
                (Some((Family::Profile, Kind::Single)), who.clone()),
                (
                    Some((Family::Profile, Kind::Single)),
                    vec!["userId:u-1".to_string()]
                )
            ]
        );
        let plan = plan_event(
            &d,
            &event(json!({"type": "identify", "userId": "u-1",
                "traits": {"email": "ann@example.com", "emailListIds": [12]}})),
            0,
        );
        match &plan.parts[0] {
            Part::Single(r) => assert_eq!(r.endpoint, Endpoint::UsersUpdate),
            other => panic!("{other:?}"),
        }
        // Without: the bulk item, as before.
        let plain = shape(json!({"type": "identify", "userId": "u-1",
            "traits": {"email": "ann@example.com"}}));
        assert_eq!(plain, [(Some((Family::Profile, Kind::Bulk)), who)]);
        // Tracks are another family: they stay in bulk.
        let track = shape(json!({"type": "track", "event": "A", "userId": "u-1"}));
        assert_eq!(track[0].0, Some((Family::Events, Kind::Bulk)));
    }

    #[test]
    fn the_user_call_endpoints_are_the_paths_of_the_endpoints_user_call_names() {
        use Endpoint::*;
        let all = [
            UsersUpdate,
            UsersUpdateEmail,
            UsersBulkUpdate,
            EventsTrack,
            EventsTrackBulk,
            CommerceUpdateCart,
            CommerceTrackPurchase,
            ListsSubscribe,
            ListsUnsubscribe,
            UsersRegisterDeviceToken,
            UsersRegisterBrowserToken,
            UsersUpdateSubscriptions,
            Lists,
            Webhooks,
            UsersDelete,
            UsersDeleteByUserId,
            UsersForget,
            UsersUnforget,
        ];
        let mut named: Vec<(&str, Family, Kind)> = all
            .iter()
            .filter_map(|e| user_call(*e).map(|(f, k)| (e.path(), f, k)))
            .collect();
        let mut table = USER_CALL_ENDPOINTS.to_vec();
        named.sort();
        table.sort();
        assert_eq!(named, table);
    }

    #[test]
    fn a_track_without_identity_goes_into_the_bulk_as_segment_sends_it() {
        let d = dest();
        let items = bulk_items(
            &d,
            &[json!({"type": "track", "event": "A", "anonymousId": "x"})],
        );
        let built = build(&d, &[(0, &items[0], false)], 0);
        assert_eq!(built.requests.len(), 1);
        assert!(built.errors.is_empty());
    }

    #[test]
    fn bulk_requests_hold_at_most_1000_items_and_4_mb_and_solo_items_go_alone() {
        let d = dest();
        let events: Vec<Value> = (0..2500)
            .map(|n| json!({"type": "identify", "userId": format!("u-{n}")}))
            .collect();
        let items = bulk_items(&d, &events);
        let mut keyed: Vec<(usize, &BulkItem, bool)> = items
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b, false))
            .collect();
        keyed[7].2 = true;
        let sizes: Vec<(usize, bool)> = build(&d, &keyed, 0)
            .requests
            .iter()
            .map(|r| (r.members.len(), r.full))
            .collect();
        assert_eq!(
            sizes,
            [(1, false), (1000, true), (1000, true), (499, false)]
        );

        let big = "x".repeat(1_500_000);
        let events: Vec<Value> = (0..5)
            .map(|n| json!({"type": "identify", "userId": format!("u-{n}"), "traits": {"blob": big}}))
            .collect();
        let items = bulk_items(&d, &events);
        let keyed: Vec<(usize, &BulkItem, bool)> = items
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b, false))
            .collect();
        let built = build(&d, &keyed, 0);
        assert!(built
            .requests
            .iter()
            .all(|r| r.wire.len() <= MAX_BULK_BYTES));
        assert_eq!(
            built
                .requests
                .iter()
                .map(|r| r.members.len())
                .sum::<usize>(),
            5
        );
        assert!(built.requests.len() >= 3);
    }
}
