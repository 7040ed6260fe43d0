//! Classification (#16): rules by MQTT-style pattern over external ids, applied when a device is
//! created (as gito-bridge creates them) and on demand with a dry run that tells exactly what
//! changes; classify by pattern without a rule; the inbox's device shapes; a device type's
//! discovered metrics after the processor stored telemetry. Hostile patterns are 422 or literal.

use std::collections::BTreeSet;
use std::time::Duration;

use gito_testkit::{Broker, TestApi, TestDb, publish_all, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, id_of};

async fn created(app: &TestApi, path: &str, body: Value) -> Value {
    let (status, made) = app.post(path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {made}");
    made
}

/// A device as gito-bridge creates it: name and external id only.
async fn bridge_device(app: &TestApi, tenant: Uuid, external_id: &str) -> Value {
    let (status, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": external_id, "external_id": external_id }),
        )
        .await;
    assert!(status.is_success(), "{status}: {device}");
    device
}

async fn device_type(app: &TestApi, tenant: Uuid, name: &str) -> Uuid {
    id_of(
        &created(
            app,
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": name }),
        )
        .await,
    )
}

fn ids(devices: &Value) -> BTreeSet<String> {
    devices
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every external id a device list answers, following the cursor to the end.
async fn external_ids(app: &TestApi, path: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("{path}&limit=2&cursor={c}"),
            None => format!("{path}&limit=2"),
        };
        let (status, body) = app.get(&page).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
        for d in body["items"].as_array().expect("items") {
            found.insert(d["external_id"].as_str().expect("external_id").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return found,
        }
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn rules_are_created_listed_read_updated_and_deleted_with_validated_patterns_and_targets() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let token = app.token_for(mine).await;
    let kind = device_type(&app, mine, "boiler").await;
    let their_kind = device_type(&app, theirs, "boiler").await;
    let rules = format!("/tenants/{mine}/classification-rules");

    // A tenant token works at home.
    let (status, rule) = app
        .send_as(
            Some(&token),
            Method::POST,
            &rules,
            Some(json!({ "pattern": "SDE11/+/UTILITIES/BOILER/+", "device_type_id": kind, "priority": 5 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    let keys: BTreeSet<&str> = rule
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "tenant_id",
            "pattern",
            "device_type_id",
            "organization_id",
            "site_id",
            "device_group_id",
            "priority",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(rule["tenant_id"], mine.to_string());
    assert_eq!(rule["priority"], 5);
    let item = format!("{rules}/{}", id_of(&rule));
    let (status, listed) = app.get_as(&token, &rules).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"], json!([rule]));
    assert_eq!(listed["next_cursor"], Value::Null);
    assert_eq!(
        app.get_as(&token, &item).await,
        (StatusCode::OK, rule.clone())
    );

    // Bad input: patterns, targets, another tenant's ids, unknown fields, nulls.
    let long = "a/".repeat(10_000) + "a";
    let bad = [
        json!({ "pattern": "a/#/b", "device_type_id": kind }),
        json!({ "pattern": "#/a", "device_type_id": kind }),
        json!({ "pattern": "a/+x", "device_type_id": kind }),
        json!({ "pattern": "a/b#", "device_type_id": kind }),
        json!({ "pattern": "", "device_type_id": kind }),
        json!({ "pattern": " a", "device_type_id": kind }),
        json!({ "pattern": "a\u{0}b", "device_type_id": kind }),
        json!({ "pattern": long, "device_type_id": kind }),
        json!({ "pattern": "a/+" }),
        json!({ "pattern": "a/+", "device_type_id": null }),
        json!({ "pattern": "a/+", "device_type_id": kind, "priority": 1.5 }),
        json!({ "pattern": "a/+", "device_type_id": kind, "priority": 4_000_000_000_i64 }),
        json!({ "pattern": "a/+", "device_type_id": kind, "colour": "red" }),
    ];
    for body in bad {
        let (status, answer) = app.post(&rules, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        error_code(&answer);
    }
    let (status, answer) = app
        .post(
            &rules,
            json!({ "pattern": "a/+", "device_type_id": their_kind }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(error_code(&answer), "invalid_reference");
    for target in ["organization_id", "site_id", "device_group_id"] {
        let (status, answer) = app
            .post(&rules, json!({ "pattern": "a", target: Uuid::now_v7() }))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{target}: {answer}"
        );
        assert_eq!(error_code(&answer), "invalid_reference", "{target}");
    }

    // PATCH: absent kept, null clears a target but never the last one.
    let org = id_of(
        &created(
            &app,
            &format!("/tenants/{mine}/organizations"),
            json!({ "name": "o" }),
        )
        .await,
    );
    let (status, patched) = app
        .patch(
            &item,
            json!({ "pattern": "SDE11/#", "organization_id": org, "priority": -3 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["pattern"], "SDE11/#");
    assert_eq!(patched["device_type_id"], kind.to_string());
    assert_eq!(patched["organization_id"], org.to_string());
    assert_eq!(patched["priority"], -3);
    let (status, patched) = app.patch(&item, json!({ "device_type_id": null })).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["device_type_id"], Value::Null);
    for body in [
        json!({ "organization_id": null }),
        json!({ "pattern": null }),
        json!({ "priority": null }),
        json!({ "pattern": "x/#/y" }),
        json!({ "device_type_id": their_kind }),
    ] {
        let (status, answer) = app.patch(&item, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }

    // A target a rule names cannot be deleted from under it.
    assert_eq!(
        app.delete(&format!("/tenants/{mine}/organizations/{org}"))
            .await,
        StatusCode::CONFLICT
    );

    // Another tenant's token, and my rule under their tenant, find nothing.
    let their_token = app.token_for(theirs).await;
    for (method, path) in [
        (Method::GET, rules.clone()),
        (Method::GET, item.clone()),
        (Method::PATCH, item.clone()),
        (Method::DELETE, item.clone()),
        (Method::POST, format!("{item}/apply")),
    ] {
        let (status, _) = app
            .send_as(Some(&their_token), method.clone(), &path, Some(json!({})))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let elsewhere = item.replace(&mine.to_string(), &theirs.to_string());
    assert_eq!(app.get(&elsewhere).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&elsewhere).await, StatusCode::NOT_FOUND);
    let (status, _) = app.post(&format!("{elsewhere}/apply"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        app.send_as(Some(&token), Method::DELETE, &item, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&item).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_next_device_created_as_the_bridge_does_arrives_classified_by_the_best_rule() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let rules = format!("/tenants/{tenant}/classification-rules");
    let (boiler, special, chiller) = (
        device_type(&app, tenant, "boiler").await,
        device_type(&app, tenant, "special boiler").await,
        device_type(&app, tenant, "chiller").await,
    );
    let site = id_of(
        &created(
            &app,
            &format!("/tenants/{tenant}/sites"),
            json!({ "name": "s" }),
        )
        .await,
    );
    // Before any rule, a device arrives unassigned.
    let before = bridge_device(&app, tenant, "SDE11/B1/UTILITIES/BOILER/T1").await;
    assert_eq!(before["device_type_id"], Value::Null);

    created(&app, &rules, json!({ "pattern": "SDE11/+/UTILITIES/BOILER/+", "device_type_id": boiler, "site_id": site })).await;
    // Same priority, newer: loses the tie.
    created(
        &app,
        &rules,
        json!({ "pattern": "SDE11/#", "device_type_id": chiller }),
    )
    .await;
    // Higher priority, narrower.
    created(&app, &rules, json!({ "pattern": "SDE11/B9/UTILITIES/BOILER/+", "device_type_id": special, "priority": 10 })).await;

    let next = bridge_device(&app, tenant, "SDE11/B3/UTILITIES/BOILER/T1").await;
    assert_eq!(next["device_type_id"], boiler.to_string(), "{next}");
    assert_eq!(next["site_id"], site.to_string());
    let b9 = bridge_device(&app, tenant, "SDE11/B9/UTILITIES/BOILER/T7").await;
    assert_eq!(b9["device_type_id"], special.to_string(), "priority wins");
    assert_eq!(
        b9["site_id"],
        Value::Null,
        "only the winning rule's targets"
    );
    let other = bridge_device(&app, tenant, "SDE11/B3/UTILITIES/CHILLER/C1").await;
    assert_eq!(other["device_type_id"], chiller.to_string());
    let unmatched = bridge_device(&app, tenant, "SDE12/B3/UTILITIES/BOILER/T1").await;
    assert_eq!(unmatched["device_type_id"], Value::Null);

    // A device created with a type keeps it (the rule fills only the rest); a known device is
    // returned unchanged.
    let (status, typed) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "x", "external_id": "SDE11/B4/UTILITIES/BOILER/T2", "device_type_id": chiller }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(typed["device_type_id"], chiller.to_string());
    assert_eq!(typed["site_id"], site.to_string());
    let (status, again) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "B1 again", "external_id": "SDE11/B1/UTILITIES/BOILER/T1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, before, "an existing device is returned unchanged");

    // Another tenant's rules never apply here.
    let elsewhere = app.tenant("elsewhere").await;
    let theirs = bridge_device(&app, elsewhere, "SDE11/B3/UTILITIES/BOILER/T1").await;
    assert_eq!(theirs["device_type_id"], Value::Null);
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_lists_exactly_the_devices_apply_then_changes() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (boiler, chiller) = (
        device_type(&app, tenant, "boiler").await,
        device_type(&app, tenant, "chiller").await,
    );
    let group = id_of(
        &created(
            &app,
            &format!("/tenants/{tenant}/device-groups"),
            json!({ "name": "g" }),
        )
        .await,
    );
    for b in 1..=3 {
        for t in 1..=2 {
            bridge_device(&app, tenant, &format!("SDE11/B{b}/UTILITIES/BOILER/T{t}")).await;
        }
    }
    bridge_device(&app, tenant, "SDE11/B1/UTILITIES/CHILLER/C1").await;
    // Already a chiller and in the group: the rule has nothing to fill.
    let (_, complete) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "done", "external_id": "SDE11/B4/UTILITIES/BOILER/T1",
                    "device_type_id": chiller, "device_group_id": group }),
        )
        .await;
    // Already a chiller, no group: keeps its type, gets the group.
    let (_, partial) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "half", "external_id": "SDE11/B5/UTILITIES/BOILER/T1", "device_type_id": chiller }),
        )
        .await;
    let rule = created(
        &app,
        &format!("/tenants/{tenant}/classification-rules"),
        json!({ "pattern": "SDE11/+/UTILITIES/BOILER/+", "device_type_id": boiler, "device_group_id": group }),
    )
    .await;
    let apply = format!(
        "/tenants/{tenant}/classification-rules/{}/apply",
        id_of(&rule)
    );
    let snapshot = || async {
        app.get(&format!("/tenants/{tenant}/devices?limit=1000"))
            .await
            .1
    };
    let before = snapshot().await;

    // The dry run, paged by two.
    let mut previewed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{apply}?limit=2&cursor={c}"),
            None => format!("{apply}?limit=2"),
        };
        let (status, page) = app.post(&path, json!({ "dry_run": true })).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["count"], 7, "{page}");
        assert!(page["devices"].as_array().expect("devices").len() <= 2);
        previewed.extend(page["devices"].as_array().expect("devices").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(snapshot().await, before, "a dry run changes nothing");
    assert_eq!(previewed.len(), 7);
    let previewed = Value::from(previewed);
    assert!(!ids(&previewed).contains(complete["id"].as_str().expect("id")));
    for d in previewed.as_array().expect("devices") {
        assert_eq!(d["device_group_id"], group.to_string(), "{d}");
        let expected = if d["id"] == partial["id"] {
            chiller
        } else {
            boiler
        };
        assert_eq!(
            d["device_type_id"],
            expected.to_string(),
            "a type is kept: {d}"
        );
    }

    // The real run changes exactly that set, as previewed.
    let (status, applied) = app.post(&apply, json!({ "dry_run": false })).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["count"], 7);
    assert_eq!(applied["next_cursor"], Value::Null);
    let after = snapshot().await;
    let changed: Vec<Value> = after["items"]
        .as_array()
        .expect("items")
        .iter()
        .zip(before["items"].as_array().expect("items"))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(ids(&Value::from(changed.clone())), ids(&previewed));
    for (now, then) in changed.iter().zip(previewed.as_array().expect("devices")) {
        for field in [
            "device_type_id",
            "organization_id",
            "site_id",
            "device_group_id",
        ] {
            assert_eq!(now[field], then[field], "{field}");
        }
    }
    // Applying again has nothing left to do; `{}` is a real run.
    let (status, again) = app.post(&apply, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again,
        json!({ "count": 0, "devices": [], "next_cursor": null })
    );

    // Bad input.
    for (path, body) in [
        (format!("{apply}?limit=0"), json!({ "dry_run": true })),
        (format!("{apply}?cursor=nope"), json!({ "dry_run": true })),
        (apply.clone(), json!({ "dry_run": "yes" })),
        (apply.clone(), json!({ "dry_run": true, "extra": 1 })),
    ] {
        let (status, answer) = app.post(&path, body.clone()).await;
        assert!(status.is_client_error(), "{path} {body}: {status}");
        error_code(&answer);
    }
    let (status, _) = app
        .post(
            &format!(
                "/tenants/{tenant}/classification-rules/{}/apply",
                Uuid::now_v7()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn classify_assigns_a_pattern_in_one_action_and_refuses_other_tenants_ids() {
    let app = TestApp::spawn().await;
    let (tenant, other) = (app.tenant("t").await, app.tenant("other").await);
    let (boiler, chiller) = (
        device_type(&app, tenant, "boiler").await,
        device_type(&app, tenant, "chiller").await,
    );
    let their_kind = device_type(&app, other, "boiler").await;
    for b in 1..=3 {
        bridge_device(&app, tenant, &format!("SDE11/B{b}/UTILITIES/BOILER/T1")).await;
    }
    let (_, typed) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "typed", "external_id": "SDE11/B4/UTILITIES/BOILER/T1", "device_type_id": chiller }),
        )
        .await;
    let theirs = bridge_device(&app, other, "SDE11/B1/UTILITIES/BOILER/T1").await;
    let classify = format!("/tenants/{tenant}/devices/classify");
    let pattern = "SDE11/+/UTILITIES/BOILER/+";

    let (status, dry) = app
        .post(&classify, json!({ "pattern": pattern, "device_type_id": boiler, "dry_run": true, "only_unassigned": true }))
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["count"], 3);
    let (_, unassigned) = app
        .get(&format!("/tenants/{tenant}/devices?unassigned=true"))
        .await;
    assert_eq!(
        unassigned["items"].as_array().expect("items").len(),
        3,
        "nothing changed"
    );
    let (status, all) = app
        .post(
            &classify,
            json!({ "pattern": pattern, "device_type_id": boiler, "dry_run": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all["count"], 4,
        "without only_unassigned a type is replaced"
    );
    assert!(ids(&all["devices"]).contains(typed["id"].as_str().expect("id")));

    let (status, done) = app
        .post(
            &classify,
            json!({ "pattern": pattern, "device_type_id": boiler, "only_unassigned": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["count"], 3);
    assert_eq!(ids(&done["devices"]), ids(&dry["devices"]));
    // The REST API agrees.
    let (_, unassigned) = app
        .get(&format!("/tenants/{tenant}/devices?unassigned=true"))
        .await;
    assert_eq!(unassigned["items"], json!([]));
    let (_, boilers) = app
        .get(&format!(
            "/tenants/{tenant}/devices?device_type_id={boiler}"
        ))
        .await;
    assert_eq!(boilers["items"].as_array().expect("items").len(), 3);
    let (_, still) = app
        .get(&format!("/tenants/{tenant}/devices/{}", id_of(&typed)))
        .await;
    assert_eq!(still["device_type_id"], chiller.to_string());
    let (_, untouched) = app
        .get(&format!("/tenants/{other}/devices/{}", id_of(&theirs)))
        .await;
    assert_eq!(
        untouched["device_type_id"],
        Value::Null,
        "another tenant's device"
    );

    // Another tenant's ids are refused, in a dry run too, and change nothing.
    for dry_run in [true, false] {
        let (status, answer) = app
            .post(
                &classify,
                json!({ "pattern": "#", "device_type_id": their_kind, "dry_run": dry_run }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(error_code(&answer), "invalid_reference");
    }
    for body in [
        json!({ "pattern": pattern }),
        json!({ "pattern": "a/#/b", "device_type_id": boiler }),
        json!({ "pattern": "a+", "device_type_id": boiler }),
        json!({ "device_type_id": boiler }),
    ] {
        let (status, answer) = app.post(&classify, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    let (status, _) = app
        .post(
            &format!("/tenants/{}/devices/classify", Uuid::now_v7()),
            json!({ "pattern": "#", "device_type_id": boiler }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let token = app.token_for(other).await;
    let (status, _) = app
        .send_as(
            Some(&token),
            Method::POST,
            &classify,
            Some(json!({ "pattern": "#", "device_type_id": boiler })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hostile_patterns_are_refused_or_matched_literally_never_a_500() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let hostile = [
        "plant/100%/a",
        "plant/1_0/a",
        "plant/x\\y/a",
        "plant/a.b/a",
        "plant/(a|b)*/a",
        "plant/[a-z]{2}/a",
        "plant/^$?/a",
        "plant//a",
        "plant/é😀/a",
        "plant/a/b/c",
        "plant",
    ];
    for id in hostile {
        bridge_device(&app, tenant, id).await;
    }
    let list = |pattern: &str| {
        let encoded: String = url_encode(pattern);
        format!("/tenants/{tenant}/devices?pattern={encoded}")
    };
    // Each external id as a pattern matches itself and nothing else.
    for id in hostile {
        assert_eq!(external_ids(&app, &list(id)).await, set(&[id]), "{id}");
    }
    // LIKE and regex wildcards in a pattern are plain characters.
    assert_eq!(external_ids(&app, &list("plant/1%0/a")).await, set(&[]));
    assert_eq!(external_ids(&app, &list("plant/1.0/a")).await, set(&[]));
    assert_eq!(external_ids(&app, &list("plant/.*/a")).await, set(&[]));
    assert_eq!(external_ids(&app, &list("plant/%")).await, set(&[]));
    // `+` is exactly one level, possibly empty; `#` the rest.
    let mut three: Vec<&str> = hostile
        .iter()
        .copied()
        .filter(|h| h.split('/').count() == 3)
        .collect();
    three.sort();
    assert_eq!(external_ids(&app, &list("plant/+/a")).await, set(&three));
    let typed = format!("/tenants/{tenant}/devices?pattern=plant/+/a");
    assert_eq!(
        external_ids(&app, &typed).await,
        set(&three),
        "+ typed into a URL"
    );
    assert_eq!(
        external_ids(&app, &list("+/+/+/+")).await,
        set(&["plant/a/b/c"])
    );
    // `plant/#` includes `plant` itself.
    assert_eq!(
        external_ids(&app, &list("plant/#")).await.len(),
        hostile.len()
    );
    assert_eq!(external_ids(&app, &list("#")).await.len(), hostile.len());
    assert_eq!(
        external_ids(&app, &list("plant/a/#")).await,
        set(&["plant/a/b/c"])
    );
    // The longest accepted pattern is answered (nothing matches), a longer one is 422.
    let longest = "+/".repeat(511) + "+/";
    assert_eq!(longest.len(), 1024);
    let (status, body) = app.get(&list(&longest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], json!([]));
    for bad in [
        "+/".repeat(1_000),
        "a/#/b".to_owned(),
        "#/".to_owned(),
        "+x/a".to_owned(),
        "a/b+".to_owned(),
        String::new(),
        " a".to_owned(),
        "a\u{7}".to_owned(),
    ] {
        let (status, body) = app.get(&list(&bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {body}");
        error_code(&body);
    }
    // The same rules in a classification rule: a device arrives classified only by a literal match.
    let kind = device_type(&app, tenant, "k").await;
    created(
        &app,
        &format!("/tenants/{tenant}/classification-rules"),
        json!({ "pattern": "plant/1%0/+", "device_type_id": kind }),
    )
    .await;
    let near = bridge_device(&app, tenant, "plant/100/x").await;
    assert_eq!(near["device_type_id"], Value::Null);
    let exact = bridge_device(&app, tenant, "plant/1%0/x").await;
    assert_eq!(exact["device_type_id"], kind.to_string());
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn device_shapes_group_devices_by_shape_paged_and_usable_as_patterns() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let kind = device_type(&app, tenant, "k").await;
    for b in 1..=3 {
        for t in 1..=4 {
            bridge_device(&app, tenant, &format!("SDE11/B{b}/UTILITIES/BOILER/T{t}")).await;
        }
    }
    bridge_device(&app, tenant, "SDE11/B1/UTILITIES/CHILLER/C1").await;
    bridge_device(&app, tenant, "SDE11/JAX/UTILITIES/BOILER/OPT_G").await;
    bridge_device(&app, tenant, "a+b/#x").await;
    bridge_device(&app, tenant, "solo1").await;
    bridge_device(&app, tenant, "a//b1/").await;
    app.post(
        &format!("/tenants/{tenant}/devices"),
        json!({ "name": "typed", "external_id": "SDE11/B9/UTILITIES/BOILER/T1", "device_type_id": kind }),
    )
    .await;
    app.post(
        &format!("/tenants/{tenant}/devices"),
        json!({ "name": "no external id" }),
    )
    .await;

    let shapes = format!("/tenants/{tenant}/device-shapes");
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{shapes}?unassigned=true&limit=2&cursor={}", url_encode(c)),
            None => format!("{shapes}?unassigned=true&limit=2"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let summary: Vec<(String, i64, String)> = items
        .iter()
        .map(|s| {
            assert_eq!(s["metrics"], json!([]), "nothing sent yet");
            (
                s["shape"].as_str().expect("shape").to_owned(),
                s["count"].as_i64().expect("count"),
                s["example_external_id"]
                    .as_str()
                    .expect("example")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("+/+".to_owned(), 1, "a+b/#x".to_owned()),
            (
                "SDE11/+/UTILITIES/BOILER/+".to_owned(),
                12,
                "SDE11/B1/UTILITIES/BOILER/T1".to_owned()
            ),
            (
                "SDE11/+/UTILITIES/CHILLER/+".to_owned(),
                1,
                "SDE11/B1/UTILITIES/CHILLER/C1".to_owned()
            ),
            (
                "SDE11/JAX/UTILITIES/BOILER/OPT_G".to_owned(),
                1,
                "SDE11/JAX/UTILITIES/BOILER/OPT_G".to_owned()
            ),
            ("a//+/".to_owned(), 1, "a//b1/".to_owned()),
            ("solo1".to_owned(), 1, "solo1".to_owned()),
        ]
    );
    // A shape is a pattern that selects its group.
    let (status, group) = app
        .get(&format!(
            "/tenants/{tenant}/devices?unassigned=true&limit=100&pattern={}",
            url_encode("SDE11/+/UTILITIES/BOILER/+")
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Its 12, and the JAX boiler whose literal levels it also matches.
    assert_eq!(group["items"].as_array().expect("items").len(), 13);
    // Without `unassigned`, the classified device counts too.
    let (_, all) = app.get(&shapes).await;
    assert_eq!(all["items"][1]["count"], 13);
    for bad in [
        format!("{shapes}?cursor=nope"),
        format!("{shapes}?limit=0"),
        format!("{shapes}?unassigned=maybe"),
        format!("{shapes}?colour=red"),
    ] {
        let (status, body) = app.get(&bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = app
        .get(&format!("/tenants/{}/device-shapes", Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_records_metrics_sent_for_discovered_metrics_and_shapes() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let api = TestApi::start_processing(&db.url, &broker.url()).await;
    let tenant = api.tenant("t").await;
    let (status, kind) = api
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": "boiler", "telemetry_schema": { "temp": { "unit": "°C" }, "CHIMNEY_TEMP": {} } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let kind = id_of(&kind);
    created(
        &api,
        &format!("/tenants/{tenant}/classification-rules"),
        json!({ "pattern": "SDE11/+/UTILITIES/BOILER/+", "device_type_id": kind }),
    )
    .await;
    let boiler = bridge_device(&api, tenant, "SDE11/B3/UTILITIES/BOILER/T1").await;
    assert_eq!(
        boiler["device_type_id"],
        kind.to_string(),
        "classified on arrival"
    );
    let loose = bridge_device(&api, tenant, "SDE11/B3/UTILITIES/PUMP/P1").await;
    let discovered = format!("/tenants/{tenant}/device-types/{kind}/discovered-metrics");
    let (status, nothing) = api.get(&discovered).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        nothing,
        json!({ "sent_not_in_schema": [], "in_schema_never_sent": ["CHIMNEY_TEMP", "temp"], "in_schema_and_sent": [] })
    );

    let message = |device: &Value, ts: &str, metrics: Value| {
        (
            format!(
                "{tenant}/devices/{}/telemetry",
                device["id"].as_str().expect("id")
            ),
            json!({ "ts": ts, "source_topic": "x", "metrics": metrics })
                .to_string()
                .into_bytes(),
        )
    };
    publish_all(
        &broker.url(),
        vec![
            message(
                &boiler,
                "2026-01-05T10:00:00Z",
                json!({ "temp": 70.5, "pressure": 1.2 }),
            ),
            message(&boiler, "2026-01-05T10:00:30Z", json!({ "temp": 71.0 })),
            message(
                &loose,
                "2026-01-05T10:00:00Z",
                json!({ "rpm": 1400, "on": true }),
            ),
        ],
    )
    .await;
    let expected = json!({
        "sent_not_in_schema": ["pressure"],
        "in_schema_never_sent": ["CHIMNEY_TEMP"],
        "in_schema_and_sent": ["temp"]
    });
    wait_for(Duration::from_secs(30), "discovered metrics", || async {
        api.get(&discovered).await.1 == expected
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "the unassigned pump's metrics",
        || async {
            let (_, shapes) = api
                .get(&format!("/tenants/{tenant}/device-shapes?unassigned=true"))
                .await;
            shapes["items"]
                == json!([{
                    "shape": "SDE11/+/UTILITIES/PUMP/+",
                    "metrics": ["on", "rpm"],
                    "count": 1,
                    "last_seen_at": "2026-01-05T10:00:00Z",
                    "example_external_id": "SDE11/B3/UTILITIES/PUMP/P1"
                }])
        },
    )
    .await;
    let (status, _) = api
        .get(&format!(
            "/tenants/{tenant}/device-types/{}/discovered-metrics",
            Uuid::now_v7()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = api.tenant("other").await;
    let token = api.token_for(other).await;
    let (status, _) = api.get_as(&token, &discovered).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .get(&format!(
            "/tenants/{other}/device-types/{kind}/discovered-metrics"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(db);
}
