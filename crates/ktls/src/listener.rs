//! A TLS listener: a WSK listen socket and an accept loop run by one work item, starting a
//! server [`Session`] for each accepted connection and queueing it for the owner.
//!
//! Accepting pauses while `backlog` sessions wait to be taken, so a slow owner bounds what a
//! flood of connections can cost. Dropping the [`Listener`] closes the socket and aborts every
//! session not yet taken.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use ksys::io::{DEVICE_OBJECT, IRP};
use ksys::ntdef::*;
use ksys::wsk::*;

use crate::census::{Census, Entry};
use crate::credential::Credential;
use crate::deadline::Deadline;
use crate::pool::PoolArc;
use crate::session::{Config, Observer, Role, Session};

/// What a listener needs of its observer: one for each session it accepts, so an owner that
/// tracks objects one by one can tell an accepted session's changes from the listener's own.
pub trait ListenObserver: Observer + Sized {
    /// The observer a newly accepted session reports to; None refuses the connection (e.g. out
    /// of memory).
    fn for_accepted(&self) -> Option<Self>;
}
use crate::sync::SpinLock;
use crate::work::{Drain, Worker};
use crate::wsk::IrpOp;

const EV_OP: u32 = 1;
const EV_USER: u32 = 2;
const EV_TIMER: u32 = 4;
/// Longest pause between accepts after failures in a row.
const MAX_ACCEPT_PAUSE_MS: u32 = 1000;

/// How a listener behaves.
pub struct ListenerConfig {
    /// The provider to listen through.
    pub npi: WSK_PROVIDER_NPI,
    /// Address and port to bind (port 0: any free port; see [`Listener::local_port`]).
    pub local: SOCKADDR_STORAGE,
    /// ALPN ids the server accepts (wire format), empty for none.
    pub alpn: Vec<u8>,
    /// Require client certificates.
    pub require_client_certificate: bool,
    /// Per-session send queue limit (plaintext bytes).
    pub max_queued: usize,
    /// Per-session receive window (plaintext bytes).
    pub receive_window: usize,
    /// Sessions accepted and not yet taken before accepting pauses.
    pub backlog: usize,
    /// Per-session handshake limit in milliseconds (0: none).
    pub handshake_timeout_ms: u32,
    /// Counts the listener and each of its sessions until released (see [`Census`]).
    pub census: Option<Census>,
}

// SAFETY: the NPI is the captured provider's client handle and dispatch table, kernel objects
// usable from any thread.
unsafe impl Send for ListenerConfig {}

/// Where the listener is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenState {
    /// Creating and binding the socket.
    Starting,
    /// Accepting on [`Listener::local_port`].
    Listening,
    /// Could not listen (the status says why), or closed.
    Closed(NTSTATUS),
}

struct Mailbox<O: Observer> {
    state: ListenState,
    port: u16,
    accepted: VecDeque<Session<O>>,
    close_requested: bool,
    accepted_total: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Create,
    DualStack,
    Bind,
    Address,
    Accept,
    Reject,
    Close,
}

type Op<O> = PoolArc<IrpOp<Worker<Shared<O>>>>;

/// The state only the drain touches (see [`crate::work::Drain::Exclusive`]).
pub struct Engine<O: ListenObserver> {
    socket: *mut WSK_SOCKET,
    op: Op<O>,
    step: Option<Step>,
    /// Accepts that failed in a row: after the second, the next waits (1 ms, doubling up to
    /// [`MAX_ACCEPT_PAUSE_MS`]) instead of re-posting at once — no hot loop on a failing stack.
    accept_failures: u32,
    pause: PoolArc<Deadline<Worker<Shared<O>>>>,
    paused: bool,
    local: SOCKADDR_STORAGE,
    /// IPV6_V6ONLY's value for an IPv6 listener (FALSE: IPv4 clients too, as echosrv does).
    v6only: u32,
    credential: Option<PoolArc<Credential>>,
    alpn: Vec<u8>,
    closing: bool,
    done: bool,
    /// Held until the listen socket is closed and the credential released.
    census: Option<Entry>,
}

// SAFETY: the listen socket is a kernel object usable from any thread; the engine is touched
// only by the listener's drain, one thread at a time.
unsafe impl<O: ListenObserver> Send for Engine<O> {}

