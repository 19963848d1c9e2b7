//! The API description (OpenAPI 3.1) at `GET /openapi.json`, generated from the handlers' own
//! request and response types and their `#[utoipa::path]` attributes, and its docs page (Swagger
//! UI, shipped inside the `utoipa-swagger-ui` crate: nothing is fetched at build or run time) at
//! `GET /docs/`.
//!
//! What every operation shares — the `X-Tenant-ID` header, the authentication errors, the JSON
//! body's rejections, `500` and `503` — is added to the generated document in one place
//! ([`complete`]) rather than repeated on each handler, so that an endpoint cannot forget one.

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    body::Bytes,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde_json::{Map, Value, json};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{app::AppState, auth, chat, documents, error::error_response, tenants, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "DocuChat",
        description = "Multi-tenant document chat: tenant admins upload PDFs, which are read, cut into chunks and \
            embedded in the background; users ask questions over a WebSocket (`/ws/chat`, described on its operation) \
            and get answers streamed token by token with their sources; every token spent is metered (`/v1/usage`).\n\n\
            Every tenant-scoped request names its tenant with `X-Tenant-ID` (the tenant's id or slug). Users log in with \
            a 6-digit code sent by e-mail and carry a JWT (`Authorization: Bearer <token>`); machines use API keys \
            (`Authorization: Bearer dck_…`) with scopes. Every error has one shape, `{\"error\": {\"code\", \"message\"}}`, \
            with the matching status; every response carries an `x-request-id`.",
        license(name = "MIT"),
    ),
    paths(
        super::routes::root,
        super::routes::healthz,
        auth::routes::request_code,
        auth::routes::verify_code,
        auth::routes::me,
        auth::routes::logout,
        auth::routes::logout_all,
        auth::routes::create_key,
        auth::routes::list_keys,
        auth::routes::revoke_key,
        auth::routes::add_member,
        auth::routes::list_members,
        auth::routes::change_member,
        auth::routes::remove_member,
        tenants::routes::show,
        tenants::routes::update,
        documents::routes::upload,
        documents::routes::list,
        documents::routes::show,
        documents::routes::remove,
        documents::routes::events,
        documents::routes::file,
        chat::routes::chat_socket,
        chat::routes::list_sessions,
        chat::routes::list_messages,
        chat::routes::delete_session,
        usage::routes::usage,
        usage::routes::show_quotas,
        usage::routes::put_quota,
        usage::routes::remove_quota,
    ),
    components(schemas(chat::ws::ClientFrame, chat::turn::Frame)),
    modifiers(&Security),
    tags(
        (name = "service", description = "What the service is, and whether it can serve"),
        (name = "auth", description = "Log in with a code sent by e-mail; tokens"),
        (name = "members", description = "Who belongs to the tenant (admins)"),
        (name = "tenant", description = "The tenant's login policy (admins)"),
        (name = "documents", description = "PDF upload and ingestion"),
        (name = "chat", description = "Questions over the WebSocket, and the sessions they are kept in"),
        (name = "usage", description = "Metered tokens and quotas"),
        (name = "api keys", description = "Keys for machines (admins)"),
    ),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("a login token from `POST /v1/auth/verify-code`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("dck_<64 hex digits>")
                    .description(Some("an API key from `POST /v1/api-keys`, with the scope the operation names"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "the login token as a query parameter (the chat socket only: browsers cannot set its headers)",
            ))),
        );
    }
}

/// Operations that need no tenant.
const UNSCOPED: [&str; 3] = ["/", "/healthz", "/ws/chat"];

/// The description, completed: what every operation shares added to what its handler says.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    complete(&mut doc);
    doc
}

