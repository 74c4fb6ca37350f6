//! Claims: concurrent dispatchers never send an event twice, an expired lease is reclaimed,
//! and one user's events go out in order.

use super::{track, Harness, EVENTS};
use gateway::audit::Direction;
use gateway::delivery::store::{self, Next, Settle};
use gateway::delivery::worker;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

async fn track_bulk_answers(h: &Harness, status: u16) {
    track_bulk_answers_after(h, status, Duration::ZERO).await
}

/// [`track_bulk_answers`], each answer after `delay`.
async fn track_bulk_answers_after(h: &Harness, status: u16, delay: Duration) {
    Mock::given(method("POST"))
        .and(path("/api/events/trackBulk"))
        .respond_with(
            ResponseTemplate::new(status)
                .set_body_json(json!({"successCount": 1}))
                .set_delay(delay),
        )
        .mount(&h.iterable)
        .await;
}

#[tokio::test]
async fn two_dispatchers_on_one_database_never_send_the_same_event_twice() {
    // Arrange: 200 events of 40 users, five each; small claims so the two interleave, and
    // answers that take 20 ms, so that on a busy machine one dispatcher cannot send everything
    // before the other's first claim (it happened: 1 run in 30 under load, (200, 0)).
    let h = Harness::with(|s| s.delivery.claim_batch = 15).await;
    let events: Vec<Value> = (0..200)
        .map(|i| track(&format!("m-{i:03}"), &format!("u-{}", i % 40), "Step"))
        .collect();
    h.insert(&events).await;
    track_bulk_answers_after(&h, 200, Duration::from_millis(20)).await;

    // Act
    let (a, b) = tokio::join!(
        worker::drain(&h.pool, &h.settings, &h.clients),
        worker::drain(&h.pool, &h.settings, &h.clients),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a > 0 && b > 0, "both dispatchers claimed events ({a}, {b})");
    h.drain_all().await;

    // Assert: each messageId received exactly once, and each user's in order.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_user: HashMap<String, Vec<String>> = HashMap::new();
    for body in h.received("/api/events/trackBulk").await {
        for item in body["events"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap().to_string();
            *seen.entry(id.clone()).or_default() += 1;
            per_user
                .entry(item["userId"].as_str().unwrap().to_string())
                .or_default()
                .push(id);
        }
    }
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|&n| n == 1), "some event was sent twice");
    for (user, ids) in per_user {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{user}'s events out of order");
    }
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'delivered' AND attempts = 1")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(delivered, 200);
}