/// The listener's shared state.
pub struct Shared<O: ListenObserver> {
    mailbox: SpinLock<Mailbox<O>>,
    device: *mut DEVICE_OBJECT,
    npi: WSK_PROVIDER_NPI,
    require_client_certificate: bool,
    max_queued: usize,
    receive_window: usize,
    backlog: usize,
    handshake_timeout_ms: u32,
    census: Option<Census>,
    observer: O,
}

// SAFETY: the mailbox is spin-locked; the engine is touched only by the (never concurrent)
// drain; the device and NPI are kernel objects usable from any thread.
unsafe impl<O: ListenObserver> Send for Shared<O> {}
// SAFETY: as above.
unsafe impl<O: ListenObserver> Sync for Shared<O> {}

/// The owner's handle to a listener.
pub struct Listener<O: ListenObserver> {
    worker: Worker<Shared<O>>,
}

impl<O: ListenObserver> Listener<O> {
    /// Starts listening; every session (and the listener itself) reports to `observer`.
    ///
    /// # Safety
    /// `device` must be a live device object of the calling driver, kept until the listener and
    /// its sessions have finished; `config.npi` must stay captured as long.
    pub unsafe fn start(
        device: *mut DEVICE_OBJECT,
        config: ListenerConfig,
        credential: PoolArc<Credential>,
        observer: O,
    ) -> Result<Listener<O>, NTSTATUS> {
        let engine = Engine {
                socket: core::ptr::null_mut(),
                op: IrpOp::try_new(EV_OP, device)?,
                step: None,
                accept_failures: 0,
                pause: Deadline::try_new(EV_TIMER)?,
                paused: false,
                local: config.local,
                v6only: 0,
                credential: Some(credential),
                alpn: config.alpn,
                closing: false,
                done: false,
                census: config.census.as_ref().map(Census::enter),
        };
        let shared = Shared {
            mailbox: SpinLock::new(Mailbox {
                state: ListenState::Starting,
                port: 0,
                accepted: VecDeque::new(),
                close_requested: false,
                accepted_total: 0,
            }),
            device,
            npi: config.npi,
            require_client_certificate: config.require_client_certificate,
            max_queued: config.max_queued,
            receive_window: config.receive_window,
            backlog: config.backlog.max(1),
            handshake_timeout_ms: config.handshake_timeout_ms,
            census: config.census,
            observer,
        };
        // SAFETY: per the contract.
        let worker = unsafe { Worker::try_new(device, shared, engine) }?;
        worker.signal(EV_USER);
        Ok(Listener { worker })
    }

    /// Where the listener is.
    pub fn state(&self) -> ListenState {
        self.worker.target().mailbox.lock().state
    }

    /// The bound port (host order), once listening.
    pub fn local_port(&self) -> u16 {
        self.worker.target().mailbox.lock().port
    }

    /// The next accepted session (still handshaking, maybe), if one waits.
    pub fn next(&self) -> Option<Session<O>> {
        let session = self.worker.target().mailbox.lock().accepted.pop_front();
        if session.is_some() {
            // Room in the backlog: accepting may resume.
            self.worker.signal(EV_USER);
        }
        session
    }

    /// Connections accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.worker.target().mailbox.lock().accepted_total
    }

    /// Stops listening (sessions already taken are unaffected).
    pub fn close(&self) {
        self.worker.target().mailbox.lock().close_requested = true;
        self.worker.signal(EV_USER);
    }
}

impl<O: ListenObserver> Drop for Listener<O> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<O: ListenObserver> Drain for Shared<O> {
    type Exclusive = Engine<O>;

    fn drain(worker: &Worker<Self>, e: &mut Engine<O>, _events: u32) {
        let shared = worker.target();
        if e.done {
            // Released, and the observer was told: it may be gone (unload waited only for the
            // census), so nothing more is said.
            return;
        }
        e.drain(shared, worker);
        shared.observer.changed();
        if e.done {
            // Released and the observer told of it: only now may unload (which waits for the
            // census) free what the observer reaches into.
            e.census = None;
        }
    }
}

