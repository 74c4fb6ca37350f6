//! `gateway replay`: sends chosen events again. The events go back to `pending` and the
//! dispatchers send them as any other: mapped again from the stored payload, so they carry the
//! same Iterable ids (trackEvent `id` = messageId, trackPurchase `id` = the order id) and Iterable
//! deduplicates what it had already taken. Their earlier attempts stay in `delivery_attempt`; the
//! replay is recorded once in `replay` (who, when, filter, count), and each event it took in
//! `replay_event` with its previous state, reason and attempts. The attempt counter starts again
//! so that the retry budget (`delivery.max_attempts`) applies anew; `audit event` shows every
//! attempt with its generation (0 before any replay, n after the n-th).

use super::table::{cell, parse_time, time, Table};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// States that are in progress: replaying them would race the dispatcher.
const OPEN_STATES: &[&str] = &["pending", "in_flight"];
/// How many matching events `--dry-run` lists.
const LISTED: i64 = 20;

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: super::serve::ConfigArgs,
    #[command(flatten)]
    pub filter: Filter,
    /// Say how many and which events it would take, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask before replaying more than --confirm-above events.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Ask (or, without a terminal, refuse unless --yes) above this many events.
    #[arg(long, default_value_t = 100)]
    pub confirm_above: i64,
    /// Why, kept with the replay's record.
    #[arg(long)]
    pub note: Option<String>,
}

/// Which events. Every given filter must hold.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Filter {
    /// Only this connection.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// segment_to_iterable or iterable_to_segment.
    #[arg(long, value_parser = ["segment_to_iterable", "iterable_to_segment"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Final states to take, comma-separated (any settled state the database knows: dead, failed,
    /// delivered, skipped, dry_run, ...).
    #[arg(long, value_delimiter = ',', default_value = "dead,failed")]
    pub state: Vec<String>,
    /// The failure reason: its code (PAYLOAD_VALIDATION_FAILED) or any part of its text.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Received at or after: a duration ago (2h) or an RFC 3339 time.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Received before: a duration ago (30m) or an RFC 3339 time.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// These messageIds (repeat or comma-separate).
    #[arg(long = "message-id", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_id: Vec<String>,
    /// A user: userId, anonymousId or email.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A filter with its times resolved, checked.
struct Resolved<'a> {
    f: &'a Filter,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Filter {
    fn resolve(&self) -> anyhow::Result<Resolved<'_>> {
        if self.state.is_empty() {
            anyhow::bail!("--state needs at least one state");
        }
        if let Some(s) = self
            .state
            .iter()
            .find(|s| OPEN_STATES.contains(&s.as_str()))
        {
            anyhow::bail!(
                "--state {s}: {s} events are still being delivered; replay takes settled events \
                 (dead, failed, delivered, skipped, ...)"
            );
        }
        let now = Utc::now();
        let at = |s: &Option<String>| {
            s.as_deref()
                .map(|s| parse_time(s, now))
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(Resolved {
            f: self,
            since: at(&self.since)?,
            until: at(&self.until)?,
        })
    }
}

/// The WHERE clause of a filter ($1..$9), shared by the count, the listing and the replay.
const MATCHES: &str = "e.state = ANY ($1)
    AND ($2::text IS NULL OR e.connection = $2)
    AND ($3::text IS NULL OR e.direction = $3)
    AND ($4::text IS NULL OR gateway_reason_key(e.state_reason) = $4
                          OR strpos(e.state_reason, $4) > 0)
    AND ($5::timestamptz IS NULL OR e.received_at >= $5)
    AND ($6::timestamptz IS NULL OR e.received_at < $6)
    AND (cardinality($7::text[]) = 0 OR e.message_id = ANY ($7))
    AND ($8::text IS NULL
         OR e.user_key = ANY (gateway_user_keys($8))
         OR e.email = lower($8))";

fn bind<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    r: &'q Resolved<'q>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(&r.f.state)
        .bind(&r.f.connection)
        .bind(&r.f.direction)
        .bind(&r.f.reason)
        .bind(r.since)
        .bind(r.until)
        .bind(&r.f.message_id)
        .bind(&r.f.user)
}

/// An event a replay would take.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Candidate {
    pub event_id: i64,
    pub received_at: DateTime<Utc>,
    pub connection: String,
    pub direction: String,
    pub message_id: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub attempts: i32,
}

/// How many events match, and the first [`LISTED`] of them.
pub async fn preview(pool: &PgPool, filter: &Filter) -> anyhow::Result<(i64, Vec<Candidate>)> {
    let r = filter.resolve()?;
    let (count,): (i64,) = bind(
        sqlx::query_as(&format!("SELECT count(*) FROM event e WHERE {MATCHES}")),
        &r,
    )
    .fetch_one(pool)
    .await?;
    let listed = bind(
        sqlx::query_as(&format!(
            "SELECT e.id AS event_id, e.received_at, e.connection, e.direction, e.message_id,
                    e.state, e.state_reason, e.attempts
             FROM event e WHERE {MATCHES} ORDER BY e.id LIMIT {LISTED}"
        )),
        &r,
    )
    .fetch_all(pool)
    .await?;
    Ok((count, listed))
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub replay_id: i64,
    pub events: i64,
}

