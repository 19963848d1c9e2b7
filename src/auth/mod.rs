//! Authentication: e-mail codes, the mailer, JWTs, API keys, and the extractors handlers use.

pub mod access;
pub mod api_keys;
pub mod codes;
pub mod email;
pub mod extractors;
pub mod jwt;
pub mod mailer;
pub mod routes;
pub mod users;

pub use extractors::{ChatCaller, CurrentUser, Principal};
