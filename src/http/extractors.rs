//! Extractors whose rejections speak the API's error envelope.

use std::net::{IpAddr, SocketAddr};

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{app::AppState, error::ApiError};

/// `Json` whose rejections (malformed JSON, wrong shape, wrong content type, too large) are
/// `ApiError`s in the envelope. Every body of the API is a JSON object: an array is refused even
/// where its items would fill the fields in order (serde reads a struct from either).
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(Default::default())));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { code: "payload_too_large", message: "the request body is too large".into() }
            } else {
                ApiError::bad_request("invalid_body", rejection.body_text())
            }
        })?;
        let value = Json::<T>::from_bytes(&bytes).map_err(json_rejection)?.0;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::unprocessable("invalid_body", "the body must be a JSON object"));
        }
        Ok(Self(value))
    }
}

/// `application/json`, or any `application/…+json`, as `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", detail),
        JsonRejection::JsonDataError(_) => ApiError::unprocessable("invalid_body", detail),
        JsonRejection::MissingJsonContentType(_) => ApiError::Unsupported {
            code: "unsupported_media_type",
            message: "send the body as JSON with `Content-Type: application/json`".into(),
        },
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { code: "payload_too_large", message: "the request body is too large".into() }
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// The client's address as the rate limits count it: the peer address, or the one the trusted
/// proxies report (see [`super::proxy`]), with an IPv6 address cut to its /64.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let client = state.config.trusted_proxies.client(peer, &parts.headers);
        Ok(Self(client.map(super::proxy::limit_identity)))
    }
}

/// A page of a keyset-paginated list, as its query gave it: `limit` (1 to `max`; `default` when
/// absent) and the `after` cursor, the id of the last `kind` of the page before.
pub fn page(
    limit: Option<i64>,
    after: Option<&str>,
    default: i64,
    max: i64,
    kind: &str,
) -> Result<(i64, Option<uuid::Uuid>), ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {max}")));
    }
    let after = after
        .map(|a| {
            uuid::Uuid::try_parse(a)
                .map_err(|_| ApiError::bad_request("invalid_cursor", format!("`after` must be a {kind} id")))
        })
        .transpose()?;
    Ok((limit, after))
}
