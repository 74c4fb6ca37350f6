//! A database outage under concurrent requests, on a cluster of the test's own: stopped
//! (`pg_ctl stop`) and started again, then frozen (SIGSTOP of the postmaster and its backends)
//! and thawed. It checks that a 200 is answered only for what is committed, that 503s come fast
//! once the outage is known, that the audit log has one row for every request with what its
//! client got, and that ingest resumes by itself.

use crate::app::{test_settings, WRITE_KEY};
use gateway::database::{ClusterOptions, LocalCluster};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::MockServer;

/// One request of the load: its messageId, the status it got, how long it took, and when.
#[derive(Debug, Clone)]
struct Answer {
    message_id: String,
    status: u16,
    took: Duration,
    at: Instant,
}

/// The postmaster and every process it started.
fn server_processes(dir: &Path) -> Vec<u32> {
    let pid_file = std::fs::read_to_string(dir.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[u32], sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pids:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn wait_for_a_200(answers: &Mutex<Vec<Answer>>, after: Instant, what: &str) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(a) = answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at > after && a.status == 200)
            .min_by_key(|a| a.at)
        {
            return a.at - after;
        }
        assert!(Instant::now() < deadline, "no 200 within 20 s after {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_or_frozen_database_gets_fast_503s_and_the_audit_matches_every_answer() {
    // Arrange: a cluster of our own, and the gateway on it.
    let cluster = tokio::task::spawn_blocking(LocalCluster::temporary)
        .await
        .unwrap()
        .expect("a temporary cluster");
    let (port, dir): (u16, PathBuf) = (cluster.port(), cluster.dir().to_path_buf());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE gateway")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&cluster.url("gateway"))
        .await
        .unwrap();
    gateway::database::migrate(&pool).await.unwrap();
    let (iterable, segment) = (MockServer::start().await, MockServer::start().await);
    let mut settings = test_settings(&iterable, &segment);
    settings.database.commit_timeout_ms = 800;
    settings.database.probe_interval_ms = 200;
    settings.database.probe_timeout_ms = 300;
    let app = gateway::startup::Application::build(settings, pool.clone()).unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let api = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Act: load from 8 clients throughout.
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = vec![];
    for c in 0..8 {
        let (api, address, answers, stop) =
            (api.clone(), address.clone(), answers.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let message_id = format!("o-{c}-{n}");
                let at = Instant::now();
                let res = api
                    .post(format!("{address}/v1/track"))
                    .basic_auth(WRITE_KEY, Some(""))
                    .json(&json!({"type": "track", "event": "E", "userId": format!("u{c}"), "messageId": message_id}))
                    .send()
                    .await
                    .expect("the gateway answers every request");
                let status = res.status().as_u16();
                if status == 503 {
                    assert!(res.headers().contains_key("retry-after"));
                }
                answers.lock().unwrap().push(Answer {
                    message_id,
                    status,
                    took: at.elapsed(),
                    at,
                });
                if status == 503 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Stopped, then started again on the same port.
    let stopped_at = Instant::now();
    let (d, c) = (dir.clone(), cluster);
    let cluster = tokio::task::spawn_blocking(move || {
        c.stop().unwrap();
        c
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ready = api.get(format!("{address}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let reason = ready.json::<serde_json::Value>().await.unwrap()["reason"].clone();
    assert!(
        reason.as_str().unwrap().contains("database down"),
        "{reason}"
    );
    let metrics = api
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_database_up 0"),
        "the gauge says down"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted_at = Instant::now();
    let restarted = tokio::task::spawn_blocking(move || {
        LocalCluster::ensure_with(
            &d,
            &ClusterOptions {
                port: Some(port),
                durable: false,
            },
        )
        .unwrap()
    })
    .await
    .unwrap();
    let back_after_restart = wait_for_a_200(&answers, restarted_at, "the restart").await;

    // 2. Frozen, then thawed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = server_processes(&dir);
    let frozen_at = Instant::now();
    signal(&pids, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let thawed_at = Instant::now();
    signal(&pids, "CONT");
    let back_after_thaw = wait_for_a_200(&answers, thawed_at, "the thaw").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Writes that were stuck in the frozen server finish, and are re-recorded as 503.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = api
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_database_up 1"),
        "the gauge says up again"
    );

    // Assert: the audit says for every request what its client got.
    let answers = answers.lock().unwrap().clone();
    let rows: Vec<(String, i16)> = sqlx::query_as(
        "SELECT e.message_id, r.status FROM event e JOIN inbound_request r ON r.id = e.request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let recorded: HashMap<String, i16> = rows.into_iter().collect();
    let mut problems = vec![];
    for a in &answers {
        match (a.status, recorded.get(&a.message_id)) {
            (200, Some(200)) => {}
            (503, None) | (503, Some(503)) => {}
            (s, r) => problems.push(format!("{} answered {s}, recorded {r:?}", a.message_id)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches: {:?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    // And every request has exactly one row, with the status its client got (the 503s answered
    // while the database was down are written once it is back).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (by_request, requests) = loop {
        let rows: Vec<(Vec<u8>, i16)> = sqlx::query_as("SELECT body, status FROM inbound_request")
            .fetch_all(&pool)
            .await
            .unwrap();
        let mut by_request: HashMap<String, Vec<i16>> = HashMap::new();
        for (body, status) in &rows {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            by_request
                .entry(v["messageId"].as_str().unwrap().to_string())
                .or_default()
                .push(*status);
        }
        if rows.len() >= answers.len() || Instant::now() > deadline {
            break (by_request, rows.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unaudited: Vec<_> = answers
        .iter()
        .filter(|a| by_request.get(&a.message_id) != Some(&vec![a.status as i16]))
        .map(|a| {
            (
                a.message_id.clone(),
                a.status,
                by_request.get(&a.message_id),
            )
        })
        .collect();
    assert!(
        unaudited.is_empty(),
        "{} answers without their one row: {:?}",
        unaudited.len(),
        &unaudited[..unaudited.len().min(20)]
    );
    assert_eq!(requests, answers.len(), "one row per request");
    let (reconciled, late): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE error_message LIKE 'answered 503: the commit did not complete%'),
                count(*) FILTER (WHERE error_message LIKE 'answered 503 at %')
           FROM inbound_request WHERE status = 503",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let mut fast: Vec<Duration> = vec![];
    let mut all_503: Vec<Duration> = vec![];
    // Requests sent while the outage was known (from 1 s into it until it ended).
    let known = |at: Instant| {
        (at > stopped_at + Duration::from_secs(1) && at < restarted_at)
            || (at > frozen_at + Duration::from_secs(1) && at < thawed_at)
    };
    for a in answers.iter().filter(|a| a.status == 503) {
        all_503.push(a.took);
        if known(a.at) {
            fast.push(a.took);
        }
    }
    all_503.sort();
    fast.sort();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    eprintln!(
        "outage: {} requests, {ok} answered 200 (all committed), {} answered 503; \
         503 latency over all: p50 {:?} p99 {:?} max {:?}; while the outage was known ({}): p50 {:?} p99 {:?} max {:?}; \
         first 200 after the restart {back_after_restart:?}, after the thaw {back_after_thaw:?}; \
         committed after their 503 and re-recorded as 503: {reconciled}; recorded once the database was back: {late}",
        answers.len(),
        all_503.len(),
        percentile(&all_503, 0.5),
        percentile(&all_503, 0.99),
        all_503.last().copied().unwrap_or_default(),
        fast.len(),
        percentile(&fast, 0.5),
        percentile(&fast, 0.99),
        fast.last().copied().unwrap_or_default(),
    );
    assert!(ok > 0 && !fast.is_empty());
    // Correctness bounds only (the figures are measured, not asserted): no 503 waits past the
    // commit timeout by much, and once the outage is known they do not wait for it at all.
    assert!(
        *all_503.last().unwrap() < Duration::from_millis(1500),
        "{:?}",
        all_503.last()
    );
    assert!(
        percentile(&fast, 0.99) < Duration::from_secs(1),
        "{:?}",
        percentile(&fast, 0.99)
    );

    pool.close().await;
    drop(restarted);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
