//! ktls: TLS in a Windows kernel driver, driven by asynchronous kernel Schannel on Winsock Kernel
//! sockets, advanced by one work item per session — the reusable pieces, `no_std` + `alloc`.
//!
//! - [`pool`]: fallible, pool-backed reference counting (every object that outlives a call is
//!   shared through it, so the last reference frees it whatever order completions arrive in);
//! - [`work`]: one I/O work item per session that drains every pending event each time it runs,
//!   at PASSIVE_LEVEL; completion callbacks only record events and schedule it;
//! - [`sspi`]: an asynchronous SSPI operation that owns its SspiAsyncContext, survives inline
//!   completion, reuses the context and recovers from a stuck one.
//!
//! This crate holds thin `unsafe` wrappers over ksys; what it exposes is safe.

#![no_std]

extern crate alloc;

pub mod census;
pub mod credential;
pub mod deadline;
pub mod listener;
pub mod pool;
pub mod session;
pub mod sha256;
pub mod sspi;
pub mod sync;
pub mod work;
pub mod wsk;

/// Pool tag of everything ktls allocates ("kTLS" in poolmon).
pub const POOL_TAG: [u8; 4] = *b"kTLS";
