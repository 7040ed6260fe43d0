//! Tokens: who may call what. The admin token does everything; a tenant token sees only its own
//! tenant, and another tenant's things are "not found", exactly as things that do not exist.

use std::time::Duration;

use gito_testkit::wait_for;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApi, TestApp, error_code, id_of};

/// One of each thing a tenant owns, created as the admin; `(collection, item path)`.
async fn populate(app: &TestApp, tenant: Uuid) -> Vec<(String, String)> {
    let bodies = [
        ("organizations", json!({ "name": "o" })),
        ("sites", json!({ "name": "s" })),
        ("device-groups", json!({ "name": "g" })),
        ("device-types", json!({ "name": "t" })),
        ("devices", json!({ "name": "d", "external_id": "plant/d" })),
        (
            "alert-rules",
            json!({ "name": "r", "metric": "T", "operator": ">", "threshold": 1.0 }),
        ),
    ];
    let mut made = Vec::new();
    for (collection, body) in bodies {
        let path = format!("/tenants/{tenant}/{collection}");
        let (status, created) = app.post(&path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {created}");
        made.push((path.clone(), format!("{path}/{}", id_of(&created))));
    }
    made
}

/// Every documented operation, with its path parameters filled in.
async fn operations(app: &TestApp, tenant: Uuid) -> Vec<(Method, String)> {
    let (status, doc) = app.send_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let filled = path
                .replace("{tenant_id}", &tenant.to_string())
                .replace("{id}", &Uuid::now_v7().to_string())
                .replace("{device_id}", &Uuid::now_v7().to_string());
            found.push((method.to_uppercase().parse().expect("method"), filled));
        }
    }
    assert!(found.len() >= 40, "every route is documented: {found:?}");
    found
}

