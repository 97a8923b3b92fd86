//! The PostgreSQL gateway.

pub mod backend;
pub mod cancel;
pub mod codec;
pub mod messages;
pub mod pool;
pub mod session;
