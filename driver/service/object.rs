//! Objects: listeners and connections by id (a slot table with per-handle counts and the
//! driver's limits), what each holds (its [`Kind`]) and the requests waiting on it, the
//! observer ([`Notify`]) through which its session or listener reports, and releasing it.

use super::*;

/// Tells the driver which object changed: a ktls session or listener reports here, and only
/// that object's waiting requests are looked at again. The id is shared with the session so
/// that an accepted session, reported under its listener until ACCEPT hands it out, can be
/// pointed at its own connection object then.
pub struct Notify {
    /// The control device whose service holds the object.
    pub(super) device: WDFDEVICE,
    pub(super) target: PoolArc<AtomicU64>,
    /// An accepted session's listener, reported to while the session has no object of its own.
    pub(super) listener: Option<PoolArc<AtomicU64>>,
}

impl Notify {
    /// An observer reporting to `id` (0: nobody yet).
    pub(super) fn try_new(s: &Service, id: u64) -> Result<Notify, NTSTATUS> {
        Ok(Notify {
            device: s.device,
            target: PoolArc::try_new(AtomicU64::new(id))?,
            listener: None,
        })
    }

    /// Reports to `id` from now on.
    pub(super) fn retarget(&self, id: u64) {
        self.target.store(id, Ordering::Release);
    }
}

impl Observer for Notify {
    fn changed(&self) {
        let mut id = self.target.load(Ordering::Acquire);
        if id == 0 {
            id = self
                .listener
                .as_ref()
                .map_or(0, |l| l.load(Ordering::Acquire));
        }
        if id != 0 {
            on_device(self.device, |s| service(s, id));
        }
    }
}

impl ListenObserver for Notify {
    fn for_accepted(&self) -> Option<Self> {
        Some(Notify {
            device: self.device,
            target: PoolArc::try_new(AtomicU64::new(0)).ok()?,
            listener: Some(self.target.clone()),
        })
    }
}

// Objects live in pool one by one (never on the stack or in arrays), so the larger waiting-for-
// a-credential variant only costs the few hundred bytes of its plan per object.
#[allow(clippy::large_enum_variant)]
pub(super) enum Kind {
    Listener {
        listener: Listener<Notify>,
        /// Accepted, still handshaking (or open and waiting for an ACCEPT).
        accepted: Vec<Session<Notify>>,
    },
    Connection {
        session: Session<Notify>,
    },
    /// Waiting for its credential (LISTEN, or a CONNECT without a cached one).
    Acquiring(Acquiring),
    /// Credential acquired; its listener or session is being started.
    Opening,
    /// The credential could not be acquired, or the listener or session not started: the
    /// waiting LISTEN or CONNECT completes with this, and the object goes.
    Failed(NTSTATUS),
    /// Taken out of the table; what it held is being released.
    Closed,
}

/// A listener or connection with the requests that wait on it.
pub(super) struct Object {
    /// Set once, when the object goes into the table.
    pub(super) id: AtomicU64,
    pub(super) owner: usize,
    pub(super) state: SpinLock<ObjectState>,
}

impl Object {
    pub(super) fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }
}

pub(super) struct ObjectState {
    pub(super) kind: Kind,
    /// SENDs in arrival order: only the first may queue bytes, so streams never interleave.
    pub(super) sends: VecDeque<Parked>,
    /// RECVs in arrival order: only the first may take bytes.
    pub(super) recvs: VecDeque<Parked>,
    /// ACCEPT, CONNECT and SHUTDOWN: each finishes on its own condition.
    pub(super) others: Vec<Parked>,
}

impl ObjectState {
    pub(super) fn queue(&mut self, op: &Op) -> Queue<'_> {
        match op {
            Op::Send { .. } => Queue::Fifo(&mut self.sends),
            Op::Recv { .. } => Queue::Fifo(&mut self.recvs),
            _ => Queue::Any(&mut self.others),
        }
    }

    /// Takes out any one parked request.
    pub(super) fn pop_any(&mut self) -> Option<Parked> {
        self.sends
            .pop_front()
            .or_else(|| self.recvs.pop_front())
            .or_else(|| self.others.pop())
    }

    /// Takes out the parked request the framework names by `handle`.
    pub(super) fn remove(&mut self, handle: WDFREQUEST) -> Option<Parked> {
        if let Some(at) = self.sends.iter().position(|p| p.request.is(handle)) {
            return self.sends.remove(at);
        }
        if let Some(at) = self.recvs.iter().position(|p| p.request.is(handle)) {
            return self.recvs.remove(at);
        }
        let at = self.others.iter().position(|p| p.request.is(handle))?;
        Some(self.others.remove(at))
    }
}

