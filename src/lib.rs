//! DocuChat: a multi-tenant document-chat service. Tenant admins upload PDFs, which are
//! extracted, chunked, embedded and stored in Postgres/pgvector; users ask questions over a
//! WebSocket and get streamed, cited answers; every token spent is metered.

pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod db;
pub mod documents;
pub mod embed;
pub mod error;
pub mod http;
pub mod ingestion;
pub mod llm;
pub mod metrics;
pub mod ratelimit;
pub mod redis;
pub mod retrieval;
pub mod telemetry;
pub mod tenants;
pub mod text;
pub mod usage;
pub mod web;

/// Selects ring as the process-wide TLS crypto provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
