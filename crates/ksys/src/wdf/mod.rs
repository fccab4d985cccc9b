//! KMDF: the framework's types, the typed function table and the bind stub.

pub mod bind;
pub mod functions;
pub mod types;
