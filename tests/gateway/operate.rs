//! Operating the gateway: `gateway audit` and `gateway replay` against a database with known
//! events and a wiremock Iterable, and the backlog gauges after a scripted run.

use crate::delivery::outbox::assert_outbox_is_the_pending_events;
use crate::delivery::{track, Harness};
use gateway::cli::audit::{answer, Question};
use gateway::cli::replay::{execute, preview, Filter};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const TRACK_BULK: &str = "/api/events/trackBulk";

async fn iterable_answers(h: &Harness, status: u16) {
    h.iterable.reset().await;
    let body = if status == 200 {
        json!({"successCount": 1})
    } else {
        json!({"code": "GenericError", "msg": "try later"})
    };
    Mock::given(method("POST"))
        .and(path(TRACK_BULK))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&h.iterable)
        .await;
}

/// `ok-1` (user `ann`) delivered, `bad-1` (no event name) refused before sending (a track
/// without email or userId is sent, as Segment's performBatch sends it).
async fn delivered_and_refused() -> Harness {
    let h = Harness::start().await;
    iterable_answers(&h, 200).await;
    h.insert(&[
        track("ok-1", "ann", "Signed Up"),
        json!({"type": "track", "anonymousId": "anon-7", "messageId": "bad-1"}),
    ])
    .await;
    h.drain_all().await;
    h
}

fn dead_filter() -> Filter {
    Filter {
        connection: Some("shop".into()),
        state: vec!["dead".into()],
        ..Filter::default()
    }
}

