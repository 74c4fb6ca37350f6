//! Start-up with a database that cannot be reached: the error names `database.url` (without
//! its password), the host and port, and the cause. Through `cli::serve::connect`, what
//! `gateway serve` and `gateway migrate` run first.

use local_postgres::fresh_database;
use secrecy::SecretString;
use sqlx::Connection as _;

const PASSWORD: &str = "Wr0ng-Pa55word-in-url";

async fn connect_error(url: String, timeout_ms: u64) -> String {
    let mut settings = gateway::configuration::Settings::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config"
    )))
    .expect("the default configuration loads");
    settings.database.url = Some(SecretString::from(url));
    settings.database.commit_timeout_ms = timeout_ms;
    match gateway::cli::serve::connect(&settings).await {
        Ok(_) => panic!("connected"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(!text.contains(PASSWORD), "the password is shown: {text}");
            assert!(text.contains("database.url"), "{text}");
            text
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn nothing_listening_says_connection_refused() {
    let port = free_port();
    let err = connect_error(
        format!("postgres://gateway:{PASSWORD}@127.0.0.1:{port}/gateway"),
        5000,
    )
    .await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        err.contains(&format!("postgres://gateway@127.0.0.1:{port}/gateway")),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_password_says_authentication_failed() {
    let (_pool, db) = fresh_database().await;
    let o = db.connect_options();
    let url = format!(
        "postgres://{}:{PASSWORD}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        db.name()
    );
    if std::env::var_os("DATABASE_URL").is_some() {
        // DATABASE_URL's server may trust every client: then there is nothing to refuse.
        let trusted = sqlx::PgConnection::connect_with(&url.parse().unwrap()).await;
        if trusted.is_ok() {
            eprintln!("skipped: DATABASE_URL's server takes any password");
            return;
        }
    }
    let err = connect_error(url, 5000).await;
    assert!(
        err.contains(&format!(
            "authentication failed for user \"{}\"",
            o.get_username()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:{}", o.get_host(), o.get_port())),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_database_is_named() {
    let (_pool, db) = fresh_database().await;
    let url = db.url().replace(db.name(), "no_such_database_here");
    let err = connect_error(url, 5000).await;
    assert!(
        err.contains("database \"no_such_database_here\" does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts the TCP connection (the kernel does, from the backlog) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let err = connect_error(
        format!("postgres://gateway:{PASSWORD}@127.0.0.1:{port}/gateway"),
        300,
    )
    .await;
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains("300 ms"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    drop(silent);
}