/// What a live dispatcher of `shop` claims towards Iterable.
pub fn scope() -> store::ClaimScope<'static> {
    store::ClaimScope {
        direction: Direction::SegmentToIterable,
        connection: "shop",
        probe: false,
        dry_run: false,
    }
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_the_old_owner_cannot_settle() {
    // Arrange: a dispatcher claims the event and dies; its lease runs out.
    let h = Harness::start().await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    track_bulk_answers(&h, 200).await;
    let lost = store::claim(&h.pool, scope(), "crashed", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(h.drain().await, 0, "a live lease is not claimable");
    sqlx::query("UPDATE outbox SET lease_until = now() - interval '1 second'")
        .execute(&h.pool)
        .await
        .unwrap();

    // Act
    assert_eq!(h.drain().await, 1);

    // Assert
    let e = h.event("m-1").await;
    assert_eq!((e.state.as_str(), e.attempts), ("delivered", 2));
    let late = Settle {
        id: lost[0].id,
        received_at: lost[0].received_at,
        next: Next::Failed,
        reason: Some("late".into()),
        action: None,
    };
    assert_eq!(
        store::settle(&h.pool, scope().queue(), "crashed", &[late])
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.event("m-1").await.state, "delivered");
}

#[tokio::test]
async fn a_users_next_event_waits_while_the_earlier_one_waits_for_a_retry() {
    // Arrange: retries an hour away.
    let h = Harness::with(|s| {
        s.delivery.retry_base_ms = 3_600_000;
        s.delivery.retry_max_secs = 7200;
    })
    .await;
    h.insert(&[
        track("m-1", "u-1", "First"),
        track("m-2", "u-1", "Second"),
        track("m-3", "u-2", "Other user"),
    ])
    .await;
    track_bulk_answers(&h, 500).await;

    // Act
    h.drain().await;

    // Assert: u-1's second event was never claimed; u-2 was not held up.
    let first = h.event("m-1").await;
    assert_eq!((first.state.as_str(), first.attempts), ("pending", 1));
    let second = h.event("m-2").await;
    assert_eq!((second.state.as_str(), second.attempts), ("pending", 0));
    assert_eq!(h.event("m-3").await.attempts, 1);
    let sent: Vec<String> = h
        .received("/api/events/trackBulk")
        .await
        .iter()
        .flat_map(|b| b["events"].as_array().unwrap().clone())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ["m-1", "m-3"]);
    let claimable = store::claim(&h.pool, scope(), "probe", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(claimable.is_empty(), "{claimable:?}");
}

#[tokio::test]
async fn a_batch_that_outlasts_its_lease_keeps_it() {
    // Arrange: a 3 s lease (1 s request timeout), and a rate limit that makes the batch of ten
    // purchases take about 4 s.
    let h = Harness::with(|s| {
        s.delivery.lease_secs = 3;
        s.delivery.request_timeout_ms = 1000;
        s.delivery.rate_limits = [("default".to_string(), 2)].into();
    })
    .await;
    let purchases: Vec<Value> = (0..10)
        .map(|n| {
            json!({"type": "track", "event": "Order Completed", "messageId": format!("p-{n}"),
                        "userId": format!("u-{n}"), "properties": {"order_id": format!("o-{n}"), "total": 1, "products": []}})
        })
        .collect();
    h.insert(&purchases).await;
    Mock::given(method("POST"))
        .and(path("/api/commerce/trackPurchase"))
        .respond_with(ResponseTemplate::new(200))
        .expect(10)
        .mount(&h.iterable)
        .await;

    // Act: a second dispatcher looks after the first lease would have run out.
    let first = worker::drain(&h.pool, &h.settings, &h.clients);
    let second = async {
        tokio::time::sleep(Duration::from_millis(3300)).await;
        worker::drain(&h.pool, &h.settings, &h.clients).await
    };
    let (first, second) = tokio::join!(first, second);

    // Assert
    let rows: Vec<(String, i32, Option<String>)> =
        sqlx::query_as("SELECT state, attempts, state_reason FROM event")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    // The first dispatcher claimed them all (some more than once: a request whose token would
    // come after its lease could safely hold goes back to pending, its attempt given back);
    // the second found nothing to take.
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first >= 10, "{first}");
    assert_eq!(second, 0, "{rows:?}");
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event WHERE state = 'delivered' AND attempts = 1")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(delivered, 10, "{rows:?}");
}

#[tokio::test]
async fn the_worker_loop_delivers_until_cancelled() {
    // Arrange
    let h = Harness::with(|s| s.delivery.workers = 2).await;
    track_bulk_answers(&h, 200).await;
    let (cancel, workers) = h.spawn_workers();

    // Act: events arrive while the workers poll.
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.insert(&[track("m-1", "u-1", "Signed Up")]).await;
    let mut state = String::new();
    for _ in 0..200 {
        state = h.event("m-1").await.state;
        if state == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();

    // Assert
    assert_eq!(state, "delivered");
    tokio::time::timeout(Duration::from_secs(5), workers)
        .await
        .expect("the workers stop when cancelled")
        .unwrap();
}

#[tokio::test]
async fn claims_renewals_and_settles_update_in_place() {
    // Arrange: one backend for the claim and the statistics, so they can be flushed and read
    // right after (PostgreSQL 15 counts HOT updates per backend and publishes them later).
    let h = Harness::start().await;
    let events: Vec<Value> = (0..50)
        .map(|i| track(&format!("m-{i}"), &format!("u-{i}"), "Step"))
        .collect();
    h.insert(&events).await;
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*h.pool.connect_options()).clone())
        .await
        .unwrap();
    // [outbox updates, of which in place, event updates, of which in place]
    let counts = |pool: sqlx::PgPool| async move {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&pool)
            .await
            .unwrap();
        let c = sqlx::query_as::<_, (i64, i64, i64, i64)>(
            "WITH t AS (
                 SELECT relname = 'outbox' AS outbox, n_tup_upd, n_tup_hot_upd
                 FROM pg_stat_user_tables
                 WHERE relname = 'outbox' OR relid IN (
                     SELECT inhrelid FROM pg_inherits WHERE inhparent = 'event'::regclass))
             SELECT coalesce(sum(n_tup_upd) FILTER (WHERE outbox), 0)::bigint,
                    coalesce(sum(n_tup_hot_upd) FILTER (WHERE outbox), 0)::bigint,
                    coalesce(sum(n_tup_upd) FILTER (WHERE NOT outbox), 0)::bigint,
                    coalesce(sum(n_tup_hot_upd) FILTER (WHERE NOT outbox), 0)::bigint
             FROM t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        [c.0, c.1, c.2, c.3]
    };
    let before = counts(one.clone()).await;
    let since = |now: [i64; 4]| -> [i64; 4] { std::array::from_fn(|i| now[i] - before[i]) };

    // Act: a claim of three events, then a renewal of their lease. (Few: an in-place update
    // needs room on the row's page for the new version.)
    let claimed = store::claim(&one, scope(), "me", 3, Duration::from_secs(60))
        .await
        .unwrap();
    let held: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let renewed = store::extend_lease(&one, scope().queue(), "me", &held, Duration::from_secs(60))
        .await
        .unwrap();

    // Assert: six updates of outbox rows, all of them in place: no new entry in any index of
    // the outbox (an index on a column a claim sets would make each claim an insert into
    // every index); and none of the event rows, the audit record, which only a settle updates.
    assert_eq!((claimed.len(), renewed), (3, 3));
    assert_eq!(since(counts(one.clone()).await), [6, 6, 0, 0]);

    // Act: they are delivered.
    let delivered: Vec<Settle> = claimed
        .iter()
        .map(|c| Settle::of(c, Next::Delivered, None, Some("trackEvent".into())))
        .collect();
    let settled = store::settle(&one, scope().queue(), "me", &delivered)
        .await
        .unwrap();

    // Assert: each event row updated once, in place (no index names a column a delivery
    // changes: migration 20261207000500); their outbox rows deleted, not updated.
    assert_eq!(settled, 3);
    assert_eq!(since(counts(one).await), [6, 6, 3, 3]);
}

