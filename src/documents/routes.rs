//! `POST /v1/files`, `GET /v1/documents`, `GET /v1/documents/{id}`, `DELETE /v1/documents/{id}`.
//!
//! An upload is one PDF in the multipart field `file`. The size limit is enforced while the body
//! streams in (nothing past the limit is buffered), the content is checked to be a PDF by its
//! bytes, and the PDF is opened and its pages counted before anything is stored. The same bytes
//! uploaded again return the existing document.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Multipart, Path, Query, State, multipart::MultipartError},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{DocumentView, NewDocument};
use crate::{
    app::AppState,
    auth::{Principal, api_keys::Scope},
    db,
    error::{ApiError, ApiResult, Envelope as Error},
    http::extractors::page,
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
        .route("/v1/documents/{id}/events", get(events))
        .route("/v1/documents/{id}/file", get(file))
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

/// The upload form: one PDF in the field `file`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    #[schema(value_type = String, format = Binary, content_media_type = "application/pdf")]
    file: Vec<u8>,
}

/// An accepted upload.
#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    document_id: Uuid,
    /// `queued` for a new file; a duplicate's own status
    status: super::DocumentStatus,
    /// the same bytes were uploaded before: this is that document
    duplicate: bool,
    pages: i32,
    filename: String,
}

#[utoipa::path(
    post, path = "/v1/files", operation_id = "uploadFile", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "Upload a PDF (admins, or a key with `documents:write`)",
    description = "The file is checked while it streams (size, PDF signature), then opened and its pages counted in a \
        child process before it is accepted; ingestion goes on in the background: follow it with \
        `GET /v1/documents/{id}` or `GET /v1/documents/{id}/events`. The same bytes again return the existing document.",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Accepted: queued for ingestion (or the existing document)", body = Uploaded),
        (status = 400, description = "`file_required`, `empty_file`, `too_many_files`, `malformed_multipart`", body = Error),
        (status = 403, description = "`forbidden` (members), `insufficient_scope`", body = Error),
        (status = 413, description = "`file_too_large` (`MAX_UPLOAD_BYTES`)", body = Error),
        (status = 415, description = "`unsupported_media_type`: not multipart, or not a PDF", body = Error),
        (status = 422, description = "`encrypted_pdf`, `too_many_pages`, `invalid_pdf`, `pdf_too_complex`, `extraction_timeout`", body = Error),
        (status = 429, description = "`rate_limited` (with `Retry-After`); `quota_exceeded`: the tenant's or the uploader's token quota is used up", body = Error),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    user: Principal,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
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
        Json(Uploaded {
            document_id: doc.id,
            status: doc.status,
            duplicate: !created,
            pages: doc.pages_total,
            filename: doc.filename,
        }),
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100 (20)
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// the `next_cursor` of the previous page
    after: Option<String>,
}

/// A page of documents, newest first.
#[derive(Serialize, ToSchema)]
pub struct DocumentList {
    documents: Vec<DocumentView>,
    /// give it as `after` for the next page; `null` on the last
    next_cursor: Option<Uuid>,
}

#[utoipa::path(
    get, path = "/v1/documents", operation_id = "listDocuments", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "The tenant's documents, newest first (users, or a key with `documents:read`)",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of documents", body = DocumentList),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `invalid_cursor`", body = Error),
        (status = 403, description = "`insufficient_scope`", body = Error),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DocumentList>> {
    user.require(Scope::DocumentsRead)?;
    let Query(q) = query.map_err(|_| ApiError::bad_request("invalid_query", "use ?limit=&after="))?;
    let (limit, after) = page(q.limit, q.after.as_deref(), 20, 100, "document")?;
    let docs =
        super::list(&mut *db::for_tenant(&state.db, user.tenant_id()).await?, user.tenant_id(), after, limit + 1)
            .await?;
    let has_more = docs.len() as i64 > limit;
    let docs: Vec<DocumentView> = docs.into_iter().take(limit as usize).map(Into::into).collect();
    let next = if has_more { docs.last().map(|d| d.id) } else { None };
    Ok(Json(DocumentList { documents: docs, next_cursor: next }))
}

