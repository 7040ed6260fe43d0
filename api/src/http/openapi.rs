//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes as the
//! router is built (so a route cannot exist undocumented), and the interactive docs page.
//!
//! Every operation gets the error responses it can produce, all in the one error shape, and the
//! bearer security scheme unless it is public; these are added here rather than repeated on
//! forty handlers.

use axum::http::Method;
use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{IntoParams, ToSchema};

pub use crate::domain::fields::{Description, ExternalId, Name};
use uuid::Uuid;

/// Paths that answer without a token.
pub const PUBLIC_PATHS: [&str; 4] = ["/health", "/ready", "/openapi.json", "/docs"];

const SECURITY_SCHEME: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gito API",
        description = "Tenants, their device hierarchy and device types, devices, telemetry and alerts.\n\n\
            Send `Authorization: Bearer <token>`: the admin token (`GITO_ADMIN_TOKEN`) may do everything; \
            a tenant token works only under its own `/tenants/{tenant_id}/...`.",
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "tenants", description = "Tenants and their API tokens (admin)"),
        (name = "hierarchy", description = "Organizations, sites and device groups"),
        (name = "device types"),
        (name = "devices"),
        (name = "classification", description = "Classification rules, classifying devices by pattern, and the inbox's device shapes"),
        (name = "telemetry"),
        (name = "storage", description = "Telemetry storage: a tenant's rows and bytes, the partitions (admin)"),
        (name = "alerts", description = "Alert rules and the alerts they raise"),
        (name = "dead letters", description = "Messages the processor could not store, to read and replay"),
        (name = "live", description = "WebSocket push of telemetry and alerts"),
    )
)]
pub struct ApiDoc;

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `invalid_field`, `unauthorized`, ...
    pub code: String,
    /// For humans; may change between versions.
    pub message: String,
}

/// `{tenant_id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TenantPath {
    /// The tenant's id.
    pub tenant_id: Uuid,
}

/// `{tenant_id}` and `{id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ItemPath {
    /// The tenant's id.
    pub tenant_id: Uuid,
    /// The item's id.
    pub id: Uuid,
}

/// Adds what every operation shares: the security requirement and the error responses.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SECURITY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin token or a tenant token (`gito_...`)."))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC_PATHS.contains(&path.as_str());
        for (method, operation) in operations(item) {
            operation.operation_id = Some(operation_id(path, operation.operation_id.as_deref()));
            add_errors(operation, &method, public);
            if !public {
                operation.security = Some(vec![SecurityRequirement::new(
                    SECURITY_SCHEME,
                    Vec::<String>::new(),
                )]);
            }
        }
    }
    doc
}

/// utoipa names an operation after its handler (`list`, `create`, ...), which every resource
/// shares: qualify it with the resource, e.g. `list_devices`, `ack_alerts`.
fn operation_id(path: &str, handler: Option<&str>) -> String {
    let resource = path
        .split('/')
        .rfind(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or("root")
        .replace('-', "_");
    match handler {
        Some(name) if name != resource => format!("{name}_{resource}"),
        _ => resource,
    }
}

fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PUT, item.put.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
    .collect()
}

/// The statuses our middleware and extractors can answer with, by method.
fn add_errors(operation: &mut Operation, method: &Method, public: bool) {
    let mut statuses = vec![
        (
            "500",
            "Internal error (logged with its cause; the answer says nothing more)",
        ),
        (
            "503",
            "The request took longer than GITO_REQUEST_TIMEOUT_SECS, or the service is not ready",
        ),
    ];
    if !public {
        statuses.extend([
            (
                "400",
                "Malformed path or query (e.g. an id that is not a UUID, a bad cursor or limit)",
            ),
            ("401", "No token, or an invalid or revoked one"),
            ("403", "A tenant token on an admin-only route"),
            (
                "404",
                "No such item in this tenant, or no such tenant (also for another tenant's items)",
            ),
            ("422", "A value that cannot be accepted or stored"),
        ]);
    }
    if matches!(*method, Method::POST | Method::PATCH | Method::PUT) {
        statuses.extend([
            ("409", "Conflicts with an existing item"),
            ("413", "Body larger than GITO_MAX_BODY_BYTES"),
            ("415", "Body not sent as application/json"),
        ]);
    }
    if *method == Method::DELETE {
        statuses.push(("409", "Still in use"));
    }
    for (status, description) in statuses {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build()
                    .into()
            });
    }
}
