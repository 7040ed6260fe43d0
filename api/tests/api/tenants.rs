use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, error_code, id_of};

#[tokio::test]
async fn create_tenant_returns_201_and_it_can_be_read_back() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .post("/tenants", json!({ "name": "Acme Utilities – Zürich 🌍" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created["name"], "Acme Utilities – Zürich 🌍",
        "stored as sent"
    );
    let (status, read) = app.get(&format!("/tenants/{}", id_of(&created))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);
}

#[tokio::test]
async fn list_tenants_pages_through_every_tenant_once_in_creation_order() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(app.tenant(&format!("tenant {i}")).await);
    }
    let mut seen = Vec::new();
    let mut path = "/tenants?limit=2".to_owned();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/tenants?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn unknown_tenant_is_404_and_bad_tenant_id_is_400() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get(&format!("/tenants/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = app.get("/tenants/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_path");
}

#[tokio::test]
async fn tenant_name_must_be_present_and_reasonable() {
    let app = TestApp::spawn().await;
    for (body, expected) in [
        (json!({ "name": "" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "name": "   " }), StatusCode::UNPROCESSABLE_ENTITY),
        // Nothing is trimmed silently: "Acme" and "Acme " would be two different tenants.
        (json!({ "name": " Acme" }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "name": "Acme\t" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "x".repeat(201) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "name": "nul\u{0}inside" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "name": 42 }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "name": "ok", "extra": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, response) = app.post("/tenants", body.clone()).await;
        assert_eq!(status, expected, "{body} -> {response}");
        error_code(&response);
    }
    let (status, _) = app
        .post(
            "/tenants",
            json!({ "name": "'; DROP TABLE tenants; --  Ünïcødé 🌡" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "SQL metacharacters and Unicode are just text"
    );
}
