//! Credential and context handles: looking up what a driver's SecHandle names, and the
//! verifier's verdict on a handle that names nothing (or something freed).

use super::*;

pub(super) enum Lookup<T> {
    Found(T),
    Unknown,
}

/// Finds a credential; a freed one is a verifier stop (use after free).
pub(super) fn credential(
    handle: *const SecHandle,
    routine: &str,
) -> Lookup<(usize, Arc<Credential>)> {
    if handle.is_null() {
        return Lookup::Unknown;
    }
    // SAFETY: the caller's handle.
    let h = unsafe { *handle };
    let kernel = ksecdd();
    let s = kernel.ksecdd.lock();
    if h.dwLower != CREDENTIAL_TAG {
        return Lookup::Unknown;
    }
    if s.freed_credentials.contains(&h.dwUpper) {
        drop(s);
        violation(
            format!(
                "{routine}: credential handle {:#x} used after it was freed",
                h.dwUpper
            ),
            h.dwUpper,
        );
    }
    match s.credentials.get(&h.dwUpper) {
        Some(c) => Lookup::Found((h.dwUpper, c.credential.clone())),
        None => Lookup::Unknown,
    }
}

/// Finds a context; a deleted one is a verifier stop.
pub(super) fn context(
    handle: *const SecHandle,
    routine: &str,
) -> Lookup<(usize, usize, bool, Arc<Mutex<Session>>)> {
    if handle.is_null() {
        return Lookup::Unknown;
    }
    // SAFETY: the caller's handle.
    let h = unsafe { *handle };
    let kernel = ksecdd();
    let s = kernel.ksecdd.lock();
    if h.dwLower != CONTEXT_TAG {
        return Lookup::Unknown;
    }
    if s.freed_contexts.contains(&h.dwUpper) {
        drop(s);
        violation(
            format!(
                "{routine}: security context {:#x} used after it was deleted",
                h.dwUpper
            ),
            h.dwUpper,
        );
    }
    match s.contexts.get(&h.dwUpper) {
        Some(c) => Lookup::Found((h.dwUpper, c.credential, c.inbound, c.session.clone())),
        None => Lookup::Unknown,
    }
}
