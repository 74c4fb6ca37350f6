//! One request's data never fails another's: poison requests sent at the same moment as clean
//! ones are refused with a 400 that names the cause, and every clean request is accepted, both
//! through HTTP (the boundary's checks) and at the group commit itself (its isolation, for what
//! would slip past the checks).

use crate::app::{spawn_app_with, WRITE_KEY};
use gateway::audit::health::DatabaseHealth;
use gateway::audit::writer::{CommitError, Committed, CommitterSettings, GroupCommitter};
use gateway::audit::{Direction, EventState, InboundRecord, NewEvent};
use gateway::database::testing::fresh_database;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::task::JoinSet;

const TOKEN: &str = "demo-webhook-token";

/// Hex that does not compress, so a long id is long in the index too.
fn incompressible(bytes: usize) -> String {
    (0..bytes / 32 + 1)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect::<String>()[..bytes]
        .to_string()
}

/// (route, authorization, body, what the refusal must say) of the i-th poison request.
fn poison(i: usize) -> (&'static str, String, String, &'static str) {
    let long = incompressible(3000);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{WRITE_KEY}:")
        )
    );
    match i % 5 {
        0 => (
            "/v1/track",
            basic,
            format!(
                r#"{{"type":"track","event":"E","userId":"u","messageId":"p-{i}","properties":{{"x":"\u0000"}}}}"#
            ),
            "contains \\u0000",
        ),
        1 => (
            "/v1/batch",
            basic,
            format!(
                r#"{{"batch":[{{"type":"identify","userId":"u","messageId":"p-{i}","traits":{{"k\u0000":1}}}}]}}"#
            ),
            "contains \\u0000",
        ),
        2 => (
            "/v1/track",
            basic,
            json!({"type": "track", "event": "E", "userId": "u", "messageId": long}).to_string(),
            "messageId is 3000 bytes",
        ),
        3 => (
            "/v1/track",
            basic,
            json!({"type": "track", "event": "E", "userId": long, "messageId": format!("p-{i}")})
                .to_string(),
            "userId is 3000 bytes",
        ),
        _ => (
            "/webhooks/iterable/shop",
            TOKEN.to_string(),
            json!({"email": format!("{long}@x.co"), "eventName": "emailOpen"}).to_string(),
            "is 3005 bytes",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_poison_requests_among_five_hundred_clean_ones_fail_only_themselves() {
    let app = spawn_app_with(|s| s.database.commit_timeout_ms = 20_000).await;
    let mut tasks = JoinSet::new();
    for i in 0..550usize {
        let (api, address) = (app.api.clone(), app.address.clone());
        tasks.spawn(async move {
            let is_poison = i % 11 == 0;
            let (route, auth, body, says) = if is_poison {
                poison(i / 11)
            } else if i % 2 == 0 {
                let body = json!({"email": format!("c{i}@x.co"), "eventName": "emailOpen", "dataFields": {"i": i}});
                ("/webhooks/iterable/shop", TOKEN.to_string(), body.to_string(), "")
            } else {
                let body = json!({"batch": [{"type": "track", "event": "E", "userId": format!("u{i}"), "messageId": format!("c-{i}")}]});
                ("/v1/batch", String::new(), body.to_string(), "")
            };
            let mut req = api.post(format!("{address}{route}")).body(body);
            req = if auth.is_empty() {
                req.basic_auth(WRITE_KEY, Some(""))
            } else {
                req.header("Authorization", auth)
            };
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (i, is_poison, status, body, says)
        });
    }
    let (mut clean_refused, mut poison_ok) = (vec![], vec![]);
    while let Some(done) = tasks.join_next().await {
        let (i, is_poison, status, body, says) = done.unwrap();
        if is_poison {
            let message = body["message"].as_str().unwrap_or_default().to_string();
            if status != 400 || body["code"] != "unstorable" || !message.contains(says) {
                poison_ok.push((i, status, body));
            }
        } else if status != 200 {
            clean_refused.push((i, status, body));
        }
    }
    assert!(
        clean_refused.is_empty(),
        "clean requests refused: {clean_refused:?}"
    );
    assert!(
        poison_ok.is_empty(),
        "poison not refused as it should be: {poison_ok:?}"
    );
    let (requests, refused, events): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 400 AND error_code = 'unstorable'),
                (SELECT count(*) FROM event) FROM inbound_request",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((requests, refused, events), (550, 50, 500));
}

fn record(i: usize, payload: Value, message_id: String) -> InboundRecord {
    InboundRecord {
        route: "/v1/track".into(),
        connection: Some("shop".into()),
        direction: Direction::SegmentToIterable,
        status: 200,
        error_code: None,
        error_message: None,
        headers: json!({}),
        content_encoding: None,
        body: format!("body {i}").into_bytes(),
        body_size: 6,
        body_truncated: false,
        events: vec![NewEvent {
            message_id,
            call_type: Some("track".into()),
            user_key: format!("u:{i}"),
            payload,
            state: EventState::Pending,
            state_reason: None,
        }],
        sealed: None,
    }
}

/// Past the boundary's checks (called directly here): the group commit itself retries a failed
/// group without the records at fault, so only they are refused.
#[tokio::test]
async fn a_group_commit_that_fails_for_one_records_data_commits_the_others() {
    let (pool, _db) = fresh_database().await;
    gateway::database::migrate(&pool).await.unwrap();
    let committer = GroupCommitter::spawn(
        pool.clone(),
        CommitterSettings {
            writers: 1,
            max_group_events: 5000,
            queue_requests: 1000,
            queue_bytes: 1 << 26,
        },
        DatabaseHealth::new(),
    );
    let mut tasks = JoinSet::new();
    for i in 0..100usize {
        let bad = i % 10 == 3;
        let rec = match (bad, i % 20) {
            (true, 3) => record(i, json!({"x": "a\u{0}b"}), format!("m-{i}")),
            (true, _) => record(i, json!({}), incompressible(3000)),
            _ => record(i, json!({"i": i}), format!("m-{i}")),
        };
        let committer = committer.clone();
        tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            (i, bad, committer.commit(rec, deadline).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, bad, result): (usize, bool, Result<Committed, CommitError>) = done.unwrap();
        match result {
            Ok(Committed::AsSent) => assert!(!bad, "record {i} is bad but was committed"),
            Ok(Committed::Refused(why)) => {
                assert!(bad, "record {i} is clean but was refused: {why}");
                assert!(why.contains("cannot store this request"), "{why}");
            }
            Err(e) => panic!("record {i}: {e}"),
        }
    }
    let rows: Vec<(i16, Option<String>, i32, Option<String>)> = sqlx::query_as(
        "SELECT status, error_code, events, error_message FROM inbound_request ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 100, "every record is audited once");
    let refused: Vec<_> = rows.iter().filter(|r| r.0 == 400).collect();
    assert_eq!(refused.len(), 10);
    for (_, code, events, message) in refused {
        assert_eq!((code.as_deref(), *events), (Some("unstorable"), 0));
        let message = message.as_deref().unwrap();
        assert!(
            message.contains("Unicode") || message.contains("index row"),
            "{message}"
        );
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 90);
}