impl<O: ListenObserver> Engine<O> {
    fn drain(&mut self, shared: &Shared<O>, worker: &Worker<Shared<O>>) {
        if let Some((status, information)) = self.op.take() {
            let step = self.step.take();
            self.completed(shared, worker, step, status, information);
        }
        let close = shared.mailbox.lock().close_requested;
        if close && !self.closing {
            self.closing = true;
            // Abort the sessions no one took.
            let waiting = core::mem::take(&mut shared.mailbox.lock().accepted);
            drop(waiting);
        }
        if self.closing {
            Deadline::disarm(&self.pause);
            self.paused = false;
            self.close_step(shared, worker);
            return;
        }
        if self.step.is_some() {
            return;
        }
        if self.paused {
            if !self.pause.expired() {
                return;
            }
            self.paused = false;
        }
        if self.socket.is_null() {
            self.create(shared, worker);
        } else if shared.mailbox.lock().accepted.len() < shared.backlog {
            self.accept(worker);
        }
    }

    fn fail(&mut self, shared: &Shared<O>, status: NTSTATUS) {
        shared.mailbox.lock().state = ListenState::Closed(status);
        self.closing = true;
    }

    fn listen_dispatch(&self) -> &'static WSK_PROVIDER_LISTEN_DISPATCH {
        // SAFETY: a live listen socket's dispatch table (provider-owned, static).
        unsafe { &*((*self.socket).Dispatch as *const WSK_PROVIDER_LISTEN_DISPATCH) }
    }

    fn start(
        &mut self,
        worker: &Worker<Shared<O>>,
        step: Step,
        call: impl FnOnce(*mut IRP) -> NTSTATUS,
    ) {
        if IrpOp::start(&self.op, worker.clone(), call).is_ok() {
            self.step = Some(step);
        }
    }

    fn create(&mut self, shared: &Shared<O>, worker: &Worker<Shared<O>>) {
        let npi = shared.npi;
        let family = self.local.ss_family;
        self.start(worker, Step::Create, |irp| {
            // SAFETY: a captured provider; IRP mode (no event callbacks).
            unsafe {
                (*npi.Dispatch).WskSocket.unwrap()(
                    npi.Client,
                    family,
                    SOCK_STREAM as u16,
                    IPPROTO_TCP,
                    WSK_FLAG_LISTEN_SOCKET,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                )
            }
        });
    }

    fn bind(&mut self, worker: &Worker<Shared<O>>) {
        let socket = self.socket;
        let bind = self.listen_dispatch().WskBind.unwrap();
        let local = &mut self.local as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
        self.start(worker, Step::Bind, |irp| {
            // SAFETY: a live listen socket; the address lives in the engine.
            unsafe { bind(socket, local, 0, irp) }
        });
    }

    fn accept(&mut self, worker: &Worker<Shared<O>>) {
        let socket = self.socket;
        let accept = self.listen_dispatch().WskAccept.unwrap();
        self.start(worker, Step::Accept, |irp| {
            // SAFETY: a live listen socket; no address buffers wanted.
            unsafe {
                accept(
                    socket,
                    0,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                )
            }
        });
    }

    fn completed(
        &mut self,
        shared: &Shared<O>,
        worker: &Worker<Shared<O>>,
        step: Option<Step>,
        status: NTSTATUS,
        information: usize,
    ) {
        match step {
            Some(Step::Create) => {
                if !nt_success(status) || information == 0 {
                    self.fail(shared, status);
                    return;
                }
                self.socket = information as *mut WSK_SOCKET;
                if self.closing {
                    return;
                }
                if self.local.ss_family == AF_INET6 as u16 {
                    // WSK sockets are IPv6-only by default: say what this listener wants
                    // before the bind instead of inheriting the platform's choice.
                    let socket = self.socket;
                    let control = self.listen_dispatch().Basic.WskControlSocket.unwrap();
                    let value = &mut self.v6only as *mut u32 as *mut core::ffi::c_void;
                    self.start(worker, Step::DualStack, |irp| {
                        // SAFETY: a live listen socket; the option value lives in the engine.
                        unsafe {
                            control(
                                socket,
                                WSK_SET_OPTION,
                                IPV6_V6ONLY,
                                IPPROTO_IPV6,
                                core::mem::size_of::<u32>(),
                                value,
                                0,
                                core::ptr::null_mut(),
                                core::ptr::null_mut(),
                                irp,
                            )
                        }
                    });
                } else {
                    self.bind(worker);
                }
            }
            Some(Step::DualStack) => {
                if !nt_success(status) {
                    self.fail(shared, status);
                    return;
                }
                self.bind(worker);
            }
            Some(Step::Bind) => {
                if !nt_success(status) {
                    self.fail(shared, status);
                    return;
                }
                let socket = self.socket;
                let get = self.listen_dispatch().WskGetLocalAddress.unwrap();
                let local = &mut self.local as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
                self.start(worker, Step::Address, |irp| {
                    // SAFETY: as above.
                    unsafe { get(socket, local, irp) }
                });
            }
            Some(Step::Address) => {
                if !nt_success(status) {
                    self.fail(shared, status);
                    return;
                }
                // Both SOCKADDR_IN and SOCKADDR_IN6 keep the port (network order) at bytes 2..4.
                let port = u16::from_be_bytes([self.local.data[0], self.local.data[1]]);
                let mut m = shared.mailbox.lock();
                m.port = port;
                m.state = ListenState::Listening;
            }
            Some(Step::Accept) => {
                if !nt_success(status) || information == 0 {
                    if status == STATUS_CANCELLED || self.closing {
                        return;
                    }
                    // A failed accept (e.g. the peer reset first) does not stop the listener;
                    // failures in a row slow it down.
                    self.accept_failures = self.accept_failures.saturating_add(1);
                    if self.accept_failures > 1 {
                        let ms =
                            (1u32 << (self.accept_failures - 2).min(10)).min(MAX_ACCEPT_PAUSE_MS);
                        self.paused = Deadline::arm(&self.pause, worker.clone(), ms).is_ok();
                    }
                    return;
                }
                self.accept_failures = 0;
                self.started_session(shared, worker, information as *mut WSK_SOCKET);
            }
            Some(Step::Reject) => {}
            Some(Step::Close) => {
                self.socket = core::ptr::null_mut();
            }
            None => {}
        }
    }

    fn started_session(
        &mut self,
        shared: &Shared<O>,
        worker: &Worker<Shared<O>>,
        socket: *mut WSK_SOCKET,
    ) {
        let mut alpn = Vec::new();
        let (Some(credential), Ok(())) =
            (self.credential.clone(), alpn.try_reserve(self.alpn.len()))
        else {
            self.reject(worker, socket);
            return;
        };
        alpn.extend_from_slice(&self.alpn);
        let config = Config {
            role: Role::Server { socket },
            alpn,
            require_client_certificate: shared.require_client_certificate,
            max_queued: shared.max_queued,
            receive_window: shared.receive_window,
            handshake_timeout_ms: shared.handshake_timeout_ms,
            pinned: None,
            keep_peer_certificates: false,
            census: shared.census.clone(),
        };
        let Some(observer) = shared.observer.for_accepted() else {
            self.reject(worker, socket);
            return;
        };
        // Held until it is in the list: then its first run (posting the receive for the
        // ClientHello) goes on this worker's thread, not through another work item.
        // SAFETY: the device outlives the listener's sessions (the listener's contract); the
        // accepted socket is ours alone.
        match unsafe { Session::start_held(shared.device, config, credential, observer) } {
            Ok((session, hold)) => {
                {
                    let mut m = shared.mailbox.lock();
                    m.accepted_total += 1;
                    if m.accepted.try_reserve(1).is_ok() {
                        m.accepted.push_back(session);
                    }
                }
                drop(hold);
            }
            Err(_) => self.reject(worker, socket),
        }
    }

    /// Closes (resets) an accepted socket no session could take.
    fn reject(&mut self, worker: &Worker<Shared<O>>, socket: *mut WSK_SOCKET) {
        // SAFETY: a live connection socket that nothing else uses.
        let dispatch = unsafe { &*((*socket).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) };
        let close = dispatch.Basic.WskCloseSocket.unwrap();
        self.start(worker, Step::Reject, |irp| {
            // SAFETY: as above; nothing is in flight on it.
            unsafe { close(socket, irp) }
        });
    }

    fn close_step(&mut self, shared: &Shared<O>, worker: &Worker<Shared<O>>) {
        if self.step.is_some() {
            if self.step == Some(Step::Accept) {
                self.op.cancel();
            }
            return;
        }
        if !self.socket.is_null() {
            let socket = self.socket;
            let close = self.listen_dispatch().Basic.WskCloseSocket.unwrap();
            self.start(worker, Step::Close, |irp| {
                // SAFETY: a live listen socket with nothing in flight.
                unsafe { close(socket, irp) }
            });
            return;
        }
        self.credential = None;
        self.done = true;
        {
            let mut m = shared.mailbox.lock();
            if !matches!(m.state, ListenState::Closed(_)) {
                m.state = ListenState::Closed(STATUS_SUCCESS);
            }
        }
    }
}
