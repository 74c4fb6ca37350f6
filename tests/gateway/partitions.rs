//! Partition upkeep (migrations/): rows already in a DEFAULT partition, and retention.

use local_postgres::fresh_database;
use sqlx::PgPool;

const TABLES: [(&str, &str); 3] = [
    ("inbound_request", "received_at"),
    ("event", "received_at"),
    ("delivery_attempt", "attempted_at"),
];

async fn migrated() -> (PgPool, local_postgres::DbGuard) {
    let (pool, db) = fresh_database().await;
    gateway::database::migrate(&pool)
        .await
        .expect("migrations apply");
    (pool, db)
}

/// One row in each of the three tables, dated `at` (an SQL timestamptz expression).
async fn insert_rows(pool: &PgPool, at: &str, tag: &str) {
    let sql = format!(
        "WITH r AS (
            INSERT INTO inbound_request (received_at, route, direction, status, headers, body)
            VALUES ({at}, '/v1/track', 'segment_to_iterable', 200, '{{}}', '\\x7b7d') RETURNING id)
         INSERT INTO event (received_at, request_id, connection, direction, message_id, user_key, payload, state)
         SELECT {at}, id, 'shop', 'segment_to_iterable', '{tag}', 'u:1', '{{}}', 'pending' FROM r"
    );
    sqlx::query(&sql).execute(pool).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO delivery_attempt (attempted_at, connection, direction, endpoint, method, url,
                                       request_headers, attempt, outcome, event_ids)
         VALUES ({at}, 'shop', 'segment_to_iterable', '{tag}', 'POST', 'http://x', '{{}}', 1, 'delivered', '{{}}')"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// The partition holding each table's rows tagged `tag`.
async fn partitions_of(pool: &PgPool, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (sql, bind) in [
        ("SELECT r.tableoid::regclass::text FROM inbound_request r JOIN event e ON e.request_id = r.id WHERE e.message_id = $1", tag),
        ("SELECT tableoid::regclass::text FROM event WHERE message_id = $1", tag),
        ("SELECT tableoid::regclass::text FROM delivery_attempt WHERE endpoint = $1", tag),
    ] {
        let found: Vec<String> = sqlx::query_scalar(sql).bind(bind).fetch_all(pool).await.unwrap();
        out.extend(found);
    }
    out
}

#[tokio::test]
async fn rows_of_a_day_in_default_move_into_its_new_partition() {
    let (pool, _db) = migrated().await;
    let today: String = sqlx::query_scalar("SELECT to_char(current_date, 'YYYYMMDD')")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Today's partitions missing (upkeep did not run), and today's traffic in DEFAULT.
    for (t, _) in TABLES {
        sqlx::query(&format!("DROP TABLE {t}_{today}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    insert_rows(&pool, "now()", "in-default").await;
    assert_eq!(
        partitions_of(&pool, "in-default").await,
        [
            "inbound_request_default",
            "event_default",
            "delivery_attempt_default"
        ]
    );

    // What `serve` runs at start-up (and hourly): no error.
    gateway::database::migrate(&pool)
        .await
        .expect("partition upkeep with rows in DEFAULT");

    assert_eq!(
        partitions_of(&pool, "in-default").await,
        [
            format!("inbound_request_{today}"),
            format!("event_{today}"),
            format!("delivery_attempt_{today}")
        ],
        "the rows moved into today's partitions, and are found through the parent tables"
    );
    for (t, _) in TABLES {
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}_default"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0, "{t}_default");
    }
    // The new partition is a real one: attached, with the parent's indexes and (for the outbox)
    // its storage parameters, and new rows of today are routed to it.
    let attached: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhrelid = ANY (ARRAY[$1::regclass, $2::regclass, $3::regclass])",
    )
    .bind(format!("inbound_request_{today}"))
    .bind(format!("event_{today}"))
    .bind(format!("delivery_attempt_{today}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attached, 3);
    let indexes: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = $1")
        .bind(format!("event_{today}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    let parent_indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'event_default'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        indexes, parent_indexes,
        "event_{today} has the outbox's indexes"
    );
    let options: Option<Vec<String>> =
        sqlx::query_scalar("SELECT reloptions FROM pg_class WHERE relname = $1")
            .bind(format!("event_{today}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        options
            .unwrap_or_default()
            .contains(&"fillfactor=70".to_string()),
        "event_{today} keeps the outbox's fillfactor"
    );
    insert_rows(&pool, "now()", "after").await;
    assert_eq!(
        partitions_of(&pool, "after").await,
        [
            format!("inbound_request_{today}"),
            format!("event_{today}"),
            format!("delivery_attempt_{today}")
        ]
    );
    // And the event is still claimable by its index (the outbox's claim path).
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event WHERE direction = 'segment_to_iterable' AND state = 'pending'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 2);
}

#[tokio::test]
async fn retention_reaches_rows_in_default() {
    let (pool, _db) = migrated().await;
    // No partition covers 60 days ago or 60 days ahead: both land in DEFAULT.
    insert_rows(&pool, "now() - interval '60 days'", "old").await;
    insert_rows(&pool, "now() + interval '60 days'", "future").await;
    insert_rows(&pool, "now()", "today").await;
    assert_eq!(partitions_of(&pool, "old").await.len(), 3);

    let dropped: i32 =
        sqlx::query_scalar("SELECT gateway_drop_partitions_before(current_date - 30)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dropped, 0, "every day partition is recent");
    assert!(
        partitions_of(&pool, "old").await.is_empty(),
        "rows older than the cutoff are deleted from DEFAULT"
    );
    assert_eq!(
        partitions_of(&pool, "future").await.len(),
        3,
        "newer DEFAULT rows stay"
    );
    assert_eq!(partitions_of(&pool, "today").await.len(), 3);

    // Day partitions past the cutoff are dropped, and DEFAULT rows before it go with them.
    let dropped: i32 =
        sqlx::query_scalar("SELECT gateway_drop_partitions_before(current_date + 1)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        dropped, 6,
        "yesterday's and today's partitions of the three tables"
    );
    assert!(partitions_of(&pool, "today").await.is_empty());
    assert_eq!(partitions_of(&pool, "future").await.len(), 3);
}

#[tokio::test]
async fn every_partition_compresses_its_bodies_with_lz4() {
    // The bodies are compressed in the statements that ingest and record attempts; pglz (the
    // default) costs several times lz4's CPU there. An ALTER on a partitioned table reaches
    // only partitions created after it, so the migrations set each existing one, and the
    // partitions created later (the days ahead, the day of rows found in DEFAULT) must copy it.
    let (pool, _db) = migrated().await;
    insert_rows(&pool, "now() + interval '20 days'", "far").await;
    sqlx::query("SELECT gateway_ensure_partitions(current_date + 19, 3)")
        .execute(&pool)
        .await
        .unwrap();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, a.attcompression::text
         FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE (c.relname LIKE 'inbound\\_request%' AND a.attname IN ('body', 'events_body'))
            OR (c.relname LIKE 'delivery\\_attempt%' AND a.attname IN ('request_body', 'response_body'))
         ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // The parents, DEFAULT, 9 days from yesterday and the 3 days around the far rows.
    assert!(columns.len() >= 2 * 2 * 12, "{columns:?}");
    let pglz: Vec<_> = columns.iter().filter(|(_, _, c)| c != "l").collect();
    assert!(pglz.is_empty(), "not lz4: {pglz:?}");
}