#[utoipa::path(
    get, path = "/v1/documents/{id}", operation_id = "getDocument", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "A document, its status and progress (users, or a key with `documents:read`)",
    params(("id" = String, Path, description = "the document's id")),
    responses(
        (status = 200, description = "The document", body = DocumentView),
        (status = 403, description = "`insufficient_scope`", body = Error),
        (status = 404, description = "`document_not_found`", body = Error),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    user: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<DocumentView>> {
    user.require(Scope::DocumentsRead)?;
    let id = parse_id(&id)?;
    let doc = super::get(&mut *db::for_tenant(&state.db, user.tenant_id()).await?, user.tenant_id(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(doc.into()))
}

#[utoipa::path(
    get, path = "/v1/documents/{id}/file", operation_id = "getDocumentFile", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "The uploaded PDF itself (users, or a key with `documents:read`)",
    description = "The bytes as uploaded, `application/pdf`, to be shown at a source's page (a viewer opens \
        `…#page=N`). Sent as an attachment unless `?inline=true`; either way with `X-Content-Type-Options: nosniff` \
        and a `sandbox` Content-Security-Policy, so a hostile file opened from here runs no script in the service's origin.",
    params(("id" = String, Path, description = "the document's id"), FileQuery),
    responses(
        (status = 200, description = "The PDF", content_type = "application/pdf", body = Vec<u8>),
        (status = 400, description = "`invalid_query`", body = Error),
        (status = 403, description = "`insufficient_scope`", body = Error),
        (status = 404, description = "`document_not_found`", body = Error),
    )
)]
pub async fn file(
    State(state): State<AppState>,
    user: Principal,
    Path(id): Path<String>,
    query: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    user.require(Scope::DocumentsRead)?;
    let Query(query) = query.map_err(|_| ApiError::bad_request("invalid_query", "use ?inline=true or false"))?;
    let id = parse_id(&id)?;
    // a slot is taken first, and held until the last byte has been written, so that however many
    // downloads are asked for at once the process sends at most `FILES_SENT_AT_ONCE` files; the
    // others wait their turn — behind at most `FILES_PER_TENANT` of their own tenant's, so that one
    // tenant's downloads (however slow their readers) never take every slot from the others
    let slot = FileSlot::take(user.tenant_id()).await;
    let mut tx = db::for_tenant(&state.db, user.tenant_id()).await?;
    let doc = super::get(&mut *tx, user.tenant_id(), id).await?.ok_or_else(not_found)?;
    let size = super::lifecycle::file_size(&mut *tx, user.tenant_id(), id).await?.ok_or_else(not_found)?;
    tx.commit().await?;
    let disposition = if query.inline.unwrap_or(false) { "inline" } else { "attachment" };
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, format!("{disposition}; filename*=UTF-8''{}", percent_encode(&doc.filename))),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
            (header::CACHE_CONTROL, "private, max-age=300".to_owned()),
        ],
        axum::body::Body::from_stream(file_slices(state.db.clone(), user.tenant_id(), id, size, slot)),
    )
        .into_response())
}

/// Bytes of a file read from Postgres at a time while it is sent: a download holds one slice in
/// memory, not the file (8 downloads at once: 4 MiB, where whole files were up to 8 ×
/// `MAX_UPLOAD_BYTES`).
const FILE_SLICE: i64 = 512 * 1024;

/// A file's bytes, a slice at a time, each read in a short transaction of its own (a download
/// holds a database connection only while a slice is read, never while its client reads), with
/// the slot the download holds until its end. A file deleted while it is sent, or a slice that
/// cannot be read (no database connection within the pool's wait), ends the body short of its
/// `Content-Length` (the connection is closed), so a client never takes a part for the whole.
fn file_slices(
    db: sqlx::PgPool,
    tenant: Uuid,
    id: Uuid,
    size: i64,
    slot: FileSlot,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::try_unfold((0_i64, slot), move |(offset, slot)| {
        let db = db.clone();
        async move {
            if offset >= size {
                return Ok(None);
            }
            let len = FILE_SLICE.min(size - offset);
            let read = async {
                let mut tx = db::for_tenant(&db, tenant).await?;
                let slice = super::lifecycle::file_slice(&mut *tx, tenant, id, offset, len).await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(slice)
            };
            match read.await {
                Ok(Some(bytes)) if bytes.len() as i64 == len => Ok(Some((Bytes::from(bytes), (offset + len, slot)))),
                Ok(_) => {
                    tracing::info!(document = %id, "a file went while it was being sent");
                    Err(std::io::Error::other("the file is gone"))
                }
                Err(e) => {
                    tracing::warn!(document = %id, error = %e, "reading a file to send failed");
                    Err(std::io::Error::other("the file could not be read"))
                }
            }
        }
    })
}