pub(super) enum Queue<'a> {
    Fifo(&'a mut VecDeque<Parked>),
    Any(&'a mut Vec<Parked>),
}

pub(super) struct Parked {
    pub(super) request: ParkedRequest,
    pub(super) op: Op,
}

/// The object `id` names (a counted reference, taken under the table lock only for the lookup).
pub(super) fn lookup(s: &Service, id: u64) -> Option<PoolArc<Object>> {
    s.table.lock().get(id).map(|(_, object)| object.clone())
}

/// Puts a new object of `owner` in the table. On error the object is dropped here, outside
/// every lock.
pub(super) fn insert(s: &Service, owner: usize, kind: Kind) -> Result<PoolArc<Object>, NTSTATUS> {
    let object = PoolArc::try_new(Object {
        id: AtomicU64::new(0),
        owner,
        state: SpinLock::new(ObjectState {
            kind,
            sends: VecDeque::new(),
            recvs: VecDeque::new(),
            others: Vec::new(),
        }),
    })?;
    let inserted = s.table.lock().insert(owner, &s.limits, |id| {
        object.id.store(id, Ordering::Release);
        object.clone()
    });
    inserted.map(|_| object)
}

/// Whether `owner` may create one more object (checked again when it goes in).
pub(super) fn check_limits(s: &Service, owner: usize) -> Result<(), NTSTATUS> {
    s.table.lock().check(owner, &s.limits)
}

/// Takes object `id` out of the table (if `owner` holds it) and releases it.
pub(super) fn close_object(s: &Service, id: u64, owner: Option<usize>) -> bool {
    let removed = s.table.lock().remove(id, owner);
    match removed {
        Some(object) => {
            retire(s, &object);
            true
        }
        None => false,
    }
}

/// Cancels an object's parked requests and releases what it holds.
pub(super) fn retire(s: &Service, object: &Object) {
    loop {
        let next = object.state.lock().pop_any();
        let Some(p) = next else { break };
        s.counters.parked.fetch_sub(1, Ordering::Relaxed);
        let request = p.request.resume();
        // Err: its cancel routine runs and completes it.
        if request.unmark_cancelable().is_ok() {
            request.complete(STATUS_CANCELLED, 0);
        }
    }
    let kind = core::mem::replace(&mut object.state.lock().kind, Kind::Closed);
    release(s, kind);
}

/// Lets go of what an object held (call with no object lock held).
pub(super) fn release(s: &Service, kind: Kind) {
    match kind {
        // A connection its owner shut down finishes its graceful close on its own (bounded);
        // any other is aborted.
        Kind::Connection { session } => {
            let c = session.counters();
            s.counters
                .bytes_sent_closed
                .fetch_add(c.sent, Ordering::Relaxed);
            s.counters
                .bytes_received_closed
                .fetch_add(c.received, Ordering::Relaxed);
            // Callers hold no lock the session's observer takes: the teardown's first step (or
            // the graceful close's next) runs on this thread when it is at PASSIVE_LEVEL — a
            // CLOSE's own — instead of a system worker's.
            let first_step = session.hold();
            session.release();
            drop(first_step);
        }
        // Dropping a listener closes it and its untaken sessions; dropping an acquisition
        // abandons it (the call finishes and its credential goes then); an object being opened
        // is released by `acquired`, which finds it closed.
        Kind::Listener { .. }
        | Kind::Acquiring(_)
        | Kind::Opening
        | Kind::Failed(_)
        | Kind::Closed => drop(kind),
    }
}

/// Closes every object `owner` holds (every object, for None).
pub(super) fn close_all(s: &Service, owner: Option<usize>) {
    let mut ids = Vec::new();
    let listed = s.table.lock().ids(owner, &mut ids);
    if listed.is_err() {
        // Out of memory for the list: one at a time.
        loop {
            let next = s.table.lock().first(owner);
            match next {
                Some(id) => close_object(s, id, owner),
                None => break,
            };
        }
        return;
    }
    for id in ids {
        close_object(s, id, owner);
    }
}
