//! Destination-level calls against a wiremock Iterable: the key check (`testAuthentication`,
//! vectors 1–2 and 41) and the list find-or-create (`createAudience` / `getAudience`,
//! vectors 42–46).

use gateway::iterable::api::{DataCenter, Hosts};
use gateway::iterable::client::{ClientError, IterableClient};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn client(us: &MockServer, eu: &MockServer) -> IterableClient {
    IterableClient::new(
        Hosts {
            us: us.uri(),
            eu: eu.uri(),
        },
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn a_valid_key_passes_the_check_and_an_invalid_one_is_named() {
    let (us, eu) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("GET"))
        .and(path("/api/webhooks"))
        .and(header("Api-Key", "iterableApiKey"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&us)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/webhooks"))
        .and(header("Api-Key", "badApiKey"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"msg": "Invalid API key"})))
        .expect(1)
        .mount(&eu)
        .await;
    let c = client(&us, &eu).await;
    c.check_key("iterableApiKey", DataCenter::UnitedStates)
        .await
        .unwrap();
    let err = c
        .check_key("badApiKey", DataCenter::Europe)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Credentials are invalid: 401 Unauthorized");
}

#[tokio::test]
async fn an_existing_list_is_reused_by_name() {
    let (us, eu) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("GET"))
        .and(path("/api/lists"))
        .and(header("Api-Key", "123456"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"lists": [{"id": 123, "name": "test"}]})),
        )
        .expect(1)
        .mount(&us)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/lists"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&us)
        .await;
    let id = client(&us, &eu)
        .await
        .find_or_create_list("123456", DataCenter::UnitedStates, "test")
        .await
        .unwrap();
    assert_eq!(id, "123");
}

#[tokio::test]
async fn a_missing_list_is_created_with_the_audience_key_as_name() {
    let (us, eu) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("GET"))
        .and(path("/api/lists"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"lists": [{"id": 9, "name": "other"}]})),
        )
        .expect(1)
        .mount(&eu)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/lists"))
        .and(body_json(json!({"name": "test"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"listId": 4242})))
        .expect(1)
        .mount(&eu)
        .await;
    let id = client(&us, &eu)
        .await
        .find_or_create_list("k", DataCenter::Europe, "test")
        .await
        .unwrap();
    assert_eq!(id, "4242");
}

#[tokio::test]
async fn an_audience_without_a_key_or_list_is_an_error_that_says_so() {
    let (us, eu) = (MockServer::start().await, MockServer::start().await);
    let c = client(&us, &eu).await;
    let e = c
        .find_or_create_list("k", DataCenter::UnitedStates, "")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::MissingAudienceKey));
    assert_eq!(e.to_string(), "Missing computation parameters: Key");
    Mock::given(method("GET"))
        .and(path("/api/lists"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"lists": [{"id": 1, "name": "a"}]})),
        )
        .mount(&us)
        .await;
    assert_eq!(
        c.get_list("k", DataCenter::UnitedStates, "1")
            .await
            .unwrap(),
        "1"
    );
    let e = c
        .get_list("k", DataCenter::UnitedStates, "12345")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Audience with ID 12345 not found in Iterable"
    );
}

#[test]
fn gateway_check_reports_each_connection_and_fails_when_one_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        let s = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/webhooks"))
            .and(header("Api-Key", "good"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&s)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/webhooks"))
            .and(header("Api-Key", "bad"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&s)
            .await;
        s
    });
    let file = std::env::temp_dir().join(format!("gateway-check-{}.json", std::process::id()));
    std::fs::write(&file, r#"[{"name":"shop","apiKey":"good"},{"name":"blog","apiKey":"bad","dataCenterLocation":"europe"}]"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "check",
            "--settings",
            file.to_str().unwrap(),
            "--us-host",
            &server.uri(),
            "--eu-host",
            &server.uri(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok      shop (united_states)"), "{stdout}");
    assert!(
        stdout.contains("FAILED  blog: Credentials are invalid: 401 Unauthorized"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("good") || !stdout.contains("bad\""),
        "keys never print"
    );
    std::fs::remove_file(file).ok();
}

#[test]
fn gateway_check_and_ensure_list_use_the_configured_connections() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        let s = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/webhooks"))
            .and(header("Api-Key", "shop-key"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&s)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/lists"))
            .and(header("Api-Key", "shop-key"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"lists": [{"id": 77, "name": "vip"}]})),
            )
            .mount(&s)
            .await;
        s
    });
    // Only overrides: the defaults are built in. Iterable's host comes from the configuration.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("local.toml"),
        format!(
            "[iterable]\nus_url = \"{}\"\n[[connections]]\nname = \"shop\"\niterable_api_key_env = \"CHECK_TEST_SHOP_KEY\"\n\
             [[connections]]\nname = \"blog\"\niterable_api_key = \"blog-key\"\n",
            server.uri()
        ),
    )
    .unwrap();
    let gateway = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .args(["--config", dir.path().to_str().unwrap()])
            .env("CHECK_TEST_SHOP_KEY", "shop-key")
            .env_remove("GATEWAY_ENVIRONMENT")
            .output()
            .unwrap()
    };
    let out = gateway(&["check", "--connection", "shop"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "ok      shop (united_states)\n");
    let out = gateway(&[
        "ensure-list",
        "--connection",
        "shop",
        "--audience-key",
        "vip",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shop\t77\n");
    let out = gateway(&["check", "--connection", "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("no connection \"nope\" in the configuration (connections: shop, blog)"),
        "{stderr}"
    );
}
