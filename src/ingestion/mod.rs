//! The ingestion pipeline: extract → normalise → chunk → embed → store, driven by a job queue
//! that lives in Postgres.

pub mod chunk;
pub mod extract;
pub mod normalize;
pub mod queue;
pub mod store;
pub mod worker;
