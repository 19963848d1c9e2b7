//! `POST /v1/files`, `GET /v1/documents`, `GET /v1/documents/{id}`, `DELETE /v1/documents/{id}`.
//!
//! An upload is one PDF in the multipart field `file`. The size limit is enforced while the body
//! streams in (nothing past the limit is buffered), the content is checked to be a PDF by its
//! bytes, and the PDF is opened and its pages counted before anything is stored. The same bytes
//! uploaded again return the existing document.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Multipart, Path, Query, State, multipart::MultipartError},
    http::{HeaderMap, StatusCode, header},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{DocumentView, NewDocument};
use crate::{
    app::AppState,
    auth::{Principal, api_keys::Scope},
    db,
    error::{ApiError, ApiResult},
    ingestion::{
        pdf::ExtractError,
        sandbox::{Sandbox, SandboxError},
    },
};

pub fn router(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/files", post(upload).layer(DefaultBodyLimit::max(max_upload + MULTIPART_OVERHEAD)))
        .route("/v1/documents", get(list))
        .route("/v1/documents/{id}", get(show).delete(remove))
}

/// Room for the multipart framing around the file itself.
pub const MULTIPART_OVERHEAD: usize = 64 * 1024;

fn too_large(max: usize) -> ApiError {
    ApiError::PayloadTooLarge {
        code: "file_too_large",
        message: format!("the file is larger than the limit of {} MB", max / (1024 * 1024)),
    }
}

fn multipart_error(e: MultipartError, max: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(max);
    }
    ApiError::bad_request("malformed_multipart", format!("the multipart body could not be read: {}", e.body_text()))
}

/// Keeps the last path component, drops control characters, caps the length.
pub fn clean_filename(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." { "document.pdf".to_owned() } else { cleaned.to_owned() }
}

/// A PDF starts with `%PDF-` within its first kilobyte.
pub fn looks_like_pdf(head: &[u8]) -> bool {
    head[..head.len().min(1024)].windows(5).any(|w| w == b"%PDF-")
}

async fn upload(
    State(state): State<AppState>,
    user: Principal,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    user.require(Scope::DocumentsWrite)?;
    state.limits.check_upload(user.id()).await?;
    // refused before the body is read when a quota is already used up
    state.quotas.check(user.tenant_id(), user.user_id()).await?;
    let max = state.config.ingestion.max_upload_bytes;
    // a declared length over the limit is refused before a byte is read
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > max + MULTIPART_OVERHEAD
    {
        return Err(too_large(max));
    }
    let mut multipart = multipart.map_err(|e| ApiError::Unsupported {
        code: "unsupported_media_type",
        message: format!("send the file as multipart/form-data in the field `file` ({})", e.body_text()),
    })?;

    let file = read_file(&mut multipart, max).await?;
    // bytes the tenant has uploaded before are not read again: the document they made answers
    let known =
        super::find_by_sha256(&mut *db::for_tenant(&state.db, user.tenant_id()).await?, user.tenant_id(), &file.sha256)
            .await?;
    let pages = match known {
        Some(existing) => existing.pages_total,
        None => inspect(&state.sandbox, &file.data, state.config.ingestion.max_pages).await? as i32,
    };

    let mut tx = db::for_tenant(&state.db, user.tenant_id()).await?;
    let (doc, created) = super::create_with_job(
        &mut tx,
        NewDocument {
            tenant_id: user.tenant_id(),
            uploaded_by: user.user_id(),
            uploaded_by_key: user.api_key_id(),
            filename: &file.name,
            sha256: &file.sha256,
            data: &file.data,
            pages,
            max_attempts: state.config.ingestion.max_attempts,
        },
    )
    .await?;
    tx.commit().await?;
    state.ingest_wakeup.notify_waiters();
    tracing::info!(document_id = %doc.id, pages, bytes = file.data.len(), created, "document uploaded");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "document_id": doc.id,
            "status": doc.status,
            "duplicate": !created,
            "pages": doc.pages_total,
            "filename": doc.filename,
        })),
    ))
}

/// The one file of an upload, with the SHA-256 of its bytes.
struct UploadedFile {
    name: String,
    data: Vec<u8>,
    sha256: [u8; 32],
}

