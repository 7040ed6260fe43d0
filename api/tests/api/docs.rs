//! The OpenAPI document as a reader meets it, fetched from a running API: every operation says
//! what it does (a one-line `summary` and a `description`), every request body comes with an
//! example that the API accepts, and README.md's route table agrees with the document.
//!
//! The README rule: in the "REST API" section, the first cell of each table row names routes as
//! backticked `` `/path` `` or `` `METHOD /path` `` (a query such as `?state=open` or
//! `[?device_id=]` is not part of the path; other backticked text there, e.g. `{name}`, is not a
//! route). Every route named there is in the document's `paths`, with that method when one is
//! named; `/openapi.json` and `/docs` excepted, which serve the document and are not in it. And
//! every path of the document is named there, literally or, for an item path `C/{id}`, through
//! its collection `C`.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, TestApi, TestApp, error_code};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// Served beside the document, not described in it.
const NOT_IN_DOCUMENT: [&str; 2] = ["/openapi.json", "/docs"];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(api: &TestApi) -> Value {
    let (status, doc) = api.send_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                found.push((method.as_str(), path.as_str(), operation));
            }
        }
    }
    assert!(found.len() >= 40, "every route is documented: {found:?}");
    found
}

fn non_empty(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

#[tokio::test]
async fn every_operation_has_a_one_line_summary_and_a_description() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut missing = Vec::new();
    for (method, path, operation) in operations(&doc) {
        match non_empty(&operation["summary"]) {
            None => missing.push(format!("{method} {path}: no summary")),
            // A summary of two lines is a doc comment that forgot its blank `///` line.
            Some(summary) if summary.contains('\n') => {
                missing.push(format!("{method} {path}: summary of several lines"));
            }
            Some(_) => {}
        }
        if non_empty(&operation["description"]).is_none() {
            missing.push(format!("{method} {path}: no description"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// The schema `schema` stands for, `$ref`s into `components.schemas` resolved.
/// An optional body's schema is "null or T" (`oneOf`): T is what an example must fit.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(alternatives) = schema["oneOf"].as_array()
        && let [only] = alternatives
            .iter()
            .filter(|a| a["type"] != "null")
            .collect::<Vec<_>>()[..]
    {
        return resolve(doc, only);
    }
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a local schema: {reference}"));
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The first example of a media type or schema object, if it has one.
fn example_of(object: &Value) -> Option<&Value> {
    object
        .get("example")
        .or_else(|| object["examples"].as_array().and_then(|e| e.first()))
        .or_else(|| {
            // A media type's `examples` is a map of Example objects.
            object["examples"]
                .as_object()
                .and_then(|e| e.values().next())
                .map(|e| &e["value"])
        })
        .filter(|e| !e.is_null())
}

/// Each operation with a request body, with the body's example (on the media type or on its
/// schema) and that schema.
fn body_examples(doc: &Value) -> Vec<(&str, &str, Option<&Value>, &Value)> {
    let mut found = Vec::new();
    for (method, path, operation) in operations(doc) {
        let Some(content) = operation.get("requestBody").map(|b| &b["content"]) else {
            continue;
        };
        let media = &content["application/json"];
        assert!(media.is_object(), "{method} {path}: a JSON body: {content}");
        let schema = resolve(doc, &media["schema"]);
        found.push((
            method,
            path,
            example_of(media).or(example_of(schema)),
            schema,
        ));
    }
    assert!(found.len() >= 10, "POST and PATCH bodies: {found:?}");
    found
}

#[tokio::test]
async fn every_request_body_has_an_example_that_fits_its_schema() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut wrong = Vec::new();
    for (method, path, example, schema) in body_examples(&doc) {
        let Some(example) = example else {
            wrong.push(format!("{method} {path}: no example"));
            continue;
        };
        let Some(fields) = example.as_object() else {
            wrong.push(format!(
                "{method} {path}: the example is not an object: {example}"
            ));
            continue;
        };
        // The bodies deny unknown fields, and some fields are required.
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for field in fields.keys().filter(|f| !properties.contains_key(*f)) {
            wrong.push(format!(
                "{method} {path}: the example's {field} is not in the schema"
            ));
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().expect("a field name");
            if !fields.contains_key(required) {
                wrong.push(format!("{method} {path}: the example lacks {required}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Each example, sent as it is, in a tenant of its own: every field rule holds. The example's
/// references name nothing, so `invalid_reference` is a fine answer (the body was read and
/// checked before). A PATCH goes to an item made for it by its collection's POST (that example,
/// or its required fields alone), so that the update itself runs too.
#[tokio::test]
async fn every_request_body_example_is_accepted_by_the_api() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("docs").await.to_string();
    let doc = document(&app).await;
    let examples = body_examples(&doc);
    let mut refused = Vec::new();
    let mut items = BTreeMap::new();
    let send = |method: &str, path: &str, body: &Value| {
        let method: Method = method.to_uppercase().parse().expect("a method");
        let path = path.replace("{tenant_id}", &tenant);
        let body = body.clone();
        let app = &app;
        async move {
            app.send_as(Some(ADMIN_TOKEN), method, &path, Some(body))
                .await
        }
    };
    // Bodies that reference other items, then actions on an item, last, so that those items
    // exist (see `linked`).
    let mut posts: Vec<_> = examples.iter().filter(|(m, ..)| *m == "post").collect();
    posts.sort_by_key(|(_, path, example, _)| {
        let references = example.is_some_and(|e| {
            e.as_object()
                .into_iter()
                .flatten()
                .any(|(f, _)| f.ends_with("_id"))
        });
        (path.contains("{id}"), references)
    });
    let patches = examples.iter().filter(|(m, ..)| *m == "patch");
    for (method, path, example, schema) in posts.into_iter().chain(patches) {
        let Some(example) = example else { continue };
        let mut filled = (*path).to_owned();
        // `/x/{id}` and `/x/{id}/action` use the item `/x`'s POST made.
        if let Some((collection, _)) = path.split_once("/{id}") {
            let id = items.get(collection).cloned();
            filled = filled.replace("{id}", &id.unwrap_or_else(|| Uuid::now_v7().to_string()));
        }
        let (status, body) = send(method, &filled, example).await;
        let fine = status.is_success()
            || (status == StatusCode::UNPROCESSABLE_ENTITY
                && error_code(&body) == "invalid_reference");
        if !fine {
            refused.push(format!("{method} {path} {example}: {status} {body}"));
        }
        if *method != "post" {
            continue;
        }
        let linked = linked(example, &items);
        let created = if status.is_success() {
            body
        } else if let (StatusCode::CREATED, made) = send(method, path, &linked).await {
            made
        } else {
            let required: Map<String, Value> = example
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(field, _)| {
                    schema["required"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|f| f == *field))
                })
                .map(|(field, value)| (field.clone(), value.clone()))
                .collect();
            send(method, path, &Value::Object(required)).await.1
        };
        if let Some(id) = created["id"].as_str() {
            items.insert((*path).to_owned(), id.to_owned());
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

/// `example` with its references to a device type, organization, site or device group replaced
/// by the item that collection's POST made earlier (for bodies that need at least one).
fn linked(example: &Value, items: &BTreeMap<String, String>) -> Value {
    let mut example = example.clone();
    for (field, value) in example.as_object_mut().into_iter().flatten() {
        let collection = match field.as_str() {
            "device_type_id" => "device-types",
            "organization_id" => "organizations",
            "site_id" => "sites",
            "device_group_id" => "device-groups",
            _ => continue,
        };
        if let Some(id) = items.get(&format!("/tenants/{{tenant_id}}/{collection}")) {
            *value = Value::String(id.clone());
        }
    }
    example
}

/// The routes named in the first cells of README.md's "REST API" table: (method, path).
fn readme_routes() -> Vec<(Option<String>, String)> {
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("REST API\n"))
        .expect("README.md has a \"REST API\" section");
    let mut routes = Vec::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        // `\|` is a pipe inside a cell.
        let row = row.replace("\\|", "\u{0}");
        let first = row.split('|').nth(1).unwrap_or_default();
        for (i, span) in first.split('`').enumerate() {
            if i % 2 == 0 {
                continue; // outside backticks
            }
            let (method, path) = match span.split_once(' ') {
                Some((method, path)) if METHODS.contains(&method.to_lowercase().as_str()) => {
                    (Some(method.to_lowercase()), path)
                }
                _ => (None, span),
            };
            if !path.starts_with('/') {
                continue;
            }
            let end = path.find(['?', '[']).unwrap_or(path.len());
            routes.push((method, path[..end].to_owned()));
        }
    }
    assert!(routes.len() >= 15, "README.md's route table: {routes:?}");
    routes
}

#[tokio::test]
async fn the_readme_route_table_and_the_document_name_the_same_routes() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let paths: &Map<String, Value> = doc["paths"].as_object().expect("paths");
    let routes = readme_routes();
    let mut wrong = Vec::new();
    for (method, path) in &routes {
        if NOT_IN_DOCUMENT.contains(&path.as_str()) {
            continue;
        }
        match (paths.get(path), method) {
            (None, _) => wrong.push(format!("README.md names {path}, the document does not")),
            (Some(item), Some(method)) if item.get(method).is_none() => {
                wrong.push(format!(
                    "README.md names {method} {path}, the document does not"
                ));
            }
            _ => {}
        }
    }
    let listed: BTreeSet<&str> = routes.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths.keys() {
        let collection = path.strip_suffix("/{id}");
        if !listed.contains(path.as_str()) && !collection.is_some_and(|c| listed.contains(c)) {
            wrong.push(format!(
                "the document has {path}, README.md's table does not"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
