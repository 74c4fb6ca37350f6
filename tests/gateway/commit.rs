//! The group commit keeps the audit log in step with the answers: a request whose commit did not
//! finish by its deadline is answered 503 and, if its write lands later, re-recorded as 503; a
//! request that cannot even join the queue (bounded in bytes) by its deadline is answered 503 and
//! recorded as such once the database takes it.

use gateway::audit::health::{DatabaseHealth, ProbeSettings};
use gateway::audit::writer::{CommitError, Committed, CommitterSettings, GroupCommitter};
use gateway::audit::{Direction, InboundRecord};
use gateway::database::testing::fresh_database;
use serde_json::json;
use sqlx::Connection as _;
use std::time::Duration;
use tokio::time::Instant;

fn record(body: &str) -> InboundRecord {
    InboundRecord {
        route: "/v1/track".into(),
        connection: Some("shop".into()),
        direction: Direction::SegmentToIterable,
        status: 200,
        error_code: None,
        error_message: None,
        headers: json!({}),
        content_encoding: None,
        body: body.as_bytes().to_vec(),
        body_size: body.len(),
        body_truncated: false,
        events: vec![],
        sealed: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_after_its_503_is_recorded_as_503_and_a_full_queue_times_out() {
    let (pool, db) = fresh_database().await;
    gateway::database::migrate(&pool).await.unwrap();
    let health = DatabaseHealth::new();
    health.spawn_probe(
        pool.clone(),
        ProbeSettings {
            interval_up: Duration::from_millis(100),
            interval_down: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
        },
    );
    let committer = GroupCommitter::spawn(
        pool.clone(),
        CommitterSettings {
            writers: 1,
            max_group_events: 5000,
            queue_requests: 100,
            queue_bytes: 4096,
        },
        health.clone(),
    );
    // Another session holds the table: the writer's INSERT waits behind it.
    let mut holder = sqlx::PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE inbound_request IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let started = Instant::now();
    let late = {
        let committer = committer.clone();
        tokio::spawn(async move {
            committer
                .commit(record("late"), Instant::now() + Duration::from_millis(300))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Needs the whole byte budget, while `late` holds some of it: it cannot join the queue.
    let big = committer
        .commit(
            record(&"b".repeat(3000)),
            Instant::now() + Duration::from_millis(150),
        )
        .await;
    assert!(matches!(big, Err(CommitError::Timeout)), "{big:?}");
    let late = late.await.unwrap();
    assert!(matches!(late, Err(CommitError::Timeout)), "{late:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the deadline holds: {:?}",
        started.elapsed()
    );

    // The lock goes: the write that was waiting lands and is re-recorded as what its client
    // got; the request that never joined the queue is recorded as its 503 too.
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows: Vec<(String, i16, Option<String>)> = sqlx::query_as(
            "SELECT left(convert_from(body, 'UTF8'), 4), status, error_message FROM inbound_request ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.len() == 2 && rows.iter().all(|r| r.1 == 503) {
            assert_eq!((rows[0].0.as_str(), rows[1].0.as_str()), ("late", "bbbb"));
            let why = |i: usize| rows[i].2.as_deref().unwrap().to_string();
            assert!(
                why(0).starts_with("answered 503: the commit did not complete in time"),
                "{rows:?}"
            );
            assert!(why(1).contains("the commit queue was full"), "{rows:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reconciled: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Commits resume.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match committer
            .commit(record("after"), Instant::now() + Duration::from_secs(2))
            .await
        {
            Ok(Committed::AsSent) => break,
            other => assert!(std::time::Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses: Vec<i16> = sqlx::query_scalar("SELECT status FROM inbound_request ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    // The two refused above, then "after": a try that was itself answered 503 while the
    // machine was slow is recorded as 503 too, and the one acknowledged is the last row.
    assert_eq!(&statuses[..2], &[503, 503], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        statuses[2..statuses.len() - 1].iter().all(|s| *s == 503),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_writers_message_key_is_the_one_sql_computes() {
    // The group commit hashes (connection, direction, messageId) itself; settles, retention
    // and deletions compute the same key in SQL (gateway_message_key). Both must agree, or a
    // duplicate gets through and a dry-run settle fails to give its messageId back.
    let (pool, _db) = fresh_database().await;
    gateway::database::migrate(&pool).await.unwrap();
    let cases = [
        ("shop", Direction::SegmentToIterable, "m-1"),
        ("shop", Direction::IterableToSegment, "m-1"),
        ("", Direction::SegmentToIterable, ""),
        // Characters, not bytes, are counted in the connection's length.
        ("bäckerei", Direction::SegmentToIterable, "ÿ-ünïcode-😀"),
        ("a:1", Direction::SegmentToIterable, "b"),
        ("a", Direction::SegmentToIterable, "1:b"),
    ];
    for (connection, direction, message_id) in cases {
        let sql: uuid::Uuid = sqlx::query_scalar("SELECT gateway_message_key($1, $2, $3)")
            .bind(connection)
            .bind(direction.as_str())
            .bind(message_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        let rust = gateway::audit::message_key(connection, direction, message_id);
        assert_eq!(rust, sql, "{connection:?} {direction:?} {message_id:?}");
    }
    assert_ne!(
        gateway::audit::message_key("a:1", Direction::SegmentToIterable, "b"),
        gateway::audit::message_key("a", Direction::SegmentToIterable, "1:b"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_come_in_blocks_that_two_processes_never_share() {
    // Arrange: two committers on one database, as two gateway processes would have.
    let (pool, _db) = fresh_database().await;
    gateway::database::migrate(&pool).await.unwrap();
    let spawn = || {
        GroupCommitter::spawn(
            pool.clone(),
            CommitterSettings {
                writers: 2,
                max_group_events: 5000,
                queue_requests: 100,
                queue_bytes: 1 << 20,
            },
            DatabaseHealth::new(),
        )
    };
    let (a, b) = (spawn(), spawn());

    // Act: 30 requests through each, concurrently.
    let mut sent = tokio::task::JoinSet::new();
    for n in 0..60 {
        let committer = if n % 2 == 0 { a.clone() } else { b.clone() };
        sent.spawn(async move {
            committer
                .commit(
                    record(&format!("r{n}")),
                    Instant::now() + Duration::from_secs(10),
                )
                .await
        });
    }
    while let Some(reply) = sent.join_next().await {
        assert!(matches!(reply.unwrap(), Ok(Committed::AsSent)));
    }

    // Assert: 60 rows with 60 ids; the sequence moved by whole blocks, one per committer, not
    // by a round trip per group.
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM inbound_request")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (60, 60));
    let last: i64 = sqlx::query_scalar(
        "SELECT last_value FROM pg_sequences WHERE sequencename = 'inbound_request_id_seq'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last, 2048, "two blocks of 1,024");
}
