//! PDF text extraction with lopdf: text per page, in reading order, with line and paragraph
//! breaks kept (chunking cuts on them), normalised for search.
//!
//! Hostile files are expected: no panic escapes, every document has a time budget, and content
//! streams, fonts and nesting are bounded.

mod fonts;
mod glyphs;
mod interp;
mod layout;
mod order;

use std::{
    borrow::Cow,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use lopdf::{Document, LoadOptions};

use crate::text::normalize_page;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_pages: usize,
    pub time_budget: Duration,
    pub max_content_bytes: usize,
    pub max_ops_per_page: usize,
    pub max_glyphs_per_page: usize,
    pub max_form_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pages: 500,
            time_budget: Duration::from_secs(120),
            max_content_bytes: 64 << 20,
            max_ops_per_page: 2_000_000,
            max_glyphs_per_page: 500_000,
            max_form_depth: 8,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("the file is not a readable PDF")]
    Invalid,
    #[error("the PDF is password-protected")]
    Encrypted,
    #[error("the PDF has {0} pages, more than the limit of {1}")]
    TooManyPages(usize, usize),
    #[error("the PDF has no extractable text (scanned or image-only pages; OCR is not supported)")]
    NoText,
    #[error("extracting the text took longer than the time budget")]
    Timeout,
    #[error("the PDF is too complex: {0}")]
    TooComplex(Cow<'static, str>),
}

impl ExtractError {
    pub fn too_complex(why: &'static str) -> Self {
        Self::TooComplex(Cow::Borrowed(why))
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid => "invalid_pdf",
            Self::Encrypted => "encrypted_pdf",
            Self::TooManyPages(..) => "too_many_pages",
            Self::NoText => "no_extractable_text",
            Self::Timeout => "extraction_timeout",
            Self::TooComplex(_) => "pdf_too_complex",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PageText {
    /// 1-based
    pub number: u32,
    pub text: String,
}

/// What an upload needs to know before it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfInfo {
    pub pages: usize,
}

/// Object and cross-reference streams are inflated while the file loads; each only up to this.
const MAX_LOAD_STREAM_BYTES: usize = 32 << 20;

fn load(bytes: &[u8]) -> Result<Document, ExtractError> {
    let options = LoadOptions { max_decompressed_size: Some(MAX_LOAD_STREAM_BYTES), ..LoadOptions::default() };
    let doc = guarded(|| Document::load_mem_with_options(bytes, options).map_err(|_| ExtractError::Invalid))?;
    // lopdf opens owner-password-only files itself (empty user password); what stays
    // encrypted needs a user password we do not have
    if doc.is_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    Ok(doc)
}

fn guarded<T>(f: impl FnOnce() -> Result<T, ExtractError>) -> Result<T, ExtractError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(ExtractError::Invalid))
}

/// Opens the PDF and counts its pages, refusing encrypted and over-long files.
pub fn inspect(bytes: &[u8], max_pages: usize) -> Result<PdfInfo, ExtractError> {
    let doc = load(bytes)?;
    let pages = doc.get_pages().len();
    if pages == 0 {
        return Err(ExtractError::Invalid);
    }
    if pages > max_pages {
        return Err(ExtractError::TooManyPages(pages, max_pages));
    }
    Ok(PdfInfo { pages })
}

/// Extracts the text of every page. `progress` is called after each page with the count done.
pub fn extract(bytes: &[u8], limits: &Limits, mut progress: impl FnMut(usize)) -> Result<Vec<PageText>, ExtractError> {
    let mut out = Vec::new();
    extract_each(bytes, limits, |page| {
        out.push(page);
        progress(out.len());
    })?;
    Ok(out)
}

/// Extracts the text of every page, handing each page on as soon as it is read. Fails with
/// `NoText` at the end when no page had any text (the pages handed on are then to be dropped).
pub fn extract_each(bytes: &[u8], limits: &Limits, mut page: impl FnMut(PageText)) -> Result<(), ExtractError> {
    guarded(|| {
        let deadline = Instant::now() + limits.time_budget;
        let doc = load(bytes)?;
        let pages = doc.get_pages();
        if pages.is_empty() {
            return Err(ExtractError::Invalid);
        }
        if pages.len() > limits.max_pages {
            return Err(ExtractError::TooManyPages(pages.len(), limits.max_pages));
        }
        let mut interp = interp::Interpreter::new(&doc, limits, deadline);
        let mut any_text = false;
        for (number, page_id) in pages {
            if Instant::now() > deadline {
                return Err(ExtractError::Timeout);
            }
            interp.reset_page();
            interp.run_page(page_id)?;
            let text = normalize_page(&layout::page_text(&interp.glyphs));
            any_text |= text.chars().filter(|c| c.is_alphanumeric()).count() >= 3;
            page(PageText { number, text });
        }
        if !any_text {
            return Err(ExtractError::NoText);
        }
        Ok(())
    })
}