/// Puts the matching events back to `pending` (due now, attempt counter restarted) and records
/// the replay, in one transaction. Events a dispatcher holds are not taken.
pub async fn execute(
    pool: &PgPool,
    filter: &Filter,
    who: &str,
    note: Option<&str>,
) -> anyhow::Result<Replayed> {
    let r = filter.resolve()?;
    let mut tx = pool.begin().await?;
    let (replay_id,): (i64,) = sqlx::query_as(
        "INSERT INTO replay (requested_by, filter, events, note) VALUES ($1, $2, 0, $3) RETURNING id",
    )
    .bind(who)
    .bind(json!(filter))
    .bind(note)
    .fetch_one(&mut *tx)
    .await?;
    let (events,): (i64,) = bind(
        sqlx::query_as(&format!(
            "WITH picked AS (
                 SELECT e.id, e.received_at, e.state, e.state_reason, e.attempts FROM event e
                 WHERE {MATCHES} FOR UPDATE SKIP LOCKED),
             saved AS (
                 INSERT INTO replay_event (replay_id, event_id, event_received_at, previous_state,
                                           previous_reason, previous_attempts)
                 SELECT $9, id, received_at, state, state_reason, attempts FROM picked),
             reopened AS (
                 UPDATE event e
                 SET state = 'pending', state_reason = 'replay ' || $9, attempts = 0,
                     updated_at = now()
                 FROM picked WHERE e.id = picked.id AND e.received_at = picked.received_at
                 RETURNING e.id, e.received_at, e.connection, e.direction, e.user_key),
             -- Pending again: back in the outbox, due now, with a fresh attempt budget.
             queued AS (
                 INSERT INTO outbox (event_id, received_at, connection, direction, lane)
                 SELECT id, received_at, connection, direction,
                        gateway_lane(connection, direction, user_key)
                 FROM reopened)
             SELECT count(*) FROM reopened"
        )),
        &r,
    )
    .bind(replay_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE replay SET events = $2 WHERE id = $1")
        .bind(replay_id)
        .bind(events as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Replayed { replay_id, events })
}

/// `user@host` of whoever runs the command.
pub fn operator() -> String {
    let user = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .or_else(user_of_this_process)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("{user}@{host}")
}

/// The name of this process's user in /etc/passwd (when `USER` is not set, e.g. under sudo -i
/// or in a container).
fn user_of_this_process() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
    })
}

pub fn preview_text(count: i64, listed: &[Candidate]) -> String {
    let mut out = format!(
        "{count} event{} would be replayed{}\n",
        if count == 1 { "" } else { "s" },
        if count > listed.len() as i64 {
            format!(" (the first {} listed)", listed.len())
        } else {
            String::new()
        }
    );
    if listed.is_empty() {
        return out;
    }
    let mut t = Table::new(&[
        "event",
        "received",
        "connection",
        "direction",
        "messageId",
        "state",
        "attempts",
        "reason",
    ]);
    for c in listed {
        t.row(vec![
            c.event_id.to_string(),
            time(&c.received_at),
            c.connection.clone(),
            c.direction.clone(),
            cell(&c.message_id, 40),
            c.state.clone(),
            c.attempts.to_string(),
            cell(c.state_reason.as_deref().unwrap_or("-"), 60),
        ]);
    }
    out.push_str(&t.render());
    out
}

pub fn run(args: ReplayArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let settings = args.config.load()?;
    super::serve::with_database(&settings, |pool| async move {
        let (count, listed) = preview(&pool, &args.filter).await?;
        if args.dry_run || count == 0 {
            if as_json {
                println!(
                    "{}",
                    json!({"dry_run": true, "events": count, "first": listed})
                );
            } else {
                print!("{}", preview_text(count, &listed));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if count > args.confirm_above && !args.yes {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "{count} events match, more than --confirm-above {}; without a terminal to ask, \
                     pass --yes (see them first with --dry-run)",
                    args.confirm_above
                );
            }
            print!("{}", preview_text(count, &listed));
            print!("Replay these {count} events? [y/N] ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                println!("nothing replayed");
                return Ok(ExitCode::from(1));
            }
        }
        let done = execute(&pool, &args.filter, &operator(), args.note.as_deref()).await?;
        if as_json {
            println!("{}", json!(done));
        } else {
            println!(
                "replay {}: {} event{} back to pending; the dispatchers send them now \
                 (gateway audit event <messageId> shows the new attempts)",
                done.replay_id,
                done.events,
                if done.events == 1 { "" } else { "s" }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
