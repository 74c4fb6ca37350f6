//! 600 targeted probes of Segment's published code (tests/data/oracle-probes.jsonl): dates in
//! every separator/time/zone combination, coercions, error wording and order, key order,
//! batches, lists. Each ran through the oracle once; here each runs through the gateway.

use crate::differential::{compare_case, Tally};
use serde_json::Value;

#[test]
fn targeted_probes_agree_with_segments_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/oracle-probes.jsonl"
    );
    let probes: Vec<Value> = std::fs::read_to_string(path)
        .expect("probes file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("probe lines are JSON"))
        .collect();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut run = 0;
    for p in &probes {
        let input = &p["input"];
        // Destination-level calls and subscription matching are covered elsewhere.
        if matches!(
            input["action"].as_str(),
            Some("testAuthentication" | "matchSubscriptions")
        ) || input.get("preset").is_some()
        {
            continue;
        }
        run += 1;
        let diffs = compare_case(input, &p["output"], false, &mut tally);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n    {}", p["name"], diffs.join("\n    ")));
        }
    }
    eprintln!(
        "probes: {run} run, {} requests and {} errors compared, {} byte-identical",
        tally.requests, tally.errors, tally.byte_identical
    );
    assert!(run >= 590);
    assert!(
        failures.is_empty(),
        "{} of {run} probes differ:\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
