//! Counters the driver keeps for STATS, and the STATS answer.

use super::*;

/// Handshakes that finished (CONNECTs answered open, connections ACCEPT handed out).
pub(super) static HANDSHAKES_OK: AtomicU64 = AtomicU64::new(0);

/// Handshakes that failed (CONNECTs, accepted connections that never opened).
pub(super) static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);

/// Plaintext sent by connections already closed (open ones are summed live).
pub(super) static BYTES_SENT_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Plaintext received by connections already closed.
pub(super) static BYTES_RECEIVED_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Requests waiting on an object now.
pub(super) static PARKED: AtomicU64 = AtomicU64::new(0);

/// Parked requests looked at by `service`: what proves one connection's traffic does not walk
/// the others' requests.
pub(super) static EXAMINED: AtomicU64 = AtomicU64::new(0);

/// STATS.
pub fn stats() -> Stats {
    let limits = limits();
    let mut s = Stats {
        connections_open: 0,
        listeners_open: 0,
        handshakes_ok: HANDSHAKES_OK.load(Ordering::Relaxed),
        handshakes_failed: HANDSHAKES_FAILED.load(Ordering::Relaxed),
        bytes_sent: BYTES_SENT_CLOSED.load(Ordering::Relaxed),
        bytes_received: BYTES_RECEIVED_CLOSED.load(Ordering::Relaxed),
        pending_operations: PARKED.load(Ordering::Relaxed),
        pool_bytes: ksys::pool::bytes_in_use() as u64,
        max_connections: limits.total as u64,
        max_connections_per_handle: limits.per_handle as u64,
        max_queued_bytes: MAX_QUEUED_BYTES as u64,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS as u64,
        requests_examined: EXAMINED.load(Ordering::Relaxed),
    };
    let mut ids = Vec::new();
    if TABLE.lock().ids(None, &mut ids).is_err() {
        return s;
    }
    for object in ids.into_iter().filter_map(lookup) {
        match &object.state.lock().kind {
            Kind::Listener { .. } => s.listeners_open += 1,
            Kind::Connection { session } => {
                s.connections_open += 1;
                let c = session.counters();
                s.bytes_sent += c.sent;
                s.bytes_received += c.received;
            }
            Kind::Acquiring(_) | Kind::Opening | Kind::Failed(_) | Kind::Closed => {}
        }
    }
    s
}
