//! NETIO.SYS: the Winsock Kernel provider on real OS sockets.
//!
//! Registration (WskRegister / WskCaptureProviderNPI / WskReleaseProviderNPI / WskDeregister,
//! which waits for every capture and socket to go), the provider dispatch (WskSocket,
//! WskSocketConnect, WskControlClient, WskGetAddressInfo / WskFreeAddressInfo) and, in
//! [`socket`], listen and connection sockets. One poller thread (mio) serves every socket.
//! Calls complete their IRP inline before returning or later at DISPATCH_LEVEL, as the fault plan
//! decides; event-callback mode is not offered (enabling it fails with STATUS_NOT_SUPPORTED).

pub(crate) mod addr;
pub(crate) mod poller;
pub(crate) mod socket;

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::net::ToSocketAddrs;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ksys::io::{IRP, SL_PENDING_RETURNED};
use ksys::ntdef::{
    GUID, NTSTATUS, STATUS_DEVICE_NOT_READY, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER, STATUS_NOINTERFACE, STATUS_NOT_FOUND, STATUS_NOT_SUPPORTED,
    STATUS_PENDING, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::wsk::*;

use crate::bugcheck::{bugcheck, codes, park_forever};
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, DISPATCH, PASSIVE};

/// WSK version kemu provides (1.0, what every client asks for).
pub(crate) const WSK_VERSION: u16 = 0x0100;

/// P1 sub-code of DRIVER_VERIFIER_DETECTED_VIOLATION for WSK rule violations.
pub const WSK_RULE: usize = 0x400;

pub(crate) struct Registration {
    pub captures: usize,
    pub deregistering: bool,
    pub sockets: usize,
    pub site: Site,
}

#[derive(Default)]
pub(crate) struct NetState {
    pub registrations: HashMap<usize, Registration>,
    pub next_registration: usize,
    pub sockets: HashMap<usize, socket::SocketCell>,
    pub tokens: HashMap<usize, usize>,
    pub next_token: usize,
    pub address_infos: HashMap<usize, (Vec<usize>, Site)>,
    /// Closed sockets' memory, kept with a dead dispatch table (see `socket::retire`).
    pub quarantine: std::collections::VecDeque<usize>,
}

/// The WSK provider of one kernel.
#[derive(Default)]
pub(crate) struct Netio {
    state: Mutex<NetState>,
    pub poller: poller::PollerHandle,
}

impl Netio {
    pub fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registrations, sockets and address lists still alive, as leaks.
    pub fn leaks(&self) -> Vec<Leak> {
        let state = self.lock();
        let mut leaks: Vec<Leak> = state
            .registrations
            .iter()
            .map(|(&id, r)| Leak {
                kind: LeakKind::WskRegistration,
                address: id,
                tag: format!(
                    "WSK registration ({} capture(s), {} socket(s))",
                    r.captures, r.sockets
                ),
                size: 0,
                site: r.site.clone(),
            })
            .collect();
        leaks.extend(state.sockets.iter().map(|(&a, cell)| {
            let s = socket::lock_socket(cell);
            Leak {
                kind: LeakKind::Socket,
                address: a,
                tag: s.describe(),
                size: 0,
                site: s.site.clone(),
            }
        }));
        leaks.extend(state.address_infos.iter().map(|(&a, (_, site))| Leak {
            kind: LeakKind::Pool,
            address: a,
            tag: "ADDRINFOEXW list".into(),
            size: 0,
            site: site.clone(),
        }));
        leaks
    }
}

/// Steps into the driver IRP's next stack location, as IoCallDriver would (bugchecks on a dead or
/// busy IRP). NULL → STATUS_INVALID_PARAMETER for the caller to return.
pub(crate) fn take_irp(irp: *mut IRP) -> Result<(), NTSTATUS> {
    if irp.is_null() {
        return Err(STATUS_INVALID_PARAMETER);
    }
    thread::kernel().irps.call_lower(irp);
    Ok(())
}

/// IoMarkIrpPending on the provider's stack location.
pub(crate) fn mark_pending(irp: *mut IRP) {
    // SAFETY: the IRP is live and in flight with the provider's stack location current.
    unsafe { (*(*irp).Tail.CurrentStackLocation).Control |= SL_PENDING_RETURNED };
}