/// The ids Iterable received in trackBulk bodies, in order.
async fn track_ids(h: &Harness) -> Vec<String> {
    h.received(TRACK_BULK)
        .await
        .iter()
        .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_replay_of_dead_events_sends_each_once_with_the_same_ids_and_is_audited() {
    // Arrange: three events die against a failing Iterable (5 attempts each).
    let h = Harness::start().await;
    iterable_answers(&h, 500).await;
    let events: Vec<Value> = (1..=3)
        .map(|i| track(&format!("m-{i}"), &format!("u-{i}"), "Signed Up"))
        .collect();
    h.insert(&events).await;
    h.drain_all().await;
    for i in 1..=3 {
        let e = h.event(&format!("m-{i}")).await;
        assert_eq!((e.state.as_str(), e.attempts), ("dead", 5), "{e:?}");
    }
    iterable_answers(&h, 200).await;

    // Act: the dry run changes nothing; the replay reopens them; the dispatcher sends.
    let (count, listed) = preview(&h.pool, &dead_filter()).await.unwrap();
    assert_eq!(count, 3);
    assert_eq!(listed.len(), 3);
    assert_eq!(
        h.event("m-1").await.state,
        "dead",
        "a dry run changes nothing"
    );
    let done = execute(
        &h.pool,
        &dead_filter(),
        "ops@test",
        Some("Iterable outage over"),
    )
    .await
    .unwrap();
    // Reopened: back in the outbox, each once.
    assert_outbox_is_the_pending_events(&h.pool).await;
    h.drain_all().await;

    // Assert: each sent once more, with its messageId as Iterable's id.
    assert_eq!(done.events, 3);
    let mut ids = track_ids(&h).await;
    ids.sort();
    assert_eq!(ids, vec!["m-1", "m-2", "m-3"], "each once, same ids");
    for i in 1..=3 {
        let e = h.event(&format!("m-{i}")).await;
        assert_eq!(e.state, "delivered");
        let attempts = h.attempts(&format!("m-{i}")).await;
        assert_eq!(attempts.len(), 6, "the five before the replay are kept");
        assert_eq!(attempts[5].outcome, "delivered");
    }
    let (who, events, filter, note): (String, i32, Value, Option<String>) =
        sqlx::query_as("SELECT requested_by, events, filter, note FROM replay WHERE id = $1")
            .bind(done.replay_id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!((who.as_str(), events), ("ops@test", 3));
    assert_eq!(filter["state"], json!(["dead"]));
    assert_eq!(filter["connection"], json!("shop"));
    assert_eq!(note.as_deref(), Some("Iterable outage over"));
    let previous: Vec<(String, i32)> = sqlx::query_as(
        "SELECT previous_state, previous_attempts FROM replay_event WHERE replay_id = $1",
    )
    .bind(done.replay_id)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(previous, vec![("dead".to_string(), 5); 3]);

    // The audit shows both generations, and the replay.
    let (text, found) = answer(
        &h.pool,
        &Question::Event {
            message_id: "m-2".into(),
        },
        false,
    )
    .await
    .unwrap();
    assert!(found);
    assert!(text.contains("state delivered"), "{text}");
    assert!(text.contains("replays 1"), "{text}");
    assert!(
        text.contains(&format!("replayed: replay {}", done.replay_id)),
        "{text}"
    );
    let gens: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(TRACK_BULK) && l.trim_start().starts_with(char::is_numeric))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(gens, vec!["0", "0", "0", "0", "0", "1"], "{text}");

    // Nothing matches any more: a second replay takes nothing.
    assert_eq!(preview(&h.pool, &dead_filter()).await.unwrap().0, 0);
}

#[tokio::test]
async fn replay_takes_states_by_name_refuses_open_ones_and_filters_by_user_and_reason() {
    let h = delivered_and_refused().await;
    let pool = &h.pool;
    let by = |f: Filter| async move { preview(pool, &f).await.map(|(n, _)| n) };
    let states = |s: &[&str]| Filter {
        state: s.iter().map(|s| s.to_string()).collect(),
        ..Filter::default()
    };
    assert_eq!(by(states(&["delivered"])).await.unwrap(), 1);
    assert_eq!(by(states(&["failed"])).await.unwrap(), 1);
    // A state this schema does not have (dispatch adds dry_run) is a name like any other.
    assert_eq!(by(states(&["dry_run"])).await.unwrap(), 0);
    let e = by(states(&["pending"])).await.unwrap_err().to_string();
    assert!(e.contains("still being delivered"), "{e}");
    let reason = Filter {
        reason: Some("PAYLOAD_VALIDATION_FAILED".into()),
        ..states(&["failed", "delivered"])
    };
    assert_eq!(by(reason).await.unwrap(), 1);
    let user = Filter {
        user: Some("ANN@example.com".into()),
        ..states(&["failed", "delivered"])
    };
    assert_eq!(by(user).await.unwrap(), 1, "by email, any case");
    let ids = Filter {
        message_id: vec!["ok-1".into(), "bad-1".into()],
        ..states(&["failed", "delivered"])
    };
    assert_eq!(by(ids).await.unwrap(), 2);
    let since = Filter {
        since: Some("1h".into()),
        until: Some("30m".into()),
        ..states(&["failed", "delivered"])
    };
    assert_eq!(
        by(since).await.unwrap(),
        0,
        "received in the last minute, not before"
    );
}

#[tokio::test]
async fn each_audit_question_answers_from_known_events() {
    // Arrange: one delivered, one refused before sending, one dead, one waiting.
    let h = delivered_and_refused().await;
    iterable_answers(&h, 500).await;
    h.insert(&[track("dead-1", "bob", "Signed Up")]).await;
    h.drain_all().await;
    h.insert(&[track("wait-1", "cy", "Signed Up")]).await;
    sqlx::query(
        "UPDATE outbox o SET next_attempt_at = now() + interval '1 hour'
         FROM event e WHERE e.id = o.event_id AND e.message_id = 'wait-1'",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let pool = &h.pool;
    let ask = |q: Question, json: bool| async move { answer(pool, &q, json).await.unwrap() };

    // event
    let (text, found) = ask(
        Question::Event {
            message_id: "dead-1".into(),
        },
        false,
    )
    .await;
    assert!(found);
    assert!(text.contains("state dead"), "{text}");
    let attempt_lines = text
        .lines()
        .filter(|l| l.contains(TRACK_BULK) && l.trim_start().starts_with(char::is_numeric));
    assert_eq!(attempt_lines.count(), 5, "{text}");
    assert!(
        text.contains("500") && text.contains("GenericError"),
        "the partner's answer: {text}"
    );
    let (text, found) = ask(
        Question::Event {
            message_id: "nope".into(),
        },
        false,
    )
    .await;
    assert!(
        !found && text.contains("no event has messageId \"nope\""),
        "{text}"
    );
    let (text, _) = ask(
        Question::Event {
            message_id: "ok-1".into(),
        },
        true,
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[0]["event"]["state"], "delivered");
    assert_eq!(v[0]["attempts"][0]["status"], 200);
    assert_eq!(
        v[0]["attempts"][0]["request_body"]["events"][0]["id"], "ok-1",
        "the mapped request"
    );

    // user: by user key and by email
    let (text, found) = ask(Question::User { user: "ann".into() }, false).await;
    assert!(
        found && text.contains("ok-1") && text.contains("delivered"),
        "{text}"
    );
    let (text, _) = ask(
        Question::User {
            user: "bob@example.com".into(),
        },
        true,
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["message_id"], "dead-1");

    // failures: the refusal before sending and the partner's 500s, by connection
    let (text, _) = ask(
        Question::Failures {
            since: "1h".into(),
            connection: None,
        },
        true,
    )
    .await;
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    let refused = rows
        .iter()
        .find(|r| r["outcome"] == "refused")
        .expect("the refusal");
    assert_eq!(refused["connection"], "shop");
    assert_eq!(refused["endpoint"], "(not sent)");
    assert_eq!(refused["reason"], "PAYLOAD_VALIDATION_FAILED");
    assert_eq!(refused["events"], 1);
    let dead = rows
        .iter()
        .find(|r| r["outcome"] == "dead")
        .expect("the last 500");
    assert_eq!(
        (dead["endpoint"].as_str(), dead["status"].as_i64()),
        (Some(TRACK_BULK), Some(500))
    );
    assert_eq!(dead["reason"], "GenericError", "the partner's code");
    let retried = rows
        .iter()
        .find(|r| r["outcome"] == "retry")
        .expect("the retried 500s");
    assert_eq!(retried["attempts"], 4);
    let (text, _) = ask(
        Question::Failures {
            since: "1h".into(),
            connection: Some("other".into()),
        },
        false,
    )
    .await;
    assert_eq!(text, "no failures in the last 1h\n");
    let (text, _) = ask(
        Question::Failures {
            since: "1h".into(),
            connection: None,
        },
        false,
    )
    .await;
    assert!(text.starts_with("connection  direction"), "{text}");
    assert!(
        text.contains("(not sent)") && text.contains("PAYLOAD_VALIDATION_FAILED"),
        "{text}"
    );

    // states, with direction
    let (text, _) = ask(Question::States, true).await;
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    let states: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["direction"], "segment_to_iterable");
            (
                r["connection"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
                r["events"].as_i64().unwrap(),
            )
        })
        .collect();
    let want = |s: &str| ("shop".to_string(), s.to_string(), 1);
    assert_eq!(
        states,
        vec![
            want("dead"),
            want("delivered"),
            want("failed"),
            want("pending")
        ]
    );

    // backlog
    let (text, _) = ask(Question::Backlog, false).await;
    assert!(
        text.contains("shop") && text.contains("segment_to_iterable"),
        "{text}"
    );
    let (text, _) = ask(Question::Backlog, true).await;
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0]["events"].as_i64(),
            rows[0]["waiting_to_retry"].as_i64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn the_backlog_gauges_show_each_connections_waiting_events_and_their_age() {
    // Arrange: two waiting events of a connection named for this test only (the recorder is
    // process-wide), the older received 2 minutes ago; nothing for a second connection.
    let h = Harness::start().await;
    h.insert(&[track("g-1", "ann", "A"), track("g-2", "bob", "B")])
        .await;
    // (The event rows and their outbox rows alike.)
    for (table, id) in [("event", "id"), ("outbox", "event_id")] {
        sqlx::query(&format!(
            "UPDATE {table} SET connection = 'gauges',
                 received_at = received_at - CASE WHEN m = 'g-1' THEN interval '2 minutes'
                                                  ELSE interval '0' END
             FROM (SELECT id AS event, message_id AS m FROM event
                   WHERE message_id IN ('g-1', 'g-2')) g
             WHERE {id} = g.event"
        ))
        .execute(&h.pool)
        .await
        .unwrap();
    }
    let handle = gateway::telemetry::metrics_handle();
    let mut sampler =
        gateway::telemetry::BacklogSampler::new(["gauges".to_string(), "gauges-idle".to_string()]);

    // Act
    sampler.sample(&h.pool).await.unwrap();
    let text = handle.render();

    // Assert
    let value = |name: &str, conn: &str, dir: &str| -> f64 {
        let prefix = format!("{name}{{connection=\"{conn}\",direction=\"{dir}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
            .parse()
            .unwrap()
    };
    let s2i = "segment_to_iterable";
    assert_eq!(value("gateway_backlog_events", "gauges", s2i), 2.0);
    let age = value("gateway_oldest_pending_seconds", "gauges", s2i);
    assert!((119.0..180.0).contains(&age), "{age}");
    assert_eq!(value("gateway_backlog_events", "gauges-idle", s2i), 0.0);
    assert_eq!(
        value("gateway_backlog_events", "gauges", "iterable_to_segment"),
        0.0
    );
    assert!(
        text.contains("# HELP gateway_backlog_events Events waiting for delivery"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gateway_oldest_pending_seconds gauge"),
        "{text}"
    );

    // Delivered: the gauges go back to 0.
    sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE connection = 'gauges' RETURNING event_id)
         UPDATE event SET state = 'delivered' WHERE id IN (SELECT event_id FROM gone)",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    sampler.sample(&h.pool).await.unwrap();
    let text = handle.render();
    let again = |name: &str| {
        text.lines()
            .any(|l| l == format!("{name}{{connection=\"gauges\",direction=\"{s2i}\"}} 0"))
    };
    assert!(
        again("gateway_backlog_events") && again("gateway_oldest_pending_seconds"),
        "{text}"
    );
}

/// `gateway migrate` with its own cluster says, in one line each, that it created and started it
/// and stopped it again; with a cluster already running, that it reused it and left it running.
/// Logs on a pipe carry no colour codes.
#[test]
fn the_own_cluster_says_whether_it_was_created_started_reused_or_left_running() {
    let work = tempfile::tempdir().unwrap();
    let pg = work.path().join("pg");
    std::fs::write(
        work.path().join("local.toml"),
        format!(
            "[database]\ndir = {:?}\nport = 0\n",
            pg.display().to_string()
        ),
    )
    .unwrap();
    let migrate = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["migrate", "--config", work.path().to_str().unwrap()])
            .env_remove("RUST_LOG")
            .env_remove("GATEWAY_ENVIRONMENT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    };
    let first = migrate();
    assert!(!first.contains('\u{1b}'), "no ANSI on a pipe: {first:?}");
    assert_eq!(
        first
            .matches("Created and started the gateway's own PostgreSQL.")
            .count(),
        1,
        "{first}"
    );
    assert_eq!(
        first
            .matches("Stopped the gateway's own PostgreSQL.")
            .count(),
        1,
        "{first}"
    );
    assert!(
        !first.contains("_sqlx_migrations"),
        "PostgreSQL's notices are quiet: {first}"
    );
    let second = migrate();
    assert!(
        second.contains("Started the gateway's own PostgreSQL."),
        "{second}"
    );
    assert!(!second.contains("Created"), "{second}");
    // Running before (as after a kill -9 of the gateway): reused, and left running.
    let cluster = gateway::database::LocalCluster::ensure(&pg, None).unwrap();
    let third = migrate();
    cluster.stop().unwrap();
    assert!(
        third.contains("Reusing the gateway's own PostgreSQL, already running"),
        "{third}"
    );
    assert!(
        third.contains("Left the gateway's own PostgreSQL running"),
        "{third}"
    );
    assert!(!third.contains("Stopped"), "{third}");
}

/// The `gateway replay` and `gateway audit` binaries against a gateway's database: the dry run
/// changes nothing, a large set without a terminal is refused unless --yes, and the replay is
/// recorded once.
#[tokio::test]
async fn the_replay_command_asks_before_large_sets_and_refuses_without_a_terminal() {
    let app = crate::app::spawn_app().await;
    let batch: Vec<Value> = (1..=3)
        .map(|i| json!({"type": "track", "anonymousId": format!("a-{i}"), "messageId": format!("r-{i}")}))
        .collect();
    assert_eq!(
        app.post_v1("batch", &json!({"batch": batch}))
            .await
            .status(),
        200
    );
    app.drain_until_settled().await;
    let overrides = tempfile::tempdir().unwrap();
    let url = app.db.url();
    let gateway = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .args(["--config", overrides.path().to_str().unwrap()])
            .env("GATEWAY__DATABASE__URL", &url)
            .env_remove("GATEWAY_ENVIRONMENT")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let replays = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM replay")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let reason = ["--reason", "PAYLOAD_VALIDATION_FAILED"];

    let (code, out, err) = gateway(&[&["replay", "--dry-run", "--json"][..], &reason].concat());
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["dry_run"].as_bool(), v["events"].as_i64()),
        (Some(true), Some(3))
    );
    assert_eq!(v["first"][0]["message_id"], "r-1");

    let (code, _, err) = gateway(&[&["replay", "--confirm-above", "2"][..], &reason].concat());
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "3 events match, more than --confirm-above 2; without a terminal to ask, pass --yes"
        ),
        "{err}"
    );
    assert_eq!(replays().await, 0, "nothing replayed");

    let (code, out, err) =
        gateway(&[&["replay", "--confirm-above", "2", "--yes"][..], &reason].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("replay 1: 3 events back to pending"),
        "{out}"
    );
    assert_eq!(replays().await, 1);

    let (code, out, _) = gateway(&["audit", "event", "r-2", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["event"]["state"], "pending");
    assert_eq!(v[0]["replays"][0]["id"], 1);
    let (code, out, _) = gateway(&["audit", "event", "nope"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(1), "no event has messageId \"nope\"\n")
    );
}

/// The defaults are in the binary: from a directory without `config/`, `gateway config` works
/// (so does `serve`), and a variable still overrides them.
#[test]
fn the_configuration_loads_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("config")
        .current_dir(elsewhere.path())
        .env_remove("GATEWAY_CONFIG_DIR")
        .env_remove("GATEWAY_ENVIRONMENT")
        .env("GATEWAY__APPLICATION__PORT", "9001")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("# environment \"local\", configuration built-in defaults only"),
        "{stdout}"
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("application.port = 9001").ends_with("# env GATEWAY__APPLICATION__PORT"),
        "{stdout}"
    );
    assert!(
        line("application.host = \"127.0.0.1\"").ends_with("# default"),
        "{stdout}"
    );
    assert!(
        line("connections.0.write_key = \"<redacted>\"").ends_with("# default"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("demo-write-key"),
        "secrets are redacted: {stdout}"
    );
}