/// Files sent at once by one process.
const FILES_SENT_AT_ONCE: usize = 8;
/// ... of which one tenant's, at most: the others always have the rest.
const FILES_PER_TENANT: usize = FILES_SENT_AT_ONCE / 2;
static FILE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FILES_SENT_AT_ONCE);
/// Each tenant's share of the slots and how many of its downloads hold or await it, while it has
/// any (an entry goes with its tenant's last download, so the map holds only tenants downloading).
static TENANT_FILE_SLOTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Uuid, Share>>> =
    std::sync::LazyLock::new(Default::default);

struct Share {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    downloads: usize,
}

/// One download's place: its tenant's share first, then one of the process's slots. (Fields drop
/// in order: the permits before the count.)
struct FileSlot {
    _share: tokio::sync::OwnedSemaphorePermit,
    _slot: tokio::sync::SemaphorePermit<'static>,
    _counted: Counted,
}

impl FileSlot {
    async fn take(tenant: Uuid) -> Self {
        // counted before the waits, so that a request dropped while it waits (its client gone)
        // still takes its count away
        let (counted, share) = Counted::new(tenant);
        let share = share.acquire_owned().await.expect("never closed");
        let slot = FILE_SLOTS.acquire().await.expect("never closed");
        Self { _share: share, _slot: slot, _counted: counted }
    }
}

/// One download counted in its tenant's share.
struct Counted(Uuid);

impl Counted {
    fn new(tenant: Uuid) -> (Self, std::sync::Arc<tokio::sync::Semaphore>) {
        let mut shares = TENANT_FILE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let share = shares.entry(tenant).or_insert_with(|| Share {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(FILES_PER_TENANT)),
            downloads: 0,
        });
        share.downloads += 1;
        (Self(tenant), share.slots.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut shares = TENANT_FILE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = shares.get_mut(&self.0) {
            share.downloads -= 1;
            if share.downloads == 0 {
                shares.remove(&self.0);
            }
        }
    }
}

/// `?inline=true`: show the PDF rather than download it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    inline: Option<bool>,
}

