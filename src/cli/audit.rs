//! `gateway audit`: the operator's questions answered from the audit log, as tables (or JSON
//! with `--json`). The SQL lives in `audit::queries`.

use super::table::{cell, opt, parse_duration, time, Table};
use crate::audit::queries::{self, AttemptRow, EventRow};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub config: super::serve::ConfigArgs,
    /// JSON instead of tables (one document on standard output).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub question: Question,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Question {
    /// One event by messageId: its state and why, and every attempt with the partner's answer.
    Event { message_id: String },
    /// A user's events (by userId, anonymousId or email), newest first.
    User { user: String },
    /// Failures by connection, endpoint and reason, refusals before sending included.
    Failures {
        /// How far back: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        since: String,
        #[arg(long)]
        connection: Option<String>,
    },
    /// Events by state, per connection and direction.
    States,
    /// What waits for delivery, per connection and direction, and how old the oldest is.
    Backlog,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let settings = args.config.load()?;
    super::serve::with_database(&settings, |pool| async move {
        let (text, found) = answer(&pool, &args.question, args.json).await?;
        print!("{text}");
        Ok(if found {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// The answer as printed, and whether anything was found (`event` and `user` exit 1 when not).
pub async fn answer(pool: &PgPool, q: &Question, as_json: bool) -> anyhow::Result<(String, bool)> {
    Ok(match q {
        Question::Event { message_id } => {
            let events = queries::events_by_message_id(pool, message_id).await?;
            let found = !events.is_empty();
            let mut detailed = Vec::new();
            for e in events {
                let attempts = queries::attempts(pool, e.event_id).await?;
                let replays = queries::replays_of(pool, e.event_id).await?;
                detailed.push((e, attempts, replays));
            }
            if as_json {
                let v: Vec<Value> = detailed
                    .iter()
                    .map(|(e, a, r)| json!({"event": e, "attempts": a, "replays": r}))
                    .collect();
                (json_text(&json!(v)), found)
            } else if !found {
                (format!("no event has messageId {message_id:?}\n"), false)
            } else {
                let mut out = String::new();
                for (e, attempts, replays) in &detailed {
                    out.push_str(&event_text(e, attempts));
                    for r in replays {
                        out.push_str(&format!(
                            "  replayed: replay {} at {} by {} ({})\n",
                            r.id,
                            time(&r.requested_at),
                            r.requested_by,
                            r.filter
                        ));
                    }
                    out.push('\n');
                }
                (out, true)
            }
        }
        Question::User { user } => {
            let events = queries::events_by_user(pool, user).await?;
            let found = !events.is_empty();
            if as_json {
                (json_text(&json!(events)), found)
            } else if !found {
                (
                    format!("no event of user {user:?} (userId, anonymousId or email)\n"),
                    false,
                )
            } else {
                let mut t = Table::new(&[
                    "received",
                    "connection",
                    "direction",
                    "type",
                    "messageId",
                    "state",
                    "attempts",
                    "reason",
                ]);
                for e in &events {
                    t.row(vec![
                        time(&e.received_at),
                        e.connection.clone(),
                        e.direction.clone(),
                        cell(&opt(&e.call_type), 24),
                        cell(&e.message_id, 40),
                        e.state.clone(),
                        e.attempts.to_string(),
                        cell(&opt(&e.state_reason), 70),
                    ]);
                }
                let mut out = t.render();
                if events.len() as i64 == queries::USER_EVENT_LIMIT {
                    out.push_str(&format!(
                        "(the newest {} events; query audit_event for more)\n",
                        queries::USER_EVENT_LIMIT
                    ));
                }
                (out, true)
            }
        }
        Question::Failures { since, connection } => {
            let since_time =
                chrono::Utc::now() - parse_duration(since).map_err(anyhow::Error::msg)?;
            let rows = queries::failures(pool, since_time, connection.as_deref()).await?;
            if as_json {
                (json_text(&json!(rows)), true)
            } else if rows.is_empty() {
                (format!("no failures in the last {since}\n"), true)
            } else {
                let mut t = Table::new(&[
                    "connection",
                    "direction",
                    "endpoint",
                    "reason",
                    "status",
                    "outcome",
                    "attempts",
                    "events",
                    "last seen",
                ]);
                for r in &rows {
                    t.row(vec![
                        r.connection.clone(),
                        r.direction.clone(),
                        r.endpoint.clone(),
                        cell(&opt(&r.reason), 50),
                        opt(&r.status),
                        r.outcome.clone(),
                        r.attempts.to_string(),
                        r.events.to_string(),
                        time(&r.last_seen),
                    ]);
                }
                (t.render(), true)
            }
        }
        Question::States => {
            let rows = queries::states(pool).await?;
            if as_json {
                (json_text(&json!(rows)), true)
            } else {
                let mut t =
                    Table::new(&["connection", "direction", "state", "events", "last change"]);
                for r in &rows {
                    t.row(vec![
                        r.connection.clone(),
                        r.direction.clone(),
                        r.state.clone(),
                        r.events.to_string(),
                        time(&r.last_change),
                    ]);
                }
                (
                    if t.is_empty() {
                        "no events\n".into()
                    } else {
                        t.render()
                    },
                    true,
                )
            }
        }
        Question::Backlog => {
            let rows = queries::backlog(pool).await?;
            if as_json {
                (json_text(&json!(rows)), true)
            } else if rows.is_empty() {
                ("nothing waits for delivery\n".into(), true)
            } else {
                let mut t = Table::new(&[
                    "connection",
                    "direction",
                    "events",
                    "in flight",
                    "retrying",
                    "oldest",
                    "oldest age",
                    "next due",
                ]);
                for r in &rows {
                    t.row(vec![
                        r.connection.clone(),
                        r.direction.clone(),
                        r.events.to_string(),
                        r.in_flight.to_string(),
                        r.waiting_to_retry.to_string(),
                        time(&r.oldest_received_at),
                        age(r.oldest_age_secs),
                        time(&r.next_due_at),
                    ]);
                }
                (t.render(), true)
            }
        }
    })
}

fn json_text(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values print") + "\n"
}

/// `3h 05m`, `42s`.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn event_text(e: &EventRow, attempts: &[AttemptRow]) -> String {
    let mut out = format!(
        "event {}  messageId {}\n  connection {}  direction {}  type {}  user {}\n  received {}  request {}\n  state {}{}\n  action {}  attempts {}  replays {}\n",
        e.event_id,
        e.message_id,
        e.connection,
        e.direction,
        opt(&e.call_type),
        e.user_key,
        time(&e.received_at),
        e.request_id,
        e.state,
        e.state_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        opt(&e.action),
        e.attempts,
        e.replays,
    );
    if attempts.is_empty() {
        out.push_str("  no delivery attempt\n");
        return out;
    }
    let mut t = Table::new(&[
        "  #", "gen", "at", "endpoint", "status", "outcome", "ms", "events", "answer",
    ]);
    for a in attempts {
        let answer = a
            .response_body
            .as_deref()
            .or(a.error.as_deref())
            .unwrap_or(if a.dry_run { "(dry run: not sent)" } else { "" });
        t.row(vec![
            format!("  {}", a.attempt),
            a.generation.to_string(),
            time(&a.attempted_at),
            a.endpoint.clone(),
            opt(&a.status),
            a.outcome.clone(),
            a.duration_ms
                .map_or_else(|| "-".into(), |d| format!("{d:.0}")),
            a.events.to_string(),
            cell(answer, 80),
        ]);
    }
    out.push_str(&t.render());
    out
}
