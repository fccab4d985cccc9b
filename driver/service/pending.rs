//! Waiting requests: parking an IOCTL on its object (or finishing it at once), re-examining
//! one object's requests when it changed, cancellation, and completing a request with what
//! its object has for it.

use super::*;

/// What a parked request waits for.
pub enum Op {
    Listen,
    Accept,
    Connect,
    /// The payload is the request's output buffer (the caller's, METHOD_IN_DIRECT), `len`
    /// bytes; `at` of them are queued so far.
    Send {
        len: usize,
        at: usize,
    },
    Recv {
        max: usize,
    },
    Shutdown,
}

/// Parks a request, or finishes it at once if nothing is ahead of it and it can.
pub fn park(s: &Service, request: Request, id: u64, mut op: Op) {
    let owner = request.file().as_raw() as usize;
    let Some(object) = lookup(s, id).filter(|o| o.owner == owner) else {
        request.complete(STATUS_INVALID_HANDLE, 0);
        return;
    };
    let mut retired = Vec::new();
    // What the request changes in its session runs once the lock is released: on this thread,
    // the caller's, at PASSIVE_LEVEL (a SEND's records are encrypted and handed to WSK before the
    // IOCTL returns), with no hand-off to a system worker.
    let mut hold = None;
    let finished = {
        let mut guard = object.state.lock();
        let st = &mut *guard;
        if let Kind::Connection { session } = &st.kind {
            hold = Some(session.hold());
        }
        match (&op, &st.kind) {
            (Op::Shutdown, Kind::Connection { session }) => {
                session.shutdown();
                Ok(())
            }
            // Nothing to shut down before the connection exists.
            (Op::Shutdown, Kind::Acquiring(_) | Kind::Opening) => Err(STATUS_INVALID_DEVICE_STATE),
            (op, kind) if applies(op, kind) => Ok(()),
            _ => Err(STATUS_INVALID_HANDLE),
        }
        .and_then(|()| {
            collect_accepted(s, &mut st.kind, &mut retired);
            let first = match st.queue(&op) {
                Queue::Fifo(q) => q.is_empty(),
                Queue::Any(_) => true,
            };
            let ready = if first {
                s.counters.examined.fetch_add(1, Ordering::Relaxed);
                examine(&mut st.kind, object.id(), &request, &mut op)
            } else {
                None
            };
            match ready {
                // Never parked, so never cancelable: nothing to take back.
                Some(outcome) => Ok(Some(settle(s, &mut st.kind, owner, &request, &op, outcome))),
                None => enqueue(s, st, &request, id, op).map(|()| None),
            }
        })
    };
    drop(retired);
    match finished {
        Ok(Some(outcome)) => {
            if finish(request, outcome) {
                close_object(s, id, None);
            }
        }
        // Parked: its queue holds it now.
        Ok(None) => {}
        Err(status) => request.complete(status, 0),
    }
    drop(hold);
}

/// Whether `op` is a request for an object like `kind`.
pub(super) fn applies(op: &Op, kind: &Kind) -> bool {
    let connection = matches!(
        kind,
        Kind::Acquiring(Acquiring::Client { .. }) | Kind::Opening | Kind::Connection { .. }
    );
    match op {
        Op::Listen => matches!(
            kind,
            Kind::Acquiring(Acquiring::Server { .. })
                | Kind::Opening
                | Kind::Failed(_)
                | Kind::Listener { .. }
        ),
        Op::Accept => matches!(kind, Kind::Listener { .. }),
        Op::Connect => connection || matches!(kind, Kind::Failed(_)),
        Op::Send { .. } | Op::Recv { .. } | Op::Shutdown => connection,
    }
}