#[tokio::test]
async fn every_route_but_health_ready_and_the_docs_wants_a_valid_token() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let public = ["/health", "/ready", "/openapi.json", "/docs"];
    for (method, path) in operations(&app, tenant).await {
        if public.contains(&path.as_str()) {
            continue;
        }
        for token in [
            None,
            Some("nope"),
            Some(""),
            Some("gito_0123456789abcdef_00"),
        ] {
            let mut request = app.anonymous.request(method.clone(), app.url(&path));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = request.json(&json!({})).send().await.expect("sent");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(error_code(&body), "unauthorized");
        }
        // Another scheme is not a bearer token.
        let response = app
            .anonymous
            .request(method.clone(), app.url(&path))
            .basic_auth("admin", Some(gito_testkit::ADMIN_TOKEN))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    for path in public {
        let response = app.anonymous.get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_tenant_token_works_in_its_tenant_and_finds_nothing_of_another() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let token = app.token_for(mine).await;
    let my_things = populate(&app, mine).await;
    let their_things = populate(&app, theirs).await;

    // At home, everything answers.
    let (status, _) = app.get_as(&token, &format!("/tenants/{mine}")).await;
    assert_eq!(status, StatusCode::OK);
    for (collection, item) in &my_things {
        for path in [collection, item] {
            let (status, body) = app.get_as(&token, path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }

    // Elsewhere, every operation is the 404 of a tenant that does not exist: the same answer as
    // for a tenant id nobody has, so the answer says nothing about what exists.
    let (_, unknown) = app
        .send_as(
            Some(&token),
            Method::GET,
            &format!("/tenants/{}/devices", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(error_code(&unknown), "not_found");
    let mut checked = 0;
    let their_items: Vec<(Method, String)> = their_things
        .iter()
        .flat_map(|(collection, item)| {
            [
                (Method::GET, collection.clone()),
                (Method::POST, collection.clone()),
                (Method::GET, item.clone()),
                (Method::PATCH, item.clone()),
                (Method::DELETE, item.clone()),
            ]
        })
        .chain(operations(&app, theirs).await)
        .collect();
    for (method, path) in their_items {
        if !path.starts_with("/tenants/") {
            continue;
        }
        let (status, body) = app
            .send_as(
                Some(&token),
                method.clone(),
                &path,
                Some(json!({ "name": "x" })),
            )
            .await;
        if path == "/tenants" {
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
            continue;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body, unknown, "{method} {path}");
        checked += 1;
    }
    assert!(checked > 60, "{checked}");

    // Their things are untouched.
    for (_, item) in &their_things {
        let (status, body) = app.get(item).await;
        assert_eq!(status, StatusCode::OK, "{item}");
        assert_ne!(body["name"], "x", "{item}");
    }

    // Their ids under my tenant's path are not found either, and cannot be referenced.
    for ((my_collection, _), (_, their_item)) in my_things.iter().zip(&their_things) {
        let their_id = their_item.rsplit('/').next().expect("id");
        let path = format!("{my_collection}/{their_id}");
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let (status, _) = app
                .send_as(
                    Some(&token),
                    method.clone(),
                    &path,
                    Some(json!({ "name": "x" })),
                )
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    let their_org = their_things[0].1.rsplit('/').next().expect("id");
    let (status, body) = app
        .send_as(
            Some(&token),
            Method::POST,
            &format!("/tenants/{mine}/devices"),
            Some(json!({ "name": "d2", "organization_id": their_org })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_reference");
}

#[tokio::test]
async fn only_the_admin_manages_tenants_and_tokens() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let token = app.token_for(tenant).await;
    let token_id = {
        let (_, page) = app.get(&format!("/tenants/{tenant}/tokens")).await;
        id_of(&page["items"][0])
    };
    for (method, path) in [
        (Method::GET, "/tenants".to_owned()),
        (Method::POST, "/tenants".to_owned()),
        (Method::GET, format!("/tenants/{tenant}/tokens")),
        (Method::POST, format!("/tenants/{tenant}/tokens")),
        (
            Method::DELETE,
            format!("/tenants/{tenant}/tokens/{token_id}"),
        ),
    ] {
        let (status, body) = app
            .send_as(
                Some(&token),
                method.clone(),
                &path,
                Some(json!({ "name": "x" })),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(error_code(&body), "forbidden");
    }
    // The refusals changed nothing: the token still works.
    let (status, _) = app
        .get_as(&token, &format!("/tenants/{tenant}/devices"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_shown_once_listed_without_secret_stored_hashed_and_revoked_at_once() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (status, created) = app
        .post(
            &format!("/tenants/{tenant}/tokens"),
            json!({ "name": "bridge" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("gito_") && secret.len() > 80, "{secret}");
    assert!(secret.starts_with(created["prefix"].as_str().expect("prefix")));
    let other = app.token_for(tenant).await;
    assert_ne!(secret, other, "random");

    let (status, page) = app.get(&format!("/tenants/{tenant}/tokens")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert!(
        !page.to_string().contains(&secret[20..]),
        "no secret listed"
    );
    assert!(page["items"][0].get("token").is_none());

    // Nothing stored reveals the secret.
    let stored: Vec<String> = sqlx::query_scalar("SELECT row_to_json(t)::text FROM api_tokens t")
        .fetch_all(&app.pool)
        .await
        .expect("rows");
    let secret_part = secret.rsplit('_').next().expect("secret part");
    assert!(
        stored.iter().all(|row| !row.contains(secret_part)),
        "{stored:?}"
    );

    let devices = format!("/tenants/{tenant}/devices");
    let (status, _) = app.get_as(&secret, &devices).await;
    assert_eq!(status, StatusCode::OK);
    let revoke = format!("/tenants/{tenant}/tokens/{}", id_of(&created));
    assert_eq!(app.delete(&revoke).await, StatusCode::NO_CONTENT);
    let (status, body) = app.get_as(&secret, &devices).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked at once: {body}");
    assert_eq!(app.delete(&revoke).await, StatusCode::NOT_FOUND);
    // The other token of the tenant is unaffected; a forged secret with a known key id is not.
    let (status, _) = app.get_as(&other, &devices).await;
    assert_eq!(status, StatusCode::OK);
    let forged = format!(
        "{}_{}",
        other.rsplit_once('_').expect("parts").0,
        "0".repeat(64)
    );
    let (status, _) = app.get_as(&forged, &devices).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_requests_are_validated() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    for body in [
        json!({}),
        json!({ "name": "" }),
        json!({ "name": "x", "secret": "mine" }),
    ] {
        let (status, answer) = app
            .post(&format!("/tenants/{tenant}/tokens"), body.clone())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    let (status, _) = app
        .post(
            &format!("/tenants/{}/tokens", Uuid::now_v7()),
            json!({ "name": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_websocket_wants_a_token_of_its_tenant() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let token = app.token_for(mine).await;
    let addr = app.addr;
    let attempt = |path: String| async move {
        let url = format!("ws://{addr}{path}");
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                StatusCode::from_u16(response.status().as_u16()).expect("status")
            }
            Err(e) => panic!("{path}: {e}"),
        }
    };
    assert_eq!(
        attempt(format!("/tenants/{mine}/ws")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        attempt(format!("/tenants/{mine}/ws?token=nope")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        attempt(format!("/tenants/{theirs}/ws?token={token}")).await,
        StatusCode::NOT_FOUND
    );
    // Live updates are off in this app: past authentication, the handler answers 503.
    assert_eq!(
        attempt(format!("/tenants/{mine}/ws?token={token}")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Only the WebSocket takes the token from the query.
    let (status, _) = app
        .send_as(
            None,
            Method::GET,
            &format!("/tenants/{mine}/devices?token={token}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_every_replica_however_it_was_revoked() {
    let app = TestApp::spawn().await;
    let other_replica = TestApi::start(&app.db_url, "127.0.0.1:0".parse().expect("address")).await;
    let tenant = app.tenant("t").await;
    let devices = format!("/tenants/{tenant}/devices");
    let status_on = |addr: std::net::SocketAddr, token: String| {
        let url = format!("http://{addr}{devices}");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    let replicas = [app.addr, other_replica.addr];
    let refused_everywhere = |token: String| async move {
        for addr in replicas {
            if status_on(addr, token.clone()).await != StatusCode::UNAUTHORIZED {
                return false;
            }
        }
        true
    };

    // Three tokens, each used on both replicas (so each has it cached), then revoked three ways.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let token = app.token_for(tenant).await;
        for addr in replicas {
            assert_eq!(status_on(addr, token.clone()).await, StatusCode::OK);
        }
        tokens.push(token);
    }
    let (_, page) = app.get(&format!("/tenants/{tenant}/tokens")).await;
    let first_id = id_of(&page["items"][0]);

    // Through the API of one replica: refused there at once, on the other within moments.
    let revoke = format!("/tenants/{tenant}/tokens/{first_id}");
    assert_eq!(app.delete(&revoke).await, StatusCode::NO_CONTENT);
    assert_eq!(
        status_on(app.addr, tokens[0].clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let deadline = Duration::from_secs(5);
    wait_for(deadline, "the other replica refuses", || {
        refused_everywhere(tokens[0].clone())
    })
    .await;

    // By hand in the database.
    let key_id = tokens[1].split('_').nth(1).expect("key id").to_owned();
    sqlx::query("DELETE FROM api_tokens WHERE key_id = $1")
        .bind(&key_id)
        .execute(&app.pool)
        .await
        .expect("delete");
    wait_for(deadline, "both replicas refuse", || {
        refused_everywhere(tokens[1].clone())
    })
    .await;

    // All at once.
    sqlx::query("TRUNCATE api_tokens")
        .execute(&app.pool)
        .await
        .expect("truncate");
    wait_for(deadline, "both replicas refuse", || {
        refused_everywhere(tokens[2].clone())
    })
    .await;
}