/// Reads the field `file`, refusing a second file, anything past `max` bytes (while it streams
/// in) and content that does not start like a PDF.
async fn read_file(multipart: &mut Multipart, max: usize) -> ApiResult<UploadedFile> {
    let mut file: Option<UploadedFile> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        if field.name() != Some("file") {
            continue;
        }
        if file.is_some() {
            return Err(ApiError::bad_request("too_many_files", "send one file per request"));
        }
        let name = clean_filename(field.file_name());
        let mut data = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
            if data.len() + chunk.len() > max {
                return Err(too_large(max));
            }
            if data.is_empty() && !looks_like_pdf(&chunk) && chunk.len() >= 1024 {
                return Err(not_pdf());
            }
            hasher.update(&chunk);
            data.extend_from_slice(&chunk);
        }
        file = Some(UploadedFile { name, data, sha256: hasher.finalize().into() });
    }
    let file =
        file.ok_or_else(|| ApiError::bad_request("file_required", "send the PDF in the multipart field `file`"))?;
    if file.data.is_empty() {
        return Err(ApiError::bad_request("empty_file", "the file is empty"));
    }
    if !looks_like_pdf(&file.data) {
        return Err(not_pdf());
    }
    Ok(file)
}

/// Opens the PDF and counts its pages in a child process (see [`Sandbox`]), refusing encrypted,
/// over-long, unreadable and hostile files with a named error.
async fn inspect(sandbox: &Sandbox, data: &[u8], max_pages: usize) -> ApiResult<usize> {
    match sandbox.inspect(data, max_pages).await {
        Ok(info) => Ok(info.pages),
        Err(SandboxError::Pdf(e)) => Err(match e {
            ExtractError::Encrypted => ApiError::unprocessable(
                "encrypted_pdf",
                "the PDF is password-protected; remove the password and upload it again",
            ),
            ExtractError::TooManyPages(n, max) => {
                ApiError::unprocessable("too_many_pages", format!("the PDF has {n} pages; the limit is {max}"))
            }
            ExtractError::Timeout => {
                ApiError::unprocessable("extraction_timeout", "the PDF could not be opened within the time allowed")
            }
            e @ ExtractError::TooComplex(_) => ApiError::unprocessable("pdf_too_complex", e.to_string()),
            _ => ApiError::unprocessable("invalid_pdf", "the file is not a readable PDF (damaged or truncated?)"),
        }),
        Err(SandboxError::Busy) => Err(ApiError::Unavailable("PDF inspection")),
        Err(e) => {
            tracing::error!(error = %e, "cannot inspect uploads");
            Err(ApiError::Unavailable("PDF inspection"))
        }
    }
}

fn not_pdf() -> ApiError {
    ApiError::Unsupported { code: "unsupported_media_type", message: "only PDF files are accepted".into() }
}

fn not_found() -> ApiError {
    ApiError::not_found("document_not_found", "no such document")
}

/// Any id that is not a UUID of this tenant's document is simply not found.
fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| not_found())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(State(state): State<AppState>, user: Principal, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    user.require(Scope::DocumentsRead)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 100"));
    }
    let after = match q.after.as_deref() {
        Some(a) => Some(
            Uuid::try_parse(a).map_err(|_| ApiError::bad_request("invalid_cursor", "`after` must be a document id"))?,
        ),
        None => None,
    };
    let docs =
        super::list(&mut *db::for_tenant(&state.db, user.tenant_id()).await?, user.tenant_id(), after, limit + 1)
            .await?;
    let has_more = docs.len() as i64 > limit;
    let docs: Vec<DocumentView> = docs.into_iter().take(limit as usize).map(Into::into).collect();
    let next = if has_more { docs.last().map(|d| d.id) } else { None };
    Ok(Json(json!({ "documents": docs, "next_cursor": next })))
}

async fn show(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<Json<DocumentView>> {
    user.require(Scope::DocumentsRead)?;
    let id = parse_id(&id)?;
    let doc = super::get(&mut *db::for_tenant(&state.db, user.tenant_id()).await?, user.tenant_id(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(doc.into()))
}

async fn remove(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require(Scope::DocumentsWrite)?;
    let id = parse_id(&id)?;
    let mut tx = db::for_tenant(&state.db, user.tenant_id()).await?;
    if super::delete(&mut *tx, user.tenant_id(), id).await? {
        tx.commit().await?;
        tracing::info!(document_id = %id, "document deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_cleaned() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\Users\\me\\report.pdf")), "report.pdf");
        assert_eq!(clean_filename(Some("a\u{0}b\nc.pdf")), "abc.pdf");
        assert_eq!(clean_filename(None), "document.pdf");
        assert_eq!(clean_filename(Some("..")), "document.pdf");
        assert_eq!(clean_filename(Some("گزارش.pdf")), "گزارش.pdf");
        assert_eq!(clean_filename(Some(&"x".repeat(400))).chars().count(), 255);
    }

    #[test]
    fn pdf_sniffing() {
        assert!(looks_like_pdf(b"%PDF-1.7\n..."));
        assert!(looks_like_pdf(b"\xef\xbb\xbf  %PDF-1.4"));
        assert!(!looks_like_pdf(b"PK\x03\x04 zip file"));
        assert!(!looks_like_pdf(b"<html>%PDF-"[..5].as_ref()));
    }
}