/// Sets the IRP's status and completes it (IofCompleteRequest).
pub(crate) fn complete_now(irp: *mut IRP, status: NTSTATUS, information: usize) {
    // SAFETY: the provider owns the in-flight IRP until this completion.
    unsafe {
        (*irp).IoStatus.Status = status;
        (*irp).IoStatus.Information = information;
    }
    thread::kernel().irps.complete(irp);
}

/// Completes at DISPATCH_LEVEL on the calling (poller or completion) thread.
pub(crate) fn complete_at_dispatch(irp: *mut IRP, status: NTSTATUS, information: usize) {
    thread::at_irql(DISPATCH, || complete_now(irp, status, information));
}

/// Finishes a call whose outcome is known now: completes inline (returning the status) or marks
/// the IRP pending and completes it from the completion thread at DISPATCH_LEVEL.
pub(crate) fn respond(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    let kernel = thread::kernel();
    let placement = kernel.faults.place(true, true);
    if placement.inline {
        let level = if placement.dispatch {
            DISPATCH
        } else {
            thread::irql()
        };
        thread::at_irql(level, || complete_now(irp, status, information));
        status
    } else {
        mark_pending(irp);
        let address = irp as usize;
        kernel.dpc.submit(None, move || {
            complete_at_dispatch(address as *mut IRP, status, information)
        });
        STATUS_PENDING
    }
}

fn registration_of(reg: *mut WSK_REGISTRATION) -> usize {
    if reg.is_null() {
        return 0;
    }
    // SAFETY: the driver's registration block (checked non-NULL).
    unsafe { (*reg).ReservedRegistrationContext as usize }
}

fn wsk_violation(message: String, object: usize) -> ! {
    bugcheck(
        codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
        [WSK_RULE, object, 0, 0],
        message,
    )
}

/// The registration a `client` pointer (WSK_PROVIDER_NPI.Client) names, if captured.
pub(crate) fn check_client(client: *mut c_void, routine: &str) -> usize {
    let id = client as usize;
    let ok = thread::kernel()
        .netio
        .lock()
        .registrations
        .get(&id)
        .is_some_and(|r| r.captures > 0);
    if !ok {
        wsk_violation(
            format!("{routine}: client {id:#x} is not a captured WSK provider NPI"),
            id,
        );
    }
    id
}

/// NETIO!WskRegister.
pub(crate) unsafe extern "win64" fn wsk_register(
    client: *const WSK_CLIENT_NPI,
    reg: *mut WSK_REGISTRATION,
) -> NTSTATUS {
    thread::require_at_most("WskRegister", PASSIVE);
    if client.is_null() || reg.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the driver's client NPI and dispatch (resident until WskDeregister).
    let version = unsafe {
        let dispatch = (*client).Dispatch;
        if dispatch.is_null() {
            return STATUS_INVALID_PARAMETER;
        }
        (*dispatch).Version
    };
    if version >> 8 != WSK_VERSION >> 8 {
        return STATUS_NOINTERFACE;
    }
    let kernel = thread::kernel();
    if kernel.faults.allocation_fails() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let mut state = kernel.netio.lock();
    state.next_registration += 1;
    let id = 0x5700_0000 + state.next_registration * 0x10;
    state.registrations.insert(
        id,
        Registration {
            captures: 0,
            deregistering: false,
            sockets: 0,
            site: Site::here(kernel.next_sequence()),
        },
    );
    // SAFETY: the driver's registration block.
    unsafe {
        (*reg).ReservedRegistrationState = 1;
        (*reg).ReservedRegistrationContext = id as *mut c_void;
    }
    STATUS_SUCCESS
}

/// NETIO!WskCaptureProviderNPI.
pub(crate) unsafe extern "win64" fn wsk_capture_provider_npi(
    reg: *mut WSK_REGISTRATION,
    wait_ms: u32,
    provider: *mut WSK_PROVIDER_NPI,
) -> NTSTATUS {
    if wait_ms == WSK_NO_WAIT {
        thread::require_at_most("WskCaptureProviderNPI (WSK_NO_WAIT)", DISPATCH);
    } else {
        thread::require_at_most("WskCaptureProviderNPI", PASSIVE);
    }
    let id = registration_of(reg);
    if provider.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    let kernel = thread::kernel();
    let mut state = kernel.netio.lock();
    let Some(r) = state.registrations.get_mut(&id) else {
        drop(state);
        wsk_violation(
            format!("WskCaptureProviderNPI: registration {id:#x} is not registered"),
            id,
        );
    };
    if r.deregistering {
        return STATUS_DEVICE_NOT_READY;
    }
    r.captures += 1;
    // SAFETY: the driver's out-structure (checked non-NULL).
    unsafe {
        *provider = WSK_PROVIDER_NPI {
            Client: id as *mut c_void,
            Dispatch: &socket::PROVIDER_DISPATCH,
        };
    }
    STATUS_SUCCESS
}

