//! DocuChat: a multi-tenant document-chat service. Tenant admins upload PDFs, which are
//! extracted, chunked, embedded and stored in Postgres/pgvector; users ask questions over a
//! WebSocket and get streamed, cited answers; every token spent is metered.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod ingestion;
pub mod redis;
pub mod telemetry;
pub mod tenants;
