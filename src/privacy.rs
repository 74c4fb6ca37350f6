//! User deletion (GDPR/CCPA): what the operator side asks of the database.
//!
//! A deletion is an event of type `delete` in the outbox; PostgreSQL does the rest (migration
//! `20261202000600_user_deletion.sql`): the tombstone (`user_deletion`), the suppression of
//! the user's later and pending events (`user_suppression`, hashed identities), and the
//! redaction of the audit log once Iterable answered. A Segment `delete` message arrives that
//! way through ingest; [`request`] writes the same event for `gateway forget` / `unforget`, and
//! [`lift`] ends a suppression.

use crate::audit::Direction;
use crate::mapping::Deletion;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The user a deletion is about: a userId, an email, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Option<String>,
    pub email: Option<String>,
}

impl Identity {
    /// The identity as a Segment `delete` message carries it (what the SQL side reads).
    fn fields(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Some(u) = &self.user_id {
            m.insert("userId".into(), json!(u));
        }
        if let Some(e) = &self.email {
            m.insert("traits".into(), json!({"email": e}));
        }
        m
    }

    /// Ordering key, as ingest forms it (so the request follows the user's pending events).
    fn user_key(&self) -> String {
        match (&self.user_id, &self.email) {
            (Some(u), _) => format!("u:{u}"),
            (None, Some(e)) => format!("e:{e}"),
            (None, None) => String::new(),
        }
    }
}

/// Why an operator request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("give --user-id or --email (or both)")]
    NoIdentity,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Queues an operator's deletion (`Delete` / `Forget`, or `None`: the connection's `deletion`
/// setting) or an `Unforget` as an event of its own: the dispatcher sends it, audited and
/// retried like any event. Returns the `user_deletion` id.
pub async fn request(
    pool: &PgPool,
    connection: &str,
    who: &Identity,
    mode: Option<Deletion>,
) -> Result<i64, PrivacyError> {
    if who.user_id.is_none() && who.email.is_none() {
        return Err(PrivacyError::NoIdentity);
    }
    let command = if mode == Some(Deletion::Unforget) {
        "gateway unforget"
    } else {
        "gateway forget"
    };
    let message_id = format!("operator-{}", uuid::Uuid::new_v4());
    let mut gateway = json!({"source": "operator"});
    if let Some(m) = mode {
        gateway["deletion"] = json!(m.as_str());
    }
    let mut payload = who.fields();
    payload.insert("type".into(), json!("delete"));
    payload.insert("messageId".into(), json!(message_id));
    payload.insert("context".into(), json!({"gateway": gateway}));
    // The command as asked, as the audit log keeps every request (redacted with the rest).
    let mut body = who.fields();
    body.insert("command".into(), json!(command));
    body.insert("connection".into(), json!(connection));
    body.insert("mode".into(), json!(mode.map(Deletion::as_str)));

    let mut tx = pool.begin().await?;
    let request_id: i64 = sqlx::query_scalar(
        "INSERT INTO inbound_request (route, connection, direction, status, headers, body, events)
         VALUES ($1, $2, $3, 200, '{}'::jsonb, $4, 1) RETURNING id",
    )
    .bind(command)
    .bind(connection)
    .bind(Direction::SegmentToIterable.as_str())
    .bind(serde_json::to_vec(&body).unwrap_or_default())
    .fetch_one(&mut *tx)
    .await?;
    let event_id: i64 = sqlx::query_scalar(
        "INSERT INTO event (request_id, connection, direction, message_id, call_type, user_key,
                            payload, email, state)
         VALUES ($1, $2, $3, $4, 'delete', $5, $6, gateway_event_email($6), 'pending') RETURNING id",
    )
    .bind(request_id)
    .bind(connection)
    .bind(Direction::SegmentToIterable.as_str())
    .bind(&message_id)
    .bind(who.user_key())
    .bind(Value::Object(payload))
    .fetch_one(&mut *tx)
    .await?;
    let deletion: i64 =
        sqlx::query_scalar("SELECT id FROM user_deletion WHERE event_id = $1 ORDER BY id LIMIT 1")
            .bind(event_id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(deletion)
}

/// What [`lift`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    /// The deletions whose suppression of this user ended.
    pub deletions: Vec<i64>,
    /// Whether one of them was Iterable's forget (then Iterable must be told to unforget).
    pub was_forget: bool,
}

/// Ends the suppression of a user on a connection: their later events are delivered again.
/// Every identity of a deletion that names the user is lifted (a user deleted by userId and
/// email is lifted by either).
pub async fn lift(pool: &PgPool, connection: &str, who: &Identity) -> Result<Lifted, PrivacyError> {
    if who.user_id.is_none() && who.email.is_none() {
        return Err(PrivacyError::NoIdentity);
    }
    let (deletions, was_forget): (Vec<i64>, bool) = sqlx::query_as(
        "WITH lifted AS (
             UPDATE user_suppression SET lifted_at = now(), lifted_by = 'gateway unforget'
             WHERE connection = $1 AND lifted_at IS NULL
               AND deletion_id IN (SELECT deletion_id FROM user_suppression
                                   WHERE connection = $1 AND lifted_at IS NULL
                                     AND identity = ANY (gateway_identity_hashes($2)))
             RETURNING deletion_id)
         SELECT coalesce(array_agg(DISTINCT deletion_id), '{}'),
                -- The mode is known once Iterable was asked; before that, what was asked.
                EXISTS (SELECT 1 FROM user_deletion d
                        WHERE d.connection = $1 AND d.mode = 'forget'
                          AND d.identities && gateway_identity_hashes($2)
                          AND d.id >= coalesce((SELECT max(u.id) FROM user_deletion u
                                                WHERE u.connection = $1 AND u.mode = 'unforget'
                                                  AND u.identities && gateway_identity_hashes($2)), 0))
         FROM lifted",
    )
    .bind(connection)
    .bind(Value::Object(who.fields()))
    .fetch_one(pool)
    .await?;
    Ok(Lifted {
        deletions,
        was_forget,
    })
}

/// One deletion as `audit_deletions` shows it, as JSON (`None`: no such id).
pub async fn status(pool: &PgPool, id: i64) -> Result<Option<Value>, PrivacyError> {
    let row: Option<Value> = sqlx::query_scalar(
        "SELECT to_json(d) FROM (
             SELECT id, connection, mode, source, route, message_id, requested_at, completed_at,
                    outcome, iterable_endpoint, iterable_status, iterable_code, iterable_answer,
                    reason, redacted, suppressing
             FROM audit_deletions WHERE id = $1) d",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}
