//! The console (`/console/`), Swagger UI (`/docs`) and `/whoami`, over a real socket: served from
//! the binary, with a strict Content-Security-Policy, and nothing loaded from elsewhere. The
//! console's behaviour in a browser is tested by scripts/console-test/ (headless Chromium).

use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, error_code};

fn assert_secure(response: &reqwest::Response, what: &str) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{what}: {csp} lacks {part}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
}

#[tokio::test]
async fn the_console_and_the_docs_are_served_from_the_binary_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    for (path, kind, contains) in [
        ("/console/", "text/html", "/console/js/app.js"),
        ("/console/js/app.js", "text/javascript", "import"),
        ("/console/app.css", "text/css", "focus-visible"),
        ("/docs", "text/html", "/openapi.json"),
        (
            "/docs/swagger-ui-bundle.js",
            "text/javascript",
            "SwaggerUIBundle",
        ),
        ("/docs/swagger-ui.css", "text/css", ".swagger-ui"),
        ("/docs/LICENSE", "text/plain", "Apache License"),
    ] {
        let response = app.anonymous.get(app.url(path)).send().await.expect(path);
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_secure(&response, path);
        let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ascii");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let body = response.text().await.expect("body");
        assert!(body.contains(contains), "{path} lacks {contains}");
        if kind == "text/html" {
            // No inline script and no other origin: the policy would block them anyway.
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path}"
            );
            assert!(
                !body.contains("<script>") && !body.contains(" on"),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn root_and_console_without_slash_redirect_to_the_console() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for path in ["/", "/console"] {
        let response = client.get(app.url(path)).send().await.expect(path);
        assert!(response.status().is_redirection(), "{path}");
        assert_eq!(response.headers()[LOCATION], "/console/", "{path}");
    }
}

#[tokio::test]
async fn an_unknown_or_escaping_asset_is_a_404_in_the_error_shape_with_the_policy() {
    let app = TestApp::spawn().await;
    for path in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/%2e%2e/src/main.rs",
        "/docs/%2e%2e%2fCargo.toml",
    ] {
        let response = app.anonymous.get(app.url(path)).send().await.expect(path);
        let status = response.status();
        // The client resolves `..` itself; what still reaches the console's routes has the policy.
        let sent = response.url().path().to_owned();
        if sent.starts_with("/console/") || sent.starts_with("/docs/") {
            assert_secure(&response, path);
        }
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(error_code(&body), "not_found", "{path}");
    }
}

#[tokio::test]
async fn an_unchanged_asset_is_revalidated_with_its_etag() {
    let app = TestApp::spawn().await;
    let first = app
        .anonymous
        .get(app.url("/console/js/api.js"))
        .send()
        .await
        .expect("first");
    let etag = first.headers()[ETAG].clone();
    let again = app
        .anonymous
        .get(app.url("/console/js/api.js"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let other = app
        .anonymous
        .get(app.url("/console/js/api.js"))
        .header(IF_NONE_MATCH, "\"something else\"")
        .send()
        .await
        .expect("other");
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_websocket_of_this_host_is_allowed_by_the_policy() {
    let app = TestApp::spawn().await;
    let response = app
        .anonymous
        .get(app.url("/console/"))
        .send()
        .await
        .expect("console");
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let host = app.addr.to_string();
    assert!(csp.contains(&format!("ws://{host} wss://{host}")), "{csp}");
}

#[tokio::test]
async fn whoami_names_the_tokens_tenant_or_the_admin() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let token = app.token_for(tenant).await;
    let (status, body) = app.get_as(ADMIN_TOKEN, "/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"admin": true, "tenant_id": null}));
    let (status, body) = app.get_as(&token, "/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"admin": false, "tenant_id": tenant}));
    // Revoked: 401, like everywhere else.
    let (_, tokens) = app
        .get_as(ADMIN_TOKEN, &format!("/tenants/{tenant}/tokens"))
        .await;
    let id = tokens["items"][0]["id"].as_str().expect("token id");
    let (status, _) = app
        .send_as(
            Some(ADMIN_TOKEN),
            Method::DELETE,
            &format!("/tenants/{tenant}/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for bad in [Some(token.as_str()), Some("nope"), None] {
        let (status, body) = app.send_as(bad, Method::GET, "/whoami", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}: {body}");
        assert_eq!(error_code(&body), "unauthorized");
    }
}
