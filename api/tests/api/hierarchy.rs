//! Organizations, sites, device groups and device types: CRUD, tenant isolation, references.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, id_of};

/// Every hierarchy resource supports the same lifecycle.
#[tokio::test]
async fn each_hierarchy_resource_supports_create_list_read_patch_delete() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    for resource in ["organizations", "sites", "device-groups", "device-types"] {
        let base = format!("/tenants/{tenant}/{resource}");
        let (status, created) = app.post(&base, json!({ "name": "first" })).await;
        assert_eq!(status, StatusCode::CREATED, "{resource}: {created}");
        assert_eq!(created["tenant_id"], tenant.to_string());
        let id = id_of(&created);

        let (status, list) = app.get(&base).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            list["items"].as_array().map(Vec::len),
            Some(1),
            "{resource}"
        );
        assert_eq!(list["next_cursor"], Value::Null);

        let (status, renamed) = app
            .patch(&format!("{base}/{id}"), json!({ "name": "renamed" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{resource}: {renamed}");
        assert_eq!(renamed["name"], "renamed");
        let (_, read) = app.get(&format!("{base}/{id}")).await;
        assert_eq!(read["name"], "renamed");

        assert_eq!(
            app.delete(&format!("{base}/{id}")).await,
            StatusCode::NO_CONTENT
        );
        let (status, body) = app.get(&format!("{base}/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{resource}");
        assert_eq!(error_code(&body), "not_found");
        assert_eq!(
            app.delete(&format!("{base}/{id}")).await,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn another_tenants_rows_are_invisible_on_paths() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("owner").await;
    let other = app.tenant("other").await;
    for resource in ["organizations", "sites", "device-groups", "device-types"] {
        let (_, created) = app
            .post(
                &format!("/tenants/{owner}/{resource}"),
                json!({ "name": "x" }),
            )
            .await;
        let foreign = format!("/tenants/{other}/{resource}/{}", id_of(&created));
        assert_eq!(
            app.get(&foreign).await.0,
            StatusCode::NOT_FOUND,
            "{resource} read"
        );
        assert_eq!(
            app.patch(&foreign, json!({ "name": "stolen" })).await.0,
            StatusCode::NOT_FOUND,
            "{resource} patch"
        );
        assert_eq!(
            app.delete(&foreign).await,
            StatusCode::NOT_FOUND,
            "{resource} delete"
        );
        let (_, list) = app.get(&format!("/tenants/{other}/{resource}")).await;
        assert_eq!(list["items"], json!([]), "{resource} list");
        let (_, still) = app
            .get(&format!("/tenants/{owner}/{resource}/{}", id_of(&created)))
            .await;
        assert_eq!(still["name"], "x", "{resource} untouched");
    }
}

#[tokio::test]
async fn routes_under_an_unknown_tenant_are_404() {
    let app = TestApp::spawn().await;
    let ghost = Uuid::now_v7();
    for resource in [
        "organizations",
        "sites",
        "device-groups",
        "device-types",
        "devices",
    ] {
        let (status, body) = app.get(&format!("/tenants/{ghost}/{resource}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{resource} list: {body}");
        let (status, body) = app
            .post(
                &format!("/tenants/{ghost}/{resource}"),
                json!({ "name": "x" }),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{resource} create: {body}");
        assert_eq!(body["error"]["message"], "tenant not found");
    }
}

#[tokio::test]
async fn hierarchy_references_must_stay_inside_the_tenant() {
    let app = TestApp::spawn().await;
    let mine = app.tenant("mine").await;
    let theirs = app.tenant("theirs").await;
    let (_, their_org) = app
        .post(
            &format!("/tenants/{theirs}/organizations"),
            json!({ "name": "o" }),
        )
        .await;
    let (_, their_site) = app
        .post(&format!("/tenants/{theirs}/sites"), json!({ "name": "s" }))
        .await;

    let (status, body) = app
        .post(
            &format!("/tenants/{mine}/sites"),
            json!({ "name": "s", "organization_id": id_of(&their_org) }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_reference");
    let (status, _) = app
        .post(
            &format!("/tenants/{mine}/device-groups"),
            json!({ "name": "g", "site_id": id_of(&their_site) }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .post(
            &format!("/tenants/{mine}/sites"),
            json!({ "name": "s", "organization_id": Uuid::now_v7() }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a missing id is refused like a foreign one"
    );
}

#[tokio::test]
async fn site_organization_can_be_assigned_and_cleared() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, org) = app
        .post(
            &format!("/tenants/{tenant}/organizations"),
            json!({ "name": "o" }),
        )
        .await;
    let (_, site) = app
        .post(&format!("/tenants/{tenant}/sites"), json!({ "name": "s" }))
        .await;
    let path = format!("/tenants/{tenant}/sites/{}", id_of(&site));
    let (_, assigned) = app
        .patch(&path, json!({ "organization_id": id_of(&org) }))
        .await;
    assert_eq!(assigned["organization_id"], org["id"]);
    let (_, renamed) = app.patch(&path, json!({ "name": "renamed" })).await;
    assert_eq!(
        renamed["organization_id"], org["id"],
        "an absent field is kept"
    );
    let (_, cleared) = app.patch(&path, json!({ "organization_id": null })).await;
    assert_eq!(cleared["organization_id"], Value::Null, "null clears");
}

#[tokio::test]
async fn deleting_a_parent_still_in_use_is_409() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, org) = app
        .post(
            &format!("/tenants/{tenant}/organizations"),
            json!({ "name": "o" }),
        )
        .await;
    let (_, site) = app
        .post(
            &format!("/tenants/{tenant}/sites"),
            json!({ "name": "s", "organization_id": id_of(&org) }),
        )
        .await;
    let (_, kind) = app
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": "boiler" }),
        )
        .await;
    app.post(
        &format!("/tenants/{tenant}/devices"),
        json!({ "name": "d", "device_type_id": id_of(&kind) }),
    )
    .await;

    for path in [
        format!("/tenants/{tenant}/organizations/{}", id_of(&org)),
        format!("/tenants/{tenant}/device-types/{}", id_of(&kind)),
    ] {
        let response = app
            .client
            .delete(app.url(&path))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::CONFLICT, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), "conflict");
    }
    assert_eq!(
        app.get(&format!("/tenants/{tenant}/sites/{}", id_of(&site)))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn device_type_names_are_unique_per_tenant_only() {
    let app = TestApp::spawn().await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    assert_eq!(
        app.post(
            &format!("/tenants/{a}/device-types"),
            json!({ "name": "SDE11" })
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (status, body) = app
        .post(
            &format!("/tenants/{a}/device-types"),
            json!({ "name": "SDE11" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "conflict");
    assert_eq!(
        app.post(
            &format!("/tenants/{b}/device-types"),
            json!({ "name": "SDE11" })
        )
        .await
        .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn device_type_telemetry_schema_is_validated_stored_and_clearable() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/device-types");
    let schema = json!({ "CHIMNEY_TEMP": { "unit": "°C", "min": 0.0, "max": 600.0 }, "ON": {} });
    let (status, created) = app
        .post(
            &base,
            json!({ "name": "boiler", "description": "Plant boilers", "telemetry_schema": schema }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["telemetry_schema"], schema);
    assert_eq!(created["description"], "Plant boilers");

    for bad in [
        json!({ "T": { "min": 10.0, "max": 1.0 } }),
        json!({ "T": { "unit": 5 } }),
        json!({ "T": { "colour": "red" } }),
        json!(["not", "an", "object"]),
    ] {
        let (status, body) = app
            .post(&base, json!({ "name": "bad", "telemetry_schema": bad }))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
    }

    let path = format!("{base}/{}", id_of(&created));
    let (_, cleared) = app
        .patch(
            &path,
            json!({ "telemetry_schema": null, "description": null }),
        )
        .await;
    assert_eq!(cleared["telemetry_schema"], Value::Null);
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["name"], "boiler");
}
