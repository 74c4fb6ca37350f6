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

/// The body parsers of the HTTP layer on any bytes: gzip undone within the limit, the scrubber
/// leaving no secret whatever surrounds or cuts it, signatures and webhook bodies parsed or
/// refused, never a panic.
mod body_parsers {
    use gateway::audit::redact::Scrubber;
    use gateway::audit::storable::find_nul;
    use gateway::http::body::decode;
    use gateway::mapping::reverse::split_body;
    use gateway::segment::auth::{signed_bytes, verify_signature};
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    const SECRET: &str = "s3cr3t-Key_9";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn decoding_any_bytes_keeps_within_the_limit(raw in prop::collection::vec(any::<u8>(), 0..4000),
                                                     limit in 1usize..3000,
                                                     encoding in prop::sample::select(vec![None, Some("gzip"), Some("identity"), Some("br")])) {
            let body = decode(raw.clone(), encoding, limit);
            prop_assert!(body.bytes.len() <= limit);
            prop_assert!(body.size >= body.bytes.len());
            if encoding.is_none() && raw.len() <= limit {
                prop_assert_eq!(&body.bytes, &raw);
                prop_assert!(body.problem.is_none());
            }
        }

        #[test]
        fn gzip_round_trips_and_is_limited_by_its_decompressed_size(raw in prop::collection::vec(any::<u8>(), 0..5000),
                                                                     limit in 1usize..6000) {
            let body = decode(gzip(&raw), Some("gzip"), limit);
            if raw.len() <= limit {
                prop_assert!(body.problem.is_none());
                prop_assert_eq!(body.bytes, raw);
            } else {
                prop_assert_eq!(body.problem.map(|p| p.code()), Some("too_large"));
                prop_assert_eq!(&body.bytes[..], &raw[..limit]);
                prop_assert!(body.truncated);
            }
        }

        #[test]
        fn no_secret_survives_the_scrubber_wherever_it_is_cut(before in prop::collection::vec(any::<u8>(), 0..200),
                                                              after in prop::collection::vec(any::<u8>(), 0..200),
                                                              cut in 0usize..420) {
            let scrubber = Scrubber::new([SECRET, "other-secret"]);
            let mut bytes = [before.as_slice(), SECRET.as_bytes(), after.as_slice(), SECRET.as_bytes()].concat();
            scrubber.scrub(&mut bytes);
            prop_assert!(!scrubber.finds(&bytes));
            // A body cut at a limit: no 3 or more leading bytes of the secret at its end.
            let mut cut_body = [before.as_slice(), SECRET.as_bytes(), after.as_slice()].concat();
            cut_body.truncate(cut.min(cut_body.len()));
            scrubber.scrub_truncated(&mut cut_body);
            prop_assert!(!scrubber.finds(&cut_body));
            for k in 3..SECRET.len() {
                prop_assert!(!cut_body.ends_with(&SECRET.as_bytes()[..k]), "{:?}", String::from_utf8_lossy(&cut_body));
            }
        }

        #[test]
        fn escaped_secrets_are_found_once_parsed(escape in prop::collection::vec(any::<bool>(), SECRET.len())) {
            let spelt: String = SECRET.chars().zip(&escape)
                .map(|(c, e)| if *e { format!("\\u{:04x}", c as u32) } else { c.to_string() })
                .collect();
            let raw = format!(r#"{{"writeKey":"{spelt}","n":1}}"#).into_bytes();
            let scrubber = Scrubber::new([SECRET]);
            let mut scrubbed = raw.clone();
            scrubber.scrub(&mut scrubbed);
            prop_assert!(scrubber.has_escapes(&scrubbed) || !escape.contains(&true));
            let mut v: serde_json::Value = serde_json::from_slice(&scrubbed).unwrap();
            scrubber.scrub_value(&mut v);
            prop_assert!(!v.to_string().contains(SECRET));
        }

        #[test]
        fn signatures_and_webhook_bodies_parse_or_refuse(raw in prop::collection::vec(any::<u8>(), 0..300),
                                                         text in "\\PC{0,200}") {
            for body in [raw.as_slice(), text.as_bytes()] {
                let _ = signed_bytes(body);
                let _ = verify_signature("k", body, Some("00"));
                if let Ok(items) = split_body(body) {
                    for (_, v) in items {
                        let _ = find_nul(&v);
                    }
                }
            }
        }
    }
}
