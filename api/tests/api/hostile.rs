//! Hostile input: SQL metacharacters and Unicode, malformed ids, huge pages and bodies, deep
//! JSON, slow clients. Each gets a precise 4xx (or is stored verbatim), never a 5xx or a hang.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{TestApi, TestApp, TestDb, error_code, id_of};

const NASTY: [&str; 6] = [
    "'; DROP TABLE devices; --",
    "Robert'); DELETE FROM tenants WHERE ('1'='1",
    r#"\" OR 1=1 -- \\"#,
    "%_*?[]{}$1 ::uuid",
    "Zürich – 東京 – القاهرة – 🚀🌍",
    "e\u{301}\u{200d}\u{feff}x",
];

#[tokio::test]
async fn sql_metacharacters_and_unicode_are_stored_verbatim_and_match_only_themselves() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    for (collection, extra) in [
        ("organizations", json!({})),
        ("sites", json!({})),
        ("device-groups", json!({})),
        ("device-types", json!({ "description": NASTY[1] })),
    ] {
        for name in NASTY {
            let mut body = json!({ "name": name });
            body.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            let path = format!("/tenants/{tenant}/{collection}");
            let (status, created) = app.post(&path, body).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{collection} {name:?}: {created}"
            );
            let (_, read) = app.get(&format!("{path}/{}", id_of(&created))).await;
            assert_eq!(read["name"], name);
        }
    }
    for name in NASTY {
        let (status, created) = app
            .post(
                &format!("/tenants/{tenant}/devices"),
                json!({ "name": name, "external_id": name, "device_type": name }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name:?}: {created}");
    }
    // A filter value is a value, not a pattern: `%_` matches only itself.
    for name in NASTY {
        for filter in ["external_id", "device_type"] {
            let (status, page) = app
                .anonymous
                .get(app.url(&format!("/tenants/{tenant}/devices")))
                .bearer_auth(gito_testkit::ADMIN_TOKEN)
                .query(&[(filter, name)])
                .send()
                .await
                .map(|r| (r.status(), r))
                .expect("sent");
            let page: Value = page.json().await.expect("JSON");
            assert_eq!(status, StatusCode::OK, "{filter}={name:?}");
            let items = page["items"].as_array().expect("items");
            assert_eq!(items.len(), 1, "{filter}={name:?}: {page}");
            assert_eq!(items[0][filter], name);
        }
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('devices', 'tenants', 'telemetry')",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(tables, 3);
}

#[tokio::test]
async fn text_limits_count_characters_and_control_characters_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let devices = format!("/tenants/{tenant}/devices");
    for (body, expected) in [
        (json!({ "name": "🚀".repeat(200) }), StatusCode::CREATED),
        (
            json!({ "name": "🚀".repeat(201) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "d", "external_id": "x".repeat(1024) }),
            StatusCode::CREATED,
        ),
        (
            json!({ "name": "d", "external_id": "y".repeat(1025) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "a\u{0}b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "a\u{1b}[31mb" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "a\u{85}b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "\u{2003}a" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, answer) = app.post(&devices, body.clone()).await;
        assert_eq!(status, expected, "{answer}");
        if status.is_client_error() {
            assert_eq!(error_code(&answer), "invalid_field");
        }
    }
}

#[tokio::test]
async fn malformed_ids_anywhere_in_a_path_are_400() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let good = Uuid::now_v7();
    for bad in [
        "nope",
        "123",
        "00000000-0000-0000-0000-00000000000g",
        "%27%20OR%201%3D1",
        "🚀",
    ] {
        for path in [
            format!("/tenants/{bad}"),
            format!("/tenants/{bad}/devices"),
            format!("/tenants/{tenant}/devices/{bad}"),
            format!("/tenants/{tenant}/organizations/{bad}"),
            format!("/tenants/{tenant}/devices/{bad}/telemetry"),
            format!("/tenants/{tenant}/alerts/{bad}/ack"),
            format!("/tenants/{tenant}/tokens/{bad}"),
        ] {
            let method = if path.ends_with("/ack") {
                Method::POST
            } else if path.contains("/tokens/") {
                Method::DELETE
            } else {
                Method::GET
            };
            let (status, body) = app
                .send_as(Some(gito_testkit::ADMIN_TOKEN), method, &path, None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(error_code(&body), "invalid_path", "{path}");
        }
    }
    let (status, _) = app.get(&format!("/tenants/{tenant}/devices/{good}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_are_capped_and_huge_limits_are_400() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name) SELECT gen_random_uuid(), $1, 'd' || i FROM generate_series(1, 1500) AS i",
    )
    .bind(tenant)
    .execute(&app.pool)
    .await
    .expect("devices");
    let (status, page) = app
        .get(&format!("/tenants/{tenant}/devices?limit=1000"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1000));
    assert!(page["next_cursor"].is_string());
    let (_, page) = app.get(&format!("/tenants/{tenant}/devices")).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(100), "default");
    let device = Uuid::now_v7();
    for path in [
        format!("/tenants/{tenant}/devices?limit=1001"),
        format!("/tenants/{tenant}/devices?limit=100000000000000000000"),
        format!("/tenants/{tenant}/devices?limit=-1"),
        "/tenants?limit=1001".to_owned(),
        format!("/tenants/{tenant}/alerts?limit=5000"),
        format!("/tenants/{tenant}/devices/{device}/telemetry?limit=10001"),
        format!("/tenants/{tenant}/devices/{device}/telemetry?bucket=0s"),
        format!("/tenants/{tenant}/devices/{device}/telemetry?from=yesterday"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(error_code(&body), "invalid_query", "{path}");
    }
}

#[tokio::test]
async fn deep_json_and_bodies_that_are_not_objects_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let deep = format!(
        r#"{{"name": "t", "telemetry_schema": {}{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    for (body, status, code) in [
        (deep, StatusCode::BAD_REQUEST, "json_too_deep"),
        (
            "[null, null]".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "\"t\"".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "{\"name\": \"t\"".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ] {
        let (got, answer) = app
            .send_raw(
                Method::POST,
                &format!("/tenants/{tenant}/device-types"),
                "application/json",
                body.into_bytes(),
            )
            .await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(error_code(&answer), code);
    }
    // PATCH too: an array is not a patch that changes nothing.
    let (_, org) = app
        .post(
            &format!("/tenants/{tenant}/organizations"),
            json!({ "name": "o" }),
        )
        .await;
    let (status, _) = app
        .send_raw(
            Method::PATCH,
            &format!("/tenants/{tenant}/organizations/{}", id_of(&org)),
            "application/json",
            b"[null]".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_503_when_the_request_timeout_expires() {
    let db = TestDb::migrated().await;
    let mut config = gito_testkit::serve_config(&db.url, "127.0.0.1:0".parse().expect("address"));
    config.request_timeout = Duration::from_secs(1);
    let api = TestApi::start_with(config).await;
    let mut socket = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        gito_testkit::ADMIN_TOKEN
    );
    socket.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answered, not hung");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
}

#[tokio::test]
async fn the_openapi_document_names_every_operation_once_with_its_errors_and_security() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.send_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "{id} twice");
            let responses = operation["responses"].as_object().expect("responses");
            let public = ["/health", "/ready"].contains(&path.as_str());
            assert_eq!(
                operation.get("security").is_none(),
                public,
                "{method} {path}"
            );
            if !public {
                for status in ["400", "401", "403", "404", "422"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let response = app
        .anonymous
        .get(app.url("/docs"))
        .send()
        .await
        .expect("docs");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .text()
            .await
            .expect("html")
            .contains("/openapi.json")
    );
}

/// Found by schemathesis: an alert rule naming a device that does not exist was a 500.
#[tokio::test]
async fn every_reference_to_a_missing_or_foreign_row_is_422_invalid_reference() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let mut foreign = std::collections::HashMap::new();
    for (collection, body) in [
        ("organizations", json!({ "name": "o" })),
        ("sites", json!({ "name": "s" })),
        ("device-groups", json!({ "name": "g" })),
        ("device-types", json!({ "name": "t" })),
        ("devices", json!({ "name": "d" })),
    ] {
        let (_, created) = app
            .post(&format!("/tenants/{theirs}/{collection}"), body)
            .await;
        foreign.insert(collection, id_of(&created));
    }
    let cases = [
        ("sites", "organization_id", "organizations"),
        ("device-groups", "site_id", "sites"),
        ("devices", "organization_id", "organizations"),
        ("devices", "site_id", "sites"),
        ("devices", "device_group_id", "device-groups"),
        ("devices", "device_type_id", "device-types"),
        ("alert-rules", "device_id", "devices"),
        ("alert-rules", "device_type_id", "device-types"),
    ];
    for (collection, field, target) in cases {
        for id in [foreign[target], Uuid::now_v7()] {
            let mut body = json!({ "name": "x", "metric": "T", "operator": ">", "threshold": 1.0 });
            if collection != "alert-rules" {
                body = json!({ "name": "x" });
            }
            body[field] = json!(id);
            let (status, answer) = app
                .post(&format!("/tenants/{mine}/{collection}"), body)
                .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{collection}.{field}: {answer}"
            );
            assert_eq!(
                error_code(&answer),
                "invalid_reference",
                "{collection}.{field}"
            );
        }
    }
}