/// Puts a request that must wait at the end of its queue, cancelable.
pub(super) fn enqueue(
    s: &Service,
    st: &mut ObjectState,
    request: &Request,
    id: u64,
    op: Op,
) -> Result<(), NTSTATUS> {
    let room = match st.queue(&op) {
        Queue::Fifo(q) => q.try_reserve(1).is_ok(),
        Queue::Any(v) => v.try_reserve(1).is_ok(),
    };
    if !room {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    request.set_tag(id)?;
    // Err(STATUS_CANCELLED): cancelled already — it completes with that at once.
    request.mark_cancelable(Some(cancel))?;
    let parked = Parked {
        request: Request::from_presented(request.handle()).park(),
        op,
    };
    match st.queue(&parked.op) {
        Queue::Fifo(q) => q.push_back(parked),
        Queue::Any(v) => v.push(parked),
    }
    s.counters.parked.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// EvtRequestCancel: the caller cancelled, or its handle is closing.
extern "win64" fn cancel(handle: WDFREQUEST) {
    let request = Request::from_presented(handle);
    let device = ksys::kmdf::file_device(request.file());
    let mut request = Some(request);
    on_device(device, |s| {
        if let Some(request) = request.take() {
            cancel_in(s, handle, request);
        }
    });
    // No service (cannot happen while requests are parked): still completed.
    if let Some(request) = request {
        request.complete(STATUS_CANCELLED, 0);
    }
}

fn cancel_in(s: &Service, handle: WDFREQUEST, request: Request) {
    let object = request.tag().and_then(|id| lookup(s, id));
    let removed = object
        .as_ref()
        .and_then(|o| o.state.lock().remove(handle).map(|p| (o, p)));
    // The cancelled request is completed below through the framework's handle.
    if let Some((object, p)) = removed {
        s.counters.parked.fetch_sub(1, Ordering::Relaxed);
        match p.op {
            // A cancelled LISTEN or CONNECT abandons its object.
            Op::Listen | Op::Connect => {
                close_object(s, object.id(), Some(object.owner));
            }
            // Say what the connection was doing: a request cancelled after a long wait is
            // how a stall shows.
            Op::Send { .. } | Op::Recv { .. } | Op::Shutdown => trace_cancelled(object, &p.op),
            Op::Accept => {}
        }
    }
    request.complete(STATUS_CANCELLED, 0);
    // The request behind a cancelled one in its queue may go now.
    if let Some(object) = object {
        serve(s, &object);
    }
}

// Outcomes only travel in a heap Vec, so the larger variant costs nothing on the stack.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outcome {
    Status(NTSTATUS),
    /// A finished handshake, with Schannel's stream sizes (traced after the lock is released).
    Info(ConnectionInfo, [u32; 3]),
    /// A connection is ready for this ACCEPT (taken in `settle`).
    Accept,
    /// Plaintext or end of stream is there for this RECV (moved in `settle`).
    Recv,
    /// A SEND's or RECV's final status and byte count (IoStatus.Information: the bytes queued
    /// or received, as WriteFile and ReadFile report them).
    Transferred(NTSTATUS, usize),
    /// LISTEN: bound.
    Listening(ListenResponse),
    /// LISTEN or CONNECT could not start: the object goes once the request has completed.
    Failed(NTSTATUS),
}

pub(super) fn trace_cancelled(object: &Object, op: &Op) {
    let what = match op {
        Op::Send { .. } => "SEND",
        Op::Recv { .. } => "RECV",
        _ => "SHUTDOWN",
    };
    let state = match &object.state.lock().kind {
        Kind::Connection { session } => Some(session.describe()),
        _ => None,
    };
    if let Some(state) = state {
        ksys::kmdf::debug_print_args(
            ksys::kmdf::DPFLTR_WARNING_LEVEL,
            format_args!("cancelled {what} on connection {}: {state}", object.id()),
        );
    }
}

/// Re-examines the parked requests of object `id` (its session or listener changed).
pub fn service(s: &Service, id: u64) {
    if let Some(object) = lookup(s, id) {
        serve(s, &object);
    }
}

/// Completes what can finish of `object`'s parked requests: the first SEND and the first RECV
/// (and those behind each while they can), and any ACCEPT, CONNECT or SHUTDOWN whose condition
/// holds.
pub(super) fn serve(s: &Service, object: &Object) {
    let mut ready: Vec<(Request, Outcome)> = Vec::new();
    let mut retired = Vec::new();
    // As in `park`: the session's work runs once the lock is released (inline if this is a
    // PASSIVE_LEVEL caller and no run is under way; from the session's own drain it is).
    let mut hold = None;
    {
        let mut guard = object.state.lock();
        let st = &mut *guard;
        if let Kind::Connection { session } = &st.kind {
            hold = Some(session.hold());
        }
        collect_accepted(s, &mut st.kind, &mut retired);
        for fifo in [&mut st.sends, &mut st.recvs] {
            while let Some(head) = fifo.front_mut() {
                if ready.try_reserve(1).is_err() {
                    break;
                }
                let Some(outcome) = try_finish(s, object, &mut st.kind, head) else {
                    break;
                };
                if let Some(p) = fifo.pop_front() {
                    s.counters.parked.fetch_sub(1, Ordering::Relaxed);
                    ready.push((p.request.resume(), outcome));
                }
            }
        }
        let mut i = 0;
        while i < st.others.len() && ready.try_reserve(1).is_ok() {
            match try_finish(s, object, &mut st.kind, &mut st.others[i]) {
                Some(outcome) => {
                    let p = st.others.remove(i);
                    s.counters.parked.fetch_sub(1, Ordering::Relaxed);
                    ready.push((p.request.resume(), outcome));
                }
                None => i += 1,
            }
        }
    }
    drop(retired);
    let mut doomed = false;
    for (request, outcome) in ready {
        doomed |= finish(request, outcome);
    }
    if doomed {
        close_object(s, object.id(), None);
    }
    drop(hold);
}

/// A listener's newly accepted sessions join its list (up to the backlog); those whose
/// handshake failed leave it, into `retired` (dropped once the lock is released).
pub(super) fn collect_accepted(s: &Service, kind: &mut Kind, retired: &mut Vec<Session<Notify>>) {
    let Kind::Listener { listener, accepted } = kind else {
        return;
    };
    while accepted.len() < LISTEN_BACKLOG && accepted.try_reserve(1).is_ok() {
        match listener.next() {
            Some(s) => accepted.push(s),
            None => break,
        }
    }
    let mut i = 0;
    while i < accepted.len() {
        if accepted[i].state() == State::Closed && retired.try_reserve(1).is_ok() {
            s.counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            if let Some(error) = accepted[i].failure() {
                let (status, sspi) = (error.status(), error.sspi());
                ksys::kmdf::debug_print_args(
                    ksys::kmdf::DPFLTR_ERROR_LEVEL,
                    format_args!(
                        "accepted connection's handshake failed: NTSTATUS {:#010x}, SECURITY_STATUS {:#010x}",
                        status.0 as u32, sspi.0 as u32
                    ),
                );
            }
            retired.push(accepted.swap_remove(i));
        } else {
            i += 1;
        }
    }
}

/// Examines one parked request; if it can finish, takes it back from the cancel machinery and
/// settles it. None: it stays (not ready, or its cancel routine has it already and will take it).
pub(super) fn try_finish(
    s: &Service,
    object: &Object,
    kind: &mut Kind,
    p: &mut Parked,
) -> Option<Outcome> {
    s.counters.examined.fetch_add(1, Ordering::Relaxed);
    let outcome = p
        .request
        .with(|r| examine(kind, object.id(), r, &mut p.op))?;
    // Once unmarked no cancel routine runs, so what `settle` hands the request (an accepted
    // connection, received bytes) reaches the caller.
    p.request.with(|r| r.unmark_cancelable()).ok()?;
    Some(
        p.request
            .with(|r| settle(s, kind, object.owner, r, &p.op, outcome)),
    )
}

/// Completes a request with its outcome (no lock held); true if its object must go (a LISTEN or
/// CONNECT that could not start).
pub(super) fn finish(request: Request, outcome: Outcome) -> bool {
    let doomed = matches!(outcome, Outcome::Failed(_));
    match outcome {
        Outcome::Status(status) => request.complete(status, 0),
        Outcome::Info(info, stream_sizes) => {
            trace_connection(&info, stream_sizes);
            match request.write_output(&info.encode()) {
                Ok(n) => request.complete(STATUS_SUCCESS, n),
                Err(status) => request.complete(status, 0),
            }
        }
        Outcome::Transferred(status, n) => request.complete(status, n),
        Outcome::Listening(response) => match request.write_output(&response.encode()) {
            Ok(n) => request.complete(STATUS_SUCCESS, n),
            Err(status) => request.complete(status, 0),
        },
        Outcome::Failed(status) => request.complete(status, 0),
        // `settle` turned these into one of the above.
        Outcome::Accept | Outcome::Recv => request.complete(STATUS_INTERNAL_ERROR, 0),
    }
    doomed
}

/// What a ready request finishes with, once it can no longer be cancelled: hands out the
/// accepted session as a connection object of the accepting handle, counts the handshake, or
/// moves received plaintext into the request's buffer — under the object's lock, so RECVs on
/// one connection take the bytes in the order they came.
pub(super) fn settle(
    s: &Service,
    kind: &mut Kind,
    owner: usize,
    r: &Request,
    op: &Op,
    outcome: Outcome,
) -> Outcome {
    match (outcome, kind) {
        (Outcome::Accept, Kind::Listener { accepted, .. }) => {
            let Some(at) = accepted.iter().position(|s| s.state() == State::Open) else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            // The connection object goes in first: at a limit the session stays for a later
            // ACCEPT and this one says why.
            let object = match insert(s, owner, Kind::Closed) {
                Ok(object) => object,
                Err(status) => return Outcome::Status(status),
            };
            let session = accepted.swap_remove(at);
            let id = object.id();
            session.observer().retarget(id);
            s.counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
            let info = handshake_outcome(&session, id);
            // Nobody else knows the new id yet, so this lock is uncontended.
            object.state.lock().kind = Kind::Connection { session };
            info
        }
        (Outcome::Recv, Kind::Connection { session }) => {
            let Op::Recv { max } = *op else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            let mut result = Received::Pending;
            let filled = r.fill_output(max, |out| {
                result = session.recv(out);
                match result {
                    Received::Data(n) => n,
                    _ => 0,
                }
            });
            match (filled, result) {
                (Err(status), _) => Outcome::Transferred(status, 0),
                (Ok(n), Received::Data(_)) => Outcome::Transferred(STATUS_SUCCESS, n),
                (Ok(_), Received::End) => Outcome::Transferred(STATUS_SUCCESS, 0),
                (Ok(_), Received::Failed(f)) => Outcome::Transferred(f.status(), 0),
                // `examine` saw it readable under this same lock.
                (Ok(_), Received::Pending) => Outcome::Transferred(STATUS_INTERNAL_ERROR, 0),
            }
        }
        (outcome @ Outcome::Info(..), _) => {
            if let Op::Connect = op {
                let counter = match &outcome {
                    Outcome::Info(info, _) if info.status == STATUS_SUCCESS.0 => {
                        &s.counters.handshakes_ok
                    }
                    _ => &s.counters.handshakes_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        }
        (
            outcome @ (Outcome::Status(_)
            | Outcome::Transferred(..)
            | Outcome::Listening(_)
            | Outcome::Failed(_)),
            _,
        ) => outcome,
        (Outcome::Accept | Outcome::Recv, _) => Outcome::Status(STATUS_INVALID_HANDLE),
    }
}

pub(super) fn info_of(session: &Session<Notify>, id: u64) -> ConnectionInfo {
    let mut info = ConnectionInfo {
        status: STATUS_SUCCESS.0,
        sspi_status: 0,
        id,
        version: None,
        cipher_suite: 0,
        peer_certificate: None,
        alpn_len: 0,
        alpn: [0; 255],
        resumed: false,
    };
    if let Some(n) = session.negotiated() {
        use ksys::schannel::*;
        info.version = match n.protocol {
            p if p & (SP_PROT_TLS1_3_CLIENT | SP_PROT_TLS1_3_SERVER) != 0 => {
                Some(TlsVersion::Tls13)
            }
            p if p & (SP_PROT_TLS1_2_CLIENT | SP_PROT_TLS1_2_SERVER) != 0 => {
                Some(TlsVersion::Tls12)
            }
            _ => None,
        };
        info.cipher_suite = n.cipher_suite as u16;
        info.alpn_len = n.alpn_len;
        info.alpn = n.alpn;
        info.peer_certificate = n.peer_certificate;
        info.resumed = n.resumed;
    }
    if let Some(error) = session.failure() {
        let (status, sspi) = (error.status(), error.sspi());
        info.status = status.0;
        // The wire carries the SECURITY_STATUS's 32 bits as they are.
        info.sspi_status = sspi.0;
    }
    info
}

pub(super) fn handshake_outcome(session: &Session<Notify>, id: u64) -> Outcome {
    let sizes = session.negotiated().map(|n| n.stream_sizes);
    Outcome::Info(info_of(session, id), sizes.unwrap_or_default())
}

/// One DbgPrint line per handshake outcome (INFO level): what Schannel negotiated and its stream
/// sizes, or both failure codes — how a Windows run shows where kemu's model differs.
pub(super) fn trace_connection(info: &ConnectionInfo, sizes: [u32; 3]) {
    use ksys::kmdf::{DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL};
    // Formatted without allocating: a trace must not fail (or panic) where memory is short.
    if info.status == STATUS_SUCCESS.0 {
        let [header, trailer, max] = sizes;
        ksys::kmdf::debug_print_args(
            DPFLTR_INFO_LEVEL,
            format_args!(
                "connection {}: protocol {:?}, cipher suite {:#06x}, ALPN {} bytes, stream sizes header {header} trailer {trailer} max message {max}",
                info.id, info.version, info.cipher_suite, info.alpn_len,
            ),
        );
    } else {
        ksys::kmdf::debug_print_args(
            DPFLTR_ERROR_LEVEL,
            format_args!(
                "handshake failed: NTSTATUS {:#010x}, SECURITY_STATUS {:#010x}",
                info.status as u32, info.sspi_status as u32
            ),
        );
    }
}

/// Decides whether a request can finish now. Only SEND acts here (it queues what fits); what
/// must not be lost to a cancellation is left to [`settle`].
pub(super) fn examine(kind: &mut Kind, id: u64, r: &Request, op: &mut Op) -> Option<Outcome> {
    match (op, kind) {
        // Not started yet.
        (
            Op::Listen | Op::Connect | Op::Send { .. } | Op::Recv { .. },
            Kind::Acquiring(_) | Kind::Opening,
        ) => None,
        (Op::Listen | Op::Connect, Kind::Failed(status)) => Some(Outcome::Failed(*status)),
        (Op::Listen, Kind::Listener { listener, .. }) => match listener.state() {
            ListenState::Starting => None,
            ListenState::Closed(status) => Some(Outcome::Failed(if nt_success(status) {
                STATUS_UNSUCCESSFUL
            } else {
                status
            })),
            _ => Some(Outcome::Listening(ListenResponse {
                id,
                port: listener.local_port(),
            })),
        },
        (Op::Accept, Kind::Listener { accepted, listener }) => {
            if accepted.iter().any(|s| s.state() == State::Open) {
                return Some(Outcome::Accept);
            }
            match listener.state() {
                ListenState::Closed(status) => Some(Outcome::Status(if nt_success(status) {
                    STATUS_CANCELLED
                } else {
                    status
                })),
                _ => None,
            }
        }
        (Op::Connect, Kind::Connection { session }) => match session.state() {
            State::Handshaking => None,
            State::Open | State::Closed => Some(handshake_outcome(session, id)),
        },
        (Op::Send { len, at }, Kind::Connection { session }) => {
            // Straight from the caller's buffer into the connection's queue.
            let (start, end) = (*at, *len);
            match r.with_output_data(end, |payload| session.send(&payload[start..end])) {
                Ok(Ok(n)) => {
                    *at += n;
                    (*at == *len).then_some(Outcome::Transferred(STATUS_SUCCESS, *len))
                }
                Ok(Err(error)) => Some(Outcome::Status(error.status())),
                Err(status) => Some(Outcome::Status(status)),
            }
        }
        (Op::Recv { .. }, Kind::Connection { session }) => {
            session.readable().then_some(Outcome::Recv)
        }
        (Op::Shutdown, Kind::Connection { session }) => {
            if session.is_shut_down() {
                Some(Outcome::Status(STATUS_SUCCESS))
            } else if session.state() == State::Closed {
                Some(Outcome::Status(
                    session.failure().map_or(STATUS_SUCCESS, |f| f.status()),
                ))
            } else {
                None
            }
        }
        (_, Kind::Closed) => Some(Outcome::Status(STATUS_CANCELLED)),
        _ => Some(Outcome::Status(STATUS_INVALID_HANDLE)),
    }
}
