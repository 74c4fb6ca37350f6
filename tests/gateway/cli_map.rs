//! `gateway map` as a user runs it: JSON lines in, one JSON line out per line.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

pub fn gateway_map(args: &[&str], input: &str) -> (Vec<Value>, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("map")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gateway runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect();
    (
        lines,
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

const IDENTIFY: &str = r#"{"type":"identify","userId":"u-1","messageId":"m-1","traits":{"email":"ann@example.com","phone":"+14158675309"}}"#;

#[test]
fn each_line_gets_exactly_one_answer_and_bad_lines_do_not_stop_the_rest() {
    let input = [
        IDENTIFY,
        "this is not json",
        r#"{"type":"track","event":"Video Played","userId":"u-1","messageId":"m-2","timestamp":"2024-05-01T10:00:00Z","properties":{"title":"Intro"}}"#,
        r#"{"type":"group","groupId":"g"}"#,
        r#"{"type":"track","event":"Order Completed","userId":"u-1","properties":{"products":[]}}"#,
        r#"{"type":"track","event":"X","userId":"u","integrations":{"Iterable":false}}"#,
        "",
        r#"{"event":{"type":"identify","userId":"u-2"},"settings":{"dataCenterLocation":"europe","apiKey":"secret-key"}}"#,
    ]
    .join("\n");
    let (lines, _, ok) = gateway_map(&["--now", "2024-05-01T10:00:00Z"], &input);
    assert!(ok);
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0]["action"], "updateUser");
    assert_eq!(
        lines[0]["requests"][0]["url"],
        "https://api.iterable.com/api/users/update"
    );
    assert_eq!(
        lines[0]["requests"][0]["body"],
        json!({"email": "ann@example.com", "userId": "u-1",
               "dataFields": {"email": "ann@example.com", "phone": "+14158675309", "phoneNumber": "+14158675309"},
               "mergeNestedObjects": false})
    );
    assert_eq!(lines[1]["error"]["code"], "INVALID_JSON");
    assert_eq!(lines[2]["requests"][0]["body"]["createdAt"], 1714557600);
    assert_eq!(
        lines[3],
        json!({"action": null, "skipped": "no subscription matches group calls"})
    );
    assert_eq!(lines[4]["action"], "trackPurchase");
    assert_eq!(
        lines[4]["error"]["message"],
        "The root value is missing the required field 'total'."
    );
    assert_eq!(lines[5]["skipped"], "integrations[\"Iterable\"] is false");
    assert_eq!(lines[6]["skipped"], "empty line");
    assert_eq!(
        lines[7]["requests"][0]["url"],
        "https://api.eu.iterable.com/api/users/update"
    );
    assert_eq!(lines[7]["requests"][0]["headers"]["Api-Key"], "<redacted>");
    assert!(
        !lines.iter().any(|l| l.to_string().contains("secret-key")),
        "secrets never print"
    );
}

#[test]
fn settings_file_and_batch_mode_produce_bulk_requests() {
    let dir = std::env::temp_dir().join(format!("gateway-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("settings.json");
    std::fs::write(
        &settings,
        r#"{"apiKey": "k", "dataCenterLocation": "europe"}"#,
    )
    .unwrap();
    let input = [
        IDENTIFY,
        r#"{"type":"identify","userId":"u-2","traits":{"email":""}}"#,
        r#"{"type":"track","event":"A","userId":"u-1","messageId":"m-3","timestamp":"2024-05-01T10:00:00Z"}"#,
        r#"{"type":"track","event":"Cart Updated","userId":"u-1","properties":{"products":[{"product_id":"p","name":"Mug","price":"12.50","quantity":"2"}]}}"#,
    ]
    .join("\n");
    let (lines, _, ok) = gateway_map(
        &["--batch", "--settings", settings.to_str().unwrap()],
        &input,
    );
    assert!(ok);
    // The cart goes one by one, the identify with an empty email fails batch validation (as in
    // Segment's performBatch), and one bulk request per action follows.
    assert_eq!(lines[0]["line"], 2);
    assert_eq!(
        lines[0]["error"]["message"],
        "Email Address must be a valid email address string but it was not."
    );
    assert_eq!(lines[1]["line"], 4);
    assert_eq!(lines[1]["requests"][0]["body"]["items"][0]["price"], 12.5);
    assert_eq!(lines[2]["action"], "updateUser");
    assert_eq!(lines[2]["lines"], json!([1]));
    assert_eq!(
        lines[2]["requests"][0]["url"],
        "https://api.eu.iterable.com/api/users/bulkUpdate"
    );
    assert_eq!(
        lines[3]["requests"][0]["url"],
        "https://api.eu.iterable.com/api/events/trackBulk"
    );
    assert_eq!(lines[3]["requests"][0]["body"]["events"][0]["id"], "m-3");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_settings_fail_loudly_on_their_line() {
    let (lines, _, ok) = gateway_map(
        &[],
        r#"{"event":{"type":"identify","userId":"u"},"settings":{"apiKye":"x"}}"#,
    );
    assert!(ok);
    assert_eq!(lines[0]["error"]["code"], "INVALID_SETTINGS");
    assert!(lines[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("apiKye"));
}

#[test]
fn from_iterable_prints_the_segment_batch_each_webhook_becomes() {
    let input = [
        r#"{"email":"docs@iterable.com","eventName":"emailOpen","dataFields":{"createdAt":"2016-12-02 18:51:45 +00:00","ip":"1.2.3.4"}}"#,
        r#"[{"userId":"u1","eventName":"pushSend"},{"userId":"u2","eventName":"smsClick"}]"#,
        r#"{"workflowId":1}"#,
    ]
    .join("\n");
    let (lines, _, ok) = gateway_map(
        &["--from", "iterable", "--now", "2026-01-01T00:00:00Z"],
        &input,
    );
    assert!(ok);
    assert_eq!(lines.len(), 3);
    let req = &lines[0]["requests"][0];
    assert_eq!(req["url"], "https://api.segment.io/v1/batch");
    assert_eq!(req["headers"]["Authorization"], "<redacted>");
    let track = &req["body"]["batch"][0];
    assert_eq!(track["event"], "Email Opened");
    assert_eq!(track["timestamp"], "2016-12-02T18:51:45Z");
    assert_eq!(track["context"]["ip"], "1.2.3.4");
    let batch = lines[1]["requests"][0]["body"]["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[1]["event"], "SMS Clicked");
    assert_eq!(batch[1]["timestamp"], "2026-01-01T00:00:00.000Z");
    assert_eq!(lines[2]["error"]["code"], "INVALID_WEBHOOK");
}
