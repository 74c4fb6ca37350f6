//! Every case of `tests/data/iterable-actions-vectors.json` (78 cases from the tests of Segment's
//! Iterable destinations): the same URL, method and JSON body, or the same error.
//! Destination-level cases (testAuthentication, createAudience, getAudience) run against
//! wiremock in `iterable_client.rs`; `getRegionalEndpoint` cases are checked here.

use crate::helpers::{destination, request_json, run_batch, without_internal_batching_keys};
use gateway::iterable::api::{DataCenter, Endpoint, Hosts};
use gateway::mapping::{Action, Outcome};
use gateway::segment::event::SegmentEvent;
use serde_json::{json, Value};

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/iterable-actions-vectors.json"
    ))
    .expect("vectors file");
    serde_json::from_str::<Vec<Value>>(&text).expect("vectors are JSON")
}

fn lists_flavor(v: &Value) -> Option<&str> {
    match v["destination"].as_str() {
        Some("iterable-lists") => Some("iterable-lists"),
        Some("iterable-audiences") => Some("iterable-audiences"),
        _ => None,
    }
}

fn expected_requests(v: &Value, action: Action) -> Vec<Value> {
    let e = &v["expected"];
    let list = match e.get("requests") {
        Some(Value::Array(r)) => r.clone(),
        _ if e.get("url").is_some() => vec![e.clone()],
        _ => vec![],
    };
    list.into_iter()
        .filter(|r| r.get("url").is_some())
        .map(|mut r| {
            without_internal_batching_keys(action, &mut r["body"]);
            json!({"method": r["method"], "url": r["url"], "body": r.get("body").cloned().unwrap_or(Value::Null)})
        })
        .collect()
}

/// The reference event as the harness hands it over; `"(absent)"` marks a deleted key.
fn event_of(v: &Value) -> Value {
    let mut e = v.clone();
    if let Value::Object(m) = &mut e {
        m.retain(|_, val| val != "(absent)");
    }
    e
}

#[test]
fn every_reference_vector_maps_to_the_same_request_or_error() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 78);
    let mut checked = 0;
    for v in &vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let action_name = v["action"].as_str().unwrap_or("");
        let Some(action) = Action::parse(action_name) else {
            continue; // destination-level calls: see iterable_client.rs and below
        };
        let d = destination(
            &v["settings"],
            action_name,
            Some(&v["effective_mapping"]),
            lists_flavor(v),
        );
        let expected = expected_requests(v, action);
        if let Some(events) = v.get("events").and_then(Value::as_array) {
            let events: Vec<Value> = events.iter().map(event_of).collect();
            let (requests, errors) = run_batch(&d, &events, 0);
            let got: Vec<Value> = requests.iter().map(|r| request_json(r, &d)).collect();
            assert_eq!(got, expected, "vector `{name}`: batch requests");
            // Per-event statuses: every refused event carries Segment's message.
            if let Some(Value::Array(ms)) = v["expected"].get("multistatus") {
                for (i, status) in ms.iter().enumerate() {
                    let refused = errors.iter().find(|(j, _)| *j == i);
                    match status["status"].as_u64() {
                        Some(200) | Some(500) => assert!(
                            refused.is_none(),
                            "vector `{name}`: event {i} refused: {refused:?}"
                        ),
                        _ => assert_eq!(
                            refused.map(|(_, e)| e.message.as_str()),
                            status["errormessage"].as_str(),
                            "vector `{name}`: event {i}"
                        ),
                    }
                }
            }
        } else {
            let event = SegmentEvent::from_value(event_of(&v["event"]), None)
                .expect("vector events are events");
            let outcomes = d.plan(&event, 0);
            assert_eq!(outcomes.len(), 1, "vector `{name}`");
            match (&outcomes[0], v["expected"].get("error")) {
                (Outcome::Requests { requests, .. }, None) => {
                    let got: Vec<Value> = requests.iter().map(|r| request_json(r, &d)).collect();
                    assert_eq!(got, expected, "vector `{name}`");
                }
                (Outcome::Requests { requests, .. }, Some(err)) => {
                    // Errors raised by Iterable's answer (500, 401): the request is the same,
                    // the failure is the dispatcher's to classify.
                    let got: Vec<Value> = requests.iter().map(|r| request_json(r, &d)).collect();
                    assert!(
                        v.get("reply").is_some(),
                        "vector `{name}`: expected error {err}, got {got:?}"
                    );
                    assert_eq!(
                        got, expected,
                        "vector `{name}`: request before the HTTP error"
                    );
                }
                (Outcome::Error { error, .. }, Some(err)) => {
                    assert_eq!(
                        Some(error.message.as_str()),
                        err.as_str(),
                        "vector `{name}`"
                    );
                }
                (other, _) => panic!("vector `{name}`: expected {}, got {other:?}", v["expected"]),
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 68, "every action vector ran");
}

#[test]
fn regional_endpoints_match_get_regional_endpoint() {
    let hosts = Hosts::default();
    assert_eq!(
        format!(
            "{}{}",
            hosts.base(DataCenter::from_setting(Some("europe"))),
            Endpoint::UsersUpdate.path()
        ),
        "https://api.eu.iterable.com/api/users/update"
    );
    assert_eq!(
        format!(
            "{}{}",
            hosts.base(DataCenter::from_setting(None)),
            Endpoint::CommerceUpdateCart.path()
        ),
        "https://api.iterable.com/api/commerce/updateCart"
    );
    assert_eq!(
        DataCenter::from_setting(Some("mars")),
        DataCenter::UnitedStates
    );
}