#[tokio::test]
async fn a_settle_applies_alike_and_differing_outcomes_and_only_to_its_own_events() {
    // Arrange: 24 claimed events; one of them reclaimed by another dispatcher meanwhile.
    let h = Harness::start().await;
    let events: Vec<Value> = (0..24)
        .map(|i| track(&format!("m-{i:02}"), &format!("u-{i}"), "Step"))
        .collect();
    h.insert(&events).await;
    let claimed = store::claim(&h.pool, scope(), "me", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 24);
    sqlx::query(
        "UPDATE outbox o SET lease_owner = 'other' FROM event e
         WHERE e.id = o.event_id AND e.message_id = 'm-00'",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let settle = |c: &store::Claimed, next: Next, reason: Option<String>| Settle {
        id: c.id,
        received_at: c.received_at,
        next,
        reason,
        action: Some("trackEvent".into()),
    };

    // Act: twelve delivered alike (one statement per outcome), then twelve retries each with
    // its own delay and reason (more outcomes than statements: one statement for all).
    let delivered: Vec<Settle> = claimed[..12]
        .iter()
        .map(|c| settle(c, Next::Delivered, None))
        .collect();
    let retried: Vec<Settle> = claimed[12..]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let wait = Duration::from_secs(60 * (i as u64 + 1));
            settle(c, Next::Retry(wait), Some(format!("retry in {wait:?}")))
        })
        .collect();
    let applied = (
        store::settle(&h.pool, scope().queue(), "me", &delivered)
            .await
            .unwrap(),
        store::settle(&h.pool, scope().queue(), "me", &retried)
            .await
            .unwrap(),
    );

    // Assert: all but the reclaimed one applied, each with its own outcome.
    assert_eq!(applied, (11, 12));
    // message_id, state, state_reason, lease_owner, seconds until due (pending ones)
    type Row = (String, String, Option<String>, Option<String>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT message_id, state, state_reason, lease_owner,
                round(extract(epoch FROM next_attempt_at - now()))::float8
         FROM {EVENTS} ORDER BY message_id"
    ))
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        rows[0].1, "pending",
        "the other dispatcher's event is left alone"
    );
    assert_eq!(rows[0].3.as_deref(), Some("other"));
    for row in &rows[1..12] {
        assert_eq!(
            (row.1.as_str(), row.3.as_deref()),
            ("delivered", None),
            "{row:?}"
        );
    }
    for (i, row) in rows[12..].iter().enumerate() {
        let secs = 60.0 * (i as f64 + 1.0);
        assert_eq!(row.1, "pending", "{row:?}");
        assert_eq!(
            row.2.as_deref(),
            Some(format!("retry in {:?}", Duration::from_secs(secs as u64)).as_str())
        );
        let due = row.4.expect("a pending event is in the outbox");
        assert!((due - secs).abs() <= 2.0, "{row:?} due in {secs} s");
    }
}