/// NETIO!WskReleaseProviderNPI.
pub(crate) unsafe extern "win64" fn wsk_release_provider_npi(reg: *mut WSK_REGISTRATION) {
    thread::require_at_most("WskReleaseProviderNPI", DISPATCH);
    let id = registration_of(reg);
    let kernel = thread::kernel();
    let mut state = kernel.netio.lock();
    match state.registrations.get_mut(&id) {
        Some(r) if r.captures > 0 => r.captures -= 1,
        _ => {
            drop(state);
            wsk_violation(
                format!("WskReleaseProviderNPI: registration {id:#x} has no capture to release"),
                id,
            );
        }
    }
}

/// NETIO!WskQueryProviderCharacteristics.
pub(crate) unsafe extern "win64" fn wsk_query_provider_characteristics(
    reg: *mut WSK_REGISTRATION,
    out: *mut WSK_PROVIDER_CHARACTERISTICS,
) -> NTSTATUS {
    thread::require_at_most("WskQueryProviderCharacteristics", DISPATCH);
    let id = registration_of(reg);
    if !thread::kernel()
        .netio
        .lock()
        .registrations
        .contains_key(&id)
        || out.is_null()
    {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the driver's out-structure (checked non-NULL).
    unsafe {
        *out = WSK_PROVIDER_CHARACTERISTICS {
            HighestVersion: WSK_VERSION,
            LowestVersion: WSK_VERSION,
        }
    };
    STATUS_SUCCESS
}

/// NETIO!WskDeregister: blocks until every capture is released and every socket closed.
pub(crate) unsafe extern "win64" fn wsk_deregister(reg: *mut WSK_REGISTRATION) {
    thread::require_at_most("WskDeregister", PASSIVE);
    let id = registration_of(reg);
    let kernel = thread::kernel();
    {
        let mut state = kernel.netio.lock();
        match state.registrations.get_mut(&id) {
            Some(r) => r.deregistering = true,
            None => {
                drop(state);
                wsk_violation(
                    format!("WskDeregister: registration {id:#x} is not registered"),
                    id,
                );
            }
        }
    }
    let started = std::time::Instant::now();
    let mut reported = false;
    loop {
        {
            let mut state = kernel.netio.lock();
            let done = state
                .registrations
                .get(&id)
                .is_some_and(|r| r.captures == 0 && r.sockets == 0);
            if done {
                state.registrations.remove(&id);
                break;
            }
            // Windows would wait silently; kemu says once what it is waiting for.
            if !reported && started.elapsed() > DEREGISTER_REPORT_AFTER {
                reported = true;
                let open: Vec<String> = state
                    .sockets
                    .values()
                    .map(socket::lock_socket)
                    .filter(|s| s.registration == id)
                    .map(|s| {
                        format!(
                            "{} (created #{} during {})",
                            s.describe_open(),
                            s.site.sequence,
                            s.site.activity
                        )
                    })
                    .collect();
                eprintln!(
                    "kemu: WskDeregister has waited {:?} for {} socket(s) to close: {open:?}",
                    DEREGISTER_REPORT_AFTER,
                    open.len()
                );
            }
        }
        if kernel.bugcheck.get().is_some() {
            park_forever();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the driver's registration block.
    unsafe {
        (*reg).ReservedRegistrationState = 0;
        (*reg).ReservedRegistrationContext = std::ptr::null_mut();
    }
}

/// How long WskDeregister waits before kemu reports the sockets it is waiting for.
const DEREGISTER_REPORT_AFTER: Duration = Duration::from_secs(15);

/// WskControlClient: no client-level control kemu supports (static event callbacks, transport
/// lists) — STATUS_NOT_SUPPORTED, completed through the IRP when one is given.
pub(crate) unsafe extern "win64" fn wsk_control_client(
    client: *mut c_void,
    _code: u32,
    _in_len: usize,
    _in_buf: *mut c_void,
    _out_len: usize,
    _out_buf: *mut c_void,
    out_returned: *mut usize,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskControlClient", DISPATCH);
    check_client(client, "WskControlClient");
    if !out_returned.is_null() {
        // SAFETY: the driver's out-parameter.
        unsafe { *out_returned = 0 };
    }
    if irp.is_null() {
        return STATUS_NOT_SUPPORTED;
    }
    if let Err(s) = take_irp(irp) {
        return s;
    }
    respond(irp, STATUS_NOT_SUPPORTED, 0)
}

/// One ADDRINFOEXW plus the address it points to, laid out in one block.
#[repr(C)]
struct AddrInfoBlock {
    info: ADDRINFOEXW,
    address: SOCKADDR_STORAGE,
}

fn text(s: *const UNICODE_STRING) -> Option<String> {
    // SAFETY: the driver passes a valid UNICODE_STRING or NULL.
    unsafe { crate::rtl::unicode_text(s) }
}

/// NETIO!WskGetAddressInfo through the host resolver (AF_INET/AF_INET6 TCP results).
pub(crate) unsafe extern "win64" fn wsk_get_address_info(
    client: *mut c_void,
    node: *const UNICODE_STRING,
    service: *const UNICODE_STRING,
    _namespace: u32,
    _provider: *mut GUID,
    hints: *const ADDRINFOEXW,
    result: *mut *mut ADDRINFOEXW,
    _owning_process: *mut c_void,
    _owning_thread: *mut c_void,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskGetAddressInfo", PASSIVE);
    check_client(client, "WskGetAddressInfo");
    if result.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if let Err(s) = take_irp(irp) {
        return s;
    }
    let node = text(node).unwrap_or_default();
    let port: u16 = match text(service).filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse() {
            Ok(p) => p,
            Err(_) => return respond(irp, STATUS_INVALID_PARAMETER, 0),
        },
    };
    let wanted_family = if hints.is_null() {
        0
    } else {
        // SAFETY: non-NULL hints from the driver.
        unsafe { (*hints).ai_family }
    };
    let resolved: Vec<std::net::SocketAddr> = match (node.as_str(), port).to_socket_addrs() {
        Ok(it) => it
            .filter(|a| wanted_family == 0 || i32::from(addr::family_of(a)) == wanted_family)
            .collect(),
        Err(_) => Vec::new(),
    };
    if resolved.is_empty() {
        return respond(irp, STATUS_NOT_FOUND, 0);
    }
    let kernel = thread::kernel();
    let mut blocks: Vec<usize> = Vec::new();
    for a in &resolved {
        let block =
            crate::io::alloc_zeroed(std::mem::size_of::<AddrInfoBlock>()) as *mut AddrInfoBlock;
        // SAFETY: a fresh zeroed block; the address lives inside it.
        unsafe {
            addr::write(&raw mut (*block).address as *mut SOCKADDR, *a);
            (*block).info.ai_family = i32::from(addr::family_of(a));
            (*block).info.ai_socktype = SOCK_STREAM as i32;
            (*block).info.ai_protocol = IPPROTO_TCP as i32;
            (*block).info.ai_addrlen = if a.is_ipv4() { 16 } else { 28 };
            (*block).info.ai_addr = &raw mut (*block).address as *mut SOCKADDR;
            if let Some(&previous) = blocks.last() {
                (*(previous as *mut AddrInfoBlock)).info.ai_next = &raw mut (*block).info;
            }
        }
        blocks.push(block as usize);
    }
    let head = blocks[0];
    kernel
        .netio
        .lock()
        .address_infos
        .insert(head, (blocks, Site::here(kernel.next_sequence())));
    // SAFETY: the driver's out-pointer (checked non-NULL).
    unsafe { *result = head as *mut ADDRINFOEXW };
    respond(irp, STATUS_SUCCESS, 0)
}

/// NETIO!WskFreeAddressInfo.
pub(crate) unsafe extern "win64" fn wsk_free_address_info(
    client: *mut c_void,
    info: *mut ADDRINFOEXW,
) {
    thread::require_at_most("WskFreeAddressInfo", PASSIVE);
    check_client(client, "WskFreeAddressInfo");
    let kernel = thread::kernel();
    let entry = kernel.netio.lock().address_infos.remove(&(info as usize));
    match entry {
        Some((blocks, _)) => {
            for b in blocks {
                crate::io::free(b as *mut u8, std::mem::size_of::<AddrInfoBlock>());
            }
        }
        None => wsk_violation(
            format!(
                "WskFreeAddressInfo: {:#x} is not a list WskGetAddressInfo returned",
                info as usize
            ),
            info as usize,
        ),
    }
}
