//! The outbox (migration 20261207000400): a pending event has exactly one outbox row, in its
//! user's lane, and a settled one none, whatever moves it: a settle, a user deletion (on the
//! request, on arrival, on redaction) or a replay.

use super::{track, Harness};
use gateway::audit::Direction;
use gateway::database::connect;
use gateway::delivery::store::{self, ClaimScope};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

/// Fails unless the outbox holds exactly the pending events, each once, in the lane of its
/// event's connection, direction and user_key.
pub async fn assert_outbox_is_the_pending_events(pool: &PgPool) {
    let wrong: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT e.id, o.event_id
         FROM (SELECT * FROM event WHERE state = 'pending') e
         FULL JOIN outbox o
           ON o.event_id = e.id AND o.received_at = e.received_at
          AND o.connection = e.connection AND o.direction = e.direction
          AND o.lane = gateway_lane(e.connection, e.direction, e.user_key)
         WHERE e.id IS NULL OR o.event_id IS NULL
         UNION ALL
         SELECT event_id, count(*) FROM outbox GROUP BY event_id HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        wrong.is_empty(),
        "(pending event, outbox row) that do not match: {wrong:?}"
    );
}

async fn states(h: &Harness) -> Vec<(String, String)> {
    sqlx::query_as("SELECT message_id, state FROM event ORDER BY message_id")
        .fetch_all(&h.pool)
        .await
        .unwrap()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_user_deletion_takes_the_users_events_out_of_the_outbox_and_leaves_the_rest() {
    // Arrange: Iterable takes everything; ann and bob have events waiting, and an anonymous
    // visitor whose anonymousId is ann's userId (its user_key names her: redacted, not skipped).
    let h = Harness::start().await;
    for verb in ["POST", "DELETE"] {
        Mock::given(method(verb))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"code": "Success", "msg": "", "successCount": 1})),
            )
            .mount(&h.iterable)
            .await;
    }
    h.insert(&[
        track("a-1", "ann", "A"),
        track("b-1", "bob", "B"),
        track("a-2", "ann", "A"),
        json!({"type": "track", "anonymousId": "ann", "messageId": "x-1", "event": "X"}),
    ])
    .await;

    // Act 1: ann's deletion request arrives while her events wait.
    h.insert(&[json!({"type": "delete", "userId": "ann", "messageId": "del-1"})])
        .await;

    // Assert 1: her waiting events are skipped and out of the outbox; the rest wait in it.
    let s = states(&h).await;
    assert_eq!(
        s,
        pairs(&[
            ("a-1", "skipped"),
            ("a-2", "skipped"),
            ("b-1", "pending"),
            ("del-1", "pending"),
            ("x-1", "pending"),
        ])
    );
    assert_outbox_is_the_pending_events(&h.pool).await;

    // Act 2: an event of hers arrives after the request (suppressed on arrival), then
    // everything is delivered (the deletion's answer redacts her everywhere).
    h.insert(&[track("a-3", "ann", "A")]).await;
    assert_outbox_is_the_pending_events(&h.pool).await;
    h.drain_all().await;

    // Assert 2: nothing pending, nothing in the outbox.
    let s = states(&h).await;
    assert_eq!(
        s,
        pairs(&[
            ("a-1", "skipped"),
            ("a-2", "skipped"),
            ("a-3", "skipped"),
            ("b-1", "delivered"),
            ("del-1", "delivered"),
            ("x-1", "delivered"),
        ])
    );
    assert_outbox_is_the_pending_events(&h.pool).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_lane_follows_a_pending_events_user_key_when_a_deletion_rewrites_it() {
    // Arrange: a deletion of ann, already suppressed (its request settled), and a visitor's
    // pending event whose user_key is ann's userId as an anonymousId.
    let h = Harness::start().await;
    h.insert(&[json!({"type": "track", "anonymousId": "ann", "messageId": "x-1", "event": "X"})])
        .await;
    let before: i64 = sqlx::query_scalar("SELECT lane FROM outbox")
        .fetch_one(&h.pool)
        .await
        .unwrap();

    // Act: the redaction a settled deletion runs, as the trigger runs it.
    sqlx::query(
        "SELECT gateway_redact_user('shop', '[{\"kind\": \"userId\", \"value\": \"ann\"}]'::jsonb, 1, 0)",
    )
    .execute(&h.pool)
    .await
    .unwrap();

    // Assert: whatever the redaction made of the user_key, the outbox row is in its lane.
    let (user_key, state): (String, String) =
        sqlx::query_as("SELECT user_key, state FROM event WHERE message_id = 'x-1'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_ne!(user_key, "ann", "the user_key names the deleted user");
    assert_eq!(state, "pending");
    let after: i64 = sqlx::query_scalar("SELECT lane FROM outbox")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_ne!(before, after);
    assert_outbox_is_the_pending_events(&h.pool).await;
}

/// A pool of one connection to the harness's database: one backend, whose plans and settings
/// carry from one statement to the next.
fn one_backend(h: &Harness) -> PgPool {
    connect::sibling(&h.pool, 1, Duration::from_secs(30), "one backend")
}

/// Shared buffers a statement touched, from its `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`
/// (the statements a function runs count towards the node that calls it).
async fn buffers(pool: &PgPool, sql: &str) -> i64 {
    let plan: serde_json::Value =
        sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"))
            .fetch_one(pool)
            .await
            .unwrap();
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

#[tokio::test]
async fn a_claim_reads_its_batch_not_the_backlog_even_with_the_statistics_of_an_empty_outbox() {
    // Arrange: the outbox analysed while empty (as at start-up, or before an outage), then a
    // backlog of 40,000 events of 4,000 users that no ANALYZE has seen.
    let h = Harness::start().await;
    for sql in [
        "ALTER TABLE outbox SET (autovacuum_enabled = false)",
        "ANALYZE outbox",
        "INSERT INTO event (request_id, connection, direction, message_id, user_key, payload, state)
         SELECT 0, 'shop', 'segment_to_iterable', 'm-' || i, 'u-' || (i % 4000), '{}', 'pending'
         FROM generate_series(1, 40000) i",
    ] {
        sqlx::query(sql).execute(&h.pool).await.unwrap();
    }
    let backlog_pages: i64 = sqlx::query_scalar(
        "SELECT (pg_relation_size('outbox') + pg_relation_size('outbox_due')) / 8192",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();

    // One backend, whose first claim (of one event) has planned the functions' statements and
    // filled its caches: the claim measured reads only what it needs.
    let one = one_backend(&h);
    let scope = ClaimScope {
        direction: Direction::SegmentToIterable,
        connection: "shop",
        probe: false,
        dry_run: false,
    };
    store::claim(&one, scope, "warm", 1, Duration::from_secs(60))
        .await
        .unwrap();

    // Act: a claim of 10, as `store::claim` makes it: the queue's head (20 rows), then the
    // ten first of their users taken.
    let scan =
        "SELECT * FROM gateway_claim_scan('shop', 'segment_to_iterable', -1, 20, false, false)";
    let head: Vec<(String, i64)> = sqlx::query_as(&scan.replace('*', "tid, event_id"))
        .fetch_all(&one)
        .await
        .unwrap();
    let (tids, ids): (Vec<String>, Vec<i64>) = head.into_iter().skip(1).take(10).unzip();
    let take = format!(
        "SELECT * FROM gateway_claim_take('me', '{{{}}}', '{{{}}}', 60)",
        tids.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(","),
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
    );
    let read = buffers(&one, scan).await + buffers(&one, &take).await;

    assert!(
        read < backlog_pages / 4,
        "a claim of 10 read {read} buffers; the backlog is {backlog_pages} pages"
    );
}

#[tokio::test]
async fn a_settle_reads_its_batch_not_the_backlog_even_with_the_statistics_of_an_empty_outbox() {
    // Arrange: as for the claim above; one backend whose first settle planned the function's
    // statements (planned once per connection, so with the statistics of that moment).
    let h = Harness::start().await;
    for sql in [
        "ALTER TABLE outbox SET (autovacuum_enabled = false)",
        "ANALYZE outbox",
    ] {
        sqlx::query(sql).execute(&h.pool).await.unwrap();
    }
    let one = one_backend(&h);
    let settle = |ids: Vec<i64>| {
        format!(
            "SELECT gateway_settle('me', 'shop', 'segment_to_iterable', 'delivered', NULL, 'a',
                                   '{{{}}}', NULL, now() - interval '1 day', now())",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        )
    };
    sqlx::query(&settle(vec![-1])).execute(&one).await.unwrap();
    sqlx::query(
        "INSERT INTO event (request_id, connection, direction, message_id, user_key, payload, state)
         SELECT 0, 'shop', 'segment_to_iterable', 'm-' || i, 'u-' || (i % 4000), '{}', 'pending'
         FROM generate_series(1, 40000) i",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let backlog_pages: i64 = sqlx::query_scalar(
        "SELECT (pg_relation_size('outbox') + pg_relation_size('outbox_due')) / 8192",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let scope = ClaimScope {
        direction: Direction::SegmentToIterable,
        connection: "shop",
        probe: false,
        dry_run: false,
    };

    // Act: ten claimed and delivered, three times over. The fewest buffers of the three count:
    // a backend that rebuilds its catalog caches (other tests create databases meanwhile)
    // counts those reads in the statement that triggered them.
    let mut read = i64::MAX;
    for _ in 0..3 {
        let claimed = store::claim(&one, scope, "me", 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 10);
        let settled = buffers(&one, &settle(claimed.iter().map(|e| e.id).collect())).await;
        read = read.min(settled);
    }

    // Assert: a few buffers per event, not the queue; and they are settled.
    assert!(
        read < backlog_pages / 4,
        "a settle of 10 read {read} buffers; the backlog is {backlog_pages} pages"
    );
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'delivered'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(delivered, 30);
}

#[tokio::test]
async fn an_attempt_is_committed_without_waiting_for_the_disk_and_the_connection_stays_durable() {
    // Arrange: one connection, so that what the attempt's statement set would show on the next;
    // durable commits on it (the test cluster runs without them).
    let h = Harness::start().await;
    let one = one_backend(&h);
    sqlx::query("SET synchronous_commit = on")
        .execute(&one)
        .await
        .unwrap();
    let headers = json!({"Content-Type": "application/json"});
    let attempt = store::Attempt {
        connection: "shop",
        direction: Direction::SegmentToIterable,
        endpoint: "/api/events/track",
        method: "POST",
        url: "http://iterable.test/api/events/track",
        request_headers: &headers,
        request_body: Some(r#"{"eventName":"E"}"#),
        attempt: 1,
        dry_run: false,
        status: Some(200),
        response_headers: None,
        response_body: Some("{}"),
        duration: Some(Duration::from_millis(3)),
        outcome: store::AttemptOutcome::Delivered,
        error: None,
        event_ids: &[7],
        user_hashes: None,
    };

    // Act
    store::record_attempt(&one, &attempt).await.unwrap();

    // Assert: recorded and visible at once; the next statement on that connection commits
    // durably again.
    let (endpoint, ids): (String, Vec<i64>) =
        sqlx::query_as("SELECT endpoint, event_ids FROM delivery_attempt")
            .fetch_one(&one)
            .await
            .unwrap();
    assert_eq!((endpoint.as_str(), ids), ("/api/events/track", vec![7]));
    let after: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(after, "on");
}
