//! Counters the driver keeps for STATS, and the STATS answer.

use super::*;

/// Counters STATS reports beyond what the live objects say.
#[derive(Default)]
pub struct Counters {
    /// Handshakes that finished (CONNECTs answered open, connections ACCEPT handed out).
    pub(super) handshakes_ok: AtomicU64,
    /// Handshakes that failed (CONNECTs, accepted connections that never opened).
    pub(super) handshakes_failed: AtomicU64,
    /// Plaintext sent by connections already closed (open ones are summed live).
    pub(super) bytes_sent_closed: AtomicU64,
    /// Plaintext received by connections already closed.
    pub(super) bytes_received_closed: AtomicU64,
    /// Requests waiting on an object now.
    pub(super) parked: AtomicU64,
    /// Parked requests looked at by `service`: what proves one connection's traffic does not
    /// walk the others' requests.
    pub(super) examined: AtomicU64,
}

/// STATS.
pub fn stats(s: &Service) -> Stats {
    let limits = s.limits;
    let mut out = Stats {
        connections_open: 0,
        listeners_open: 0,
        handshakes_ok: s.counters.handshakes_ok.load(Ordering::Relaxed),
        handshakes_failed: s.counters.handshakes_failed.load(Ordering::Relaxed),
        bytes_sent: s.counters.bytes_sent_closed.load(Ordering::Relaxed),
        bytes_received: s.counters.bytes_received_closed.load(Ordering::Relaxed),
        pending_operations: s.counters.parked.load(Ordering::Relaxed),
        pool_bytes: ksys::pool::bytes_in_use() as u64,
        max_connections: limits.total as u64,
        max_connections_per_handle: limits.per_handle as u64,
        max_queued_bytes: MAX_QUEUED_BYTES as u64,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS as u64,
        requests_examined: s.counters.examined.load(Ordering::Relaxed),
    };
    let mut ids = Vec::new();
    if s.table.lock().ids(None, &mut ids).is_err() {
        return out;
    }
    for object in ids.into_iter().filter_map(|id| lookup(s, id)) {
        match &object.state.lock().kind {
            Kind::Listener { .. } => out.listeners_open += 1,
            Kind::Connection { session } => {
                out.connections_open += 1;
                let c = session.counters();
                out.bytes_sent += c.sent;
                out.bytes_received += c.received;
            }
            Kind::Acquiring(_) | Kind::Opening | Kind::Failed(_) | Kind::Closed => {}
        }
    }
    out
}