/// RFC 5987 `attr-char`s stay, every other byte is percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[utoipa::path(
    delete, path = "/v1/documents/{id}", operation_id = "deleteDocument", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "Delete a document (admins, or a key with `documents:write`)",
    description = "The document, its file and its chunks are gone at once; the ledger keeps what it cost.",
    params(("id" = String, Path, description = "the document's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden` (members), `insufficient_scope`", body = Error),
        (status = 404, description = "`document_not_found`", body = Error),
    )
)]
pub async fn remove(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require(Scope::DocumentsWrite)?;
    let id = parse_id(&id)?;
    let mut tx = db::for_tenant(&state.db, user.tenant_id()).await?;
    if super::delete(&mut tx, user.tenant_id(), id).await? {
        tx.commit().await?;
        tracing::info!(document_id = %id, "document deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// How long one event stream lasts at most: a follower connects again to go on (a stream is not
/// checked again against a revoked token or key, so it must not outlive them by much).
const STREAM_FOR: Duration = Duration::from_secs(600);
/// How often a stream reads its document while notifications do not arrive.
const POLL_WHEN_DEAF: Duration = Duration::from_secs(2);
/// ... and while they do (a missed one costs this much delay at most).
const POLL_WHEN_LIVE: Duration = Duration::from_secs(30);

/// What an event of the stream carries: `event: progress` with the document as
/// `GET /v1/documents/{id}` shows it, once now and then at each change; the stream ends after the
/// `ready` or `failed` one. `event: error` (`document_not_found`: deleted meanwhile;
/// `shutting_down`) ends it too.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum DocumentEvent {
    Progress(DocumentView),
    Error(crate::error::ErrorBody),
}

#[utoipa::path(
    get, path = "/v1/documents/{id}/events", operation_id = "followDocument", tag = "documents", security(("bearer" = []), ("api_key" = [])),
    summary = "Follow a document's ingestion (server-sent events)",
    description = "A `text/event-stream`: `event: progress` with the document (its `progress.stage` is `queued`, \
        `extracting`, `embedding`, `storing`, then `ready` or `failed`) at once and at each change — pages extracted, \
        chunks embedded of chunks total —, ending after `ready` or `failed`; `event: error` with `{code, message}` \
        (`document_not_found` when it is deleted, `shutting_down`) ends it as well. A comment every 15 s keeps \
        proxies from closing it; a stream lasts at most 10 minutes (connect again to go on). Streams count against \
        the same per-user and per-tenant caps as chat sockets.",
    params(("id" = String, Path, description = "the document's id")),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = DocumentEvent),
        (status = 403, description = "`insufficient_scope`", body = Error),
        (status = 404, description = "`document_not_found`", body = Error),
        (status = 429, description = "`too_many_streams` (with `Retry-After`)", body = Error),
    )
)]
pub async fn events(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<Response> {
    user.require(Scope::DocumentsRead)?;
    let id = parse_id(&id)?;
    let tenant = user.tenant_id();
    let doc = super::get(&mut *db::for_tenant(&state.db, tenant).await?, tenant, id).await?.ok_or_else(not_found)?;
    let slot = state.streams.open(tenant, user.id()).ok_or_else(|| ApiError::TooManyRequests {
        code: "too_many_streams",
        message: "too many event streams are open: close one first".into(),
        retry_after: Duration::from_secs(5),
    })?;
    let follow = Follow {
        db: state.db.clone(),
        notices: state.documents.subscribe(),
        watch: state.documents.clone(),
        closing: state.streams.closing(),
        deadline: tokio::time::Instant::now() + STREAM_FOR,
        tenant,
        id,
        first: Some(doc),
        last: None,
        ended: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// One event stream's state.
struct Follow {
    db: sqlx::PgPool,
    notices: tokio::sync::broadcast::Receiver<super::watch::Notice>,
    watch: std::sync::Arc<super::watch::DocumentWatch>,
    closing: tokio_util::sync::CancellationToken,
    deadline: tokio::time::Instant,
    tenant: Uuid,
    id: Uuid,
    first: Option<super::Document>,
    /// what was sent last: only changes are sent
    last: Option<(super::DocumentStatus, super::Progress, Option<String>)>,
    ended: bool,
    _slot: crate::chat::sockets::Slot,
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if self.ended {
                return None;
            }
            let doc = match self.first.take() {
                Some(doc) => Some(doc),
                None => {
                    let poll = if self.watch.is_live() { POLL_WHEN_LIVE } else { POLL_WHEN_DEAF };
                    tokio::select! {
                        notice = self.notices.recv() => match notice {
                            Ok(Some(id)) if id != self.id => continue,
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => tokio::time::sleep(poll).await,
                        },
                        () = tokio::time::sleep(poll) => {}
                        () = self.closing.cancelled() => {
                            self.ended = true;
                            return Some(error_event("shutting_down", "the server is restarting: connect again"));
                        }
                        () = tokio::time::sleep_until(self.deadline) => return None,
                    }
                    let read = async {
                        let mut tx = db::for_tenant(&self.db, self.tenant).await?;
                        super::get(&mut *tx, self.tenant, self.id).await
                    };
                    match read.await {
                        Ok(doc) => doc,
                        // the database is out of reach: try again at the next notice or tick
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a followed document");
                            continue;
                        }
                    }
                }
            };
            let Some(doc) = doc else {
                self.ended = true;
                return Some(error_event("document_not_found", "the document was deleted"));
            };
            let view = DocumentView::from(doc);
            let now = (view.status, view.progress.clone(), view.error.as_ref().map(|e| e.code.clone()));
            if self.last.as_ref() == Some(&now) {
                continue;
            }
            self.last = Some(now);
            if matches!(view.status, super::DocumentStatus::Ready | super::DocumentStatus::Failed) {
                self.ended = true;
            }
            let event = Event::default().event("progress").json_data(DocumentEvent::Progress(view));
            return Some(event.unwrap_or_default());
        }
    }
}

fn error_event(code: &str, message: &str) -> Event {
    Event::default()
        .event("error")
        .json_data(DocumentEvent::Error(crate::error::ErrorBody::new(code, message)))
        .unwrap_or_default()
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

    /// A tenant's share is kept only while it has downloads: after the last one (sent, or given up
    /// while it waited) the map no longer holds the tenant, and a share never lends more than its
    /// slots.
    #[tokio::test]
    async fn a_tenants_share_goes_with_its_last_download() {
        let tenant = Uuid::new_v4();
        let held =
            |t: Uuid| TENANT_FILE_SLOTS.lock().unwrap().get(&t).map(|s| (s.downloads, s.slots.available_permits()));
        let mut slots = Vec::new();
        for _ in 0..FILES_PER_TENANT {
            slots.push(FileSlot::take(tenant).await);
        }
        assert_eq!(held(tenant), Some((FILES_PER_TENANT, 0)));
        // one more waits; given up, it is counted no more
        let waiting = tokio::time::timeout(Duration::from_millis(50), FileSlot::take(tenant)).await;
        assert!(waiting.is_err(), "a download went past its tenant's share");
        assert_eq!(held(tenant), Some((FILES_PER_TENANT, 0)));
        slots.pop();
        assert_eq!(held(tenant), Some((FILES_PER_TENANT - 1, 1)));
        drop(slots);
        assert_eq!(held(tenant), None);
    }
}
