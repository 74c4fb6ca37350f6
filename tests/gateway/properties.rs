//! Property tests: no input makes the parsers or the mapping panic, and mapping is a function
//! of its input and the injected clock.

use gateway::cli::map::Mapper;
use gateway::mapping::{dates, fql::Trigger, kit::Mapping, Destination};
use gateway::segment::event::SegmentEvent;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Arbitrary JSON, biased towards what Segment events contain.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9@._+ -]{0,12}".prop_map(Value::String),
        arb_date_string().prop_map(Value::String),
        Just(json!("a@b.co")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("email".to_string()),
        Just("phone".to_string()),
        Just("products".to_string()),
        Just("product_id".to_string()),
        Just("price".to_string()),
        Just("quantity".to_string()),
        Just("total".to_string()),
        Just("campaignId".to_string()),
        Just("traits".to_string()),
        Just("__proto__".to_string()),
        "[a-z]{1,6}",
    ]
}

/// Strings shaped like dates, with every separator the V8 parser knows.
fn arb_date_string() -> impl Strategy<Value = String> {
    "[0-9]{1,6}[-/ ]?[0-9]{0,3}[-/ ]?[0-9]{0,3}[T t]?[0-9]{0,3}:?[0-9]{0,3}:?[0-9]{0,3}[.,]?[0-9]{0,9}(Z|z|[+-][0-9]{0,4}|:[0-9]{2}| ?(GMT|PST|am|pm|Jan|Tue))?"
}

fn arb_event() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "identify", "track", "page", "screen", "group", "alias",
        ]),
        prop::sample::select(vec![
            "Order Completed",
            "Cart Updated",
            "Product Added",
            "Signed Up",
            "",
        ]),
        arb_json(),
        arb_json(),
        arb_json(),
        arb_json(),
    )
        .prop_map(|(t, name, props, traits, ctx, ts)| {
            json!({"type": t, "event": name, "userId": "u", "messageId": "m", "timestamp": ts,
                   "properties": props, "traits": traits, "context": {"traits": ctx}, "name": "N"})
        })
}

const NOW: i64 = 1_700_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mapping_never_panics_and_is_deterministic(event in arb_event(), classic in any::<bool>(), eu in any::<bool>()) {
        let settings = json!({
            "cartEvents": if classic { "classic" } else { "segment" },
            "dataCenterLocation": if eu { "europe" } else { "united_states" },
            "aliasToUpdateEmail": true, "syncLists": true,
        });
        let d = Destination::from_settings(&settings).unwrap();
        let e = SegmentEvent::from_value(event, None).unwrap();
        let first = d.plan(&e, NOW);
        prop_assert_eq!(first, d.plan(&e, NOW));
    }

    #[test]
    fn arbitrary_objects_are_parsed_or_refused_never_panic(v in arb_json()) {
        if let Ok(e) = SegmentEvent::from_value(v, None) {
            let _ = Destination::default().plan(&e, NOW);
        }
    }

    #[test]
    fn date_parsers_never_panic(s in arb_date_string(), junk in "\\PC{0,30}") {
        for input in [s.as_str(), junk.as_str()] {
            let _ = dates::v8_parse(input);
            let _ = dates::dayjs_parse(input);
            let _ = dates::is_date_like(input);
            let _ = dates::convert_date_string(input);
        }
    }

    #[test]
    fn converted_dates_are_iterable_formatted(s in arb_date_string()) {
        if let Some(out) = dates::convert_date_string(&s) {
            prop_assert!(out.ends_with(" +00:00"), "{}", out);
        }
    }

    #[test]
    fn triggers_and_mappings_parse_or_refuse(text in "\\PC{0,60}", v in arb_json()) {
        let _ = Trigger::parse(&text);
        if let Ok(m) = Mapping::compile(&v) {
            let _ = m.resolve(&v);
        }
    }

    #[test]
    fn map_lines_always_answer_one_json_line(line in "\\PC{0,200}") {
        let mut mapper = Mapper::new(Map::new());
        let out = mapper.map_line(&line, NOW);
        prop_assert!(out.get("action").is_some() || out.get("actions").is_some());
    }
}
