//! The Redis gateway: codec (request decoder, reply scanner), command table and
//! policy, canned replies, backend login, and the session that ties them together.

pub mod backend;
pub mod commands;
pub mod mux;
pub mod policy;
pub mod pool;
pub mod replies;
pub mod reply;
pub mod request;
pub mod session;
