//! Malformed requests of every kind get a precise 4xx in the one error shape, never a 500.

use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, error_code};

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .send_raw(
            Method::POST,
            "/tenants",
            "application/json",
            b"{\"name\":".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_json");
}

#[tokio::test]
async fn body_without_json_content_type_is_415() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .send_raw(
            Method::POST,
            "/tenants",
            "text/plain",
            b"{\"name\":\"a\"}".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&body), "unsupported_media_type");
}

#[tokio::test]
async fn oversized_body_is_413_with_the_error_shape() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(200 * 1024));
    let (status, body) = app
        .send_raw(
            Method::POST,
            "/tenants",
            "application/json",
            big.into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405_both_json() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = app
        .send_raw(Method::PUT, "/tenants", "application/json", b"{}".to_vec())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn bad_query_strings_are_400_invalid_query() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "cursor=zzz",
        "unassigned=maybe",
        "device_type_id=nope",
        "bogus=1",
    ] {
        let (status, body) = app.get(&format!("/tenants/{tenant}/devices?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(error_code(&body), "invalid_query", "{query}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("sent");
    assert!(response.headers().get("x-request-id").is_some());
    let response = app.client.get(app.url("/nope")).send().await.expect("sent");
    assert!(response.headers().get("x-request-id").is_some());
}
