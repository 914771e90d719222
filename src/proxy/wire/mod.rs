//! The PostgreSQL v3 wire protocol as the proxy needs it.
//!
//! Messages stay the bytes they arrived as ([`Message`]: a tag and a body)
//! so rows flow through the proxy without being decoded and re-encoded;
//! typed accessors read the few fields the proxy acts on. Every length is
//! checked against a maximum before anything is allocated for it, and no
//! byte sequence makes the decoder panic.

mod backend;
mod frame;
mod frontend;

pub use backend::{ErrorFields, ErrorResponse, TransactionStatus};
pub use frame::{
    decode_message, decode_startup, Message, StartupPacket, WireError, DEFAULT_MAX_MESSAGE_LEN,
    MAX_STARTUP_LEN,
};
pub use frontend::{is_frontend_tag, Describe, FrontendMessage};