fn complete(doc: &mut Value) {
    // a text/event-stream's schema describes each event (its fields), and the JSON its data
    // holds is described by the handler's type
    if let Some(stream) =
        doc.pointer_mut("/paths/~1v1~1documents~1{id}~1events/get/responses/200/content/text~1event-stream")
    {
        stream["schema"] = json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["progress", "error"]},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/DocumentEvent"},
                },
            },
        });
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (_, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            let security: Vec<String> = op
                .get("security")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_object).flat_map(|o| o.keys().cloned()).collect())
                .unwrap_or_default();
            let json_body = op.get("requestBody").and_then(|b| b.pointer("/content/application~1json")).is_some();
            let scoped = !UNSCOPED.contains(&path.as_str());

            if scoped {
                let params = op.entry("parameters").or_insert_with(|| json!([]));
                if let Some(params) = params.as_array_mut() {
                    params.insert(
                        0,
                        json!({
                            "name": "X-Tenant-ID", "in": "header", "required": true,
                            "description": "the tenant: its id or its slug",
                            "schema": {"type": "string", "minLength": 1},
                        }),
                    );
                }
                add_error(op, "400", "`tenant_required`: no `X-Tenant-ID`");
                add_error(op, "404", "`tenant_not_found`: no tenant matches `X-Tenant-ID`");
            }
            if !security.is_empty() {
                add_error(
                    op,
                    "401",
                    "`missing_token`, `invalid_token` (also another tenant's token), `token_expired`, \
                     `token_revoked`, `access_revoked` (the member was removed); for keys: `invalid_api_key`, \
                     `api_key_revoked`",
                );
                if !security.iter().any(|s| s == "api_key") {
                    add_error(op, "403", "`forbidden`: API keys cannot use this endpoint");
                }
            }
            if json_body {
                add_error(op, "400", "`malformed_json`, `invalid_body`");
                add_error(op, "413", "`payload_too_large` (`MAX_JSON_BYTES`)");
                add_error(op, "415", "`unsupported_media_type`: send `Content-Type: application/json`");
                add_error(op, "422", "`invalid_body`: a field is missing, unknown or of the wrong type");
            }
            if path != "/" {
                if path != "/healthz" {
                    add_error(op, "503", "`service_unavailable`: Postgres or Redis is out of reach; try again shortly");
                }
                add_error(op, "500", "`internal_error`: logged with the request id");
            }
        }
    }
}

/// Adds a response in the error envelope, or its codes to the one the status has already.
fn add_error(op: &mut Map<String, Value>, status: &str, codes: &str) {
    let responses = op.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    match responses.get_mut(status) {
        Some(existing) => {
            let description = existing.get("description").and_then(Value::as_str).unwrap_or("").to_owned();
            if !description.contains(codes) {
                existing["description"] = Value::String(format!("{description}; {codes}"));
            }
            if existing.get("content").is_none() {
                existing["content"] = envelope_content();
            }
        }
        None => {
            responses.insert(status.to_owned(), json!({ "description": codes, "content": envelope_content() }));
        }
    }
}

fn envelope_content() -> Value {
    json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } })
}

/// The serialized description, made once.
fn document_bytes() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(serde_json::to_vec(&document()).unwrap_or_default())).clone()
}

/// `GET /openapi.json`, `GET /docs/…` (and `/docs`, `/redoc`: to the page).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route("/redoc", get(|| async { Redirect::permanent("/docs/") }))
        .route("/docs/", get(|| docs_file(String::new())))
        .route("/docs/{*file}", get(|Path(file): Path<String>| docs_file(file)))
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document_bytes()).into_response()
}

async fn docs_file(file: String) -> Response {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"]))).clone();
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(found)) => {
            let mut response = (StatusCode::OK, found.bytes.into_owned()).into_response();
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&found.content_type) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            if found.gzpipped {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            // the page's files change only with the binary
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            response
        }
        Ok(None) => error_response(StatusCode::NOT_FOUND, "not_found", "no such file of the docs page"),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the docs page");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_errors_and_the_tenant_header() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path}");
                if path != "/" {
                    assert!(responses.contains_key("500"), "{method} {path}");
                }
                let tenant_header = op["parameters"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["name"] == "X-Tenant-ID" && p["required"] == true));
                assert_eq!(tenant_header, !UNSCOPED.contains(&path.as_str()), "{method} {path}");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = response.pointer("/content/application~1json/schema/$ref");
                        assert!(schema.is_some(), "{method} {path} {status}: no error body");
                    }
                }
            }
        }
        for scheme in ["bearer", "api_key"] {
            assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
        }
        for schema in ["Error", "ClientFrame", "ServerFrame", "DocumentView"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }
}
