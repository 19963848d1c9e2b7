//! Ingestion: a job queue in Postgres ([`queue`]), the worker runtime that runs it ([`worker`]),
//! and the pipeline each job goes through ([`pipeline`]): PDF text ([`pdf`]) → chunks
//! ([`chunk`]) → embeddings → stored chunks ([`store`]).

pub mod chunk;
pub mod pdf;
pub mod pipeline;
pub mod queue;
pub mod sandbox;
pub mod store;
pub mod worker;
