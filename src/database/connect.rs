//! Connecting at start-up, with an error that says where and why.
//!
//! A pool that cannot open its first connection says only "pool timed out while waiting for an
//! open connection". Before building the pool, [`pool`] opens one connection itself and, when
//! that fails, names what was configured (`database.url` without its password, or the own
//! cluster's directory), the host and port, and the cause: connection refused, authentication
//! failed, no such database, no such host, or no answer in time.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::fmt;
use std::time::Duration;

/// What the gateway connects to, and how to name it in an error.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect (password included).
    pub options: PgConnectOptions,
    /// What the operator configured, with no secret in it: `database.url = postgres://...`.
    pub configured: String,
}

impl Target {
    /// `database.url`: `url` parsed, shown without its password.
    pub fn from_url(url: &str) -> Result<Target, ConnectError> {
        let configured = format!("database.url = {}", without_password(url));
        let options = url.parse::<PgConnectOptions>().map_err(|e| ConnectError {
            configured: configured.clone(),
            address: String::new(),
            cause: Cause::Invalid(scrub(&e.to_string(), url)),
        })?;
        Ok(Target {
            options,
            configured,
        })
    }
}

/// Why the first connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listens at the address.
    Refused,
    /// The host name does not resolve.
    UnknownHost,
    /// The server refused the user or its password (SQLSTATE 28P01 / 28000).
    AuthenticationFailed { user: String, message: String },
    /// The database does not exist (SQLSTATE 3D000).
    NoSuchDatabase { database: String },
    /// No answer within the timeout.
    Timeout(Duration),
    /// `database.url` is not a PostgreSQL URL.
    Invalid(String),
    /// Anything else, as the driver says it.
    Other(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Refused => f.write_str("connection refused: nothing listens there (is PostgreSQL running, on that port?)"),
            Cause::UnknownHost => f.write_str("the host name does not resolve"),
            Cause::AuthenticationFailed { user, message } => write!(
                f,
                "authentication failed for user \"{user}\" (wrong password, unknown user, or pg_hba.conf refuses it): {message}"
            ),
            Cause::NoSuchDatabase { database } => write!(
                f,
                "database \"{database}\" does not exist (create it with `createdb {database}`, or fix the URL's path)"
            ),
            Cause::Timeout(after) => write!(
                f,
                "timed out: no answer within {} ms (database.commit_timeout_ms); is the host reachable and the server running?",
                after.as_millis()
            ),
            Cause::Invalid(why) => write!(f, "not a PostgreSQL URL: {why}"),
            Cause::Other(why) => f.write_str(why),
        }
    }
}

/// The first connection failed: where, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to PostgreSQL{} ({configured}): {cause}", if address.is_empty() { String::new() } else { format!(" at {address}") })]
pub struct ConnectError {
    /// What was configured (no password).
    pub configured: String,
    /// `host:port` (or the socket directory and port).
    pub address: String,
    /// Why.
    pub cause: Cause,
}

/// Opens one connection to `target` within `timeout`, explaining a failure.
pub async fn check(target: &Target, timeout: Duration) -> Result<(), ConnectError> {
    let options = &target.options;
    let fail = |cause| ConnectError {
        configured: target.configured.clone(),
        address: format!("{}:{}", options.get_host(), options.get_port()),
        cause,
    };
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Err(_) => Err(fail(Cause::Timeout(timeout))),
        Ok(Err(e)) => Err(fail(classify(&e, options))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
    }
}

/// [`check`], then a pool of `max_connections` whose acquisitions wait at most `timeout`.
pub async fn pool(
    target: &Target,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, ConnectError> {
    check(target, timeout).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        // No ping before each statement (sqlx's default): it was a round trip more for every
        // statement, the group commit's among them (4.3 % of the gateway's CPU under load). A
        // connection that died is found by the statement itself, whose error the callers
        // handle as any database error (the group commit answers 503 and keeps the request).
        .test_before_acquire(false)
        .connect_with(target.options.clone())
        .await
        .map_err(|e| ConnectError {
            configured: target.configured.clone(),
            address: format!(
                "{}:{}",
                target.options.get_host(),
                target.options.get_port()
            ),
            cause: classify(&e, &target.options),
        })
}

/// A second pool of at most `max_connections` on `pool`'s database, opened lazily, whose
/// connections show as `application_name` in `pg_stat_activity`.
pub fn sibling(
    pool: &PgPool,
    max_connections: u32,
    timeout: Duration,
    application_name: &str,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        // As in [`pool`]: no ping before each statement.
        .test_before_acquire(false)
        .connect_lazy_with(
            (*pool.connect_options())
                .clone()
                .application_name(application_name),
        )
}

fn classify(e: &sqlx::Error, options: &PgConnectOptions) -> Cause {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Cause::Refused,
            std::io::ErrorKind::TimedOut => Cause::Other(format!("timed out: {io}")),
            _ if io.to_string().contains("lookup address") => Cause::UnknownHost,
            _ => Cause::Other(io.to_string()),
        },
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => Cause::AuthenticationFailed {
                user: options.get_username().to_string(),
                message: db.message().to_string(),
            },
            Some("3D000") => Cause::NoSuchDatabase {
                database: options.get_database().unwrap_or_default().to_string(),
            },
            _ => Cause::Other(db.to_string()),
        },
        sqlx::Error::PoolTimedOut => {
            Cause::Other("the pool timed out while opening its connections".into())
        }
        other => Cause::Other(other.to_string()),
    }
}

/// `url` without its password (in the authority or as a `password` parameter); unparseable
/// URLs are not shown at all, since where the secret sits in them is unknown.
pub fn without_password(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "(not a URL; not shown)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(None);
    }
    if parsed.query().is_some() {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| !k.to_ascii_lowercase().contains("password"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    parsed.to_string()
}

/// `text` with the password of `url` (if any) replaced: a driver's parse error may quote it.
fn scrub(text: &str, url: &str) -> String {
    match reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => text.replace(&pw, "<redacted>"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            without_password("postgres://app:s3cret@db.example:5432/gateway"),
            "postgres://app@db.example:5432/gateway"
        );
        assert_eq!(
            without_password("postgres://app@h/g?sslmode=require&password=s3cret"),
            "postgres://app@h/g?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://h/g?password=x"),
            "postgres://h/g"
        );
        assert_eq!(
            without_password("not a url s3cret"),
            "(not a URL; not shown)"
        );
    }
}
