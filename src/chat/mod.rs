//! Chat: the WebSocket transport ([`ws`]), the question turn it runs ([`turn`]: admit → embed →
//! retrieve → prompt → stream → record), prompts, the writer of answers ([`record`]) and the saved
//! history ([`store`]).

pub mod prompt;
pub mod record;
pub mod routes;
pub mod sockets;
pub mod store;
pub mod turn;
pub mod ws;
